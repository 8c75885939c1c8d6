"""The upgrade of a real version-1 database (the previous release's output) to version 3 (SPEC 4),
and of a version-2 database (the inbox) to version 3 (the host of sessions and commands).

``tests/data/schema/ccr-v1.db`` was written by the previous release (see the README beside it).
Every test works on a copy in ``tmp_path``; the committed file is checked byte for byte after
each test, and no ``-wal`` or ``-shm`` may appear beside it (even a read-only open of a WAL
database creates them).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, open_store
from registry.backends import sqlite_sql
from registry.backends.sqlite import SqliteStore
from registry.backends.sqlite_sql import decode_session, decode_token
from tests.cli.conftest import SCRIPT
from tests.cli.test_cli import hook_input
from tests.cli.test_hook import imported_modules
from tests.conftest import FakeClock
from tests.helpers.processes import Worker, start_together

V1_DB = Path(__file__).resolve().parents[1] / "data" / "schema" / "ccr-v1.db"
SESSION_IDS = ["s-nvim", "s-pty", "s-tmux"]
TOKENS = ["tok-AAAAAAAAAAAAAAAAAAAAAA", "tok-BBBBBBBBBBBBBBBBBBBBBB"]
# The version-1 statements: the columns of SPEC 4's version-1 tables, spelled out here rather
# than taken from the code under test.
V1_SESSIONS = (
    "SELECT session_id, ppid, pid, start_time, cwd, label, notify, transport_kind, "
    "transport_details, state, created_at, updated_at, last_seen, expires_at "
    "FROM sessions ORDER BY session_id"
)
V1_TOKENS = (
    "SELECT token, session_id, chat_id, scopes, context, created_at, expires_at "
    "FROM tokens ORDER BY token"
)
V1_META = "SELECT key, value FROM meta ORDER BY key"
# The host_id the upgrading store is opened with: rows of an older version take it (SPEC 2).
UPGRADE_HOST = "upgrade-host"


@pytest.fixture(scope="module", autouse=True)
def committed_file_unchanged() -> Iterator[None]:
    before = V1_DB.read_bytes()
    yield
    assert V1_DB.read_bytes() == before, "the committed version-1 database was modified"
    for suffix in ("-wal", "-shm", "-journal"):
        assert not V1_DB.with_name(V1_DB.name + suffix).exists()


@pytest.fixture
def v1_dir(tmp_path: Path) -> Path:
    """A data directory holding a copy of the version-1 database as ``ccr.db``."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copyfile(V1_DB, data_dir / "ccr.db")
    os.chmod(data_dir / "ccr.db", 0o600)
    return data_dir


def raw(path: Path) -> dict[str, Any]:
    """What plain sqlite3 shows of the file: version, objects and every row."""
    conn = sqlite3.connect(path)
    try:
        return {
            "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
            "tables": {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            },
            "sessions": conn.execute(V1_SESSIONS).fetchall(),
            "tokens": conn.execute(V1_TOKENS).fetchall(),
            "meta": conn.execute(V1_META).fetchall(),
        }
    finally:
        conn.close()


def open_v1(data_dir: Path, clock: FakeClock) -> SqliteStore:
    config = {"backend": "sqlite", "data_dir": str(data_dir), "host_id": UPGRADE_HOST}
    store = open_store(config, clock=clock)
    assert isinstance(store, SqliteStore)
    return store


def test_the_fixture_is_the_version_1_database_it_claims_to_be(v1_dir: Path) -> None:
    before = raw(v1_dir / "ccr.db")
    assert before["user_version"] == 1
    assert before["tables"] == {"sessions", "tokens", "meta"}
    assert [row[0] for row in before["sessions"]] == SESSION_IDS
    assert {row[0]: row[9] for row in before["sessions"]}["s-tmux"] == "stopped"
    assert [row[0] for row in before["tokens"]] == TOKENS


def test_the_upgrade_keeps_every_session_and_token_field_for_field(
    v1_dir: Path, clock: FakeClock
) -> None:
    path = v1_dir / "ccr.db"
    before = raw(path)
    with open_v1(v1_dir, clock) as store:
        assert store._conn().execute("PRAGMA user_version").fetchone()[0] == 3
        for row in before["sessions"]:
            assert store.sessions.get(row[0]) == decode_session((*row, UPGRADE_HOST))
        tokens = [t for sid in SESSION_IDS for t in store.tokens.tokens_for_session(sid)]
        assert sorted(tokens, key=lambda t: t.token) == [decode_token(r) for r in before["tokens"]]
        # The clock is the one the database was made with: everything in it is still live.
        assert len(store.sessions.list_sessions(active_only=True)) == 2
        assert store.tokens.get_session_by_token(TOKENS[0]) == store.sessions.get("s-nvim")
    after = raw(path)
    assert after["user_version"] == 3
    assert after["tables"] == {"sessions", "tokens", "meta", "commands", "sqlite_sequence"}
    for key in ("sessions", "tokens", "meta"):
        assert after[key] == before[key], key
    assert hosts(path, "sessions") == {sid: UPGRADE_HOST for sid in SESSION_IDS}


