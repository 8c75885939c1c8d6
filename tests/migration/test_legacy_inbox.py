"""Import of the legacy machine agent's inbox databases (SPEC 6); the inbox in verify and doctor.

The databases are built with plain sqlite3 from the SQL text in tests/data/legacy/inbox (its
README lists every row and what the import must make of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from registry import MigrationError, Store, open_store
from registry.migrate import diff_stores, import_json, import_status, stored_report
from registry.models import from_ms
from tests.conftest import LEGACY_SAMPLES, FakeClock

INBOX_SQL = LEGACY_SAMPLES / "inbox"
SCRIPT = Path(sys.executable).parent / "ccr-registry"
S1 = "0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01"
S2 = "7a1c3d9e-2b44-4f6a-8c0d-5e6f7a8b9c02"
S4 = "f00dbabe-0000-4000-8000-000000000004"
# The commands the import keeps, in the order it numbers them (see the fixtures' README).
IMPORTED = [
    "tg-channel-3",
    "tg-1001234567890-87",
    "tg-555-12",
    "tg-1001234567890-90",
    "tg-123456789-4411",
    "tg-123456789-4415",
]


@attrs.frozen
class Legacy:
    data: Path  # the legacy daemon's JSON files and inbox-desk.db
    agent: Path  # legacy_inbox_dir: inbox-laptop.db
    db: Path


def build_inbox(directory: Path, machine: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"inbox-{machine}.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript((INBOX_SQL / f"inbox-{machine}.sql").read_text(encoding="utf-8"))
    finally:
        conn.close()
    return path


@pytest.fixture
def legacy(tmp_path: Path) -> Legacy:
    data, agent = tmp_path / "data", tmp_path / "agent"
    data.mkdir()
    for name in ("claude-sessions.json", "claude-tokens.json"):
        shutil.copyfile(LEGACY_SAMPLES / "real" / name, data / name)
    build_inbox(agent, "laptop")
    build_inbox(data, "desk")
    return Legacy(data=data, agent=agent, db=tmp_path / "db" / "ccr.db")


def open_sqlite(db: Path, clock: FakeClock | None = None, **extra: Any) -> Store:
    config = {"backend": "sqlite", "data_dir": str(db.parent), "sqlite_path": str(db), **extra}
    return open_store(config, clock=clock or FakeClock())


def listing(*directories: Path) -> dict[str, str]:
    """Every file in the directories with the sha256 of its bytes."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for directory in directories
        for path in sorted(directory.iterdir())
    }


# --------------------------------------------------------------------------- the import


def test_counts_states_order_and_seq(legacy: Legacy) -> None:
    report = import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    assert (report.sessions_imported, report.tokens_imported, report.commands_imported) == (4, 3, 6)
    with open_sqlite(legacy.db) as store:
        commands = store.inbox.list_commands()
    assert [(c.seq, c.command_id) for c in commands] == list(enumerate(IMPORTED, 1))
    assert [c.state for c in commands] == ["done", "done", "ready", "ready", "ready", "ready"]
    assert {(c.attempts, c.lease_owner, c.lease_until, c.last_error) for c in commands} == {
        (0, None, None, None)
    }
    # The copy of tg-123456789-4415 kept is the first file's (laptop, read from inbox_dir).
    assert commands[-1].created_at == from_ms(1770600400000)
    assert stored_report(legacy.db) == report


def test_sessions_chats_and_timestamps(legacy: Legacy) -> None:
    import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    with open_sqlite(legacy.db) as store:
        by_id = {c.command_id: c for c in store.inbox.list_commands()}
    shown = {
        cid: (c.session_id, c.chat_id, c.created_at, c.updated_at, c.available_at)
        for cid, c in by_id.items()
    }
    assert shown == {
        # no received_at: created_at falls back to updated_at; a channel name is no chat id
        "tg-channel-3": (None, None, *[from_ms(1770600050000)] * 3),
        "tg-1001234567890-87": (
            S2,
            -1001234567890,
            from_ms(1770600100000),
            from_ms(1770600105000),
            from_ms(1770600100000),
        ),
        # a session the import does not hold gives a session-less command; no updated_at
        "tg-555-12": (None, 555, *[from_ms(1770600250000)] * 3),
        "tg-1001234567890-90": (S4, -1001234567890, *[from_ms(1770600300000)] * 3),
        "tg-123456789-4411": (S1, 123456789, *[from_ms(1770600300000)] * 3),
        "tg-123456789-4415": (S1, 123456789, *[from_ms(1770600400000)] * 3),
    }
    assert by_id["tg-channel-3"].payload == {
        "type": "text",
        "chatId": "@ccr_updates",
        "text": "ping é☕",
        "messageId": 3,
    }


