"""The command inbox (SPEC 3.4), written once over the storage primitives of a backend.

:class:`Inbox` is what ``store.inbox`` returns on every backend. It holds no state of its own:
each call is one read scope or one write unit of its store, so the inbox shares the store's
``atomic()`` (a ``complete`` and the store effect it stands for commit together) and its
concurrency model. The rules a queue lives by (validation first, the per-session head check,
attempt counting at claim time, the lease, the backoff) are here, so no backend can drift from
them; a backend only finds, saves and deletes command records.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from registry.defaults import SESSION_REMOVED
from registry.errors import CommandNotFound, LeaseLost, SessionNotFound, ValidationError
from registry.models import Command, FrozenMap, add_ttl, changed_command, new_command
from registry.validation import (
    COMMAND_STATES,
    check_bool,
    check_key,
    check_optional_chat_id,
    check_payload,
    check_text,
    is_key,
)

if TYPE_CHECKING:
    from registry.backends._base import BaseStore

__all__ = ["SESSION_REMOVED", "Inbox", "InboxSettings", "backoff"]

# The retry backoff of fail() without retry_in: 1 s, 2 s, 4 s ... capped at 5 minutes.
BACKOFF_BASE: Final = timedelta(seconds=1)
BACKOFF_CAP: Final = timedelta(minutes=5)


class InboxSettings:
    """The inbox's configuration: the default lease, the attempt limit and the retention."""

    __slots__ = ("lease", "max_attempts", "retention")

    def __init__(
        self,
        *,
        lease: timedelta = timedelta(seconds=60),
        max_attempts: int = 10,
        retention: timedelta = timedelta(hours=24),
    ) -> None:
        self.lease = lease
        self.max_attempts = max_attempts
        self.retention = retention

    def __repr__(self) -> str:
        return (
            f"InboxSettings(lease={self.lease!r}, max_attempts={self.max_attempts!r}, "
            f"retention={self.retention!r})"
        )


def backoff(attempts: int) -> timedelta:
    """``min(1 s * 2 ** (attempts - 1), 5 min)``: the wait before a failed command is retried."""
    if attempts >= 10:  # 2**9 s is already past the cap; no huge power for a huge count
        return BACKOFF_CAP
    pause: timedelta = BACKOFF_BASE * 2 ** max(attempts - 1, 0)
    return min(pause, BACKOFF_CAP)


