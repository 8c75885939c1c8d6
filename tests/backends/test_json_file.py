"""What only the json backend promises: the legacy format, the journal, the cache, no-op writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from registry import Store, StoreCorrupted, Transport, open_store
from registry.backends.json_file import JOURNAL_FILE, TEMP_PREFIX, JsonStore
from tests.conftest import LEGACY_SAMPLES, FakeClock, data_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 2, 9, 6, 0, tzinfo=UTC))


def open_json(data_dir: Path, clock: FakeClock, **extra: object) -> Store:
    return open_store({"backend": "json", "data_dir": str(data_dir), **extra}, clock=clock)


def copy_sample(shape: str, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for path in (LEGACY_SAMPLES / shape).iterdir():
        shutil.copy(path, data_dir / path.name)


# --------------------------------------------------------------------------- legacy format


def test_reads_the_real_legacy_files(tmp_path: Path, clock: FakeClock) -> None:
    copy_sample("real", tmp_path)
    with open_json(tmp_path, clock) as store:
        pigeon = store.sessions.get("0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01")
        assert pigeon is not None
        assert (pigeon.ppid, pigeon.pid, pigeon.start_time) == (41234, 41301, 1770599990)
        assert pigeon.transport == Transport(
            kind="nvim",
            details={
                "nvim_socket": "/tmp/nvim.dev/0",
                "instance_name": "/dev/pts/12",
                "tmux_pane_id": "%5",
                "tmux_session": "main:1.0",
                "buffer": 7,
            },
        )
        assert pigeon.created_at == datetime(2026, 2, 9, 1, 20, tzinfo=UTC)
        notes = store.sessions.get("c3d2e1f0-aaaa-4bbb-8ccc-ddddeeee0003")
        assert notes is not None and notes.cwd == "/srv/notes — été" and notes.state == "stopped"
        token = store.tokens.validate_token("Zx_Cv-Bn1Mm2Ll3Kk4Jj5H", -1001234567890)
        assert token.scopes == ("send_cmd",)
        assert store.tokens.validate_token("q1W2e3R4t5Y6u7I8o9P0aA", 123456789).context == {
            "event": "Stop",
            "summary": "tests pass",
        }


def test_reads_the_plans_documented_shape(tmp_path: Path, clock: FakeClock) -> None:
    copy_sample("plan", tmp_path)
    with open_json(tmp_path, clock) as store:
        sessions = store.sessions.list_sessions()
        assert len(sessions) == 4
        pigeon = store.sessions.get("0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01")
        assert pigeon is not None and pigeon.state == "running"  # "active" means running
        assert pigeon.last_seen == pigeon.updated_at  # no last_seen in the plan's shape
        assert pigeon.transport.details["buffer"] == 7
        token = store.tokens.validate_token("Zx_Cv-Bn1Mm2Ll3Kk4Jj5H", -1001234567890)
        assert token.created_at == datetime(2026, 2, 9, 2, 20, 0, 10000, tzinfo=UTC)


def test_rewrites_in_the_real_legacy_format(tmp_path: Path, clock: FakeClock) -> None:
    copy_sample("real", tmp_path)
    with open_json(tmp_path, clock) as store:
        store.sessions.register("new-session", ppid=5)
        store.tokens.store_token("new-token", "new-session", 77)
    sessions = json.loads((tmp_path / "claude-sessions.json").read_text())
    tokens = json.loads((tmp_path / "claude-tokens.json").read_text())
    original_sessions = json.loads((LEGACY_SAMPLES / "real" / "claude-sessions.json").read_text())
    original_tokens = json.loads((LEGACY_SAMPLES / "real" / "claude-tokens.json").read_text())
    assert {k: v for k, v in sessions.items() if k != "new-session"} == original_sessions
    assert {k: v for k, v in tokens.items() if k != "new-token"} == original_tokens
    assert sessions["new-session"]["transport"] == {"kind": "unknown"}
    assert "label" not in sessions["new-session"]  # a missing key means None
    assert tokens["new-token"]["chat_id"] == "77"
    assert isinstance(sessions["new-session"]["created_at"], int)


def test_plan_shape_is_rewritten_flat(tmp_path: Path, clock: FakeClock) -> None:
    copy_sample("plan", tmp_path)
    with open_json(tmp_path, clock) as store:
        store.sessions.register("x")
    document = json.loads((tmp_path / "claude-sessions.json").read_text())
    assert "sessions" not in document and len(document) == 5
    assert document["0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01"]["state"] == "running"


def test_orphan_tokens_are_hidden_and_dropped_on_the_next_write(
    tmp_path: Path, clock: FakeClock
) -> None:
    copy_sample("real", tmp_path)
    sessions = json.loads((tmp_path / "claude-sessions.json").read_text())
    del sessions["0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01"]
    (tmp_path / "claude-sessions.json").write_text(json.dumps(sessions))
    with open_json(tmp_path, clock) as store:
        assert store.tokens.get_session_by_token("q1W2e3R4t5Y6u7I8o9P0aA") is None
        assert store.tokens.tokens_for_session("0b4f8e52-7c1d-4e0a-9a51-3f2d6c1b9e01") == []
        store.tokens.revoke_token("Zx_Cv-Bn1Mm2Ll3Kk4Jj5H")
    assert json.loads((tmp_path / "claude-tokens.json").read_text()) == {}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("claude-sessions.json", b""),
        ("claude-sessions.json", b'{"a": {"session_id": "a", '),
        ("claude-sessions.json", b"\xff\xfe{}"),
        ("claude-sessions.json", b"[]"),
        ("claude-sessions.json", b"42"),
        ("claude-sessions.json", b'{"a": "a string"}'),
        ("claude-sessions.json", b'{"a": {"session_id": "a"}}'),  # no timestamp at all
        ("claude-tokens.json", b'{"t": {"session_id": "a", "chat_id": "x", "created_at": 1}}'),
    ],
    ids=["empty", "truncated", "not-utf8", "list", "number", "string-record", "no-time", "chat"],
)
def test_damaged_file_is_refused_and_left_byte_identical(
    tmp_path: Path, clock: FakeClock, name: str, content: bytes
) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(StoreCorrupted, match=name):
        open_json(tmp_path, clock)
    assert (tmp_path / name).read_bytes() == content


# --------------------------------------------------------------------------- writes


def test_a_change_that_changes_nothing_writes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    with open_json(tmp_path, clock) as store:
        store.sessions.register("s1", label="a")
        store.tokens.store_token("t", "s1", 1)
        before = {p.name: p.stat().st_ino for p in tmp_path.glob("claude-*.json")}
        store.sessions.register("s1", label="a")  # same clock, same values
        store.sessions.update("s1", label="a")
        store.tokens.store_token("t", "s1", 1)
        assert store.tokens.cleanup_expired_tokens() == 0
        assert store.sessions.cleanup_expired_sessions() == []
        with store.atomic():
            store.sessions.touch("s1")
        after = {p.name: p.stat().st_ino for p in tmp_path.glob("claude-*.json")}
        assert after == before
        store.sessions.update("s1", label="b")
        assert {p.name: p.stat().st_ino for p in tmp_path.glob("claude-*.json")} != before


def test_only_the_changed_file_is_rewritten(tmp_path: Path, clock: FakeClock) -> None:
    with open_json(tmp_path, clock) as store:
        store.sessions.register("s1")
        store.tokens.store_token("t", "s1", 1)
        tokens_inode = (tmp_path / "claude-tokens.json").stat().st_ino
        store.sessions.update("s1", label="changed")
        assert (tmp_path / "claude-tokens.json").stat().st_ino == tokens_inode


def test_litter_of_a_dead_writer_is_removed_by_the_next_writer(
    tmp_path: Path, clock: FakeClock
) -> None:
    with open_json(tmp_path, clock) as store:
        store.sessions.register("s1")
        litter = [tmp_path / f"{TEMP_PREFIX}claude-sessions.json-dead{i}" for i in range(3)]
        for path in litter:
            path.write_text("half a file")
        store.sessions.get("s1")  # a reader leaves them alone
        assert all(path.exists() for path in litter)
        store.sessions.register("s2")
        assert not any(path.exists() for path in litter)


def test_reads_use_the_cache_while_the_files_are_unchanged(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_json(tmp_path, clock) as store, open_json(tmp_path, clock) as other:
        store.sessions.register("s1")
        assert isinstance(other, JsonStore)
        calls: list[Path] = []
        parse = other._parse_document

        def counting(path: Path, raw: bytes) -> dict[str, object]:
            calls.append(path)
            return parse(path, raw)

        monkeypatch.setattr(other, "_parse_document", counting)
        for _ in range(5):
            assert other.sessions.get("s1") is not None
        assert len(calls) == 1  # parsed once, then served from the cache
        store.sessions.register("s2")  # another writer changes the file
        assert other.sessions.get("s2") is not None
        assert len(calls) == 2


def test_no_file_descriptor_leaks(tmp_path: Path, clock: FakeClock) -> None:
    fds = Path("/proc/self/fd")
    with open_json(tmp_path, clock) as store:
        store.sessions.register("warm-up")
        before = len(list(fds.iterdir()))
        for i in range(200):
            store.sessions.register(f"s{i % 7}")
            store.sessions.get("s1")
            store.tokens.store_token(f"t{i % 3}", f"s{i % 7}", 1)
        assert len(list(fds.iterdir())) <= before + 2


# --------------------------------------------------------------------------- crash safety

CRASHER = textwrap.dedent(
    """
    import os, sys
    from datetime import datetime, timezone
    from registry import open_store

    data_dir, target, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real = getattr(os, target)
    calls = 0

    def dying(*args, **kwargs):
        global calls
        calls += 1
        if calls == nth:
            os._exit(9)  # the process dies here, as under SIGKILL
        return real(*args, **kwargs)

    store = open_store({"backend": "json", "data_dir": data_dir})
    setattr(os, target, dying)
    with store.atomic():
        store.sessions.register("new", label="unit")
        store.tokens.store_token("new-token", "new", 1)
        store.sessions.remove("old")  # also drops old-token: both files change
    setattr(os, target, real)
    print("completed", calls)
    """
)


@pytest.mark.parametrize("target", ["replace", "fsync", "write", "unlink"])
def test_a_two_file_unit_is_all_or_nothing_whenever_the_writer_dies(
    tmp_path: Path, clock: FakeClock, target: str
) -> None:
    outcomes = set()
    nth = 1
    while True:
        data_dir = tmp_path / f"{target}-{nth}"
        with open_json(data_dir, clock) as store:
            store.sessions.register("old")
            store.tokens.store_token("old-token", "old", 1)
        result = subprocess.run(
            [sys.executable, "-c", CRASHER, str(data_dir), target, str(nth)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        completed = result.returncode == 0
        assert completed or result.returncode == 9, result.stderr
        with open_json(data_dir, clock) as store:
            ids = {s.session_id for s in store.sessions.list_sessions()}
            tokens = {t.token for sid in ids for t in store.tokens.tokens_for_session(sid)}
            if ids == {"old"}:
                assert tokens == {"old-token"} and not completed
                outcomes.add("before")
            else:
                assert ids == {"new"}, ids
                assert tokens == {"new-token"}
                outcomes.add("after")
            store.sessions.register("next-writer")  # a writer cleans up after the dead one
        assert not (data_dir / JOURNAL_FILE).exists()
        assert not [p for p in data_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]
        if completed:
            break
        nth += 1
    assert "after" in outcomes
    if target in ("replace", "fsync", "write"):
        assert "before" in outcomes and nth > 1


def test_an_interrupted_commit_is_finished_by_the_next_reader(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Killed after committing the journal, before the first rename: a reader rolls forward."""
    with open_json(tmp_path, clock) as store:
        store.sessions.register("old")
        store.tokens.store_token("old-token", "old", 1)
    result = subprocess.run(
        [sys.executable, "-c", CRASHER, str(tmp_path), "replace", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 9, result.stderr
    assert (tmp_path / JOURNAL_FILE).exists()
    with open_json(tmp_path, clock) as store:
        assert [s.session_id for s in store.sessions.list_sessions()] == ["new"]
    assert not (tmp_path / JOURNAL_FILE).exists()


def test_data_files_stay_private_after_rewrites(tmp_path: Path, clock: FakeClock) -> None:
    with open_json(tmp_path, clock) as store:
        for i in range(3):
            store.sessions.register(f"s{i}")
            store.tokens.store_token(f"t{i}", f"s{i}", 1)
            clock.advance(timedelta(seconds=1))
    assert set(data_files(tmp_path)) == {"claude-sessions.json", "claude-tokens.json"}
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name


def test_lock_is_a_sidecar_file(tmp_path: Path, clock: FakeClock) -> None:
    with open_json(tmp_path, clock) as store:
        store.sessions.register("s1")
        assert isinstance(store, JsonStore)
        assert Path(str(store._file_lock.lock_file)).parent == tmp_path
        assert Path(str(store._file_lock.lock_file)).name not in data_files(tmp_path)
    assert os.access(tmp_path, os.W_OK)
