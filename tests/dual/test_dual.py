"""The dual backend: both sides written, failures counted or raised, drift reported, no tokens."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import filelock
import pytest

from registry import RegistryError, Store, StoreBusy, StoreCorrupted, open_store
from registry.backends.dual import DualStore
from registry.migrate import diff_stores
from tests.conftest import FakeClock

SIDES = [("json", "sqlite"), ("sqlite", "json")]


def config(data_dir: Path, primary: str, secondary: str, **dual: Any) -> dict[str, Any]:
    return {
        "backend": "dual",
        "data_dir": str(data_dir),
        "lock_timeout_s": 0.3,
        "dual": {"primary": primary, "secondary": secondary, **dual},
    }


@pytest.fixture(params=SIDES, ids=["json-sqlite", "sqlite-json"])
def sides(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def dual(tmp_path: Path, clock: FakeClock, sides: tuple[str, str]) -> Iterator[DualStore]:
    store = open_store(config(tmp_path, *sides), clock=clock)
    assert isinstance(store, DualStore)
    yield store
    store.close()


def side(tmp_path: Path, name: str, clock: FakeClock) -> Store:
    return open_store(
        {"backend": name, "data_dir": str(tmp_path), "migrate_from_json": False}, clock=clock
    )


def exercise(store: Store, clock: FakeClock) -> None:
    """Every writing method of both protocols, plus units."""
    store.sessions.register("a", ppid=1, notify=True)
    store.sessions.register("b", ppid=2, label="b")
    store.sessions.register("c", ppid=3)
    store.sessions.update("a", label="changed", state="stopped")
    clock.advance(seconds=1)
    store.sessions.touch("b")
    minted = store.tokens.mint_token("a", 5, context={"k": "v"})
    store.tokens.store_token("given", "b", -7, ttl=timedelta(minutes=1))
    store.tokens.store_token("gone", "b", 1)
    store.tokens.revoke_token("gone")
    with store.atomic():
        store.sessions.register("d")
        store.tokens.mint_token("d", 1)
        with pytest.raises(KeyError), store.atomic():
            store.sessions.remove("d")
            raise KeyError
    store.sessions.remove("c")
    clock.advance(minutes=2)
    assert store.tokens.cleanup_expired_tokens() == 1
    assert store.sessions.cleanup_dead_sessions(lambda pid, start: False) == ["b"]
    clock.advance(hours=30)
    store.sessions.register("late")
    assert store.sessions.cleanup_expired_sessions() == ["a", "d"]
    assert store.tokens.get_session_by_token(minted.token) is None


def test_writes_reach_both_sides(dual: DualStore, tmp_path: Path, clock: FakeClock) -> None:
    exercise(dual, clock)
    assert (dual.mismatches, dual.secondary_failures) == (0, 0)
    dual.sessions.register("after", notify=True)
    dual.tokens.mint_token("after", 3)
    dual.close()
    with side(tmp_path, "json", clock) as js, side(tmp_path, "sqlite", clock) as sq:
        assert diff_stores(js, sq) == []
        assert {s.session_id for s in sq.sessions.list_sessions()} == {"late", "after"}


def test_reads_compare_and_report_a_drifted_secondary(
    dual: DualStore, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    dual.sessions.register("s1", label="same")
    token = dual.tokens.mint_token("s1", 9)
    with side(tmp_path, dual.secondary.backend, clock) as secondary:
        secondary.sessions.update("s1", label="drifted")
        secondary.tokens.revoke_token(token.token)
    caplog.set_level(logging.WARNING, logger="registry.dual")
    found = dual.sessions.get("s1")
    assert found is not None and found.label == "same"  # the primary answers
    assert dual.tokens.validate_token(token.token, 9) == token
    assert dual.mismatches == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "registry.dual"]
    assert any("s1" in m and "label" in m for m in messages), messages
    assert any("missing on the secondary" in m for m in messages), messages
    for record in caplog.records:
        assert token.token not in record.getMessage()


def test_compare_reads_off_does_not_touch_the_secondary(tmp_path: Path, clock: FakeClock) -> None:
    store = open_store(config(tmp_path, "json", "sqlite", compare_reads=False), clock=clock)
    assert isinstance(store, DualStore)
    with store:
        store.sessions.register("s1")
        with side(tmp_path, "sqlite", clock) as secondary:
            secondary.sessions.update("s1", label="drifted")
        assert store.sessions.get("s1") is not None
        assert store.mismatches == 0


def hold_secondary(tmp_path: Path, name: str) -> Any:
    """Hold the secondary's write lock from outside, as a stuck process would."""
    if name == "json":
        lock = filelock.FileLock(tmp_path / ".ccr-registry.lock")
        lock.acquire()
        return lock.release
    conn = sqlite3.connect(tmp_path / "ccr.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn.close


def test_a_failing_secondary_is_counted_and_the_write_succeeds(
    dual: DualStore, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    dual.sessions.register("before")
    release = hold_secondary(tmp_path, dual.secondary.backend)
    try:
        caplog.set_level(logging.WARNING, logger="registry.dual")
        session = dual.sessions.register("during", label="x")
        token = dual.tokens.mint_token("during", 1)
        assert dual.sessions.get("during") == session
        assert dual.secondary_failures >= 2
        assert any("failed" in r.getMessage() for r in caplog.records)
        assert all(token.token not in r.getMessage() for r in caplog.records)
    finally:
        release()
    dual.close()
    with (
        side(tmp_path, dual.primary.backend, clock) as p,
        side(tmp_path, dual.secondary.backend, clock) as s,
    ):
        assert p.sessions.get("during") == session
        assert s.sessions.get("during") is None  # drift, visible to verify
        assert ("during", None) in [(d.key, d.field) for d in diff_stores(p, s)]


def test_strict_raises_and_leaves_the_primary_unchanged(
    tmp_path: Path, clock: FakeClock, sides: tuple[str, str]
) -> None:
    store = open_store(config(tmp_path, *sides, strict=True), clock=clock)
    assert isinstance(store, DualStore)
    with store:
        store.sessions.register("before")
        release = hold_secondary(tmp_path, sides[1])
        try:
            with pytest.raises(StoreBusy):
                store.sessions.register("during")
        finally:
            release()
        assert store.secondary_failures == 1
        assert store.sessions.get("during") is None
        store.sessions.register("after")
        assert store.sessions.get("after") is not None


def test_a_secondary_failing_mid_unit_keeps_none_of_the_unit(
    dual: DualStore, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dual.secondary, "save_token", broken)
    with dual.atomic():
        dual.sessions.register("unit")
        dual.tokens.store_token("unit-token", "unit", 1)
        dual.sessions.register("unit-2")
    assert dual.secondary_failures == 1
    monkeypatch.undo()
    dual.close()
    with side(tmp_path, dual.secondary.backend, clock) as secondary:
        assert secondary.sessions.list_sessions() == []  # not half of the unit
    with side(tmp_path, dual.primary.backend, clock) as primary:
        assert {s.session_id for s in primary.sessions.list_sessions()} == {"unit", "unit-2"}


def test_strict_secondary_failure_mid_unit_rolls_back_both(
    tmp_path: Path, clock: FakeClock, sides: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(config(tmp_path, *sides, strict=True), clock=clock)
    assert isinstance(store, DualStore)

    def broken(*_args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with store:
        monkeypatch.setattr(store.secondary, "save_token", broken)
        with pytest.raises(RegistryError), store.atomic():
            store.sessions.register("unit")
            store.tokens.store_token("unit-token", "unit", 1)
        monkeypatch.undo()
        assert store.sessions.get("unit") is None


def test_dual_imports_the_legacy_files_into_a_new_secondary(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Cutover phase 2: dual json -> sqlite on the legacy files imports them first."""
    with side(tmp_path, "json", clock) as legacy:
        legacy.sessions.register("from-legacy", ppid=4)
        legacy.tokens.store_token("legacy-token", "from-legacy", 1)
    cfg = config(tmp_path, "json", "sqlite")
    with open_store(cfg, clock=clock) as store:
        assert isinstance(store, DualStore)
        found = store.sessions.get("from-legacy")
        assert found is not None and store.mismatches == 0
    with side(tmp_path, "json", clock) as js, side(tmp_path, "sqlite", clock) as sq:
        assert diff_stores(js, sq) == []


def test_every_read_agrees_on_a_consistent_store(dual: DualStore, clock: FakeClock) -> None:
    """compare_reads reports nothing when both sides hold the same records."""
    for n in range(5):
        dual.sessions.register(f"s{n}", ppid=7, notify=n % 2 == 0)
        clock.advance(milliseconds=1)
    token = dual.tokens.mint_token("s1", 3)
    dual.sessions.get("s1")
    dual.sessions.get_by_ppid(7)
    dual.sessions.get_notify_sessions()
    dual.sessions.list_sessions()
    dual.sessions.list_sessions(active_only=True)
    dual.tokens.validate_token(token.token, 3)
    dual.tokens.get_session_by_token(token.token)
    dual.tokens.tokens_for_session("s1")
    assert (dual.mismatches, dual.secondary_failures) == (0, 0)


def damage(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    """Make the named side's main file unreadable; return it and its damaged bytes."""
    path = tmp_path / ("claude-sessions.json" if name == "json" else "ccr.db")
    garbage = b"\x00\xffnot what it should be {[" * 40
    path.write_bytes(garbage)
    return path, garbage


def test_a_secondary_that_cannot_be_opened_leaves_the_primary_running(
    tmp_path: Path, clock: FakeClock, sides: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    primary_name, secondary_name = sides
    with open_store(config(tmp_path, *sides), clock=clock) as store:
        store.sessions.register("before")
    path, garbage = damage(tmp_path, secondary_name)
    caplog.set_level(logging.WARNING, logger="registry.dual")
    store = open_store(config(tmp_path, *sides), clock=clock)
    assert isinstance(store, DualStore)
    with store:
        assert store.secondary is None and store.secondary_name == secondary_name
        assert store.secondary_error is not None and "StoreCorrupted" in store.secondary_error
        assert store.secondary_failures == 1
        store.sessions.register("during", label="x")
        token = store.tokens.mint_token("during", 1)
        with store.atomic():
            store.sessions.update("during", label="y")
            store.sessions.touch("before")
        assert store.secondary_failures == 4  # the open, then each write unit skipped
        found = store.sessions.get("during")
        assert found is not None and found.label == "y"
        assert store.tokens.validate_token(token.token, 1) == token
        assert store.mismatches == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "registry.dual"]
    assert len(logged) == 1 and "could not be opened" in logged[0], logged
    assert path.read_bytes() == garbage  # the damaged file is left for a person to look at
    with side(tmp_path, primary_name, clock) as primary:
        assert {s.session_id for s in primary.sessions.list_sessions()} == {"before", "during"}


def test_strict_refuses_a_secondary_that_cannot_be_opened(
    tmp_path: Path, clock: FakeClock, sides: tuple[str, str]
) -> None:
    with open_store(config(tmp_path, *sides), clock=clock) as store:
        store.sessions.register("before")
    damage(tmp_path, sides[1])
    with pytest.raises(StoreCorrupted):
        open_store(config(tmp_path, *sides, strict=True), clock=clock)


def test_a_mismatch_is_one_short_line(
    dual: DualStore,
    tmp_path: Path,
    clock: FakeClock,
    sides: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for n in range(60):
        dual.sessions.register(f"session-{n:03d}-{'x' * 30}")
    with side(tmp_path, sides[1], clock) as secondary:
        for n in range(50):
            secondary.sessions.remove(f"session-{n:03d}-{'x' * 30}")
    caplog.set_level(logging.WARNING, logger="registry.dual")
    assert len(dual.sessions.list_sessions()) == 60
    (line,) = [r.getMessage() for r in caplog.records if r.name == "registry.dual"]
    assert "\n" not in line and len(line) < 400, line
    assert "60 records on the primary, 10 on the secondary" in line
    assert "and 47 more" in line


def exercise_inbox(store: Store, clock: FakeClock) -> None:
    """Every writing method of the inbox, the retry and give-up paths, and a session removal."""
    store.sessions.register("a")
    store.sessions.register("b")
    store.inbox.enqueue("c1", {"text": "ls"}, session_id="a", chat_id=-5)
    store.inbox.enqueue("c2", {"text": "pwd"}, session_id="a")
    store.inbox.enqueue("c3", {"n": [1, 2.5, None]}, session_id="b")
    store.inbox.enqueue("c4", {})
    store.inbox.enqueue("c5", {}, session_id="b", delay=timedelta(minutes=1))
    assert store.inbox.enqueue("c1", {"other": True}) == (store.inbox.get("c1"), False)
    owner = "daemon"
    claimed = store.inbox.claim(owner)
    assert claimed is not None and claimed.command_id == "c1"
    store.inbox.extend("c1", owner, lease=timedelta(minutes=5))
    store.inbox.complete("c1", owner)
    claims = [store.inbox.claim(owner) for _ in range(4)]
    assert [c.command_id if c else None for c in claims] == ["c2", "c3", "c4", None]
    store.inbox.fail("c2", owner, "no terminal", retry_in=timedelta(0))
    store.inbox.fail("c3", owner, "typing failed", final=True)
    store.inbox.requeue("c3")
    store.inbox.complete("c4", owner)
    with store.atomic():
        again = store.inbox.claim(owner)
        assert again is not None and again.command_id == "c2"
        store.inbox.fail("c2", owner, "still no terminal")
    clock.advance(hours=25)
    assert store.inbox.cleanup_inbox() == ["c1", "c4"]
    store.inbox.enqueue("c6", {"late": 1}, session_id="a")
    store.sessions.remove("a")  # c2 and c6 end with it


def test_the_secondary_holds_the_same_commands_with_the_same_seq(
    dual: DualStore, tmp_path: Path, clock: FakeClock
) -> None:
    exercise_inbox(dual, clock)
    assert (dual.mismatches, dual.secondary_failures) == (0, 0)
    commands = dual.inbox.list_commands()
    assert [(c.command_id, c.seq, c.state) for c in commands] == [
        ("c2", 2, "dead"),
        ("c3", 3, "ready"),
        ("c5", 5, "ready"),
        ("c6", 6, "dead"),
    ]
    assert {c.last_error for c in commands if c.session_id == "a"} == {"session removed"}
    clock.advance(hours=25)
    assert dual.inbox.cleanup_inbox() == ["c2", "c6"]  # the highest seq goes too
    dual.close()
    for name in ("json", "sqlite"):
        with side(tmp_path, name, clock) as alone:
            assert alone.inbox.list_commands() == commands[1:3], name
    with side(tmp_path, "json", clock) as js, side(tmp_path, "sqlite", clock) as sq:
        assert diff_stores(js, sq) == []
    # Either side, opened alone as a cutover step does, goes on after every seq ever given.
    for name in ("json", "sqlite"):
        with side(tmp_path, name, clock) as alone:
            assert alone.inbox.enqueue("c7", {})[0].seq == 7, name


def test_compare_reads_counts_a_drifted_secondary_command(
    dual: DualStore, tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    dual.sessions.register("s1")
    dual.inbox.enqueue("c1", {"text": "ls"}, session_id="s1")
    dual.inbox.enqueue("c2", {"text": "pwd"})
    with side(tmp_path, dual.secondary.backend, clock) as secondary:
        drifted = secondary.inbox.claim("intruder")
        assert drifted is not None and drifted.command_id == "c1"
        secondary.inbox.enqueue("only-there", {})
    caplog.set_level(logging.WARNING, logger="registry.dual")
    found = dual.inbox.get("c1")
    assert found is not None and found.state == "ready"  # the primary answers
    assert dual.mismatches == 1
    assert dual.inbox.get("c2") is not None and dual.mismatches == 1  # c2 agrees
    assert [c.command_id for c in dual.inbox.list_commands()] == ["c1", "c2"]
    assert dual.mismatches == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "registry.dual"]
    assert any("c1" in m and "state" in m and "lease_owner" in m for m in messages), messages
    assert any("only on the secondary: only-there" in m for m in messages), messages


def test_a_seq_the_secondary_already_gave_is_never_given_again(
    dual: DualStore, tmp_path: Path, clock: FakeClock
) -> None:
    # As in a cutover's phase 2: the secondary holds a command the primary never saw (the
    # legacy inbox imported into ccr.db) under the seq the primary would give next.
    dual.inbox.enqueue("c1", {})
    with side(tmp_path, dual.secondary.backend, clock) as secondary:
        assert secondary.inbox.enqueue("only-there", {})[0].seq == 2
    command, created = dual.inbox.enqueue("c2", {})
    assert created and command.seq == 3  # past the largest seq of either side
    assert dual.secondary_failures == 0
    dual.close()
    with side(tmp_path, dual.secondary.backend, clock) as secondary:
        assert [(c.command_id, c.seq) for c in secondary.inbox.list_commands()] == [
            ("c1", 1),
            ("only-there", 2),
            ("c2", 3),
        ]
    with side(tmp_path, dual.primary.backend, clock) as primary:
        assert [(c.command_id, c.seq) for c in primary.inbox.list_commands()] == [
            ("c1", 1),
            ("c2", 3),
        ]