def hosts(path: Path, table: str) -> dict[str, str]:
    """The host column of every row of ``sessions`` or ``commands``, by id."""
    key = "session_id" if table == "sessions" else "command_id"
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute(f"SELECT {key}, host FROM {table}").fetchall())
    finally:
        conn.close()


# Version-2 command rows, spelled out (SPEC 4's version-2 table without the host).
V2_COMMANDS = (
    "SELECT seq, command_id, session_id, payload, chat_id, state, attempts, available_at, "
    "lease_owner, lease_until, last_error, created_at, updated_at FROM commands ORDER BY seq"
)


def make_v2(path: Path) -> None:
    """Turn the version-1 copy at ``path`` into a version-2 database holding commands.

    Version 2's own step (MIGRATIONS[1], released with the inbox) on the version-1 file, and
    commands inserted in its columns, as the version-2 code wrote them.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in sqlite_sql.MIGRATIONS[1].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO commands (seq, command_id, session_id, payload, chat_id, state, "
            "attempts, available_at, lease_owner, lease_until, last_error, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (1, "c-done", "s-nvim", '{"text":"ls"}', -5, "done", 1, 1, None, None, None, 1, 2),
                (2, "c-ready", "s-pty", "{}", None, "ready", 0, 3, None, None, None, 3, 3),
                (3, "c-free", None, '{"n":1}', 7, "ready", 0, 4, None, None, "x", 4, 4),
            ],
        )
        conn.execute("PRAGMA user_version = 2")
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_version_2_database_upgrades_keeping_every_row(v1_dir: Path, clock: FakeClock) -> None:
    path = v1_dir / "ccr.db"
    make_v2(path)
    before = raw(path)
    conn = sqlite3.connect(path)
    commands_before = conn.execute(V2_COMMANDS).fetchall()
    conn.close()
    assert before["user_version"] == 2 and len(commands_before) == 3
    with open_v1(v1_dir, clock) as store:
        listed = store.inbox.list_commands()
        assert [(c.command_id, c.host) for c in listed] == [
            ("c-done", UPGRADE_HOST),
            ("c-ready", UPGRADE_HOST),
            ("c-free", UPGRADE_HOST),
        ]
        assert [s.host for s in store.sessions.list_sessions()] == [UPGRADE_HOST] * 3
        # The upgraded rows are this host's: its claim sees them, its ppid lookup too.
        claimed = store.inbox.claim("daemon")
        assert claimed is not None and claimed.command_id == "c-ready"
        store.inbox.fail("c-ready", "daemon", "later", retry_in=timedelta(hours=1))
    after = raw(path)
    assert after["user_version"] == 3
    for key in ("sessions", "tokens", "meta"):
        assert after[key] == before[key], key
    conn = sqlite3.connect(path)
    commands_after = conn.execute(V2_COMMANDS).fetchall()
    conn.close()
    assert commands_after[0] == commands_before[0] and commands_after[2] == commands_before[2]
    assert hosts(path, "commands") == {c: UPGRADE_HOST for c in ("c-done", "c-ready", "c-free")}
    assert hosts(path, "sessions") == {sid: UPGRADE_HOST for sid in SESSION_IDS}


def test_the_inbox_works_on_an_upgraded_database(v1_dir: Path, clock: FakeClock) -> None:
    with open_v1(v1_dir, clock) as store:
        command, created = store.inbox.enqueue("c1", {"text": "ls"}, session_id="s-nvim")
        assert created and command.seq == 1
        second, _ = store.inbox.enqueue("c2", {"text": "pwd"}, session_id="s-nvim")
        assert second.seq == 2
        claimed = store.inbox.claim("daemon")
        assert claimed is not None and claimed.command_id == "c1"
        assert store.inbox.claim("daemon") is None  # c2 waits behind its session's head
        done = store.inbox.complete("c1", "daemon")
        assert done.state == "done"
        following = store.inbox.claim("daemon")
        assert following is not None and following.command_id == "c2"
    with open_v1(v1_dir, clock) as store:  # reopening a current database changes nothing
        assert [c.state for c in store.inbox.list_commands()] == ["done", "leased"]


def test_a_failing_upgrade_step_leaves_version_1_whole(
    v1_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = v1_dir / "ccr.db"
    before = raw(path)
    # The last step fails after the version-2 step ran: both are one transaction.
    first, second, third = sqlite_sql.MIGRATIONS
    failing = third + ";\nINSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(sqlite_sql, "MIGRATIONS", (first, second, failing))
    with pytest.raises(RegistryError, match="no_such_table"):
        open_v1(v1_dir, clock)
    assert raw(path) == before  # version 1, no commands table, every row as it was
    monkeypatch.undo()
    with open_v1(v1_dir, clock) as store:
        store.inbox.enqueue("c1", {}, session_id="s-pty")
    after = raw(path)
    assert after["user_version"] == 3 and "commands" in after["tables"]
    assert after["sessions"] == before["sessions"]


def schema_cookie(path: Path) -> int:
    """SQLite's schema cookie: it counts every schema change the file has seen."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA schema_version").fetchone()[0])
    finally:
        conn.close()