def test_skipped_rows_are_reported_with_their_reasons(legacy: Legacy) -> None:
    report = import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    laptop, desk = (legacy.agent / "inbox-laptop.db").resolve(), legacy.data / "inbox-desk.db"
    desk = desk.resolve()
    skipped = sorted((s.kind, s.key, s.reason) for s in report.skipped)
    assert skipped == [
        ("command", "tg-1001234567890-91", f"{desk}: payload is not valid JSON"),
        (
            "command",
            "tg-123456789-4380",
            f"{laptop}: status 'failed' is neither 'received' nor 'done'",
        ),
        ("command", "tg-123456789-4409", f"{laptop}: payload is an array, not a JSON object"),
        (
            "command",
            "tg-123456789-4415",
            f"{desk}: the same command id was imported from {laptop}",
        ),
    ]


def test_the_next_command_enqueued_comes_after_the_imported_ones(legacy: Legacy) -> None:
    import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    with open_sqlite(legacy.db, FakeClock(datetime(2026, 2, 9, 6, tzinfo=UTC))) as store:
        command, created = store.inbox.enqueue("tg-new", {"text": "hello"}, session_id=S1)
        claimed = store.inbox.claim("daemon")
    assert (created, command.seq) == (True, len(IMPORTED) + 1)
    # The oldest ready command without a session heads the queue (4411 holds back S1's later).
    assert claimed is not None and claimed.command_id == "tg-555-12"


def test_the_sources_stay_byte_identical_with_nothing_beside_them(legacy: Legacy) -> None:
    # inbox-laptop.db is in WAL mode (its header says so): opened plainly read-only, SQLite
    # would leave a -wal and a -shm beside it.
    assert (legacy.agent / "inbox-laptop.db").read_bytes()[18:20] == b"\x02\x02"
    before = listing(legacy.data, legacy.agent)
    report = import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    after = listing(legacy.data, legacy.agent)
    assert after == before
    for path in (legacy.agent / "inbox-laptop.db", legacy.data / "inbox-desk.db"):
        path = path.resolve()
        raw = path.read_bytes()
        assert report.sources[str(path)] == {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw),
        }


def test_a_copy_that_cannot_be_imported_does_not_hide_a_later_one(legacy: Legacy) -> None:
    # inbox-attic.db comes before inbox-laptop.db; its copy of 4411 has a payload that is text.
    conn = sqlite3.connect(legacy.agent / "inbox-attic.db")
    conn.executescript(
        "CREATE TABLE inbox (command_id TEXT PRIMARY KEY, received_at INTEGER, payload TEXT, "
        "status TEXT, updated_at INTEGER);"
        "INSERT INTO inbox VALUES ('tg-123456789-4411', 1, '\"run the tests\"', 'received', 1);"
    )
    conn.close()
    report = import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    attic = (legacy.agent / "inbox-attic.db").resolve()
    assert report.commands_imported == len(IMPORTED)
    assert ("tg-123456789-4411", f"{attic}: payload is a string, not a JSON object") in [
        (s.key, s.reason) for s in report.skipped
    ]
    with open_sqlite(legacy.db) as store:
        command = store.inbox.get("tg-123456789-4411")
    assert command is not None and command.payload["text"] == "run the tests"


def test_a_directory_named_twice_is_read_once(legacy: Legacy) -> None:
    report = import_json(legacy.data, legacy.db, inbox_dir=legacy.data / ".." / "data")
    # desk's two valid rows; its third is skipped, and nothing is reported as a duplicate
    assert report.commands_imported == 2
    assert [s.key for s in report.skipped] == ["tg-1001234567890-91"]


def leave_changes_in_the_wal(database: Path) -> None:
    """A machine agent that dies after a commit, before anything folds its WAL in."""
    code = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "conn.execute(\"INSERT INTO inbox VALUES ('late', 1, '{}', 'received', 1)\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(database)], check=True, timeout=60)
    assert database.with_name(database.name + "-wal").stat().st_size > 0


