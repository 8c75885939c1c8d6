"""What only the sqlite backend promises: schema, pragmas, versioning, indexes, no-op opens."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from registry import RegistryError, Store, StoreBusy, StoreCorrupted, open_store
from registry.backends.sqlite import SCHEMA_VERSION, SqliteStore
from tests.conftest import FakeClock


def open_sqlite(data_dir: Path, clock: FakeClock, **extra: object) -> SqliteStore:
    store = open_store({"backend": "sqlite", "data_dir": str(data_dir), **extra}, clock=clock)
    assert isinstance(store, SqliteStore)
    return store


def pragma(store: SqliteStore, name: str) -> object:
    return store._conn().execute(f"PRAGMA {name}").fetchone()[0]


def test_schema_version_and_objects(tmp_path: Path, clock: FakeClock) -> None:
    with open_sqlite(tmp_path, clock) as store:
        assert pragma(store, "user_version") == SCHEMA_VERSION == 3
        names = {
            row[0]
            for row in store._conn().execute("SELECT name FROM sqlite_master WHERE sql IS NOT NULL")
        }
    assert names == {
        "sessions",
        "tokens",
        "meta",
        "idx_sessions_host_ppid",
        "idx_sessions_notify",
        "idx_sessions_expires",
        "idx_tokens_session",
        "idx_tokens_expires",
        "commands",
        "sqlite_sequence",  # AUTOINCREMENT's record of the largest seq ever given
        "idx_commands_queue",
        "idx_commands_claim",
        "idx_commands_head",
        "idx_commands_session",
        "idx_commands_finished",
    }


def test_every_connection_has_the_pragmas(tmp_path: Path, clock: FakeClock) -> None:
    with open_sqlite(tmp_path, clock, lock_timeout_s=3) as store:
        seen: list[tuple[object, ...]] = []

        def check() -> None:  # a new thread gets a new connection
            seen.append(
                (
                    pragma(store, "foreign_keys"),
                    pragma(store, "synchronous"),
                    pragma(store, "journal_mode"),
                    pragma(store, "busy_timeout"),
                    store._conn().isolation_level,
                )
            )

        check()
        thread = threading.Thread(target=check)
        thread.start()
        thread.join()
    assert seen == [(1, 1, "wal", 3000, None)] * 2


def test_cascade_works_on_every_threads_connection(tmp_path: Path, clock: FakeClock) -> None:
    with open_sqlite(tmp_path, clock) as store:
        store.sessions.register("s1")
        store.tokens.mint_token("s1", 1)
        thread = threading.Thread(target=store.sessions.remove, args=("s1",))
        thread.start()
        thread.join()
        assert store._conn().execute("SELECT count(*) FROM tokens").fetchone()[0] == 0


def test_reregister_updates_in_place(tmp_path: Path, clock: FakeClock) -> None:
    with open_sqlite(tmp_path, clock) as store:
        store.sessions.register("s1")
        rowid = store._conn().execute("SELECT rowid FROM sessions").fetchone()[0]
        store.tokens.mint_token("s1", 1)
        clock.advance(seconds=1)
        store.sessions.register("s1", label="again")
        # INSERT OR REPLACE would have deleted the row (new rowid, tokens cascaded away).
        assert store._conn().execute("SELECT rowid FROM sessions").fetchone()[0] == rowid
        assert store._conn().execute("SELECT count(*) FROM tokens").fetchone()[0] == 1


def test_newer_schema_is_refused_and_not_modified(tmp_path: Path, clock: FakeClock) -> None:
    open_sqlite(tmp_path, clock).close()
    db = tmp_path / "ccr.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(RegistryError, match=rf"version 7.*version {SCHEMA_VERSION}"):
        open_sqlite(tmp_path, clock)
    assert db.read_bytes() == before


def test_foreign_database_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    tmp_path.mkdir(exist_ok=True)
    db = tmp_path / "ccr.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE other (x)")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StoreCorrupted, match="no ccr-registry schema"):
        open_sqlite(tmp_path, clock)
    assert db.read_bytes() == before


def test_opening_a_current_database_writes_nothing(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_sqlite(tmp_path, clock) as store:
        store.sessions.register("s1")
    db = tmp_path / "ccr.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    statements: list[str] = []
    real_connect = sqlite3.connect

    def tracing_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        conn.set_trace_callback(statements.append)
        return conn  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", tracing_connect)
    with open_sqlite(tmp_path, clock) as store:
        assert store.sessions.get("s1") is not None
    monkeypatch.undo()
    assert statements, "the trace saw no statement"
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    upper = [s.upper() for s in statements]
    assert not [s for s in upper if s.startswith(("CREATE", "ALTER", "DROP", "BEGIN", "INSERT"))]
    assert not [s for s in upper if "USER_VERSION =" in s or "JOURNAL_MODE =" in s]


@pytest.mark.parametrize(
    ("call", "index"),
    [
        ("get_by_ppid", "idx_sessions_host_ppid"),
        ("get_notify_sessions", "idx_sessions_notify"),
    ],
)
def test_lookups_use_their_index(tmp_path: Path, clock: FakeClock, call: str, index: str) -> None:
    with open_sqlite(tmp_path, clock) as store:
        for i in range(50):
            store.sessions.register(f"s{i}", ppid=1000 + i, notify=i % 10 == 0)
        statements: list[str] = []
        store._conn().set_trace_callback(statements.append)
        if call == "get_by_ppid":
            assert store.sessions.get_by_ppid(1003) is not None
        else:
            assert len(store.sessions.get_notify_sessions()) == 5
        store._conn().set_trace_callback(None)
        (select,) = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        plan = " | ".join(store.query_plan(select))
    assert index in plan, plan


def test_one_statement_per_read(tmp_path: Path, clock: FakeClock) -> None:
    with open_sqlite(tmp_path, clock) as store:
        store.sessions.register("s1")
        token = store.tokens.mint_token("s1", 1)
        statements: list[str] = []
        store._conn().set_trace_callback(statements.append)
        store.sessions.get("s1")
        store.tokens.get_session_by_token(token.token)
        store.tokens.validate_token(token.token, 1)
        store._conn().set_trace_callback(None)
    assert len(statements) == 3, statements


def test_random_bytes_are_refused_as_corrupt(tmp_path: Path, clock: FakeClock) -> None:
    tmp_path.mkdir(exist_ok=True)
    db = tmp_path / "ccr.db"
    content = bytes(range(256)) * 64
    db.write_bytes(content)
    with pytest.raises(StoreCorrupted):
        open_sqlite(tmp_path, clock)
    assert db.read_bytes() == content


def test_sqlite_path_overrides_the_data_dir(tmp_path: Path, clock: FakeClock) -> None:
    target = tmp_path / "elsewhere" / "registry.sqlite"
    store: Store = open_store(
        {"backend": "sqlite", "data_dir": str(tmp_path / "data"), "sqlite_path": str(target)},
        clock=clock,
    )
    with store:
        store.sessions.register("s1")
    assert target.exists()
    assert not (tmp_path / "data" / "ccr.db").exists()


def _driver_error(message: str, code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # what the driver sets; an extended code keeps its low byte
    error.sqlite_errorname = "TEST"
    return error


@pytest.mark.parametrize(
    ("message", "code", "kind", "says"),
    [
        # The message text says nothing the old text search looked for; the code does.
        ("cannot start a transaction", 517, StoreBusy, "busy"),  # SQLITE_BUSY_SNAPSHOT
        ("table is in use", 6, StoreBusy, "busy"),  # SQLITE_LOCKED
        ("vtable constructor failed", 267, StoreCorrupted, "not a sound"),  # SQLITE_CORRUPT_VTAB
        ("file is not a database", 26, StoreCorrupted, "not a sound"),  # SQLITE_NOTADB
        # A message that mentions "locked" is not busy when the code says otherwise.
        ("write to locked page failed", 778, RegistryError, "disk I/O"),  # SQLITE_IOERR_WRITE
        ("insertion failed", 13, RegistryError, "full"),  # SQLITE_FULL
        ("unable to open database file", 14, RegistryError, "too many open files"),
        ("attempt to write a readonly database", 8, RegistryError, "read-only"),
    ],
)
def test_driver_errors_are_translated_by_their_code(
    message: str, code: int, kind: type[RegistryError], says: str
) -> None:
    from registry.backends.sqlite_sql import translate

    translated = translate(_driver_error(message, code), Path("/x/registry.db"))
    assert type(translated) is kind
    assert says in str(translated) and "/x/registry.db" in str(translated)


def test_the_codec_round_trips_every_column(tmp_path: Path, clock: FakeClock) -> None:
    from registry import Transport
    from registry.backends.sqlite_sql import (
        SESSION_FIELDS,
        decode_checked,
        decode_session,
        encode_session,
    )

    with open_sqlite(tmp_path, clock) as store:
        session = store.sessions.register(
            "s'; DROP TABLE sessions; --",
            ppid=2**63 - 1,
            pid=1,
            start_time=0,
            cwd="/tmp/%_ \u00e9\U0001f600",
            label="x" * 4096,
            notify=True,
            transport=Transport(kind="tmux", details={"pane": "%1", "n": -(2**63), "f": 0.5}),
            state="stopped",
        )
    row = encode_session(session)
    assert len(row) == len(SESSION_FIELDS)
    assert decode_session(row) == session == decode_checked("session", row)
