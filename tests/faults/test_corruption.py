"""The corruption catalogue: each kind of damage refused with a clear error, the file untouched.

The json files' catalogue (empty, truncated, not UTF-8, wrong JSON type, a record that is a
string, a record without any timestamp) is in tests/backends/test_json_file.py and, for the
import, tests/migration/test_migrate.py; the contract suite refuses garbage in every backend's
data files. Here: what can happen to a database.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from registry import RegistryError, StoreCorrupted, open_store
from registry.backends.sqlite_sql import SCHEMA_VERSION
from tests.conftest import LEGACY_SAMPLES

SCRIPT = Path(sys.executable).parent / "ccr-registry"


def doctor(data_dir: Path) -> dict[str, dict[str, str]]:
    """``ccr-registry doctor --json`` on a damaged store: it must exit 1; its checks by name."""
    done = subprocess.run(
        [str(SCRIPT), "--data-dir", str(data_dir), "--json", "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    return {c["check"]: c for c in json.loads(done.stdout)}


def build(data_dir: Path, count: int = 300) -> Path:
    with open_store({"backend": "sqlite", "data_dir": str(data_dir)}) as store, store.atomic():
        for i in range(count):
            store.sessions.register(f"s{i}", ppid=i + 1, cwd="/x" * 20)
    return data_dir / "ccr.db"


def flipped(raw: bytes, position: int) -> bytes:
    damaged = bytearray(raw)
    damaged[position] ^= 0xFF
    return bytes(damaged)


def find_flip(raw: bytes, scratch: Path, *, readable: bool) -> bytes:
    """A copy of ``raw`` with one byte flipped such that every row still reads while
    integrity_check reports damage (``readable``), or such that reading the table raises."""
    for page in range(2, len(raw) // 4096):
        for offset in range(0, 4096, 97):
            candidate = flipped(raw, page * 4096 + offset)
            scratch.write_bytes(candidate)
            conn = sqlite3.connect(scratch)
            try:
                rows = conn.execute("SELECT * FROM sessions ORDER BY last_seen DESC").fetchall()
                raised = False
            except sqlite3.DatabaseError:
                rows, raised = [], True
            try:
                check = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError:
                check = ["error"]
            finally:
                conn.close()
            if readable and len(rows) == 300 and check != ["ok"]:
                return candidate
            if not readable and raised:
                return candidate
    raise AssertionError("no such byte found")


def test_flipped_byte_that_breaks_reads_is_store_corrupted(tmp_path: Path) -> None:
    db = build(tmp_path / "data")
    damaged = find_flip(db.read_bytes(), tmp_path / "scratch.db", readable=False)
    db.write_bytes(damaged)
    with (
        pytest.raises(StoreCorrupted, match=r"malformed|not a database"),
        open_store({"backend": "sqlite", "data_dir": str(tmp_path / "data")}) as store,
    ):
        store.sessions.list_sessions()
    assert db.read_bytes() == damaged


def test_flipped_byte_that_reads_survive_is_caught_by_doctor(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = build(data)
    damaged = find_flip(db.read_bytes(), tmp_path / "scratch.db", readable=True)
    db.write_bytes(damaged)
    assert doctor(data)["integrity"]["status"] == "fail"
    assert db.read_bytes() == damaged


def test_wal_without_its_database_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    wal = data / "ccr.db-wal"
    wal.write_bytes(b"\x37\x7f\x06\x82" + bytes(60))  # a WAL header whose database is gone
    for config in (
        {"backend": "sqlite", "data_dir": str(data)},
        {"backend": "sqlite", "data_dir": str(data), "migrate_from_json": False},
    ):
        with pytest.raises(StoreCorrupted, match="without its database"):
            open_store(config)
    shutil.copy(LEGACY_SAMPLES / "real" / "claude-sessions.json", data)
    with pytest.raises(StoreCorrupted, match="without its database"):
        open_store({"backend": "sqlite", "data_dir": str(data)})  # the first-start import too
    assert not (data / "ccr.db").exists()
    assert wal.read_bytes() == b"\x37\x7f\x06\x82" + bytes(60)


def test_newer_schema_is_refused_by_the_cli_with_exit_3(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = build(data, count=3)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    done = subprocess.run(
        [str(SCRIPT), "--data-dir", str(data), "sessions", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    newer, current = f"version {SCHEMA_VERSION + 1}", f"version {SCHEMA_VERSION}"
    assert newer in done.stderr and current in done.stderr
    assert db.read_bytes() == before
    with pytest.raises(RegistryError):
        open_store({"backend": "sqlite", "data_dir": str(data)})


def test_doctor_validates_every_stored_record(tmp_path: Path) -> None:
    """Reads trust the rows they get back; doctor is where a hand-edited row is caught."""
    data = tmp_path / "data"
    db = build(data, count=5)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE sessions SET transport_kind = 'vim', ppid = -4 WHERE session_id = 's3'")
    conn.commit()
    conn.close()
    records = doctor(data)["records"]
    assert records["status"] == "fail" and "'s3'" in records["detail"]