def _duration(name: str, value: object) -> timedelta:
    if not isinstance(value, timedelta):
        raise ValidationError(f"{name} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0):
        raise ValidationError(f"{name} must not be negative, got {value}")
    return value


class Inbox:
    """``store.inbox``: the :class:`~registry.protocols.CommandInbox` of one store."""

    __slots__ = ("_store",)

    def __init__(self, store: BaseStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<Inbox of {self._store!r}>"

    @property
    def settings(self) -> InboxSettings:
        return self._store.inbox_settings

    # ----------------------------------------------------------------- producers

    def enqueue(
        self,
        command_id: str,
        payload: Mapping[str, Any],
        *,
        session_id: str | None = None,
        chat_id: int | None = None,
        delay: timedelta | None = None,
    ) -> tuple[Command, bool]:
        store = self._store
        check_key("command_id", command_id)
        body = FrozenMap(check_payload(payload))
        if session_id is not None:
            check_key("session_id", session_id)
        check_optional_chat_id(chat_id)
        wait = timedelta(0) if delay is None else _duration("delay", delay)
        with store._write() as now:
            available_at = add_ttl(now, wait)
            stored = store.load_command(command_id)
            if stored is not None:
                return stored, False
            host = store.host_id
            if session_id is not None:
                session = store.load_session(session_id)
                if session is None:
                    raise SessionNotFound(f"no session {session_id!r}")
                host = session.host  # typed into its terminal, on its machine (SPEC 2)
            # Every argument was checked above; the payload is not walked a second time.
            command = new_command(
                command_id=command_id,
                session_id=session_id,
                host=host,
                seq=store.next_command_seq(),
                payload=body,
                chat_id=chat_id,
                state="ready",
                attempts=0,
                available_at=available_at,
                lease_owner=None,
                lease_until=None,
                last_error=None,
                created_at=now,
                updated_at=now,
            )
            store.save_command(command)
        return command, True

    # ----------------------------------------------------------------- consumers

    def claim(self, owner: str, *, lease: timedelta | None = None) -> Command | None:
        store = self._store
        check_key("owner", owner)
        length = self.settings.lease if lease is None else _duration("lease", lease)
        max_attempts = self.settings.max_attempts
        with store._write() as now:
            lease_until = add_ttl(now, length)
            while True:
                found = store.next_claimable(now, store.host_id)
                if found is None:
                    return None
                if found.attempts >= max_attempts:
                    # Counted at claim time, so a consumer that dies on a command every time
                    # (it never reaches fail()) still runs out of attempts.
                    store.save_command(
                        changed_command(
                            found,
                            state="dead",
                            lease_owner=None,
                            lease_until=None,
                            last_error=f"gave up after {found.attempts} attempts",
                            updated_at=now,
                        )
                    )
                    continue
                claimed = changed_command(
                    found,
                    state="leased",
                    attempts=found.attempts + 1,
                    lease_owner=owner,
                    lease_until=lease_until,
                    updated_at=now,
                )
                store.save_command(claimed)
                return claimed

    @staticmethod
    def _lease_args(command_id: str, owner: str) -> bool:
        """Check the arguments of a lease holder's call, before its unit.

        Returns whether some command could have that id (one no record can hold is simply not
        found); a non-string id or an invalid owner raises ValidationError.
        """
        possible = is_key("command_id", command_id)
        check_key("owner", owner)
        return possible

    def _leased(self, command_id: str, owner: str, possible: bool) -> Command:
        """The command, which must be leased by ``owner``; inside a write unit."""
        found = self._store.load_command(command_id) if possible else None
        if found is None:
            raise CommandNotFound(f"no command {command_id!r}")
        if found.state != "leased" or found.lease_owner != owner:
            holder = "nobody" if found.state != "leased" else "another owner"
            raise LeaseLost(f"command {command_id!r} is {found.state}, leased by {holder}")
        return found

    def extend(self, command_id: str, owner: str, *, lease: timedelta | None = None) -> Command:
        store = self._store
        length = self.settings.lease if lease is None else _duration("lease", lease)
        possible = self._lease_args(command_id, owner)
        with store._write() as now:
            command = changed_command(
                self._leased(command_id, owner, possible),
                lease_until=add_ttl(now, length),
                updated_at=now,
            )
            store.save_command(command)
        return command

    def complete(self, command_id: str, owner: str) -> Command:
        store = self._store
        possible = self._lease_args(command_id, owner)
        with store._write() as now:
            command = changed_command(
                self._leased(command_id, owner, possible),
                state="done",
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
            store.save_command(command)
        return command

    def fail(
        self,
        command_id: str,
        owner: str,
        error: str,
        *,
        retry_in: timedelta | None = None,
        final: bool = False,
    ) -> Command:
        store = self._store
        possible = self._lease_args(command_id, owner)
        if not isinstance(error, str):
            raise ValidationError(f"error must be a string, got {type(error).__name__}")
        check_text("error", error)
        wait = None if retry_in is None else _duration("retry_in", retry_in)
        check_bool("final", final)
        with store._write() as now:
            found = self._leased(command_id, owner, possible)
            released: dict[str, Any] = {
                "lease_owner": None,
                "lease_until": None,
                "last_error": error,
                "updated_at": now,
            }
            if final or found.attempts >= self.settings.max_attempts:
                command = changed_command(found, state="dead", **released)
            else:
                pause = backoff(found.attempts) if wait is None else wait
                command = changed_command(
                    found, state="ready", available_at=add_ttl(now, pause), **released
                )
            store.save_command(command)
        return command

    # ----------------------------------------------------------------- operators

    def requeue(self, command_id: str) -> Command:
        store = self._store
        with store._write() as now:
            found = store.load_command(command_id) if is_key("command_id", command_id) else None
            if found is None:
                raise CommandNotFound(f"no command {command_id!r}")
            if found.state in ("ready", "leased"):
                return found
            command = changed_command(
                found,
                state="ready",
                attempts=0,
                available_at=now,
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
            store.save_command(command)
        return command

    def get(self, command_id: str) -> Command | None:
        store = self._store
        store._check_open()
        if not is_key("command_id", command_id):
            return None
        with store.reading():
            return store.load_command(command_id)

    def list_commands(
        self, *, session_id: str | None = None, state: str | None = None, host: str | None = None
    ) -> list[Command]:
        store = self._store
        store._check_open()
        if state is not None and state not in COMMAND_STATES:
            choices = ", ".join(COMMAND_STATES)
            raise ValidationError(f"state must be one of {choices} or None; got {state!r}")
        if host is not None:
            check_key("host", host)
        if session_id is not None and not is_key("session_id", session_id):
            return []
        with store.reading():
            return store.select_commands(session_id=session_id, state=state, host=host)

    def cleanup_inbox(self) -> list[str]:
        store = self._store
        with store._write() as now:
            try:
                cutoff = now - self.settings.retention
            except OverflowError:  # a retention reaching back before year 1: nothing is old
                return []
            finished = sorted(store.finished_command_ids(cutoff))
            if finished:
                store.delete_commands(finished)
        return finished
