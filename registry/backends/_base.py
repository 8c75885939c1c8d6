"""The semantics every backend shares, written once over a few storage primitives.

A backend supplies the primitives (read or write one record, select sessions in list order,
delete sessions with their tokens, and the two context managers that scope a read and a write
unit); :class:`BaseStore` turns them into the :class:`~registry.protocols.SessionRegistry` and
:class:`~registry.protocols.TokenStore` contract. Keeping the merge, expiry and error rules here
means the json and sqlite backends cannot drift apart on semantics: they differ only in how
records reach the disk.
"""

from __future__ import annotations

import itertools
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from registry import defaults
from registry.backends._inbox import SESSION_REMOVED, Inbox, InboxSettings
from registry.errors import (
    ChatMismatch,
    RegistryError,
    SessionNotFound,
    TokenExpired,
    TokenNotFound,
    ValidationError,
)
from registry.models import (
    DEFAULT_SCOPES,
    EPOCH,
    Command,
    Session,
    Token,
    Transport,
    add_ttl,
    changed_session,
    check_update,
    to_ms,
    utc_ms,
)
from registry.validation import (
    check_bool,
    check_chat_id,
    check_key,
    check_pid,
    is_key,
)

if TYPE_CHECKING:
    from registry.protocols import AliveProbe

Clock = Callable[[], datetime]

# 16 random bytes, as the legacy daemon used: 128 bits, 22 URL-safe characters.
TOKEN_BYTES: Final = 16

# The process's write generation: every write call of any store in this process takes a new
# value when it ends (see cleanup_dead_sessions). Values come from one counter, so the
# generation never returns to a value it had.
_write_counter = itertools.count(1)
_write_generation = 0


def _note_write() -> None:
    global _write_generation
    _write_generation = next(_write_counter)


def _is_system_clock(clock: Clock) -> bool:
    """Whether ``clock`` is the factory's real-time clock, which can be read as integer ms."""
    factory = sys.modules.get("registry.factory")
    return factory is not None and clock is getattr(factory, "system_clock", None)


class _WriteCall:
    """The scope of one write call: its time, its write unit, and the write generation.

    A class, not a generator: a generator-based context manager around the backend's unit cost
    several microseconds per write. The generation is bumped when the call ends,
    also when it failed: a change that may have happened counts.
    """

    __slots__ = ("now", "unit")

    def __init__(self, unit: AbstractContextManager[None], now: datetime | None) -> None:
        self.unit = unit
        self.now = now

    def __enter__(self) -> datetime:
        try:
            self.unit.__enter__()
        except BaseException:
            _note_write()
            raise
        return self.now  # type: ignore[return-value]

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool | None:
        try:
            return self.unit.__exit__(kind, exc, tb)
        finally:
            _note_write()


