"""The command inbox's delivery loop, as a daemon runs it, against a fake terminal.

    python examples/inbox_delivery.py

Commands from Telegram are enqueued (a re-sent update is recognised by its id), then a daemon
drains the inbox: claim, type into the session's terminal, complete or fail. On the way: a
consumer killed after typing (its command is claimed again when the lease runs out and typed a
second time: delivery is at-least-once), a terminal that refuses once (the retry holds back the
next command of that session only), a store effect made exactly once in the same ``atomic()`` as
``complete()``, a terminal that never works (the command dies after ``inbox_max_attempts``,
an operator requeues it), a removed session, and retention. Everything happens in a temporary
data directory on a simulated clock that the loop's idle step moves forward, so it runs in a
moment; a real daemon passes no clock and sleeps. See docs/inbox.md.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from registry import Command, LeaseLost, Store, open_store

START = datetime(2026, 2, 9, 12, 0, tzinfo=UTC)
RETRY_BUSY = timedelta(seconds=5)  # a pane in copy mode is usually free again soon


class SimClock:
    """The store's clock: it moves only when the daemon idles (a real daemon sleeps instead)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class TerminalError(Exception):
    """The text could not be typed (nothing reached the terminal)."""


class FakeTerminal:
    """Records what is typed into each session's terminal.

    ``busy_once``: texts refused the first time they are typed; ``broken``: sessions whose
    terminal refuses everything until ``repair()``.
    """

    def __init__(self, *, busy_once: set[str], broken: set[str]) -> None:
        self.typed: dict[str, list[str]] = {}
        self._busy_once = set(busy_once)
        self._broken = set(broken)

    def type(self, session_id: str, text: str) -> None:
        if session_id in self._broken:
            raise TerminalError("pane is gone")
        if text in self._busy_once:
            self._busy_once.discard(text)
            raise TerminalError("pane busy (copy mode)")
        self.typed.setdefault(session_id, []).append(text)

    def repair(self, session_id: str) -> None:
        self._broken.discard(session_id)


def say(clock: SimClock, message: str) -> None:
    print(f"t={(clock.now - START).total_seconds():>6.0f}s  {message}")


def receive(store: Store, clock: SimClock, update: dict[str, Any]) -> None:
    """What the Telegram side does with an update: one idempotent enqueue."""
    # The update id is the dedup key: Telegram sends an update again when the bot did not
    # confirm it (a restart between enqueue and confirmation), and the inbox keeps the first.
    command, created = store.inbox.enqueue(
        f"tg-{update['update_id']}",
        update["command"],
        session_id=update["session_id"],
        chat_id=update["chat_id"],
    )
    verdict = "enqueued" if created else "already known, not enqueued again"
    say(clock, f"{command.command_id} {verdict} (seq {command.seq})")


def deliver(store: Store, terminal: FakeTerminal, clock: SimClock, owner: str, c: Command) -> None:
    """Carry out one claimed command, then complete or fail it."""
    where = f"{c.command_id} -> {c.session_id}"
    if c.attempts > 1 and c.last_error is None:
        # Claimed before and never failed: an earlier consumer stopped holding it, after or
        # before typing; nothing here can tell which (see docs/inbox.md, at-least-once).
        say(clock, f"{where}: claimed again (attempt {c.attempts}), may have been typed already")
    payload = c.payload
    assert c.session_id is not None
    if "label" in payload:
        # A store effect: done in the same unit as complete(), so it happens exactly once.
        with store.atomic():
            store.sessions.update(c.session_id, label=str(payload["label"]))
            store.inbox.complete(c.command_id, owner)
        say(clock, f"{where}: label set to {payload['label']!r} and completed in one unit")
        return
    try:
        terminal.type(c.session_id, str(payload["text"]))
    except TerminalError as exc:
        retry_in = RETRY_BUSY if "busy" in str(exc) else None  # None: the inbox's backoff
        failed = store.inbox.fail(c.command_id, owner, str(exc), retry_in=retry_in)
        if failed.state == "dead":
            say(clock, f"{where}: {exc}; dead after {failed.attempts} attempts")
        else:
            wait = (failed.available_at - clock.now).total_seconds()
            say(clock, f"{where}: {exc}; retry in {wait:.0f}s (attempt {failed.attempts})")
        return
    try:
        store.inbox.complete(c.command_id, owner)
    except LeaseLost:
        # Our lease ran out and another consumer claimed it: it will be typed again there.
        say(clock, f"{where}: typed, but the lease was lost before complete()")
        return
    say(clock, f"{where}: typed {payload['text']!r}")


