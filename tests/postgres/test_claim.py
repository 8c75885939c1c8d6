"""How a postgres claim locks: the writer lock shared and ``FOR UPDATE SKIP LOCKED`` rows in a
unit of its own, the writer lock exclusively everywhere else (registry.backends.postgres).

Another claim is played by a second connection holding what a claim's unit holds (the writer
lock shared, a command's row lock). The contract and the process suites (exactly once, per
session order, 4 consumers) run the claim itself; these pin down what it waits for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from registry import StoreBusy, open_store
from registry.backends.postgres import PostgresStore
from registry.protocols import Store
from tests.postgres.test_postgres import config

__all__ = ["config"]  # the fixture, shared with test_postgres.py


@contextmanager
def another_claim(store: Store, dsn: str, schema: str, *rows: str) -> Iterator[None]:
    """A transaction holding the writer lock shared and the row locks of ``rows``."""
    assert isinstance(store, PostgresStore)
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (store.write_key,))
        for command_id in rows:
            conn.execute(
                f'SELECT 1 FROM "{schema}".commands WHERE command_id = %s FOR UPDATE',
                (command_id,),
            )
        yield


@pytest.fixture
def store(config: dict[str, Any]) -> Iterator[Store]:
    with open_store({**config, "lock_timeout_s": 0.5}) as opened:
        for sid in ("s1", "s2"):
            opened.sessions.register(sid)
        opened.inbox.enqueue("a1", {"n": 1}, session_id="s1")
        opened.inbox.enqueue("a2", {"n": 2}, session_id="s1")
        opened.inbox.enqueue("b1", {"n": 3}, session_id="s2")
        yield opened


def _id(command: Any) -> str | None:
    return None if command is None else str(command.command_id)


def test_a_claim_passes_over_a_command_another_claim_holds_and_keeps_session_order(
    store: Store, config: dict[str, Any]
) -> None:
    pg = config["postgres"]
    with another_claim(store, pg["dsn"], pg["schema"], "a1"):
        assert _id(store.inbox.claim("w1")) == "b1"  # beside the other claim, not after it
        assert store.inbox.claim("w1") is None  # a1 is held; a2 waits for a1 all the same
        assert store.inbox.get("a1").state == "ready"  # type: ignore[union-attr]
    assert _id(store.inbox.claim("w2")) == "a1"
    assert store.inbox.claim("w2") is None  # a2 still waits: a1 is leased


def test_every_other_writer_waits_for_the_claims_in_progress(
    store: Store, config: dict[str, Any]
) -> None:
    pg = config["postgres"]
    claimed = store.inbox.claim("w1")
    assert claimed is not None
    with another_claim(store, pg["dsn"], pg["schema"]):
        with pytest.raises(StoreBusy):
            store.inbox.complete(claimed.command_id, "w1")
        with pytest.raises(StoreBusy):
            store.sessions.register("s3")
        with pytest.raises(StoreBusy), store.atomic():  # a claim inside atomic(): exclusive
            store.inbox.claim("w2")
    assert store.inbox.complete(claimed.command_id, "w1").state == "done"
    assert store.sessions.get("s3") is None
