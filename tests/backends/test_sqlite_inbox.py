"""What only the sqlite backend promises about the inbox (SPEC 4, schema versions 2 and 3).

The statements checked are the ones the store really runs: each API call is traced on the
store's connection (sqlite3 hands the trace callback the SQL with its values bound) and every
statement that reads or writes ``commands`` is explained. Work is measured in SQLite virtual
machine steps (a progress handler), never in time.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from registry import open_store
from registry.backends.sqlite import SqliteStore
from registry.backends.sqlite_sql import (
    COMMAND_FIELDS,
    END_COMMANDS,
    FINISHED_COMMANDS,
    NEXT_CLAIMABLE,
    UPSERT_COMMAND,
)
from registry.models import Command
from tests.conftest import EPOCH_START, FakeClock

DONE = 10_000
BASE_MS = int(EPOCH_START.timestamp() * 1000)
# A plan line that reads the commands table (under any alias) without an index.
BARE_SCAN = re.compile(r"^SCAN (commands|c|p)$")


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    opened = open_store({"backend": "sqlite", "data_dir": str(tmp_path)}, clock=clock)
    assert isinstance(opened, SqliteStore)
    yield opened
    opened.close()


def traced(store: SqliteStore, action: Callable[[], object]) -> list[str]:
    """The statements on ``commands`` that ``action`` ran on this thread's connection."""
    conn = store._conn()
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        conn.set_trace_callback(None)
    return [sql for sql in seen if " commands " in f"{sql} " and not sql.startswith("INSERT")]


def plans(store: SqliteStore, action: Callable[[], object]) -> dict[str, list[str]]:
    found = {sql: store.query_plan(sql) for sql in traced(store, action)}
    assert found, "the action ran no statement on commands"
    return found


def steps(store: SqliteStore, action: Callable[[], object]) -> int:
    """How many SQLite VM instructions (in hundreds) ``action`` cost on this connection."""
    conn = store._conn()
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn.set_progress_handler(tick, 100)
    try:
        action()
    finally:
        conn.set_progress_handler(None, 0)
    return count


def fill_done(store: SqliteStore, count: int) -> None:
    """``count`` done commands, inserted as rows in one transaction (seq 1 .. count)."""
    row = dict.fromkeys(COMMAND_FIELDS)
    rows = []
    for seq in range(1, count + 1):
        row.update(
            seq=seq, command_id=f"old-{seq}", session_id=f"s{seq % 7}", payload="{}",
            state="done", attempts=1, available_at=BASE_MS, created_at=BASE_MS,
            updated_at=BASE_MS + seq, host=store.host_id,
        )  # fmt: skip
        rows.append(tuple(row[f] for f in COMMAND_FIELDS))
    with store.writing(savepoint=False):
        store._conn().executemany(UPSERT_COMMAND, rows)


def pending_scene(store: SqliteStore, clock: FakeClock) -> None:
    """Session a's head waits out a retry and holds back a2; b1 is claimable; c1 waits."""
    for sid in ("a", "b", "c"):
        store.sessions.register(sid)
    store.inbox.enqueue("a1", {"n": 1}, session_id="a")
    store.inbox.enqueue("a2", {"n": 2}, session_id="a")
    claimed = store.inbox.claim("daemon")
    assert claimed is not None and claimed.command_id == "a1"
    store.inbox.fail("a1", "daemon", "busy", retry_in=timedelta(minutes=5))
    store.inbox.enqueue("c1", {"n": 3}, session_id="c", delay=timedelta(minutes=5))
    store.inbox.enqueue("b1", {"n": 4}, session_id="b")


def test_every_inbox_statement_uses_an_index(store: SqliteStore, clock: FakeClock) -> None:
    fill_done(store, 50)
    pending_scene(store, clock)
    clock.advance(days=2)
    store.inbox.enqueue("late", {}, session_id="a")
    calls: dict[str, Callable[[], object]] = {
        "claim": lambda: store.inbox.claim("daemon"),
        "list by session": lambda: store.inbox.list_commands(session_id="a"),
        "list by session and state": lambda: store.inbox.list_commands(
            session_id="a", state="dead"
        ),
        "list ready": lambda: store.inbox.list_commands(state="ready"),
        "list leased": lambda: store.inbox.list_commands(state="leased"),
        "get": lambda: store.inbox.get("a2"),
        "cleanup": store.inbox.cleanup_inbox,
        "session removal": lambda: store.sessions.remove("a"),
    }
    for name, call in calls.items():
        for sql, plan in plans(store, call).items():
            assert not [line for line in plan if BARE_SCAN.match(line)], (name, sql, plan)
    # The statements as prepared, with parameters (the traced text has its values inlined).
    for sql, params in [
        (NEXT_CLAIMABLE, (BASE_MS, store.host_id)),
        (FINISHED_COMMANDS, (BASE_MS,)),
        (END_COMMANDS, ("session removed", BASE_MS, "b")),
    ]:
        plan = store.query_plan(sql, params)
        assert plan and not [line for line in plan if BARE_SCAN.match(line)], (sql, plan)
        assert all("USING" in line or "SUBQUERY" in line for line in plan), (sql, plan)
    claim = next(iter(plans(store, lambda: store.inbox.claim("daemon")).values()))
    # The outer walk is the pending-only queue index of the store's host in seq order; the
    # head check one probe.
    assert claim[0] == "SEARCH c USING INDEX idx_commands_claim (host=?)"
    head = r"SEARCH p USING INDEX idx_commands_head \(session_id=\? AND"
    assert any(re.match(head, line) for line in claim), claim
    (cleanup,) = plans(store, store.inbox.cleanup_inbox).values()
    assert cleanup[0].startswith("SEARCH commands USING INDEX idx_commands_finished")
    (by_session,) = plans(store, lambda: store.inbox.list_commands(session_id="b")).values()
    assert by_session == ["SEARCH commands USING INDEX idx_commands_session (session_id=?)"]