class StorageBackend(ABC):
    """The storage primitives: what a backend supplies and a composite backend calls.

    :class:`BaseStore` builds the whole :class:`~registry.protocols.Store` contract on these,
    and :class:`~registry.backends.dual.DualStore` composes two backends through them alone.
    The contract of each primitive:

    * Records passed in are valid models (the caller validated them); records returned are
      models equal to what was saved. No primitive checks expiry or state unless it says so.
    * A read primitive runs inside :meth:`reading` or :meth:`writing`; a write primitive runs
      inside :meth:`writing`, and its change becomes visible to others only when the
      outermost unit commits (all of the unit, or nothing). Primitives raise only
      :class:`~registry.errors.RegistryError` (driver errors translated).
    * Public within the package only: they are not part of the ``Store`` protocol, and a
      caller outside ``registry.backends`` uses the store's API instead.
    """

    @abstractmethod
    def reading(self) -> AbstractContextManager[None]:
        """Scope of a read: inside an open unit it sees that unit's changes."""

    @abstractmethod
    def writing(self, *, savepoint: bool) -> AbstractContextManager[None]:
        """Scope of a write unit; nested inside another it joins it (or is a savepoint)."""

    @abstractmethod
    def load_session(self, session_id: str) -> Session | None:
        """The session record, or None; expired or stopped sessions are returned too."""

    @abstractmethod
    def save_session(self, session: Session) -> None:
        """Insert or update the session record (never touching its tokens)."""

    @abstractmethod
    def delete_sessions(self, session_ids: list[str]) -> None:
        """Delete these sessions and all their tokens; ids that do not exist are ignored."""

    @abstractmethod
    def select_sessions(
        self,
        now: datetime,
        *,
        active_only: bool,
        notify_only: bool,
        ppid: int | None = None,
        limit: int | None = None,
        host: str | None = None,
    ) -> list[Session]:
        """Sessions matching the filters (``host``: only that host's), in list order; at most
        ``limit`` of them."""

    @abstractmethod
    def expired_session_ids(self, now: datetime) -> list[str]:
        """Ids of sessions with ``expires_at <= now``."""

    @abstractmethod
    def load_token(self, token: str) -> Token | None:
        """The token record, live or expired, or None."""

    @abstractmethod
    def save_token(self, token: Token) -> None:
        """Insert or replace the token record (its session is known to exist)."""

    @abstractmethod
    def delete_token(self, token: str) -> bool:
        """Delete the token record; whether it existed."""

    @abstractmethod
    def tokens_of(self, session_id: str) -> list[Token]:
        """The session's tokens ordered by ``created_at``, then value."""

    @abstractmethod
    def delete_expired_tokens(self, now: datetime) -> int:
        """Delete tokens with ``expires_at <= now``; how many."""

    # ----------------------------------------------------------------- inbox primitives

    @abstractmethod
    def load_command(self, command_id: str) -> Command | None:
        """The command record in any state, or None."""

    @abstractmethod
    def save_command(self, command: Command) -> None:
        """Insert or update the command record by ``command_id``, with the ``seq`` it carries.

        A later :meth:`next_command_seq` must return more than every ``seq`` ever saved.
        """

    @abstractmethod
    def next_command_seq(self) -> int:
        """Inside a write unit: a ``seq`` greater than any ever saved in this store (from 1)."""

    @abstractmethod
    def reserve_command_seq(self, next_seq: int) -> None:
        """Inside a write unit: a later :meth:`next_command_seq` returns at least ``next_seq``.

        It never lowers the next seq (a copy carries the source's counter over, SPEC 6).
        """

    @abstractmethod
    def select_commands(
        self, *, session_id: str | None, state: str | None, host: str | None = None
    ) -> list[Command]:
        """Commands of that session, in that state and/or of that host (None: any), by ``seq``."""

    @abstractmethod
    def next_claimable(self, now: datetime, host: str) -> Command | None:
        """Among ``host``'s commands, the claimable one (SPEC 3.4) with the smallest ``seq``
        that heads its group.

        Claimable: ``ready`` with ``available_at <= now``, or ``leased`` with
        ``lease_until <= now``. Heads its group: no command of the same ``session_id`` (None
        is a group of its own) with a smaller ``seq`` is ``ready`` or ``leased``.
        """

    @abstractmethod
    def end_commands_of(self, session_ids: list[str], now: datetime, error: str) -> None:
        """Make the ``ready`` and ``leased`` commands of these sessions ``dead``.

        Each gets ``last_error = error``, ``updated_at = now`` and no lease.
        """

    @abstractmethod
    def finished_command_ids(self, cutoff: datetime) -> list[str]:
        """Ids of ``done`` and ``dead`` commands with ``updated_at <= cutoff``."""

    @abstractmethod
    def delete_commands(self, command_ids: list[str]) -> None:
        """Delete these command records; ids that do not exist are ignored."""

    def data_version(self) -> object:
        """Inside a read or write scope: a value that changes whenever the stored data may have.

        It must change for every commit by another connection, thread or process (writes of
        this store object's own thread are covered by the write generation as well). The
        default, a new object each time, says "may have changed" every time: exact enough,
        as ``cleanup_dead_sessions`` then falls back to its conservative rule.
        """
        return object()

    def has_session(self, session_id: str) -> bool:
        """Whether the session exists (a backend may answer without building the model)."""
        return self.load_session(session_id) is not None

    def session_of_live_token(self, token: str, now: datetime) -> Session | None:
        """The session of a token that is live at ``now``, read as of one moment, or None."""
        found = self.load_token(token)
        if found is None or not found.is_live(now):
            return None
        return self.load_session(found.session_id)


