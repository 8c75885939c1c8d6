"""What only a server-backed store meets: a writer killed mid-unit, the server stopped and
restarted under a running store, a connection killed by the server, a newer schema.

The contract, property, thread and process suites run on postgres through ``BACKENDS``
(among them 8 processes x 25 read-modify-write increments inside ``atomic()``, and a forked
child using an inherited store); these tests add what those cannot express.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, open_store
from tests.conftest import (
    POSTGRES_TABLE,
    FakeClock,
    backend_config,
    drop_schema,
    require_postgres,
)
from tests.helpers.pg import PgServer
from tests.helpers.processes import Worker, start_together

# How long the server may take to notice a dead client or to come back (a poll, not a pause).
SERVER_GRACE_S = 30.0


def admin(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own; its rows."""
    import psycopg

    with psycopg.connect(str(POSTGRES_TABLE["dsn"]), autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SERVER_GRACE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {SERVER_GRACE_S} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[dict[str, Any]]:
    require_postgres()
    config = {**backend_config("postgres", tmp_path / "data"), "lock_timeout_s": 5}
    yield config
    drop_schema(config["postgres"]["schema"])


def advisory_locks() -> int:
    return int(admin("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0])


def test_a_writer_killed_mid_unit_leaves_nothing_and_no_lock(config: dict[str, Any]) -> None:
    with open_store(config) as store:
        store.sessions.register("before")
    holder = Worker("hold", config, "0", 0)
    start_together([holder])
    holder.expect("holding")  # inside atomic(): registered, not committed, lock held
    assert advisory_locks() == 1
    holder.kill()
    wait_until(lambda: advisory_locks() == 0, "the killed writer's advisory lock is released")
    with open_store(config) as store:
        started = time.monotonic()
        store.sessions.register("after")
        assert time.monotonic() - started < 5
        assert store.sessions.get("holder-0") is None
        assert {s.session_id for s in store.sessions.list_sessions()} == {"before", "after"}


def test_a_writer_killed_between_units_keeps_every_acknowledged_unit(
    config: dict[str, Any],
) -> None:
    writer = Worker("unit-writer", config, "0", 0)
    start_together([writer])
    for _ in range(20):
        assert writer.read_ack()
    writer.kill()
    wait_until(lambda: advisory_locks() == 0, "the killed writer's advisory lock is released")
    with open_store(config) as store:
        sessions = {s.session_id for s in store.sessions.list_sessions()}
        for i in writer.acked:
            assert {f"u0-{i}", f"p0-{i}"} <= sessions
        for sid in (s for s in sessions if s.startswith("u")):
            tokens = [t.token for t in store.tokens.tokens_for_session(sid)]
            assert tokens == ["t" + sid[1:]], f"half of unit {sid} survived"


def test_the_server_stopped_and_restarted_under_a_running_store(
    config: dict[str, Any], postgres_server: PgServer, clock: FakeClock
) -> None:
    store = open_store({**config, "lock_timeout_s": 1}, clock=clock)
    try:
        store.sessions.register("s1")
        postgres_server.pg_ctl("stop")
        try:
            for call in (
                lambda: store.sessions.get("s1"),
                lambda: store.sessions.register("s2"),
                lambda: store.sessions.get("s1"),
            ):
                with pytest.raises(RegistryError) as caught:
                    call()
                assert type(caught.value).__module__ == "registry.errors"
        finally:
            postgres_server.pg_ctl("start")

        def works() -> bool:
            try:
                store.sessions.register("s3")
            except RegistryError:
                return False
            return True

        wait_until(works, "the same store object works again")
        assert {s.session_id for s in store.sessions.list_sessions()} == {"s1", "s3"}
    finally:
        store.close()


def test_a_connection_killed_by_the_server(config: dict[str, Any]) -> None:
    store = open_store(config)
    try:
        store.sessions.register("s1")
        kill_others = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        assert admin(kill_others)[0][0] >= 1
        # The pool finds the killed connection when it hands it out, and replaces it.
        assert store.sessions.get("s1") is not None
        store.sessions.register("s1")

        # Killed inside a unit: the unit fails as a whole, nothing of it is kept.
        with pytest.raises(RegistryError), store.atomic():
            store.sessions.register("in-unit")
            admin(kill_others)
            store.sessions.register("after-kill")
        assert store.sessions.get("in-unit") is None
        assert store.sessions.get("after-kill") is None
        store.sessions.register("s2")
        assert {s.session_id for s in store.sessions.list_sessions()} == {"s1", "s2"}
    finally:
        store.close()


def test_a_newer_schema_is_refused_and_left_untouched(config: dict[str, Any]) -> None:
    from registry.backends.postgres import SCHEMA_VERSION

    schema = config["postgres"]["schema"]
    with open_store(config) as store:
        store.sessions.register("s1")
    newer = SCHEMA_VERSION + 1
    admin(f"UPDATE \"{schema}\".meta SET value = %s WHERE key = 'schema_version'", (str(newer),))

    def contents() -> list[tuple[Any, ...]]:
        return admin(
            f'SELECT (SELECT json_agg(m ORDER BY key) FROM "{schema}".meta m)::text, '
            f'(SELECT json_agg(s) FROM "{schema}".sessions s)::text, '
            "(SELECT json_agg(t ORDER BY table_name) FROM information_schema.tables t "
            "WHERE table_schema = %s)::text",
            (schema,),
        )

    before = contents()
    with pytest.raises(
        RegistryError, match=rf"version {newer} is newer .*version {SCHEMA_VERSION}"
    ):
        open_store(config)
    assert contents() == before


def test_a_schema_with_foreign_tables_is_refused(config: dict[str, Any]) -> None:
    from registry import StoreCorrupted

    schema = config["postgres"]["schema"]
    admin(f'CREATE SCHEMA "{schema}"')
    admin(f'CREATE TABLE "{schema}".sessions (x int)')
    with pytest.raises(StoreCorrupted, match="no ccr-registry schema version"):
        open_store(config)
    assert admin(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,)
    ) == [(1,)]


@pytest.mark.parametrize(
    "damage",
    [
        "ALTER TABLE {s}.sessions RENAME COLUMN label TO lbl",
        "ALTER TABLE {s}.tokens DROP COLUMN context",
        "DROP TABLE {s}.commands",
        "UPDATE {s}.meta SET value = 'two' WHERE key = 'schema_version'",
    ],
    ids=["renamed-column", "dropped-column", "dropped-table", "garbled-version"],
)
def test_a_damaged_schema_is_refused_and_left_untouched(
    config: dict[str, Any], damage: str
) -> None:
    """The postgres counterpart of the damaged-file contract test (tests/contract)."""
    from registry import StoreCorrupted

    schema = config["postgres"]["schema"]
    with open_store(config) as store:
        store.sessions.register("s1", label="kept")
        store.tokens.mint_token("s1", 1)
        store.inbox.enqueue("c1", {"text": "hi"}, session_id="s1")
    admin(damage.format(s=f'"{schema}"'))

    def contents() -> list[tuple[Any, ...]]:
        return admin(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s ORDER BY 1, 2",
            (schema,),
        ) + admin(f'SELECT key, value FROM "{schema}".meta ORDER BY key')

    before = contents()
    with pytest.raises(StoreCorrupted), open_store(config) as store:
        store.sessions.list_sessions()
        store.tokens.tokens_for_session("s1")
        store.inbox.list_commands()
    assert contents() == before


def test_a_unit_begun_before_fork_cannot_go_on_in_the_child(config: dict[str, Any]) -> None:
    import os

    with open_store(config) as store:
        with store.atomic():
            store.sessions.register("parent")
            pid = os.fork()
            if pid == 0:  # the child: neither go on with the parent's unit nor end it
                code = 1
                try:
                    store.sessions.register("child")
                except RegistryError:
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            store.sessions.register("parent-again")  # the parent's unit goes on unharmed
        assert {s.session_id for s in store.sessions.list_sessions()} == {
            "parent",
            "parent-again",
        }
