"""The command inbox across the cutover steps: ``ccr-inbox.json`` in the import, ``export --inbox``.

The phase 2 -> 3 step (``migrate --reimport``) rebuilds ``ccr.db`` from the JSON side, whose
``ccr-inbox.json`` is then the live inbox: its commands come over exactly. The rollback to a
json primary writes ``ccr-inbox.json`` from the database (``export --inbox``), so that the json
side holds no stale ``ready`` copy of a command the database finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from registry import MigrationError, Store, open_store
from registry.backends.json_file import INBOX_FILE, SESSIONS_FILE
from registry.migrate import (
    SkippedRecord,
    diff_stores,
    export_json,
    import_json,
    reimport_json,
    stored_report,
)
from tests.conftest import LEGACY_SAMPLES, FakeClock
from tests.migration.test_legacy_inbox import IMPORTED, build_inbox

SCRIPT = Path(sys.executable).parent / "ccr-registry"
# What fill() leaves: seq 6 (c-top) was given and cleaned up, so the next seq is 7.
FILLED_NEXT_SEQ = 7


@attrs.frozen
class Dirs:
    data: Path  # LEGACY: the JSON files (and ccr-inbox.json)
    db: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("claude-sessions.json", "claude-tokens.json"):
        shutil.copyfile(LEGACY_SAMPLES / "real" / name, data / name)
    return Dirs(data=data, db=tmp_path / "db" / "ccr.db")


def open_json(data: Path, clock: FakeClock, **extra: Any) -> Store:
    return open_store({"backend": "json", "data_dir": str(data), **extra}, clock=clock)


def open_sqlite(db: Path, clock: FakeClock, **extra: Any) -> Store:
    config = {"backend": "sqlite", "data_dir": str(db.parent), "sqlite_path": str(db), **extra}
    return open_store(config, clock=clock)


def open_phase2(dirs: Dirs, clock: FakeClock) -> Store:
    config = {
        "backend": "dual",
        "data_dir": str(dirs.data),
        "sqlite_path": str(dirs.db),
        "dual": {"primary": "json", "secondary": "sqlite", "strict": True},
        "inbox_retention_hours": 1,
    }
    return open_store(config, clock=clock)


def fill(store: Store, clock: FakeClock) -> None:
    """Commands in every state, with attempts, a lease, an error, a delay, and a seq gap at the
    top: c-top (seq 6) finished first and was cleaned up, so the next seq is 7, not 6.

    The store must have ``inbox_retention_hours = 1``.
    """
    store.sessions.register("s1")
    store.sessions.register("s2")
    store.sessions.register("s3")
    later = timedelta(minutes=10)
    payload = {"text": "ls", "n": [1, 2]}
    store.inbox.enqueue("c-done", payload, session_id="s1", chat_id=42, delay=later)
    store.inbox.enqueue("c-dead", {"text": "rm"}, session_id="s1", delay=later)
    store.inbox.enqueue("c-retry", {"text": "make"}, session_id="s2", delay=later)
    store.inbox.enqueue("c-leased", {"text": "é☕"}, chat_id=-100123, delay=later)
    store.inbox.enqueue("c-ready", {"text": "pwd"}, session_id="s2", delay=later)
    store.inbox.enqueue("c-top", {"text": "top"}, session_id="s3")
    claimed = store.inbox.claim("daemon")
    assert claimed is not None and claimed.command_id == "c-top"
    store.inbox.complete("c-top", "daemon")
    clock.advance(hours=2)
    assert store.inbox.cleanup_inbox() == ["c-top"]
    for command_id in ("c-done", "c-dead", "c-retry", "c-leased"):
        claimed = store.inbox.claim("daemon")
        assert claimed is not None and claimed.command_id == command_id
        if command_id == "c-done":
            store.inbox.complete("c-done", "daemon")
        elif command_id == "c-dead":
            store.inbox.fail("c-dead", "daemon", "pane gone", final=True)
        elif command_id == "c-retry":
            store.inbox.fail("c-retry", "daemon", "busy")  # ready again, after a backoff
    states = {c.command_id: (c.seq, c.state) for c in store.inbox.list_commands()}
    assert states == {
        "c-done": (1, "done"),
        "c-dead": (2, "dead"),
        "c-retry": (3, "ready"),
        "c-leased": (4, "leased"),
        "c-ready": (5, "ready"),
    }


def fingerprint(*directories: Path) -> dict[str, tuple[str, int]]:
    """Every file in the directories: the sha256 of its bytes and its inode."""
    return {
        str(path): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_ino)
        for directory in directories
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def inbox_document(directory: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((directory / INBOX_FILE).read_bytes())
    return result


# --------------------------------------------------------------------------- the import


def test_reimport_keeps_the_json_sides_commands_field_for_field(
    dirs: Dirs, clock: FakeClock
) -> None:
    import_json(dirs.data, dirs.db)  # phase 1 -> 2
    with open_phase2(dirs, clock) as phase2:
        fill(phase2, clock)
    with open_json(dirs.data, clock) as js:
        live = js.inbox.list_commands()
    before = fingerprint(dirs.data)

    report = reimport_json(dirs.data, dirs.db)  # phase 2 -> 3

    assert fingerprint(dirs.data) == before  # the sources are only read
    assert report.commands_imported == len(live) == 5
    raw = (dirs.data / INBOX_FILE).read_bytes()
    assert report.sources[INBOX_FILE] == {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "bytes": len(raw),
    }
    assert stored_report(dirs.db) == report
    with open_json(dirs.data, clock) as js, open_sqlite(dirs.db, clock) as sq:
        assert sq.inbox.list_commands() == live  # every field, seq included
        assert diff_stores(js, sq) == []
        # The json inbox gave seq 6 (cleaned up since): the database never gives it again.
        command, _ = sq.inbox.enqueue("c-new", {})
        assert command.seq == FILLED_NEXT_SEQ


def test_a_legacy_command_with_an_id_of_ccr_inbox_json_is_skipped(
    dirs: Dirs, tmp_path: Path, clock: FakeClock
) -> None:
    agent = tmp_path / "agent"
    laptop = build_inbox(agent, "laptop")  # holds tg-555-12
    build_inbox(dirs.data, "desk")
    with open_json(dirs.data, clock) as js:
        js.inbox.enqueue("j-1", {"text": "first"})
        js.inbox.enqueue("tg-555-12", {"text": "the live copy"}, chat_id=555)
        live = js.inbox.list_commands()
    before = fingerprint(dirs.data, agent)

    report = import_json(dirs.data, dirs.db, inbox_dir=agent)

    assert fingerprint(dirs.data, agent) == before
    skipped = [s for s in report.skipped if s.key == "tg-555-12"]
    assert skipped == [
        SkippedRecord(
            kind="command",
            key="tg-555-12",
            reason=f"{laptop.resolve()}: the same command id is in "
            f"{dirs.data / INBOX_FILE}, whose copy is kept",
        )
    ]
    legacy_ids = [cid for cid in IMPORTED if cid != "tg-555-12"]
    assert report.commands_imported == len(live) + len(legacy_ids)
    with open_sqlite(dirs.db, clock) as sq:
        commands = sq.inbox.list_commands()
    assert commands[: len(live)] == live
    # The legacy commands come after ccr-inbox.json's seqs (1 and 2), in the legacy order.
    assert [(c.seq, c.command_id) for c in commands[len(live) :]] == list(enumerate(legacy_ids, 3))


DAMAGED = {
    "truncated": b'{"format": 1, "next_seq": 1, "commands": [',
    "one seq twice": None,  # built in the test from a real file
    "a newer format": b'{"format": 2, "next_seq": 1, "commands": {}}\n',
}


def damaged_inbox(data: Path, kind: str, clock: FakeClock) -> bytes:
    raw = DAMAGED[kind]
    if raw is None:
        with open_json(data, clock) as js:
            js.inbox.enqueue("a", {})
            js.inbox.enqueue("b", {})
        document = inbox_document(data)
        document["commands"]["b"]["seq"] = document["commands"]["a"]["seq"]
        raw = json.dumps(document).encode()
    (data / INBOX_FILE).write_bytes(raw)
    return raw


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_ccr_inbox_json_stops_the_import(dirs: Dirs, clock: FakeClock, kind: str) -> None:
    raw = damaged_inbox(dirs.data, kind, clock)
    before = fingerprint(dirs.data)
    with pytest.raises(MigrationError, match=INBOX_FILE) as caught:
        import_json(dirs.data, dirs.db)
    assert str(dirs.data / INBOX_FILE) in str(caught.value)
    assert "nothing imported" in str(caught.value)
    # Nothing built, not even half a database; the first start refuses it the same way.
    assert not dirs.db.exists()
    assert [p.name for p in dirs.db.parent.iterdir() if not p.name.endswith(".lock")] == []
    first_start = {"backend": "sqlite", "data_dir": str(dirs.data), "sqlite_path": str(dirs.db)}
    with pytest.raises(MigrationError, match=INBOX_FILE):
        open_store(first_start, clock=clock)
    assert not dirs.db.exists()
    assert fingerprint(dirs.data) == before
    assert (dirs.data / INBOX_FILE).read_bytes() == raw


def test_a_damaged_ccr_inbox_json_stops_the_reimport(dirs: Dirs, clock: FakeClock) -> None:
    import_json(dirs.data, dirs.db)
    database = dirs.db.read_bytes()
    damaged_inbox(dirs.data, "truncated", clock)
    with pytest.raises(MigrationError, match=INBOX_FILE):
        reimport_json(dirs.data, dirs.db)
    assert dirs.db.read_bytes() == database
    assert sorted(p.name for p in dirs.db.parent.iterdir() if not p.name.endswith(".lock")) == [
        "ccr.db"
    ]


# --------------------------------------------------------------------------- the export


def stale_json_inbox(out: Path, clock: FakeClock) -> None:
    """What a rollback finds: the json side's copies from when it stopped being written."""
    with open_json(out, clock) as js:
        js.sessions.register("s1")
        js.inbox.enqueue("c-done", {"text": "ls", "n": [1, 2]}, session_id="s1", chat_id=42)
        js.inbox.enqueue("stale-only", {"text": "old"})
    assert inbox_document(out)["commands"]["c-done"]["state"] == "ready"