def claim_among_done(data_dir: Path, clock: FakeClock, done: int) -> tuple[Command | None, int]:
    """Claim once with ``done`` finished commands in the table: the command and its cost."""
    with open_store({"backend": "sqlite", "data_dir": str(data_dir)}, clock=clock) as opened:
        assert isinstance(opened, SqliteStore)
        fill_done(opened, done)
        pending_scene(opened, clock)
        opened._conn().execute("ANALYZE")  # the statistics a long-lived database gathers
        found: list[Command | None] = []
        cost = steps(opened, lambda: found.append(opened.inbox.claim("daemon")))
        (plan,) = plans(opened, lambda: opened.inbox.claim("daemon")).values()
        assert plan[0] == "SEARCH c USING INDEX idx_commands_claim (host=?)"
    return found[0], cost


def test_claim_walks_only_pending_commands_however_many_are_done(
    tmp_path: Path, clock: FakeClock
) -> None:
    costs = []
    for done in (0, DONE):
        claimed, cost = claim_among_done(tmp_path / f"done-{done}", clock, done)
        # a1 waits out its retry and holds a2 back, c1 is delayed: b1 is the one.
        assert claimed is not None and claimed.command_id == "b1"
        assert claimed.seq == done + 4
        costs.append(cost)
    # A scan of 10,000 rows costs tens of thousands of instructions; the walk costs the same
    # few hundred with or without them.
    assert costs[1] <= costs[0] + 5, costs


def test_a_seq_is_never_given_twice_after_the_highest_command_is_deleted(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = {"backend": "sqlite", "data_dir": str(tmp_path)}
    with open_store(config, clock=clock) as store:
        for sid in ("a", "b", "c"):
            store.sessions.register(sid)
            store.inbox.enqueue(f"{sid}1", {}, session_id=sid)
        for _ in range(3):
            assert store.inbox.claim("daemon") is not None
        store.inbox.complete("c1", "daemon")  # seq 3, the highest
        clock.advance(days=2)
        assert store.inbox.cleanup_inbox() == ["c1"]
        assert store.inbox.enqueue("d1", {})[0].seq == 4
        for cid in ("a1", "b1"):
            store.inbox.complete(cid, "daemon")
        store.inbox.requeue("d1")  # ready: stays
        clock.advance(days=2)
    with open_store(config, clock=clock) as store:
        claimed = store.inbox.claim("daemon")
        assert claimed is not None and claimed.command_id == "d1"
        store.inbox.complete("d1", "daemon")
        clock.advance(days=2)
        assert store.inbox.cleanup_inbox() == ["a1", "b1", "d1"]
        assert store.inbox.list_commands() == []
    with open_store(config, clock=clock) as store:  # an empty table, reopened
        assert store.inbox.enqueue("e1", {})[0].seq == 5


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO commands (command_id, payload, state, available_at, created_at, updated_at)"
        " VALUES ('bad', '{}', 'bogus', 0, 0, 0)",
        "UPDATE commands SET state = 'Ready' WHERE command_id = 'c1'",
        "UPDATE commands SET state = NULL WHERE command_id = 'c1'",
    ],
)
def test_the_state_check_refuses_a_raw_bad_row(
    store: SqliteStore, clock: FakeClock, statement: str
) -> None:
    store.inbox.enqueue("c1", {"k": "v"})
    conn = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="constraint failed"):
            conn.execute(statement)
        conn.rollback()
        assert conn.execute("SELECT command_id, state FROM commands").fetchall() == [
            ("c1", "ready")
        ]
    finally:
        conn.close()
    assert [c.state for c in store.inbox.list_commands()] == ["ready"]
