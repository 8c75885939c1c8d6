"""Import of the legacy JSON files, export back, diff, and the first-start import."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from registry import MigrationError, Store, open_store
from registry.migrate import (
    diff_stores,
    export_json,
    import_json,
    stored_report,
)
from registry.models import token_hint
from tests.conftest import LEGACY_SAMPLES
from tests.helpers.processes import Worker, start_together

SESSIONS, TOKENS = "claude-sessions.json", "claude-tokens.json"


def open_sqlite(db: Path) -> Store:
    return open_store(
        {"backend": "sqlite", "data_dir": str(db.parent), "sqlite_path": str(db)},
        clock=lambda: datetime(2026, 2, 9, 6, tzinfo=UTC),
    )


def write_legacy(directory: Path, sessions: Any, tokens: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SESSIONS).write_text(json.dumps(sessions))
    (directory / TOKENS).write_text(json.dumps(tokens))


def session_record(sid: str, **extra: Any) -> dict[str, Any]:
    return {
        "session_id": sid,
        "created_at": 1770600000000,
        "updated_at": 1770600000000,
        "expires_at": 1770686400000,
        **extra,
    }


# --------------------------------------------------------------------------- the samples


def test_both_sample_shapes_import_to_the_same_store(tmp_path: Path) -> None:
    real = import_json(LEGACY_SAMPLES / "real", tmp_path / "real.db")
    plan = import_json(LEGACY_SAMPLES / "plan", tmp_path / "plan.db")
    assert (real.sessions_imported, real.tokens_imported, real.skipped) == (4, 3, [])
    assert (plan.sessions_imported, plan.tokens_imported, plan.skipped) == (4, 3, [])
    with open_sqlite(tmp_path / "real.db") as a, open_sqlite(tmp_path / "plan.db") as b:
        differences = diff_stores(a, b)
    # Field by field, the shapes agree except where the plan's shape has no such key: it has
    # no last_seen (so it is updated_at) and no token context.
    assert [(d.kind, d.key, d.field) for d in differences] == [
        ("session", "c3d2e1f0-aaaa-4bbb-8ccc-ddddeeee0003", "last_seen"),
        ("token", token_hint("q1W2e3R4t5Y6u7I8o9P0aA"), "context"),
    ]


def test_export_of_the_imported_real_sample_reproduces_it(tmp_path: Path) -> None:
    import_json(LEGACY_SAMPLES / "real", tmp_path / "ccr.db")
    export_json(tmp_path / "ccr.db", tmp_path / "out")
    for name in (SESSIONS, TOKENS):
        exported = (tmp_path / "out" / name).read_bytes()
        original = (LEGACY_SAMPLES / "real" / name).read_bytes()
        assert json.loads(exported) == json.loads(original)
        assert exported == original  # even byte for byte


def test_import_leaves_the_json_files_byte_identical(tmp_path: Path) -> None:
    shutil.copytree(LEGACY_SAMPLES / "real", tmp_path / "legacy")
    before = {p.name: p.read_bytes() for p in (tmp_path / "legacy").iterdir()}
    report = import_json(tmp_path / "legacy", tmp_path / "ccr.db")
    assert {p.name: p.read_bytes() for p in (tmp_path / "legacy").iterdir()} == before
    assert report.sources[SESSIONS]["bytes"] == len(before[SESSIONS])
    assert len(report.sources[TOKENS]["sha256"]) == 64


def test_report_is_stored_in_the_database(tmp_path: Path) -> None:
    report = import_json(LEGACY_SAMPLES / "plan", tmp_path / "ccr.db")
    assert stored_report(tmp_path / "ccr.db") == report


def test_import_refuses_an_existing_database(tmp_path: Path) -> None:
    import_json(LEGACY_SAMPLES / "real", tmp_path / "ccr.db")
    before = (tmp_path / "ccr.db").read_bytes()
    with pytest.raises(MigrationError, match="already exists"):
        import_json(LEGACY_SAMPLES / "plan", tmp_path / "ccr.db")
    assert (tmp_path / "ccr.db").read_bytes() == before


# --------------------------------------------------------------------------- quirky input


def test_quirky_records_are_skipped_with_a_reason(tmp_path: Path) -> None:
    sessions = {
        "good": session_record("good", ppid=5),
        "renamed": session_record("other-id"),
        "timeless": {"session_id": "timeless", "cwd": "/x"},
        "bad-ppid": session_record("bad-ppid", ppid=-4),
        "string": "not an object",
        "only-created": {"session_id": "only-created", "created_at": 1770600000000},
    }
    tokens = {
        "ok-token": {"session_id": "good", "chat_id": "-100", "created_at": 1770600000000},
        "orphan-token": {"session_id": "missing", "chat_id": "1", "created_at": 1770600000000},
        "word-chat": {"session_id": "good", "chat_id": "abc", "created_at": 1770600000000},
        "float-chat": {"session_id": "good", "chat_id": 1.5, "created_at": 1770600000000},
        "no-time": {"session_id": "good", "chat_id": "1"},
    }
    write_legacy(tmp_path / "legacy", sessions, tokens)
    report = import_json(tmp_path / "legacy", tmp_path / "ccr.db")
    assert (report.sessions_imported, report.tokens_imported) == (2, 1)
    reasons = {(s.kind, s.key): s.reason for s in report.skipped}
    assert "differs from its session_id" in reasons[("session", "renamed")]
    assert "none of created_at" in reasons[("session", "timeless")]
    assert "ppid" in reasons[("session", "bad-ppid")]
    assert "not an object" in reasons[("session", "string")]
    assert "missing" in reasons[("token", token_hint("orphan-token"))]
    assert "not a number" in reasons[("token", token_hint("word-chat"))]
    assert "chat_id" in reasons[("token", token_hint("float-chat"))]
    assert "neither created_at nor expires_at" in reasons[("token", token_hint("no-time"))]
    assert len(report.skipped) == 8
    stored = json.dumps(stored_report(tmp_path / "ccr.db").to_dict())  # type: ignore[union-attr]
    for raw in tokens:
        assert raw not in stored, "a raw token reached the report"
    with open_sqlite(tmp_path / "ccr.db") as store:
        only = store.sessions.get("only-created")
        assert only is not None
        # Missing timestamps come from the record's own, never from "now".
        assert only.updated_at == only.last_seen == only.created_at
        assert only.expires_at == only.created_at + store.session_ttl
        assert store.tokens.validate_token("ok-token", -100).created_at == only.created_at


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (SESSIONS, b""),
        (SESSIONS, b'{"a": {"session_id": "a", "created_at": 17'),
        (SESSIONS, b"\xff\xfe\x00{}"),
        (SESSIONS, b"[1, 2]"),
        (TOKENS, b"12"),
        (TOKENS, b'{"t": '),
    ],
    ids=["empty", "truncated", "not-utf8", "list", "number", "truncated-tokens"],
)
def test_unreadable_file_fails_and_creates_no_database(
    tmp_path: Path, name: str, content: bytes
) -> None:
    write_legacy(tmp_path / "legacy", {}, {})
    (tmp_path / "legacy" / name).write_bytes(content)
    with pytest.raises(MigrationError, match=name):
        import_json(tmp_path / "legacy", tmp_path / "db" / "ccr.db")
    assert not (tmp_path / "db" / "ccr.db").exists()
    assert [p.name for p in (tmp_path / "db").iterdir() if "import" in p.name] == []


def test_missing_legacy_files_fail(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MigrationError, match="neither"):
        import_json(tmp_path / "empty", tmp_path / "ccr.db")
    assert not (tmp_path / "ccr.db").exists()


# --------------------------------------------------------------------------- first start


def test_first_start_of_sqlite_imports_by_itself_once(tmp_path: Path) -> None:
    shutil.copytree(LEGACY_SAMPLES / "real", tmp_path / "data")
    config = {"backend": "sqlite", "data_dir": str(tmp_path / "data")}
    with open_store(config) as store:
        assert len(store.sessions.list_sessions()) == 4
        store.sessions.remove("f00dbabe-0000-4000-8000-000000000004")
    first = stored_report(tmp_path / "data" / "ccr.db")
    with open_store(config) as store:  # not imported again
        assert len(store.sessions.list_sessions()) == 3
    assert stored_report(tmp_path / "data" / "ccr.db") == first


def test_first_start_without_migration_starts_empty(tmp_path: Path) -> None:
    shutil.copytree(LEGACY_SAMPLES / "real", tmp_path / "data")
    config = {"backend": "sqlite", "data_dir": str(tmp_path / "data"), "migrate_from_json": False}
    with open_store(config) as store:
        assert store.sessions.list_sessions() == []


def test_first_start_with_a_broken_legacy_file_fails_cleanly(tmp_path: Path) -> None:
    write_legacy(tmp_path / "data", {}, {})
    (tmp_path / "data" / SESSIONS).write_text("{")
    with pytest.raises(MigrationError, match=SESSIONS):
        open_store({"backend": "sqlite", "data_dir": str(tmp_path / "data")})
    assert not (tmp_path / "data" / "ccr.db").exists()


def big_legacy(directory: Path, count: int) -> None:
    sessions = {f"s{i:05d}": session_record(f"s{i:05d}", ppid=1 + i) for i in range(count)}
    tokens = {
        f"tok{i}": {"session_id": f"s{i:05d}", "chat_id": str(i), "created_at": 1770600000000}
        for i in range(0, count, 2)
    }
    write_legacy(directory, sessions, tokens)


def test_four_processes_starting_at_once_import_exactly_once(tmp_path: Path) -> None:
    big_legacy(tmp_path / "data", 2000)
    config = {"backend": "sqlite", "data_dir": str(tmp_path / "data"), "lock_timeout_s": 60}
    workers = [Worker("first-start", config, str(n), 0) for n in range(4)]
    start_together(workers)
    lines = []
    for worker in workers:
        out, err = worker.proc.communicate(timeout=120)
        assert worker.proc.returncode == 0, err
        lines.append(next(line for line in out.splitlines() if line.startswith("counts")))
    # Every process saw the complete store, and all of them the same import.
    assert len(set(lines)) == 1, lines
    assert lines[0].startswith("counts 2000 1000 2")


def test_import_killed_at_random_moments_never_blocks_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    big_legacy(data, 20_000)
    config = {"backend": "sqlite", "data_dir": str(data), "lock_timeout_s": 60}
    rng = random.Random(7)
    interrupted = 0
    for _round in range(5):
        worker = Worker("first-start", config, "0", 0)
        start_together([worker])
        time.sleep(rng.uniform(0.02, 0.8))  # jitter: the kill lands somewhere in the import
        worker.kill()
        if (data / "ccr.db").exists():
            # The import had finished (and the killed worker had the database open): remove the
            # database with its WAL and shared memory, as a user would, to import again.
            for name in ("ccr.db", "ccr.db-wal", "ccr.db-shm"):
                (data / name).unlink(missing_ok=True)
        else:
            interrupted += 1
    assert interrupted, "no kill landed before the import finished"
    with open_store(config) as store:
        assert len(store.sessions.list_sessions()) == 20_000
        assert len(store.tokens.tokens_for_session("s00000")) == 1
    with sqlite3.connect(data / "ccr.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM tokens").fetchone()[0] == 10_000
    conn.close()
    leftovers = [p.name for p in data.iterdir() if ".import-" in p.name]
    assert leftovers == []


# --------------------------------------------------------------------------- json snapshot


def test_the_json_snapshot_is_what_the_reads_show_in_file_order(tmp_path: Path) -> None:
    from registry.backends.json_file import JsonStore

    write_legacy(
        tmp_path,
        {
            "sessions": {
                "b": session_record("b", label="first in the file"),
                "a": session_record("a"),
            }
        },
        {
            key: {
                "token": key,
                "session_id": sid,
                "chat_id": 1,
                "created_at": 1770600000000,
                "expires_at": 1770686400000,
            }
            for key, sid in (("t-orphan", "gone"), ("t-b", "b"))
        },
    )
    with open_store({"backend": "json", "data_dir": str(tmp_path)}) as store:
        assert isinstance(store, JsonStore)
        sessions, tokens = store.snapshot()
        assert [s.session_id for s in sessions] == ["b", "a"]  # as the file keeps them
        assert sessions == [store.sessions.get("b"), store.sessions.get("a")]
        # The orphan token is hidden from the snapshot as from every read.
        assert tokens == store.tokens.tokens_for_session("b")
        assert [t.token for t in tokens] == ["t-b"]


def test_diff_reads_a_json_store_whole_not_once_per_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.backends.json_file import JsonStore

    json_dir = tmp_path / "json"
    with open_store({"backend": "json", "data_dir": str(json_dir)}) as store, store.atomic():
        for i in range(30):
            store.sessions.register(f"s{i:02d}", ppid=1000 + i)
            store.tokens.store_token(f"token-{i:02d}", f"s{i:02d}", i)
    import_json(json_dir, tmp_path / "ccr.db")
    snapshots = []
    original = JsonStore.snapshot

    def counted(self: JsonStore) -> Any:
        snapshots.append(self)
        return original(self)

    def per_session(*_args: object, **_kwargs: object) -> Any:
        raise AssertionError("diff_stores listed a json store's tokens session by session")

    monkeypatch.setattr(JsonStore, "snapshot", counted)
    monkeypatch.setattr(JsonStore, "tokens_for_session", per_session, raising=False)
    with (
        open_store({"backend": "json", "data_dir": str(json_dir)}) as json_store,
        open_sqlite(tmp_path / "ccr.db") as sqlite_store,
    ):
        assert diff_stores(json_store, sqlite_store) == []
        json_store.sessions.update("s07", label="changed")
        differences = diff_stores(json_store, sqlite_store)
    assert [(d.kind, d.key, d.field) for d in differences] == [
        ("session", "s07", "label"),
        ("session", "s07", "updated_at"),
    ]
    assert len(snapshots) == 2
