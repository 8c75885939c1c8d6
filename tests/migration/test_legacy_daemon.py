"""The import beside the legacy daemon: its real records, the json lock, and re-imports."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry import MigrationError, Store, open_store
from registry.backends.json_file import JOURNAL_FILE, LOCK_FILE
from registry.migrate import (
    export_json,
    import_json,
    import_status,
    reimport_json,
    stored_report,
)
from registry.models import token_hint
from tests.backends.test_json_file import CRASHER
from tests.conftest import LEGACY_SAMPLES

ROOT = Path(__file__).resolve().parents[2]
SESSIONS, TOKENS = "claude-sessions.json", "claude-tokens.json"
DAEMON = LEGACY_SAMPLES / "daemon"
UPSERTED = "5d0c1a7e-3b2f-4c1d-9e8f-0a1b2c3d4e01"
SUMMARY_TOKEN = "Lg7Qm2Xr9Tz4Wk1Np6Vb3A"


def open_sqlite(db: Path) -> Store:
    return open_store(
        {"backend": "sqlite", "data_dir": str(db.parent), "sqlite_path": str(db)},
        clock=lambda: datetime(2026, 2, 9, 6, tzinfo=UTC),
    )


def legacy_copy(tmp_path: Path) -> Path:
    shutil.copytree(DAEMON, tmp_path / "legacy", ignore=shutil.ignore_patterns("*.md"))
    return tmp_path / "legacy"


# --------------------------------------------------------------------------- what is imported


def test_the_legacy_daemons_records_import_and_the_rest_is_reported(tmp_path: Path) -> None:
    report = import_json(legacy_copy(tmp_path), tmp_path / "ccr.db")
    assert (report.sessions_imported, report.tokens_imported) == (3, 2)
    reasons = {(s.kind, s.key): s.reason for s in report.skipped}
    assert reasons == {
        ("session", "8a3f4d0b-6e5c-4f4a-8b1c-3d4e5f6a7b04"): (
            "record has none of created_at, updated_at, last_seen"
        ),
        ("session", "9b4a5e1c-7f6d-4a5b-9c2d-4e5f6a7b8c05"): (
            "cwd holds text that is not valid Unicode"
        ),
        ("token", token_hint("Or9Ph4An7To2Ke5Nx8Qw1C")): (
            "its session '0c5b6f2d-8a7e-4b6c-8d3e-5f6a7b8c9d06' is missing"
        ),
        ("token", token_hint("Bd2Ch5At8Id1Xy4Zq7Wv0D")): "chat_id '@somebody' is not a number",
    }
    with open_sqlite(tmp_path / "ccr.db") as store:
        # The Stop handler's untruncated message is imported, not skipped.
        token = store.tokens.validate_token(SUMMARY_TOKEN, 123456789)
        assert len(token.context["summary"]) == 30_000
        assert token.session_id == UPSERTED


def test_a_record_beyond_every_api_limit_is_imported_and_exported_as_it_is(
    tmp_path: Path,
) -> None:
    context = {"summary": "ж" * (1536 * 1024)}  # 3 MiB of UTF-8, over the API's 1 MiB
    sessions = {
        "s": {"session_id": "s", "label": "ł" * 9000, "created_at": 1770600000000},
    }
    tokens = {
        "t": {
            "token": "t",
            "session_id": "s",
            "chat_id": "5",
            "created_at": 1770600000000,
            "expires_at": 1770700000000,
            "scopes": ["send_cmd"],
            "context": context,
        }
    }
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / SESSIONS).write_text(json.dumps(sessions))
    (tmp_path / "legacy" / TOKENS).write_text(json.dumps(tokens))
    report = import_json(tmp_path / "legacy", tmp_path / "ccr.db")
    assert (report.sessions_imported, report.tokens_imported, report.skipped) == (1, 1, [])
    export_json(tmp_path / "ccr.db", tmp_path / "out")  # export never fails on what is stored
    exported = json.loads((tmp_path / "out" / TOKENS).read_text(encoding="utf-8"))
    assert exported["t"]["context"] == context
    exported_sessions = json.loads((tmp_path / "out" / SESSIONS).read_text(encoding="utf-8"))
    assert exported_sessions["s"]["label"] == "ł" * 9000


def test_text_that_is_not_valid_unicode_is_skipped_and_reported(tmp_path: Path) -> None:
    """The importer stopped at such a record instead of skipping it."""
    base = {"created_at": 1770600000000}
    text = {
        SESSIONS: json.dumps(
            {
                "good": {"session_id": "good", **base},
                "bad\udcffkey": {**base},
                "bad-label": {"session_id": "bad-label", "label": "\ud800", **base},
                "bad-detail": {
                    "session_id": "bad-detail",
                    "transport": {"kind": "tmux", "pane_id": "%1\udcff"},
                    **base,
                },
            }
        ),
        TOKENS: json.dumps(
            {
                "ok": {"session_id": "good", "chat_id": "1", **base},
                "bad\udcfftoken": {"session_id": "good", "chat_id": "1", **base},
                "bad-context": {
                    "session_id": "good",
                    "chat_id": "1",
                    "context": {"a": [{"\udcff": 1}]},
                    **base,
                },
                "bad-scope": {"session_id": "good", "chat_id": "1", "scopes": ["\udc80"], **base},
            }
        ),
    }
    (tmp_path / "legacy").mkdir()
    for name, content in text.items():
        (tmp_path / "legacy" / name).write_text(content, encoding="ascii")
    report = import_json(tmp_path / "legacy", tmp_path / "ccr.db")
    assert (report.sessions_imported, report.tokens_imported) == (1, 1)
    assert len(report.skipped) == 6
    assert all("not valid Unicode" in s.reason for s in report.skipped), report.skipped
    assert "bad\\udcffkey" in {s.key for s in report.skipped}  # shown escaped
    stored = stored_report(tmp_path / "ccr.db")
    assert stored is not None and len(stored.skipped) == 6
    export_json(tmp_path / "ccr.db", tmp_path / "out")
    assert json.loads((tmp_path / "out" / TOKENS).read_text(encoding="utf-8")).keys() == {"ok"}


# --------------------------------------------------------------------------- the json lock

HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from registry import open_store

    store = open_store({"backend": "json", "data_dir": sys.argv[1]})
    with store.atomic():
        store.sessions.register("written-while-locked")
        print("held", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


def test_the_import_reads_the_files_under_the_json_stores_lock(tmp_path: Path) -> None:
    legacy = legacy_copy(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(legacy)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MigrationError, match="lock is still held"):
            import_json(legacy, tmp_path / "ccr.db", lock_timeout_s=0.3)
        assert not (tmp_path / "ccr.db").exists()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.communicate(timeout=30)
    report = import_json(legacy, tmp_path / "ccr.db", lock_timeout_s=5)
    assert report.sessions_imported == 4  # the holder's unit, whole
    assert (legacy / LOCK_FILE).exists()


def test_the_import_finishes_an_interrupted_json_commit_first(tmp_path: Path) -> None:
    data = tmp_path / "legacy"
    with open_store({"backend": "json", "data_dir": str(data)}) as store:
        store.sessions.register("old")
        store.tokens.store_token("old-token", "old", 1)
    result = subprocess.run(
        [sys.executable, "-c", CRASHER, str(data), "replace", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 9, result.stderr
    assert (data / JOURNAL_FILE).exists()  # killed between the two renames
    report = import_json(data, tmp_path / "ccr.db")
    assert (report.sessions_imported, report.tokens_imported, report.skipped) == (1, 1, [])
    with open_sqlite(tmp_path / "ccr.db") as store:
        assert [s.session_id for s in store.sessions.list_sessions()] == ["new"]


# --------------------------------------------------------------------------- after an import


def test_status_after_a_first_start_import(tmp_path: Path) -> None:
    legacy = legacy_copy(tmp_path)
    with open_store({"backend": "sqlite", "data_dir": str(legacy)}):
        pass  # the first start imported
    status = import_status(legacy, legacy / "ccr.db")
    assert status.unchanged and status.changed == []
    assert status.report is not None and status.report.sessions_imported == 3
    assert status.current == status.report.sources
    with open_store({"backend": "json", "data_dir": str(legacy)}) as store:
        store.sessions.register("later")
    status = import_status(legacy, legacy / "ccr.db")
    assert not status.unchanged and status.changed == [SESSIONS]


def test_status_of_a_database_not_built_by_an_import(tmp_path: Path) -> None:
    legacy = legacy_copy(tmp_path)
    with open_store(
        {"backend": "sqlite", "data_dir": str(legacy), "migrate_from_json": False}
    ) as store:
        store.sessions.register("x")
    status = import_status(legacy, legacy / "ccr.db")
    assert status.report is None and not status.unchanged


def test_reimport_keeps_the_old_database_as_a_backup(tmp_path: Path) -> None:
    legacy = legacy_copy(tmp_path)
    db = tmp_path / "db" / "ccr.db"
    first = import_json(legacy, db)
    with open_sqlite(db) as store:
        store.sessions.register("only-in-the-old-database")
    with open_store({"backend": "json", "data_dir": str(legacy)}) as store:
        store.sessions.register("new-in-json")
    progress: list[tuple[int, int]] = []
    report = reimport_json(legacy, db, progress=lambda done, total: progress.append((done, total)))
    assert report.backup is not None and report.sessions_imported == first.sessions_imported + 1
    assert progress and progress[-1][0] == progress[-1][1]
    backup = Path(report.backup)
    assert backup.parent == db.parent and backup.name.startswith("ccr.db.backup-")
    assert backup.stat().st_mode & 0o777 == 0o600
    with open_sqlite(db) as store:
        ids = {s.session_id for s in store.sessions.list_sessions()}
        assert "new-in-json" in ids and "only-in-the-old-database" not in ids
    with open_sqlite(backup) as store:
        assert store.sessions.get("only-in-the-old-database") is not None
    assert stored_report(db) == report
    assert import_status(legacy, db).unchanged
    assert sorted(p.name for p in db.parent.iterdir() if not p.name.endswith(".lock")) == sorted(
        ["ccr.db", backup.name]
    )


def test_reimport_refuses_a_database_in_use(tmp_path: Path) -> None:
    legacy = legacy_copy(tmp_path)
    db = tmp_path / "ccr.db"
    import_json(legacy, db)
    user = sqlite3.connect(db)  # another process's connection, as far as SQLite can tell
    try:
        user.execute("PRAGMA journal_mode=WAL")
        user.execute("SELECT count(*) FROM sessions").fetchone()
        before = db.read_bytes()
        with pytest.raises(MigrationError, match="in use"):
            reimport_json(legacy, db)
        assert db.read_bytes() == before
        assert [
            p.name for p in tmp_path.iterdir() if "backup" in p.name or "import-" in p.name
        ] == []
    finally:
        user.close()


CRASHING_REIMPORT = textwrap.dedent(
    """
    import os, sys
    from registry.migrate import reimport_json

    legacy, db, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real = os.replace
    calls = 0

    def dying(*args, **kwargs):
        global calls
        calls += 1
        if calls == nth:
            os._exit(9)  # killed here, as by SIGKILL
        return real(*args, **kwargs)

    os.replace = dying
    reimport_json(legacy, db)
    print("completed")
    """
)


@pytest.mark.parametrize("nth", [1, 2])
def test_a_reimport_killed_midway_leaves_the_old_or_the_new_database_and_a_backup(
    tmp_path: Path, nth: int
) -> None:
    legacy = legacy_copy(tmp_path)
    db = tmp_path / "db" / "ccr.db"
    import_json(legacy, db)
    with open_sqlite(db) as store:
        store.sessions.register("old-only")
    with open_store({"backend": "json", "data_dir": str(legacy)}) as store:
        store.sessions.register("new-only")
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_REIMPORT, str(legacy), str(db), str(nth)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 9, result.stderr
    with open_sqlite(db) as store:
        ids = {s.session_id for s in store.sessions.list_sessions()}
    # nth 1: killed at the commit point (the old database stays); 2: just after it.
    assert ("old-only" in ids) == (nth == 1) and ("new-only" in ids) == (nth == 2)
    report = reimport_json(legacy, db)  # a clean retry finishes or undoes the interrupted one
    backups = sorted(p.name for p in db.parent.iterdir() if ".backup-" in p.name)
    assert len(backups) == (2 if nth == 2 else 1)
    assert [p.name for p in db.parent.iterdir() if p.name.startswith(".ccr.db.")] == [
        ".ccr.db.migrate.lock"
    ]
    with open_sqlite(Path(report.backup or "")) as store:
        assert store.sessions.get("old-only" if nth == 1 else "new-only") is not None


def test_two_reimports_at_once_both_complete_one_after_the_other(tmp_path: Path) -> None:
    legacy = legacy_copy(tmp_path)
    db = tmp_path / "ccr.db"
    import_json(legacy, db)
    script = "import sys; from registry.migrate import reimport_json; reimport_json(*sys.argv[1:])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(legacy), str(db)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len([p for p in tmp_path.iterdir() if ".backup-" in p.name]) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 3
    conn.close()
    assert not [p for p in tmp_path.iterdir() if ".import-" in p.name or ".replaced-" in p.name]


def test_import_progress_reaches_its_total(tmp_path: Path) -> None:
    sessions = {f"s{i}": {"session_id": f"s{i}", "created_at": 1770600000000} for i in range(2500)}
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / SESSIONS).write_text(json.dumps(sessions))
    calls: list[tuple[int, int]] = []
    import_json(
        tmp_path / "legacy", tmp_path / "ccr.db", progress=lambda d, t: calls.append((d, t))
    )
    assert calls[:2] == [(1000, 2500), (2000, 2500)]
    assert calls[-1] == (2500, 2500)
    exported: list[tuple[int, int]] = []
    export_json(
        tmp_path / "ccr.db", tmp_path / "out", progress=lambda d, t: exported.append((d, t))
    )
    assert exported == [(2500, 5000), (5000, 5000)]
    assert os.stat(tmp_path / "out" / SESSIONS).st_mode & 0o777 == 0o600


def test_an_export_into_the_legacy_daemons_files_keeps_what_it_cannot_show(
    tmp_path: Path,
) -> None:
    """Rollback writes where the legacy daemon reads: its files, with their foreign records."""
    legacy = legacy_copy(tmp_path)
    original = {name: json.loads((legacy / name).read_bytes()) for name in (SESSIONS, TOKENS)}
    import_json(legacy, tmp_path / "ccr.db")
    with open_sqlite(tmp_path / "ccr.db") as store:
        store.sessions.register("registered-in-phase-4")
    export_json(tmp_path / "ccr.db", legacy)
    after = {name: json.loads((legacy / name).read_bytes()) for name in (SESSIONS, TOKENS)}
    # Every record of the legacy daemon is there with its value: the ones the import could
    # read come back from the database unchanged, the others were kept.
    for name, records in original.items():
        for key, value in records.items():
            assert after[name][key] == value, (name, key)
    assert "registered-in-phase-4" in after[SESSIONS]
