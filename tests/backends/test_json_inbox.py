"""What only the json backend promises about the inbox: its third file (SPEC 4).

``ccr-inbox.json`` is this backend's own file (the legacy daemon kept its inbox in SQLite and
never reads it): a format number, the next seq, and the commands keyed by id in seq order with
timestamps as epoch milliseconds. A file that cannot be read whole is refused and left as it
is; the two legacy files are never rewritten by an inbox change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry import StoreCorrupted, open_store
from registry.backends.json_file import INBOX_FILE, SESSIONS_FILE, TOKENS_FILE, JsonStore
from registry.migrate import export_json
from tests.conftest import EPOCH_START, FakeClock

START_MS = int(EPOCH_START.timestamp() * 1000)


def open_json(data_dir: Path, clock: FakeClock) -> JsonStore:
    store = open_store({"backend": "json", "data_dir": str(data_dir)}, clock=clock)
    assert isinstance(store, JsonStore)
    return store


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[JsonStore]:
    opened = open_json(tmp_path, clock)
    yield opened
    opened.close()


def inbox_document(data_dir: Path) -> Any:
    return json.loads((data_dir / INBOX_FILE).read_bytes())


def state_of(path: Path) -> tuple[bytes, int, int]:
    """A file's bytes, inode and mtime: a rewrite changes the inode even with equal bytes."""
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def test_the_file_format(store: JsonStore, tmp_path: Path, clock: FakeClock) -> None:
    store.sessions.register("s1")
    # Ids whose alphabetical order is not their seq order.
    store.inbox.enqueue("zz", {"text": "ls", "n": [1, 2.5, None]}, session_id="s1", chat_id=-5)
    clock.advance(seconds=1.5)
    store.inbox.enqueue("aa", {}, delay=timedelta(seconds=30))
    claimed = store.inbox.claim("daemon", lease=timedelta(seconds=10))
    assert claimed is not None and claimed.command_id == "zz"
    document = inbox_document(tmp_path)
    assert list(document) == ["format", "next_seq", "commands"]
    assert document["format"] == 1 and document["next_seq"] == 3
    assert list(document["commands"]) == ["zz", "aa"]  # seq order
    assert document["commands"]["zz"] == {
        "command_id": "zz",
        "session_id": "s1",
        "seq": 1,
        "payload": {"text": "ls", "n": [1, 2.5, None]},
        "chat_id": -5,
        "state": "leased",
        "attempts": 1,
        "available_at": START_MS,
        "lease_owner": "daemon",
        "lease_until": START_MS + 1500 + 10_000,
        "last_error": None,
        "created_at": START_MS,
        "updated_at": START_MS + 1500,
        "host": store.host_id,
    }
    aa = document["commands"]["aa"]
    assert (aa["seq"], aa["session_id"], aa["chat_id"], aa["state"]) == (2, None, None, "ready")
    assert aa["available_at"] == START_MS + 1500 + 30_000
    assert (tmp_path / INBOX_FILE).stat().st_mode & 0o777 == 0o600
    # Another store reads back exactly what this one holds.
    with open_json(tmp_path, clock) as again:
        assert again.inbox.list_commands() == store.inbox.list_commands()


def test_next_seq_outlives_the_highest_command(
    store: JsonStore, tmp_path: Path, clock: FakeClock
) -> None:
    store.inbox.enqueue("c1", {})
    store.inbox.enqueue("c2", {})
    assert store.inbox.claim("daemon") is not None  # c1 heads the session-less group
    store.inbox.complete("c1", "daemon")
    assert store.inbox.claim("daemon") is not None
    store.inbox.fail("c2", "daemon", "no terminal", final=True)
    clock.advance(days=2)
    assert store.inbox.cleanup_inbox() == ["c1", "c2"]
    assert inbox_document(tmp_path) == {"format": 1, "next_seq": 3, "commands": {}}
    with open_json(tmp_path, clock) as again:
        assert again.inbox.enqueue("c3", {})[0].seq == 3


