"""The janitor: passes on schedule with an injected clock, survives failures, stops promptly."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest

from registry import Store
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


def test_passes_run_on_schedule(store: Store, clock: FakeClock) -> None:
    ticker = Ticker(stop_after=125)
    dead_calls: list[float] = []

    def probe(pid: int, start: int | None) -> bool:
        dead_calls.append(ticker.now)
        return True

    store.sessions.register("s1", ppid=1)
    janitor = Janitor(store, is_alive=probe, clock=ticker, wait=ticker.wait)
    janitor.start()
    assert ticker.done.wait(30)
    janitor.stop()
    # 125 waits of up to 60 s: dead passes at 0, 60, ..., 7440 s; expired at 0, 3600, 7200 s.
    assert dead_calls == [60.0 * i for i in range(125)]
    assert janitor.passes == 125 + 3
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
        while janitor.passes < 2:  # both first passes ran; now it waits an hour
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polling for the thread's progress, not standing in for a clock
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    assert not janitor.running


def test_bad_intervals_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        Janitor(store, dead_every_s=0)