def test_processes_opening_one_version_1_file_together_upgrade_it_once(
    tmp_path: Path, v1_dir: Path, clock: FakeClock
) -> None:
    # The schema cookie after one upgrade by one process, to compare the raced files with.
    open_v1(v1_dir, clock).close()
    once = schema_cookie(v1_dir / "ccr.db")
    for round_ in range(2):
        data_dir = tmp_path / f"race-{round_}"
        data_dir.mkdir(mode=0o700)
        shutil.copyfile(V1_DB, data_dir / "ccr.db")
        before = raw(data_dir / "ccr.db")
        config = {"backend": "sqlite", "data_dir": str(data_dir), "lock_timeout_s": 30}
        # "first-start" opens the store after the barrier: the opens, and so the upgrades, race.
        workers = [Worker("first-start", config, str(i), 0) for i in range(3)]
        start_together(workers)
        for worker in workers:
            worker.finish()  # a second run of the step would fail: "table commands already exists"
        after = raw(data_dir / "ccr.db")
        assert after["user_version"] == 3 and "commands" in after["tables"]
        assert (after["sessions"], after["tokens"]) == (before["sessions"], before["tokens"])
        assert schema_cookie(data_dir / "ccr.db") == once


def hook_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "TMUX", "NVIM"))}
    env["HOME"] = str(tmp_path / "home")
    env["TMUX_TMPDIR"] = str(tmp_path / "no-tmux-server")
    return env


def run_hook(
    tmp_path: Path, data_dir: Path, event: str, session_id: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-X", "importtime", str(SCRIPT), "--data-dir", str(data_dir)]
    done = subprocess.run(
        [*command, "hook", event],
        input=hook_input(session_id),
        capture_output=True,
        text=True,
        env=hook_env(tmp_path),
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout == ""
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert said == []  # no warning: the hook did what it was asked
    return done


def test_a_hook_on_a_version_1_database_falls_back_and_upgrades(
    tmp_path: Path, v1_dir: Path, clock: FakeClock
) -> None:
    before = raw(v1_dir / "ccr.db")
    done = run_hook(tmp_path, v1_dir, "session-start", "s-new")
    # The fast path saw version 1 and gave up; the store (and its models) did the upgrade.
    assert "registry.factory" in imported_modules(done.stderr)
    after = raw(v1_dir / "ccr.db")
    assert after["user_version"] == 3 and "commands" in after["tables"]
    assert [row for row in after["sessions"] if row[0] != "s-new"] == before["sessions"]
    assert after["tokens"] == before["tokens"]
    with open_v1(v1_dir, clock) as store:
        new = store.sessions.get("s-new")
        assert new is not None and new.cwd == "/home/dev/projects/pigeon"


def test_a_session_end_hook_on_version_2_ends_that_sessions_pending_commands(
    tmp_path: Path, v1_dir: Path, clock: FakeClock
) -> None:
    with open_v1(v1_dir, clock) as store:
        store.inbox.enqueue("done", {"n": 1}, session_id="s-pty")
        claimed = store.inbox.claim("daemon")
        assert claimed is not None and claimed.command_id == "done"
        store.inbox.complete("done", "daemon")
        store.inbox.enqueue("leased", {"n": 2}, session_id="s-pty")
        assert store.inbox.claim("daemon") is not None
        store.inbox.enqueue("ready", {"n": 3}, session_id="s-pty")
        store.inbox.enqueue("other", {"n": 4}, session_id="s-nvim")
    done = run_hook(tmp_path, v1_dir, "session-end", "s-pty")
    # The hook's fast path (one statement, no models) did it.
    modules = imported_modules(done.stderr)
    assert "registry.hook" in modules and "registry.models" not in modules
    with open_v1(v1_dir, clock) as store:
        assert store.sessions.get("s-pty") is None
        assert store.tokens.get_session_by_token(TOKENS[1]) is None
        ended = {c.command_id: c for c in store.inbox.list_commands(session_id="s-pty")}
        assert {cid: (c.state, c.last_error) for cid, c in ended.items()} == {
            "done": ("done", None),
            "leased": ("dead", "session removed"),
            "ready": ("dead", "session removed"),
        }
        assert ended["leased"].lease_owner is None and ended["leased"].lease_until is None
        assert ended["ready"].updated_at > ended["ready"].created_at
        other = store.inbox.get("other")
        assert other is not None and other.state == "ready"