def test_a_next_seq_below_a_stored_seq_is_not_trusted(tmp_path: Path, clock: FakeClock) -> None:
    # Written by hand (or by a bug): the stored command's seq still counts as given.
    record = {**GOOD_RECORD, "seq": 5}
    (tmp_path / INBOX_FILE).write_bytes(
        inbox_bytes({"format": 1, "next_seq": 2, "commands": {"c1": record}})
    )
    with open_json(tmp_path, clock) as store:
        assert store.inbox.enqueue("c2", {})[0].seq == 6
    assert inbox_document(tmp_path)["next_seq"] == 7


GOOD_RECORD: dict[str, Any] = {
    "command_id": "c1",
    "session_id": None,
    "seq": 1,
    "payload": {},
    "chat_id": None,
    "state": "ready",
    "attempts": 0,
    "available_at": START_MS,
    "lease_owner": None,
    "lease_until": None,
    "last_error": None,
    "created_at": START_MS,
    "updated_at": START_MS,
}


def inbox_bytes(document: object) -> bytes:
    return json.dumps(document, indent=2).encode()


DAMAGED: dict[str, bytes] = {
    "not json": b'{"format": 1, "next_seq": 2, "commands": {',
    "not utf-8": b'{"format": 1, "next_seq": 1, "commands": {}, "x": "\xff"}',
    "a list": b"[]\n",
    "no commands": inbox_bytes({"format": 1, "next_seq": 1}),
    "an extra key": inbox_bytes({"format": 1, "next_seq": 1, "commands": {}, "more": 1}),
    "no format": inbox_bytes({"next_seq": 1, "commands": {}}),
    "next_seq not an int": inbox_bytes({"format": 1, "next_seq": "2", "commands": {}}),
    "commands a list": inbox_bytes({"format": 1, "next_seq": 2, "commands": [GOOD_RECORD]}),
    "a record not an object": inbox_bytes({"format": 1, "next_seq": 2, "commands": {"c1": 5}}),
    "a bad state": inbox_bytes(
        {"format": 1, "next_seq": 2, "commands": {"c1": {**GOOD_RECORD, "state": "bogus"}}}
    ),
    "a missing field": inbox_bytes(
        {
            "format": 1,
            "next_seq": 2,
            "commands": {"c1": {k: v for k, v in GOOD_RECORD.items() if k != "attempts"}},
        }
    ),
    "an id that is not its key": inbox_bytes(
        {"format": 1, "next_seq": 2, "commands": {"c2": GOOD_RECORD}}
    ),
    "an ISO timestamp": inbox_bytes(
        {
            "format": 1,
            "next_seq": 2,
            "commands": {"c1": {**GOOD_RECORD, "created_at": "2026-02-09T01:20:00Z"}},
        }
    ),
    "a seq of 0": inbox_bytes(
        {"format": 1, "next_seq": 2, "commands": {"c1": {**GOOD_RECORD, "seq": 0}}}
    ),
    "two commands with one seq": inbox_bytes(
        {
            "format": 1,
            "next_seq": 2,
            "commands": {"c1": GOOD_RECORD, "c2": {**GOOD_RECORD, "command_id": "c2"}},
        }
    ),
    "leased without a lease": inbox_bytes(
        {"format": 1, "next_seq": 2, "commands": {"c1": {**GOOD_RECORD, "state": "leased"}}}
    ),
    "a lease on a ready command": inbox_bytes(
        {
            "format": 1,
            "next_seq": 2,
            "commands": {"c1": {**GOOD_RECORD, "lease_owner": "x", "lease_until": START_MS}},
        }
    ),
    "a newer format": inbox_bytes({"format": 2, "next_seq": 1, "commands": {}, "queues": []}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_inbox_file_is_refused_and_left_as_it_is(
    tmp_path: Path, clock: FakeClock, damage: str
) -> None:
    with open_json(tmp_path, clock) as store:
        store.sessions.register("s1")
        store.tokens.mint_token("s1", 1)
        store.inbox.enqueue("c1", {})
    legacy = {name: state_of(tmp_path / name) for name in (SESSIONS_FILE, TOKENS_FILE)}
    path = tmp_path / INBOX_FILE
    path.write_bytes(DAMAGED[damage])
    before = state_of(path)
    with pytest.raises(StoreCorrupted, match=INBOX_FILE):
        open_json(tmp_path, clock)
    assert state_of(path) == before
    assert {name: state_of(tmp_path / name) for name in legacy} == legacy


def test_a_store_already_open_refuses_a_damaged_inbox_on_every_call(
    store: JsonStore, tmp_path: Path
) -> None:
    store.sessions.register("s1")
    store.inbox.enqueue("c1", {})
    path = tmp_path / INBOX_FILE
    path.write_bytes(DAMAGED["a newer format"])
    before = state_of(path)
    calls: list[Callable[[], object]] = [
        lambda: store.inbox.enqueue("c2", {}),
        lambda: store.inbox.claim("daemon"),
        lambda: store.inbox.list_commands(),
        store.inbox.cleanup_inbox,
        lambda: store.sessions.register("s2"),  # a unit loads all three files
    ]
    for call in calls:
        with pytest.raises(StoreCorrupted, match="newer than this code"):
            call()
    assert state_of(path) == before


def test_a_change_that_changes_nothing_writes_nothing(store: JsonStore, tmp_path: Path) -> None:
    store.sessions.register("s1")
    store.tokens.mint_token("s1", 1)
    stored, created = store.inbox.enqueue("c1", {"text": "ls"}, session_id="s1")
    assert created
    files = {name: state_of(tmp_path / name) for name in (SESSIONS_FILE, TOKENS_FILE, INBOX_FILE)}
    again, created = store.inbox.enqueue("c1", {"text": "other"}, session_id="s1")
    assert (again, created) == (stored, False)
    assert store.inbox.requeue("c1") == stored  # ready: returned unchanged
    assert store.inbox.cleanup_inbox() == []
    with store.atomic():
        store.inbox.enqueue("c1", {})
        assert store.inbox.get("c1") == stored
    assert {name: state_of(tmp_path / name) for name in files} == files
    assert sorted(os.listdir(tmp_path)) == sorted([*files, ".ccr-registry.lock"])


def test_inbox_writes_never_touch_the_legacy_files(
    store: JsonStore, tmp_path: Path, clock: FakeClock
) -> None:
    store.sessions.register("s1", label="kept")
    store.tokens.mint_token("s1", 7)
    legacy = {name: state_of(tmp_path / name) for name in (SESSIONS_FILE, TOKENS_FILE)}
    inbox = tmp_path / INBOX_FILE
    store.inbox.enqueue("c1", {"n": 1}, session_id="s1")
    store.inbox.enqueue("c2", {"n": 2}, session_id="s1")
    writes = [state_of(inbox)]
    assert store.inbox.claim("daemon") is not None
    store.inbox.extend("c1", "daemon", lease=timedelta(minutes=5))
    store.inbox.fail("c1", "daemon", "typing failed", retry_in=timedelta(0))
    assert store.inbox.claim("daemon") is not None
    store.inbox.complete("c1", "daemon")
    store.inbox.requeue("c1")
    with store.atomic():
        claimed = store.inbox.claim("daemon")
        assert claimed is not None and claimed.command_id == "c1"
        store.inbox.fail("c1", "daemon", "gone", final=True)
    clock.advance(days=2)
    assert store.inbox.cleanup_inbox() == ["c1"]
    writes.append(state_of(inbox))
    assert writes[0] != writes[1]  # the inbox itself was written
    assert {name: state_of(tmp_path / name) for name in legacy} == legacy


def test_export_writes_no_inbox_file(tmp_path: Path, clock: FakeClock) -> None:
    db_dir, out_dir = tmp_path / "db", tmp_path / "out"
    with open_store({"backend": "sqlite", "data_dir": str(db_dir)}, clock=clock) as source:
        source.sessions.register("s1")
        source.inbox.enqueue("c1", {"text": "ls"}, session_id="s1")
    export_json(db_dir / "ccr.db", out_dir)
    assert json.loads((out_dir / SESSIONS_FILE).read_bytes()).keys() == {"s1"}
    assert not (out_dir / INBOX_FILE).exists()
    # Nor does it replace or remove an inbox file the json store already keeps there.
    with open_json(out_dir, clock) as target:
        target.inbox.enqueue("kept", {})
    before = state_of(out_dir / INBOX_FILE)
    export_json(db_dir / "ccr.db", out_dir)
    assert state_of(out_dir / INBOX_FILE) == before