def test_export_inbox_writes_the_databases_commands(
    dirs: Dirs, tmp_path: Path, clock: FakeClock
) -> None:
    out = tmp_path / "out"
    with open_sqlite(dirs.db, clock, inbox_retention_hours=1) as sq:
        fill(sq, clock)
    stale_json_inbox(out, clock)

    export_json(dirs.db, out, inbox=True)

    assert inbox_document(out)["next_seq"] == FILLED_NEXT_SEQ
    with open_json(out, clock) as js, open_sqlite(dirs.db, clock) as sq:
        assert js.inbox.list_commands() == sq.inbox.list_commands()
        assert diff_stores(js, sq) == []  # commands (every field), sessions and tokens
        # The json store, primary again, numbers on from the database's counter.
        command, _ = js.inbox.enqueue("c-new", {})
        assert command.seq == FILLED_NEXT_SEQ


def test_export_without_inbox_leaves_ccr_inbox_json_untouched(
    dirs: Dirs, tmp_path: Path, clock: FakeClock
) -> None:
    out = tmp_path / "out"
    with open_sqlite(dirs.db, clock, inbox_retention_hours=1) as sq:
        fill(sq, clock)
    stale_json_inbox(out, clock)
    path = out / INBOX_FILE
    before = (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns)

    export_json(dirs.db, out)

    assert (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns) == before
    assert json.loads((out / SESSIONS_FILE).read_bytes()).keys() == {"s1", "s2", "s3"}


