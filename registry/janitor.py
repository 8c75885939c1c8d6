"""A background thread that removes dead and expired sessions and old inbox commands (SPEC 7).

The daemon starts one janitor next to its store::

    with open_store() as store, Janitor(store):
        serve_forever()

Every ``dead_every_s`` (default 60 s) it runs ``cleanup_dead_sessions``; every ``expired_every_s``
(default one hour) one pass removes expired sessions and expired tokens together, and the inbox pass
right after it removes the commands done or dead for longer than the inbox retention
(``cleanup_inbox``). Every pass also runs once as soon as the janitor starts. A pass that raises is
logged and the next one runs on time; the inbox pass runs even when the expired pass failed.
``stop()`` returns within a second even in the middle of a wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

import attrs

from registry.protocols import AliveProbe, Store

__all__ = ["Janitor", "PassResult"]

log = logging.getLogger("registry.janitor")

STOP_TIMEOUT_S: Final = 1.0


@attrs.frozen(kw_only=True)
class PassResult:
    """What one janitor pass did."""

    kind: str  # "dead", "expired" or "inbox"
    sessions: list[str]
    tokens: int = 0
    commands: list[str] = attrs.field(factory=list)
    error: str | None = None


class Janitor:
    """Runs the cleanup passes of a store in a daemon thread; see the module docstring.

    ``clock`` (monotonic seconds) and ``wait`` (``wait(seconds) -> bool``, True when asked to
    stop) are injectable so that tests drive the schedule without sleeping.
    """

    def __init__(
        self,
        store: Store,
        *,
        dead_every_s: float = 60,
        expired_every_s: float = 3600,
        is_alive: AliveProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if dead_every_s <= 0 or expired_every_s <= 0:
            raise ValueError("janitor intervals must be positive")
        self.store = store
        self.dead_every_s = dead_every_s
        self.expired_every_s = expired_every_s
        self._is_alive = is_alive
        self._clock = clock
        self._stopping = threading.Event()
        self._wait = wait if wait is not None else self._stopping.wait
        self._thread: threading.Thread | None = None
        self._next_dead = 0.0
        self._next_expired = 0.0
        self.passes = 0
        self.errors = 0

    # ----------------------------------------------------------------- passes

    def run_dead_pass(self) -> PassResult:
        """Remove sessions whose process is gone (logs what it removed)."""
        try:
            removed = self.store.sessions.cleanup_dead_sessions(self._is_alive)
        except Exception as exc:
            return self._failed("dead", exc)
        if removed:
            log.info("janitor: removed %d dead session(s): %s", len(removed), ", ".join(removed))
        return self._done(PassResult(kind="dead", sessions=removed))

    def run_expired_pass(self) -> PassResult:
        """Remove expired sessions (with their tokens) and expired tokens, in one pass."""
        try:
            removed = self.store.sessions.cleanup_expired_sessions()
            tokens = self.store.tokens.cleanup_expired_tokens()
        except Exception as exc:
            return self._failed("expired", exc)
        if removed or tokens:
            log.info(
                "janitor: removed %d expired session(s) %s and %d expired token(s)",
                len(removed),
                ", ".join(removed),
                tokens,
            )
        return self._done(PassResult(kind="expired", sessions=removed, tokens=tokens))

    def run_inbox_pass(self) -> PassResult:
        """Remove the inbox commands done or dead for longer than the retention."""
        try:
            removed = self.store.inbox.cleanup_inbox()
        except Exception as exc:
            return self._failed("inbox", exc)
        if removed:
            log.info(
                "janitor: removed %d old inbox command(s): %s", len(removed), ", ".join(removed)
            )
        return self._done(PassResult(kind="inbox", sessions=[], commands=removed))

    def _done(self, result: PassResult) -> PassResult:
        self.passes += 1
        return result

    def _failed(self, kind: str, exc: Exception) -> PassResult:
        self.passes += 1
        self.errors += 1
        log.exception("janitor: %s pass failed; the next one runs on schedule", kind)
        return PassResult(kind=kind, sessions=[], error=f"{type(exc).__name__}: {exc}")

    def run_pending(self) -> list[PassResult]:
        """Run every pass that is due now; returns what ran (first call: all three)."""
        now = self._clock()
        results = []
        if now >= self._next_dead:
            results.append(self.run_dead_pass())
            self._next_dead = now + self.dead_every_s
        if now >= self._next_expired:
            results.append(self.run_expired_pass())
            results.append(self.run_inbox_pass())
            self._next_expired = now + self.expired_every_s
        return results

    def seconds_until_due(self) -> float:
        return max(0.0, min(self._next_dead, self._next_expired) - self._clock())

    # ----------------------------------------------------------------- thread

    def start(self) -> Janitor:
        if self._thread is not None:
            raise RuntimeError("janitor already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="ccr-registry-janitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.run_pending()
            if self._wait(self.seconds_until_due()):
                break

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (at most about a second)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive():
                log.warning("janitor: a pass is still running; it will stop when it ends")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Janitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