def test_pending_changes_beside_a_source_are_refused(legacy: Legacy) -> None:
    # The committed row is only in the -wal, which an immutable read would not see.
    leave_changes_in_the_wal(legacy.agent / "inbox-laptop.db")
    with pytest.raises(MigrationError, match=r"inbox-laptop\.db-wal exists.*stop the agent"):
        import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    assert not legacy.db.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"machine: laptop\ncommands: []\n", "file is not a database"),
        (None, "no such table: inbox"),
    ],
    ids=["not-sqlite", "no-inbox-table"],
)
def test_an_unreadable_inbox_file_is_fatal(
    legacy: Legacy, content: bytes | None, reason: str
) -> None:
    path = legacy.agent / "inbox-broken.db"
    if content is None:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE queue (id TEXT)")
        conn.close()
    else:
        path.write_bytes(content)
    with pytest.raises(MigrationError) as raised:
        import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    assert str(path.resolve()) in str(raised.value)
    assert reason in str(raised.value)
    assert not legacy.db.exists()
    assert [p.name for p in legacy.db.parent.iterdir()] == [".ccr.db.migrate.lock"]


# --------------------------------------------------------------------------- first start


def test_an_inbox_file_alone_triggers_the_first_start_import(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    build_inbox(agent, "laptop")
    db = tmp_path / "data" / "ccr.db"
    with open_sqlite(db, legacy_inbox_dir=str(agent)) as store:
        commands = store.inbox.list_commands()
        assert store.sessions.list_sessions() == []
    # No session was imported, so every command is session-less.
    assert [(c.command_id, c.session_id) for c in commands] == [
        ("tg-channel-3", None),
        ("tg-1001234567890-87", None),
        ("tg-555-12", None),
        ("tg-123456789-4411", None),
        ("tg-123456789-4415", None),
    ]
    report = stored_report(db)
    assert report is not None
    assert (report.sessions_imported, report.commands_imported) == (0, 5)
    assert list(report.sources) == [str((agent / "inbox-laptop.db").resolve())]


def test_without_legacy_files_the_first_start_imports_nothing(tmp_path: Path) -> None:
    db = tmp_path / "data" / "ccr.db"
    with open_sqlite(db, legacy_inbox_dir=str(tmp_path / "empty")) as store:
        assert store.inbox.list_commands() == []
    assert stored_report(db) is None


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def env(tmp_path: Path, legacy: Legacy) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "TMUX", "NVIM"))}
    clean["HOME"] = str(tmp_path / "home")
    clean["CCR_DATA_DIR"] = str(legacy.data)
    config = legacy.data / "ccr-registry.toml"
    config.write_text(
        '[store]\nbackend = "sqlite"\ndata_dir = "."\nsqlite_path = "../db/ccr.db"\n'
        'legacy_inbox_dir = "../agent"\n'
    )
    return clean


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_migrate_prints_the_command_counts(legacy: Legacy, env: dict[str, str]) -> None:
    first = cli(env, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("imported 4 sessions, 3 tokens and 6 commands into ")
    assert "skipped 4" in first.stdout
    assert "command 'tg-123456789-4409': " in first.stdout
    again = cli(env, "migrate", "--json")
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert (document["status"], document["commands_imported"]) == ("unchanged", 6)
    # A change to an inbox file is a change to the legacy files.
    conn = sqlite3.connect(legacy.agent / "inbox-laptop.db")
    conn.execute("INSERT INTO inbox VALUES ('tg-late', 1770601000000, '{}', 'received', NULL)")
    conn.commit()
    conn.close()
    changed = cli(env, "migrate")
    assert changed.returncode == 1
    laptop = str((legacy.agent / "inbox-laptop.db").resolve())
    assert laptop in changed.stderr
    status = import_status(legacy.data, legacy.db, inbox_dir=legacy.agent)
    assert status.changed == [laptop]


def test_verify_shows_a_command_difference(
    tmp_path: Path, legacy: Legacy, env: dict[str, str]
) -> None:
    other_db = tmp_path / "other" / "ccr.db"
    import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    import_json(legacy.data, other_db, inbox_dir=legacy.agent)
    clock = FakeClock(datetime(2026, 2, 9, 6, tzinfo=UTC))
    with open_sqlite(legacy.db) as a, open_sqlite(other_db, clock) as b:
        assert diff_stores(a, b) == []
        b.inbox.requeue("tg-1001234567890-87")
        differences = diff_stores(a, b)
    now = clock.now
    assert [(d.kind, d.key, d.field, d.a, d.b) for d in differences] == [
        ("command", "tg-1001234567890-87", "state", "done", "ready"),
        ("command", "tg-1001234567890-87", "available_at", from_ms(1770600100000), now),
        ("command", "tg-1001234567890-87", "updated_at", from_ms(1770600105000), now),
    ]
    against = tmp_path / "other" / "ccr-registry.toml"
    against.write_text(f'[store]\nbackend = "sqlite"\ndata_dir = "{against.parent}"\n')
    result = cli(env, "verify", "--against", str(against))
    assert result.returncode == 1, result.stderr
    assert 'command tg-1001234567890-87: state differs: a "done", b "ready"' in result.stdout
    shown = json.loads(cli(env, "verify", "--against", str(against), "--json").stdout)
    assert [(d["kind"], d["key"], d["field"]) for d in shown["differences"]] == [
        ("command", "tg-1001234567890-87", name) for name in ("state", "available_at", "updated_at")
    ]


def test_a_command_on_one_side_only_is_a_difference(legacy: Legacy) -> None:
    import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    config = {"backend": "json", "data_dir": str(legacy.data)}
    with open_store(config, clock=FakeClock()) as js, open_sqlite(legacy.db) as sq:
        differences = diff_stores(js, sq)
    # The json side has no inbox: every imported command is on the sqlite side only.
    assert [(d.kind, d.key, d.field, d.a, d.b) for d in differences] == [
        ("command", cid, None, "missing", "present") for cid in sorted(IMPORTED)
    ]


def test_doctor_shows_the_commands(legacy: Legacy, env: dict[str, str]) -> None:
    import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    clock = FakeClock(datetime(2026, 2, 9, 6, tzinfo=UTC))
    with open_sqlite(legacy.db, clock) as store:
        claimed = store.inbox.claim("daemon")
        assert claimed is not None
        store.inbox.fail(claimed.command_id, "daemon", "pane gone", final=True)
    result = cli(env, "doctor", "--json")
    rows = {row["check"]: row for row in json.loads(result.stdout)}
    assert rows["commands"]["status"] == "warn"
    assert rows["commands"]["detail"].startswith("3 ready, 0 leased, 2 done, 1 dead; dead: ")
    assert f"{claimed.command_id!r} (pane gone)" in rows["commands"]["detail"]
    assert rows["legacy inbox"]["status"] == "info"
    assert str((legacy.agent / "inbox-laptop.db").resolve()) in rows["legacy inbox"]["detail"]
    assert rows["ccr-inbox.json"] == {
        "check": "ccr-inbox.json",
        "status": "info",
        "detail": "absent",
    }


def test_doctor_reports_damaged_command_rows_and_inbox_file(
    legacy: Legacy, env: dict[str, str]
) -> None:
    import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    conn = sqlite3.connect(legacy.db)
    conn.execute("UPDATE commands SET payload = '[1, 2' WHERE command_id = 'tg-555-12'")
    conn.commit()
    conn.close()
    (legacy.data / "ccr-inbox.json").write_text('{"format": 1, "next_seq": 1, "commands": [')
    result = cli(env, "doctor", "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    rows = {row["check"]: row for row in json.loads(result.stdout)}
    assert rows["commands"]["status"] == "fail"
    assert rows["commands"]["detail"].startswith("1 invalid: command 'tg-555-12': ")
    assert rows["ccr-inbox.json"]["status"] == "fail"
    assert "cannot be read" in rows["ccr-inbox.json"]["detail"]


def test_doctor_warns_of_an_inbox_file_the_import_would_refuse(
    legacy: Legacy, env: dict[str, str]
) -> None:
    leave_changes_in_the_wal(legacy.agent / "inbox-laptop.db")
    rows = {row["check"]: row for row in json.loads(cli(env, "doctor", "--json").stdout)}
    assert rows["legacy inbox"]["status"] == "warn"
    assert "inbox-laptop.db-wal not folded in" in rows["legacy inbox"]["detail"]


def test_reimport_reads_the_inbox_files_as_they_are_now(legacy: Legacy) -> None:
    from registry.migrate import reimport_json

    import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    conn = sqlite3.connect(legacy.agent / "inbox-laptop.db")
    conn.execute(
        "UPDATE inbox SET status = 'done', updated_at = 1770600500000 "
        "WHERE command_id = 'tg-123456789-4411'"
    )
    conn.commit()
    conn.close()
    report = reimport_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    assert report.commands_imported == len(IMPORTED)
    assert report.backup is not None and Path(report.backup).is_file()
    with open_sqlite(legacy.db) as store:
        command = store.inbox.get("tg-123456789-4411")
    assert command is not None
    assert (command.state, command.updated_at) == ("done", from_ms(1770600500000))


def test_a_report_stored_before_the_inbox_reads_as_no_commands(legacy: Legacy) -> None:
    report = import_json(legacy.data, legacy.db, inbox_dir=legacy.agent)
    old = {k: v for k, v in report.to_dict().items() if k != "commands_imported"}
    conn = sqlite3.connect(legacy.db)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'import_report'", (json.dumps(old),))
    conn.commit()
    conn.close()
    found = stored_report(legacy.db)
    assert found is not None and found.commands_imported == 0
    assert found.sessions_imported == 4
