"""The janitor: passes on schedule with an injected clock, survives failures, stops promptly.

The inbox pass (``cleanup_inbox``) runs on the expired pass's hourly schedule, right after it.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest

from registry import Store
from registry.backends._inbox import Inbox
from registry.janitor import Janitor
from tests.conftest import FakeClock


class Ticker:
    """A monotonic clock and a wait() that moves it instead of sleeping."""

    def __init__(self, stop_after: int) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.stop_after = stop_after
        self.done = threading.Event()

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        if len(self.waits) >= self.stop_after:
            self.done.set()
            return True
        return False


def test_passes_run_on_schedule(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = Ticker(stop_after=125)
    dead_calls: list[float] = []

    def probe(pid: int, start: int | None) -> bool:
        dead_calls.append(ticker.now)
        return True

    inbox_calls: list[float] = []
    cleanup_inbox = Inbox.cleanup_inbox

    def counted(inbox: Inbox) -> list[str]:
        inbox_calls.append(ticker.now)
        return cleanup_inbox(inbox)

    monkeypatch.setattr(Inbox, "cleanup_inbox", counted)
    store.sessions.register("s1", ppid=1)
    janitor = Janitor(store, is_alive=probe, clock=ticker, wait=ticker.wait)
    janitor.start()
    assert ticker.done.wait(30)
    janitor.stop()
    # 125 waits of up to 60 s: dead passes at 0, 60, ..., 7440 s; expired and inbox at 0, 3600,
    # 7200 s.
    assert dead_calls == [60.0 * i for i in range(125)]
    assert inbox_calls == [0.0, 3600.0, 7200.0]
    assert janitor.passes == 125 + 3 + 3
    assert janitor.errors == 0
    assert set(ticker.waits) == {60.0}


def test_expired_pass_removes_sessions_and_tokens_together(store: Store, clock: FakeClock) -> None:
    store.sessions.register("old")
    store.tokens.mint_token("old", 1)
    store.sessions.register("fresh")
    short = store.tokens.mint_token("fresh", 1, ttl=timedelta(minutes=5))
    clock.advance(hours=23)
    store.sessions.touch("fresh")
    clock.advance(hours=1)
    result = Janitor(store).run_expired_pass()
    assert (result.kind, result.sessions, result.tokens, result.error) == (
        "expired",
        ["old"],
        1,
        None,
    )
    assert store.tokens.get_session_by_token(short.token) is None
    assert [s.session_id for s in store.sessions.list_sessions()] == ["fresh"]


def finished_command(store: Store, command_id: str, *, dead: bool = False) -> None:
    """A command taken through claim to done (or to dead with ``dead``)."""
    store.inbox.enqueue(command_id, {"text": command_id})
    claimed = store.inbox.claim("worker")
    assert claimed is not None and claimed.command_id == command_id
    if dead:
        store.inbox.fail(command_id, "worker", "typing failed", final=True)
    else:
        store.inbox.complete(command_id, "worker")


def test_inbox_pass_removes_commands_finished_longer_than_the_retention(
    store: Store, clock: FakeClock
) -> None:
    finished_command(store, "old-done")
    finished_command(store, "old-dead", dead=True)
    clock.advance(hours=23)
    finished_command(store, "recent-done")
    store.inbox.enqueue("waiting", {"text": "ls"})
    clock.advance(hours=1)  # the old ones reach the default retention of 24 h exactly
    janitor = Janitor(store)
    result = janitor.run_inbox_pass()
    assert (result.kind, result.commands, result.sessions, result.error) == (
        "inbox",
        ["old-dead", "old-done"],
        [],
        None,
    )
    assert [c.command_id for c in store.inbox.list_commands()] == ["recent-done", "waiting"]
    assert janitor.run_inbox_pass().commands == []
    assert (janitor.passes, janitor.errors) == (2, 0)


def test_inbox_pass_failing_is_logged_and_the_next_one_runs(
    store: Store,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished_command(store, "old")
    clock.advance(hours=24)
    cleanup_inbox = Inbox.cleanup_inbox
    calls = 0

    def flaky(inbox: Inbox) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("inbox exploded")
        return cleanup_inbox(inbox)

    monkeypatch.setattr(Inbox, "cleanup_inbox", flaky)
    caplog.set_level(logging.INFO, logger="registry.janitor")
    ticker = Ticker(stop_after=2)
    janitor = Janitor(
        store,
        dead_every_s=3600,
        expired_every_s=3600,
        is_alive=lambda pid, start: True,
        clock=ticker,
        wait=ticker.wait,
    )
    janitor.start()
    assert ticker.done.wait(30)
    janitor.stop()
    assert calls == 2 and janitor.errors == 1
    assert store.inbox.get("old") is None  # removed by the pass after the failure
    messages = [r.getMessage() for r in caplog.records]
    assert any("inbox pass failed" in m for m in messages)
    assert any("removed 1 old inbox command(s): old" in m for m in messages)


def test_inbox_pass_runs_when_the_expired_pass_fails(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished_command(store, "old")
    clock.advance(hours=24)

    def broken(self: object) -> list[str]:
        raise RuntimeError("sessions exploded")

    monkeypatch.setattr(type(store.sessions), "cleanup_expired_sessions", broken)
    ticker = Ticker(stop_after=1)
    janitor = Janitor(store, is_alive=lambda pid, start: True, clock=ticker, wait=ticker.wait)
    results = {r.kind: r for r in janitor.run_pending()}
    assert results["expired"].error == "RuntimeError: sessions exploded"
    assert (results["inbox"].commands, results["inbox"].error) == (["old"], None)


def test_a_failing_pass_does_not_stop_the_next(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    ticker = Ticker(stop_after=4)
    calls = 0

    def flaky(pid: int, start: int | None) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("probe exploded")
        return False

    store.sessions.register("s1", ppid=1)
    caplog.set_level(logging.INFO, logger="registry.janitor")
    janitor = Janitor(store, is_alive=flaky, clock=ticker, wait=ticker.wait)
    janitor.start()
    assert ticker.done.wait(30)
    janitor.stop()
    assert janitor.errors == 1
    assert calls == 2  # the pass after the failure ran, found s1 dead, removed it
    assert store.sessions.get("s1") is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("dead pass failed" in m for m in messages)
    assert any("removed 1 dead session(s): s1" in m for m in messages)


def test_stop_is_prompt_in_the_middle_of_a_long_wait(store: Store) -> None:
    janitor = Janitor(store, dead_every_s=3600, expired_every_s=3600)
    with janitor:
        deadline = time.monotonic() + 10
        while janitor.passes < 3:  # the three first passes ran; now it waits an hour
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polling for the thread's progress, not standing in for a clock
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    assert not janitor.running


def test_bad_intervals_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        Janitor(store, dead_every_s=0)