def drain(
    store: Store,
    terminal: FakeTerminal,
    clock: SimClock,
    owner: str,
    idle: Callable[[float], None],
) -> None:
    """Deliver until nothing is pending. A real daemon loops for ever and sleeps when idle."""
    while True:
        command = store.inbox.claim(owner)
        if command is not None:
            deliver(store, terminal, clock, owner, command)
            continue
        if not store.inbox.list_commands(state="ready") and not store.inbox.list_commands(
            state="leased"
        ):
            return
        idle(1.0)  # something waits for a retry, a lease, or the command ahead of it


def main() -> None:
    clock = SimClock()
    with tempfile.TemporaryDirectory(prefix="ccr-inbox-example-") as data_dir:
        config = {
            "backend": "sqlite",
            "data_dir": data_dir,
            "migrate_from_json": False,
            "inbox_max_attempts": 3,
        }
        with open_store(config, clock=clock) as store:
            for sid in ("s-api", "s-web", "s-docs", "s-old"):
                store.sessions.register(sid, ppid=4242, cwd=f"/home/dev/{sid[2:]}")
            chat = 123456789
            updates = [
                (1001, "s-api", {"text": "run the tests"}),
                (1002, "s-web", {"text": "fix the header"}),
                (1003, "s-web", {"text": "then run the linter"}),
                (1004, "s-api", {"label": "api (main)"}),
                (1005, "s-docs", {"text": "build the docs"}),
                (1006, "s-old", {"text": "hello"}),
                (1001, "s-api", {"text": "run the tests"}),  # Telegram sent it again
            ]
            for update_id, sid, command in updates:
                update = {"update_id": update_id, "session_id": sid, "chat_id": chat}
                receive(store, clock, {**update, "command": command})

            removed = store.sessions.remove("s-old")
            old = store.inbox.get("tg-1006")
            assert old is not None
            say(
                clock,
                f"session s-old removed ({removed}): tg-1006 is {old.state}, {old.last_error!r}",
            )

            terminal = FakeTerminal(busy_once={"fix the header"}, broken={"s-docs"})

            # A daemon that is killed right after typing its first command, before complete().
            first = store.inbox.claim("daemon-old")
            assert first is not None and first.session_id is not None
            terminal.type(first.session_id, str(first.payload["text"]))
            say(clock, f"daemon-old claimed {first.command_id}, typed it, and was killed")

            # The daemon that replaces it drains the inbox.
            drain(store, terminal, clock, "daemon-new", idle=clock.advance)

            dead = [c.command_id for c in store.inbox.list_commands(state="dead")]
            say(clock, f"drained; dead: {', '.join(dead)}")

            # An operator repairs the docs pane and requeues its command (attempts back to 0).
            terminal.repair("s-docs")
            requeued = store.inbox.requeue("tg-1005")
            say(
                clock,
                f"tg-1005 requeued: {requeued.state}, last error kept: {requeued.last_error!r}",
            )
            drain(store, terminal, clock, "daemon-new", idle=clock.advance)

            print("terminals:")
            for sid, texts in sorted(terminal.typed.items()):
                print(f"  {sid}: {texts}")
            api = store.sessions.get("s-api")
            assert api is not None
            print(f"  s-api label: {api.label!r}")
            print("commands:")
            for c in store.inbox.list_commands():
                print(f"  {c.command_id} {c.state:<5} attempts={c.attempts} error={c.last_error!r}")

            # Retention: finished commands stay (and keep their ids known) for
            # inbox_retention_hours after they ended, then cleanup_inbox removes them; the
            # same update id is a new command after that.
            clock.advance(25 * 3600)
            say(clock, f"cleanup_inbox removed {', '.join(store.inbox.cleanup_inbox())}")
            receive(
                store,
                clock,
                {
                    "update_id": 1001,
                    "session_id": "s-api",
                    "chat_id": chat,
                    "command": {"text": "run the tests"},
                },
            )


if __name__ == "__main__":
    main()
