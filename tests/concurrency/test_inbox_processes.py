"""The command inbox (SPEC 3.4) under real consumer processes, on sqlite and json.

Consumers run ``python -m tests.helpers.worker inbox-...`` (tests/helpers/worker.py). Order is
checked with tickets: each consumer takes the next number of a counter kept in the store in
the same ``atomic()`` unit as each claim and each completion. Units are serialised, so the
tickets are the order in which claims and completions committed, whatever the processes'
clocks or output buffering, and no two commands of one session may be held at once: within a
session, each claim's ticket must come after the completion of the command before it.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry import LeaseLost, open_store
from tests.conftest import (
    USES_POSTGRES,
    FakeClock,
    backend_config,
    drop_schema,
    require_postgres,
)
from tests.helpers.processes import Worker, start_together

SESSIONS = [f"s{n}" for n in range(6)]
PER_SESSION = 8
CONSUMERS = 4
MS = timedelta(milliseconds=1)


@pytest.fixture(params=["sqlite", "json", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    name = str(request.param)
    if name in USES_POSTGRES:
        require_postgres()
    config = {**backend_config(name, tmp_path / "data"), "lock_timeout_s": 60}
    yield config
    if "postgres" in config:
        drop_schema(config["postgres"]["schema"])


def _enqueue_all(config: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """6 sessions x 8 commands, enqueued round-robin so sessions interleave in seq order;
    returns each command's (session, seq)."""
    enqueued: dict[str, tuple[str, int]] = {}
    with open_store(config) as store:
        store.sessions.register("ticket", label="0")
        for sid in SESSIONS:
            store.sessions.register(sid)
        for i in range(PER_SESSION):
            for sid in SESSIONS:
                command, created = store.inbox.enqueue(
                    f"{sid}-{i}", {"text": f"echo {i}"}, session_id=sid
                )
                assert created
                enqueued[command.command_id] = (sid, command.seq)
    return enqueued


def test_consumers_deliver_each_command_once_in_session_order(config: dict[str, Any]) -> None:
    enqueued = _enqueue_all(config)
    workers = [Worker("inbox-consume", config, str(n), 0) for n in range(CONSUMERS)]
    start_together(workers)
    claims: list[tuple[int, str, int, int, int]] = []  # ticket, command id, seq, attempts, pid
    dones: list[tuple[int, str, int, int]] = []  # ticket, command id, seq, pid
    for worker in workers:
        out, err = worker.proc.communicate(timeout=120)
        assert worker.proc.returncode == 0, err
        for line in out.splitlines():
            kind, *fields = line.split()
            if kind == "claim":
                cid, seq, attempts, ticket, pid = fields
                claims.append((int(ticket), cid, int(seq), int(attempts), int(pid)))
            elif kind == "done" and fields:
                cid, seq, ticket, pid = fields
                dones.append((int(ticket), cid, int(seq), int(pid)))

    # Exactly once: every command claimed once (first attempt) and completed once, by the
    # process that claimed it; the seq each consumer saw is the one enqueue gave.
    assert sorted(c[1] for c in claims) == sorted(enqueued)
    assert sorted(d[1] for d in dones) == sorted(enqueued)
    assert {c[3] for c in claims} == {1}
    claimed_by = {cid: pid for _, cid, _, _, pid in claims}
    assert {cid: pid for _, cid, _, pid in dones} == claimed_by
    assert {cid: seq for _, cid, seq, _, _ in claims} == {c: s for c, (_, s) in enqueued.items()}
    # Every ticket was taken once: the counter moved in the same units as the inbox.
    tickets = sorted([c[0] for c in claims] + [d[0] for d in dones])
    assert tickets == list(range(1, 2 * len(enqueued) + 1))

    # Per session: claimed and completed in seq order, each claim after the previous
    # command's completion (never two of one session leased at once).
    claim_ticket = {cid: t for t, cid, _, _, _ in claims}
    done_ticket = {cid: t for t, cid, _, _ in dones}
    for sid in SESSIONS:
        ids = sorted((c for c in enqueued if enqueued[c][0] == sid), key=lambda c: enqueued[c][1])
        assert sorted(ids, key=done_ticket.__getitem__) == ids, f"{sid} completed out of order"
        for before, after in itertools.pairwise(ids):
            assert done_ticket[before] < claim_ticket[after], f"{sid}: {after} claimed too soon"

    with open_store(config) as store:
        assert {c.state for c in store.inbox.list_commands()} == {"done"}
        assert [c.command_id for c in store.inbox.list_commands()] == sorted(
            enqueued, key=lambda c: enqueued[c][1]
        )
        counter = store.sessions.get("ticket")
        assert counter is not None and counter.label == str(2 * len(enqueued))


def test_consumer_killed_holding_a_lease_loses_nothing(config: dict[str, Any]) -> None:
    config = {**config, "inbox_lease_s": 1}
    with open_store(config) as store:
        store.sessions.register("s1")
        for i in range(3):
            store.inbox.enqueue(f"c{i}", {"text": f"echo {i}"}, session_id="s1")
    holder = Worker("inbox-hold", config, "0", 0)
    start_together([holder])
    line = holder.read_line()
    assert line == "claimed c0 1", f"{line!r}: {holder.stderr()}"
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.communicate(timeout=30)
    assert holder.proc.returncode == -signal.SIGKILL

    with open_store(config) as store:
        held = store.inbox.get("c0")
    assert held is not None and held.state == "leased" and held.lease_owner == "w0"
    assert held.lease_until is not None and held.lease_until == held.updated_at + timedelta(
        seconds=1
    )

    # One millisecond before the lease ends the command is still held, and so is its session.
    clock = FakeClock(held.lease_until - MS)
    with open_store(config, clock=clock) as store:
        assert store.inbox.claim("parent") is None
        clock.advance(MS)  # exactly at lease_until the lease has run out
        again = store.inbox.claim("parent")
        assert again is not None
        assert (again.command_id, again.attempts, again.lease_owner) == ("c0", 2, "parent")
        assert again.lease_until == clock.now + timedelta(seconds=1)
        # The dead consumer's lease is lost: its owner can no longer complete the command.
        with pytest.raises(LeaseLost):
            store.inbox.complete("c0", "w0")
        store.inbox.complete("c0", "parent")
        following = store.inbox.claim("parent")
        assert following is not None and (following.command_id, following.attempts) == ("c1", 1)
        states = {c.command_id: c.state for c in store.inbox.list_commands()}
    assert states == {"c0": "done", "c1": "leased", "c2": "ready"}