class BaseStore(StorageBackend):
    """One store over one set of data; it is its own ``sessions`` and ``tokens``."""

    backend: str = ""

    def __init__(
        self,
        *,
        clock: Clock,
        session_ttl: timedelta,
        token_ttl: timedelta,
        inbox: InboxSettings | None = None,
        host_id: str | None = None,
    ) -> None:
        if not callable(clock):
            # open_store(clock=...) reaches here first; a raw TypeError would come at first use.
            raise ValidationError(f"clock must be callable, got {type(clock).__name__}")
        self._clock = clock
        # The real clock is read as integer milliseconds directly (time.time_ns), without a
        # datetime and its conversions: about 3 us per write. An injected clock is
        # called as before.
        self._system_clock = _is_system_clock(clock)
        self._session_ttl = session_ttl
        self._token_ttl = token_ttl
        self.inbox_settings = InboxSettings() if inbox is None else inbox
        # The machine this store serves (SPEC 5): the ppid lookup, the dead-session cleanup and
        # claim consider only its sessions and commands; register stamps it on a session.
        self.host_id = check_key("host_id", defaults.host_id() if host_id is None else host_id)
        self._inbox = Inbox(self)
        self._closed = False

    @abstractmethod
    def _close(self) -> None:
        """Release the backend's resources (connections, file handles); called once."""

    # ----------------------------------------------------------------- store

    @property
    def sessions(self) -> BaseStore:
        return self

    @property
    def tokens(self) -> BaseStore:
        return self

    @property
    def inbox(self) -> Inbox:
        return self._inbox

    @property
    def session_ttl(self) -> timedelta:
        return self._session_ttl

    @property
    def token_ttl(self) -> timedelta:
        return self._token_ttl

    def atomic(self) -> AbstractContextManager[None]:
        self._check_open()
        return self.writing(savepoint=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend!r}>"

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("the store is closed")

    def _now(self) -> datetime:
        self._check_open()
        if self._system_clock:
            # Exact: integer seconds and microseconds from integer milliseconds; this cost
            # about a third of datetime.now(UTC) normalised by utc_ms.
            ms = time.time_ns() // 1_000_000
            return EPOCH + timedelta(0, ms // 1000, ms % 1000 * 1000)
        return utc_ms(self._clock())

    def _now_ms(self) -> int:
        """``_now()`` as integer epoch milliseconds."""
        self._check_open()
        if self._system_clock:
            return time.time_ns() // 1_000_000
        return to_ms(utc_ms(self._clock()))

    def _write(self, now: datetime | None = None) -> _WriteCall:
        """A write call's unit; entering it gives ``now`` (the clock is read when None)."""
        if now is None:
            now = self._now()
        return _WriteCall(self.writing(savepoint=False), now)

    def _write_unit(self) -> _WriteCall:
        """A write call's unit for a caller that has read the clock itself (in milliseconds)."""
        return _WriteCall(self.writing(savepoint=False), None)

    # ----------------------------------------------------------------- sessions

    def register(
        self,
        session_id: str,
        *,
        ppid: int | None = None,
        pid: int | None = None,
        start_time: int | None = None,
        cwd: str | None = None,
        label: str | None = None,
        notify: bool | None = None,
        transport: Transport | None = None,
        state: str | None = None,
    ) -> Session:
        check_key("session_id", session_id)
        given: dict[str, Any] = {
            name: value
            for name, value in (
                ("ppid", ppid),
                ("pid", pid),
                ("start_time", start_time),
                ("cwd", cwd),
                ("label", label),
                ("notify", notify),
                ("transport", transport),
                ("state", state),
            )
            if value is not None
        }
        check_update(given)
        with self._write() as now:
            stamps: dict[str, Any] = {
                "updated_at": now,
                "last_seen": now,
                "expires_at": add_ttl(now, self._session_ttl),
            }
            existing = self.load_session(session_id)
            if existing is None:
                session = Session(
                    session_id=session_id, host=self.host_id, created_at=now, **given, **stamps
                )
            else:
                session = changed_session(existing, **given, **stamps, host=self.host_id)
            self.save_session(session)
        return session

    def get(self, session_id: str) -> Session | None:
        self._check_open()
        if not is_key("session_id", session_id):
            return None
        with self.reading():
            return self.load_session(session_id)

    def get_by_ppid(self, ppid: int) -> Session | None:
        if ppid is None:
            raise ValidationError("ppid must be an int, got NoneType")
        check_pid("ppid", ppid)
        now = self._now()
        with self.reading():
            found = self.select_sessions(
                now, active_only=True, notify_only=False, ppid=ppid, limit=1, host=self.host_id
            )
        return found[0] if found else None

    def get_notify_sessions(self) -> list[Session]:
        return self.list_sessions(active_only=True, notify_only=True)

    def list_sessions(
        self, *, active_only: bool = False, notify_only: bool = False, host: str | None = None
    ) -> list[Session]:
        check_bool("active_only", active_only)
        check_bool("notify_only", notify_only)
        if host is not None:
            check_key("host", host)
        now = self._now()
        with self.reading():
            return self.select_sessions(
                now, active_only=active_only, notify_only=notify_only, host=host
            )

    def update(self, session_id: str, **changes: Any) -> Session:
        check_update(changes)
        is_key("session_id", session_id)  # a non-string id is refused before the write unit
        with self._write() as now:
            session = changed_session(self._require(session_id), **changes, updated_at=now)
            self.save_session(session)
        return session

    def touch(self, session_id: str) -> Session:
        with self._write() as now:
            session = changed_session(
                self._require(session_id),
                last_seen=now,
                expires_at=add_ttl(now, self._session_ttl),
            )
            self.save_session(session)
        return session

    def remove(self, session_id: str) -> bool:
        if not is_key("session_id", session_id):
            self._check_open()
            return False
        with self._write() as now:
            if self.load_session(session_id) is None:
                return False
            self._remove_sessions([session_id], now)
            return True

    def cleanup_expired_sessions(self) -> list[str]:
        with self._write() as now:
            expired = sorted(self.expired_session_ids(now))
            if expired:
                self._remove_sessions(expired, now)
        return expired

    def cleanup_dead_sessions(self, is_alive: AliveProbe | None = None) -> list[str]:
        if is_alive is not None and not callable(is_alive):
            raise ValidationError(f"is_alive must be callable, got {type(is_alive).__name__}")
        if is_alive is None:
            from registry.liveness import is_process_alive

            is_alive = is_process_alive
        now = self._now()
        generation = _write_generation
        with self.reading():
            version = self.data_version()
            candidates = [
                session
                for session in self.select_sessions(
                    now, active_only=False, notify_only=False, host=self.host_id
                )
                if session.state == "running" and session.ppid is not None
            ]
        # Probing may be slow and may itself use the store: no lock is held here.
        dead = [s for s in candidates if s.ppid is not None and not is_alive(s.ppid, s.start_time)]
        removed: list[str] = []
        if dead:
            with self._write() as written_at:
                # Nothing written since the candidates were read: every verdict stands. Else a
                # session is removed only if its record is the one probed and was last written
                # before that read; a write during the probe stamps it with a time >= `now`,
                # even within the same millisecond, where the record alone may look unchanged.
                quiet = generation == _write_generation and self.data_version() == version
                removed = sorted(
                    s.session_id
                    for s in dead
                    if self.load_session(s.session_id) == s
                    and (quiet or max(s.updated_at, s.last_seen) < now)
                )
                if removed:
                    self._remove_sessions(removed, written_at)
        return removed

    def _remove_sessions(self, session_ids: list[str], now: datetime) -> None:
        """Delete sessions with their tokens; their pending commands become ``dead`` (SPEC 3.4)."""
        self.delete_sessions(session_ids)
        self.end_commands_of(session_ids, now, SESSION_REMOVED)

    def _require(self, session_id: str) -> Session:
        session = self.load_session(session_id) if is_key("session_id", session_id) else None
        if session is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return session

    # ----------------------------------------------------------------- tokens

    def mint_token(
        self,
        session_id: str,
        chat_id: int,
        *,
        ttl: timedelta | None = None,
        scopes: tuple[str, ...] | list[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Token:
        import secrets  # here, not at the top: a hook that only registers never needs it

        value = secrets.token_urlsafe(TOKEN_BYTES)
        return self.store_token(value, session_id, chat_id, ttl=ttl, scopes=scopes, context=context)

    def store_token(
        self,
        token: str,
        session_id: str,
        chat_id: int,
        *,
        ttl: timedelta | None = None,
        scopes: tuple[str, ...] | list[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Token:
        now = self._now()
        # Built and validated before the unit: the write lock is held for the storage only.
        record = Token(
            token=token,
            session_id=session_id,
            chat_id=chat_id,
            scopes=DEFAULT_SCOPES if scopes is None else scopes,
            context={} if context is None else context,
            created_at=now,
            expires_at=add_ttl(now, self._token_ttl if ttl is None else ttl),
        )
        with self._write(now):
            # An existence check, not the Session model: that cost 18 of mint's 49 us.
            if not self.has_session(session_id):
                raise SessionNotFound(f"no session {session_id!r}")
            self.save_token(record)
        return record

    def get_session_by_token(self, token: str) -> Session | None:
        now = self._now()
        if not is_key("token", token):
            return None
        with self.reading():
            return self.session_of_live_token(token, now)

    def validate_token(self, token: str, chat_id: int) -> Token:
        check_chat_id(chat_id)
        now = self._now()
        if not is_key("token", token):
            raise TokenNotFound("no such token")
        with self.reading():
            found = self.load_token(token)
        if found is None:
            raise TokenNotFound("no such token")
        if not found.is_live(now):
            raise TokenExpired(f"token expired at {found.expires_at.isoformat()}")
        if found.chat_id != chat_id:
            raise ChatMismatch("token was issued to another chat")
        return found

    def revoke_token(self, token: str) -> bool:
        if not is_key("token", token):
            self._check_open()
            return False
        with self._write():
            return self.delete_token(token)

    def tokens_for_session(self, session_id: str) -> list[Token]:
        self._check_open()
        if not is_key("session_id", session_id):
            return []
        with self.reading():
            return self.tokens_of(session_id)

    def cleanup_expired_tokens(self) -> int:
        with self._write() as now:
            return self.delete_expired_tokens(now)