# --------------------------------------------------------------------------- the CLI


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "TMUX", "NVIM"))}
    env["HOME"] = str(tmp_path / "home")
    env["CCR_DATA_DIR"] = str(tmp_path / "ccr-data-dir")
    env["CCR_REGISTRY_CONFIG"] = str(tmp_path / "ccr-registry.toml")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_the_export_inbox_flag(dirs: Dirs, tmp_path: Path, clock: FakeClock) -> None:
    out = tmp_path / "out"
    (tmp_path / "ccr-registry.toml").write_text(
        f'[store]\nbackend = "sqlite"\ndata_dir = "{dirs.db.parent}"\nsqlite_path = "{dirs.db}"\n'
    )
    with open_sqlite(dirs.db, clock, inbox_retention_hours=1) as sq:
        fill(sq, clock)
    stale_json_inbox(out, clock)

    plain = cli(tmp_path, "export", "--out", str(out), "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["inbox"] is False
    assert inbox_document(out)["commands"]["c-done"]["state"] == "ready"  # still the stale one

    result = cli(tmp_path, "export", "--out", str(out), "--inbox", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"database": str(dirs.db), "out": str(out), "inbox": True}
    with open_json(out, clock) as js, open_sqlite(dirs.db, clock) as sq:
        assert js.inbox.list_commands() == sq.inbox.list_commands()
    assert "stale-only" not in inbox_document(out)["commands"]

    shown = cli(tmp_path, "export", "--help")
    assert shown.returncode == 0
    assert "--inbox" in shown.stdout
    assert "ccr-inbox.json" in shown.stdout
