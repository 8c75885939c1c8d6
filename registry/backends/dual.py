"""The dual backend: every write to a primary and then to a secondary, for a cutover (SPEC 4, 6).

Authority: the **primary** is the store of record. Every read is answered by the primary; every
write is applied to the primary first and then, as the same record-level change, to the
secondary. With ``compare_reads`` each read also asks the secondary and counts and logs any
difference (``mismatches``). A secondary failure is counted (``secondary_failures``) and logged,
and the write still succeeds on the primary, unless ``strict``, in which case it raises.

Why this composes at the level of the storage primitives rather than the public methods: every
public method of both protocols is implemented once, in :class:`BaseStore`, over the abstract
primitives; this class must implement each primitive explicitly (the ABC refuses to instantiate
otherwise), so no write path can reach one side only, and the secondary receives exactly the
record the primary stored: same timestamps, same random token value.

A secondary that cannot be opened (a corrupt ``claude-sessions.json``, say) does not stop the
primary: the store opens primary-only, ``secondary_error`` holds the reason, the failure is
logged once and counted, and every later write unit skips the secondary and is counted in
``secondary_failures`` (no retry: a damaged file stays damaged until someone repairs it, and
reopening it on every write would cost each write a failed open; restart after the repair).
With ``strict`` the open is refused instead.

``atomic()`` opens a unit on both sides. Inside it, the secondary's unit mirrors the primary's.
On success the primary commits first, then the secondary. Lock order: the json side's file lock
is always taken before the sqlite side's ``BEGIN IMMEDIATE``, whichever side is the primary.
Taking sqlite's write lock first (as primary) and then waiting for the json lock held the
database locked through the json wait and commit, while every other writer slept in SQLite's
busy handler: 32 processes took 257 s instead of 18 to 29 s, and one attempt in five raised
``StoreBusy`` (``bench/dual_contention.py``, docs/benchmark-notes.md). What is guaranteed:

* the primary alone is all-or-nothing and isolated, exactly as on its own;
* the secondary never holds part of a unit: if any of its writes fails, its whole unit is rolled
  back (and counted), and an exception in the unit rolls both back;
* not guaranteed: both or neither. A crash, or a secondary commit failure, between the primary's
  commit and the secondary's leaves the secondary without that unit. ``ccr-registry verify``
  (``registry.migrate.diff_stores``) shows such drift; the cutover guide says how to resync.

Logs and mismatch reports name session ids and field names, never a raw token (a short hash),
and each is one short line: a list that differs is summarised by counts and its first
difference, never printed whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from registry.backends._base import BaseStore, Clock
from registry.backends._inbox import InboxSettings
from registry.errors import RegistryError
from registry.models import Command, Session, Token, differing_fields, token_hint

log = logging.getLogger("registry.dual")

T = TypeVar("T")

# How many ids a mismatch line may name.
SHOWN_IDS = 3


class _Abort(Exception):
    """Thrown into the secondary's unit to roll it back."""


class _Local(threading.local):
    depth = 0  # how deep this thread is in write units
    broken = False  # the secondary failed inside the open unit: roll it back at the end
    compare = False  # the open read scope also reads the secondary


class _SecondaryUnit:
    """The secondary's part of one write unit, left after the primary's.

    It commits when the unit and the primary's commit succeeded and no secondary write failed
    in the unit; otherwise it rolls back. Its own failures are counted (raised with
    ``strict``), never allowed to undo the primary's commit.
    """

    __slots__ = ("dual", "scope")

    def __init__(self, dual: DualStore) -> None:
        self.dual = dual
        self.scope: Any = None

    def begin(self, *, savepoint: bool, outermost: bool) -> None:
        self.scope = self.dual._begin_secondary(savepoint=savepoint, outermost=outermost)

    def leave(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.scope is None:
            return
        if exc is not None:
            self.dual._leave(self.scope, "rollback", abort=True)
        else:
            self.dual._leave(self.scope, "commit", abort=self.dual._local.broken)


def _describe(primary: Any, secondary: Any) -> str:
    """What differs, by ids and field names only."""
    if primary is None or secondary is None:
        side = "secondary" if secondary is None else "primary"
        return f"missing on the {side}"
    if isinstance(primary, Session | Token | Command) and isinstance(secondary, type(primary)):
        return "fields " + ", ".join(differing_fields(primary, secondary))
    if isinstance(primary, list) and isinstance(secondary, list):
        keys_p = [_key(item) for item in primary]
        keys_s = [_key(item) for item in secondary]
        if keys_p != keys_s:
            only_p = sorted(set(keys_p) - set(keys_s))
            only_s = sorted(set(keys_s) - set(keys_p))
            parts = [f"{len(keys_p)} records on the primary, {len(keys_s)} on the secondary"]
            if only_p:
                parts.append(f"only on the primary: {_some(only_p)}")
            if only_s:
                parts.append(f"only on the secondary: {_some(only_s)}")
            if not only_p and not only_s:
                parts.append("same records in another order")
            return "; ".join(parts)
        changed = [_key(p) for p, s in zip(primary, secondary, strict=True) if p != s]
        return f"{len(changed)} of {len(keys_p)} records differ: {_some(changed)}"
    return "values differ"


def _some(keys: list[str]) -> str:
    """At most SHOWN_IDS ids, and how many more: a log line stays one short line."""
    shown = ", ".join(keys[:SHOWN_IDS])
    more = len(keys) - SHOWN_IDS
    return f"{shown} and {more} more" if more > 0 else shown


def _key(record: Any) -> str:
    if isinstance(record, Token):
        return token_hint(record.token)
    if isinstance(record, Session):
        return record.session_id
    if isinstance(record, Command):
        return record.command_id
    return str(record)


class DualStore(BaseStore):
    """A primary and a secondary store kept in step; see the module docstring for guarantees."""

    backend = "dual"

    def __init__(
        self,
        primary: BaseStore,
        secondary: BaseStore | None,
        *,
        compare_reads: bool,
        strict: bool,
        clock: Clock,
        session_ttl: timedelta,
        token_ttl: timedelta,
        inbox: InboxSettings | None = None,
        host_id: str | None = None,
        secondary_name: str | None = None,
        secondary_error: str | None = None,
    ) -> None:
        """``secondary`` is None when it could not be opened; ``secondary_error`` says why."""
        super().__init__(
            clock=clock,
            session_ttl=session_ttl,
            token_ttl=token_ttl,
            inbox=inbox,
            host_id=host_id,
        )
        self.primary = primary
        self.secondary = secondary
        self.secondary_name = secondary.backend if secondary is not None else secondary_name
        self.secondary_error = secondary_error
        self.compare_reads = compare_reads
        self.strict = strict
        self.mismatches = 0
        self.secondary_failures = 0
        self._counter_lock = threading.Lock()
        self._local = _Local()
        # The json side's lock before the sqlite side's (see the module docstring).
        self._secondary_first = (
            secondary is not None and secondary.backend == "json" and primary.backend != "json"
        )
        if secondary is None:
            self.secondary_failures = 1
            log.warning(
                "dual: secondary %s could not be opened; running on the primary %s only, "
                "every write skips the secondary: %s",
                self.secondary_name,
                primary.backend,
                secondary_error,
            )

    # ----------------------------------------------------------------- failure accounting

    def _secondary_failed(self, action: str, exc: BaseException) -> None:
        self._count_failure()
        log.warning(
            "dual: secondary %s failed during %s: %s: %s",
            self.secondary_name,
            action,
            type(exc).__name__,
            exc,
        )
        if self.strict:
            if isinstance(exc, RegistryError):
                raise exc
            raise RegistryError(f"secondary {self.secondary_name} failed: {exc}") from exc

    def _count_failure(self) -> None:
        with self._counter_lock:
            self.secondary_failures += 1

    def _enter(self, factory: Callable[[], AbstractContextManager[None]], action: str) -> Any:
        """Enter a scope on the secondary; None (counted) if it fails."""
        try:
            scope = factory()
            scope.__enter__()
        except Exception as exc:
            self._secondary_failed(action, exc)
            return None
        return scope

    def _leave(self, scope: Any, action: str, *, abort: bool) -> None:
        """Leave a secondary scope: commit, or roll back when ``abort``."""
        try:
            if abort:
                error = _Abort()
                scope.__exit__(_Abort, error, None)
            else:
                scope.__exit__(None, None, None)
        except _Abort:
            pass
        except Exception as exc:
            self._secondary_failed(action, exc)

    def _mirror(self, action: Callable[[], object]) -> None:
        """Apply a write to the secondary unless it already failed in this unit."""
        local = self._local
        if local.broken or self.secondary is None:
            return
        try:
            action()
        except Exception as exc:
            local.broken = True
            self._secondary_failed("write", exc)

    def _compare(self, what: str, key: str, primary: T, read_secondary: Callable[[], T]) -> T:
        if self._local.compare:
            try:
                secondary = read_secondary()
            except Exception as exc:
                self._secondary_failed("read", exc)
            else:
                if secondary != primary:
                    with self._counter_lock:
                        self.mismatches += 1
                    log.warning(
                        "dual: secondary disagrees on %s %s: %s",
                        what,
                        key,
                        _describe(primary, secondary),
                    )
        return primary

    # ----------------------------------------------------------------- scopes

    @contextmanager
    def reading(self) -> Iterator[None]:
        local = self._local
        if local.depth:
            yield  # inside this thread's unit: the primary's unit answers
            return
        with self.primary.reading():
            secondary = self.secondary
            scope = None
            if self.compare_reads and secondary is not None:
                scope = self._enter(secondary.reading, "read")
            local.compare = scope is not None
            try:
                yield
            finally:
                local.compare = False
                if scope is not None:
                    self._leave(scope, "read", abort=False)

    def _begin_secondary(self, *, savepoint: bool, outermost: bool) -> Any:
        """The secondary's scope for a write unit, or None (counted) when it is not written."""
        local = self._local
        side = self.secondary
        if side is None:
            if outermost:
                self._count_failure()  # skipped: it could not be opened (logged once, at open)
            local.broken = True
            return None
        if local.broken:
            return None
        scope = self._enter(lambda: side.writing(savepoint=savepoint), "begin")
        local.broken = scope is None
        return scope

    @contextmanager
    def writing(self, *, savepoint: bool) -> Iterator[None]:
        local = self._local
        outermost = local.depth == 0
        if outermost:
            local.broken = False
        secondary = _SecondaryUnit(self)
        with ExitStack() as stack:
            # Pushed first, so it is left last: the primary commits (or rolls back) first.
            stack.push(secondary.leave)
            if outermost and self._secondary_first:
                # strict: a secondary that cannot begin raises here, before the primary begins.
                secondary.begin(savepoint=savepoint, outermost=outermost)
                stack.enter_context(self.primary.writing(savepoint=savepoint))
            else:
                stack.enter_context(self.primary.writing(savepoint=savepoint))
                # strict: a secondary that cannot begin raises here; the stack then closes
                # the primary's unit with that error, so it does not stay open.
                secondary.begin(savepoint=savepoint, outermost=outermost)
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1

    @property
    def _side(self) -> BaseStore:
        """The secondary, where the caller knows it is open (a mirror or a compare)."""
        if self.secondary is None:
            raise RegistryError(f"secondary {self.secondary_name} is not open")
        return self.secondary

    def _close(self) -> None:
        try:
            self.primary.close()
        finally:
            if self.secondary is not None:
                self.secondary.close()

    # ----------------------------------------------------------------- primitives

    def load_session(self, session_id: str) -> Session | None:
        found = self.primary.load_session(session_id)
        return self._compare(
            "session", session_id, found, lambda: self._side.load_session(session_id)
        )

    def save_session(self, session: Session) -> None:
        self.primary.save_session(session)
        self._mirror(lambda: self._side.save_session(session))

    def delete_sessions(self, session_ids: list[str]) -> None:
        self.primary.delete_sessions(session_ids)
        self._mirror(lambda: self._side.delete_sessions(session_ids))

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
        def select(side: BaseStore) -> list[Session]:
            return side.select_sessions(
                now,
                active_only=active_only,
                notify_only=notify_only,
                ppid=ppid,
                limit=limit,
                host=host,
            )

        what = (
            f"list(active_only={active_only}, notify_only={notify_only}, ppid={ppid}, host={host})"
        )
        return self._compare("sessions", what, select(self.primary), lambda: select(self._side))

    def has_session(self, session_id: str) -> bool:
        return self.primary.has_session(session_id)  # inside a write unit: the primary decides

    def data_version(self) -> object:
        return self.primary.data_version()  # the primary's records decide what is removed

    def expired_session_ids(self, now: datetime) -> list[str]:
        return self.primary.expired_session_ids(now)

    def load_token(self, token: str) -> Token | None:
        found = self.primary.load_token(token)
        return self._compare(
            "token", token_hint(token), found, lambda: self._side.load_token(token)
        )

    def save_token(self, token: Token) -> None:
        self.primary.save_token(token)
        self._mirror(lambda: self._side.save_token(token))

    def delete_token(self, token: str) -> bool:
        deleted = self.primary.delete_token(token)
        self._mirror(lambda: self._side.delete_token(token))
        return deleted

    def tokens_of(self, session_id: str) -> list[Token]:
        found = self.primary.tokens_of(session_id)
        return self._compare(
            "tokens of", session_id, found, lambda: self._side.tokens_of(session_id)
        )

    def delete_expired_tokens(self, now: datetime) -> int:
        deleted = self.primary.delete_expired_tokens(now)
        self._mirror(lambda: self._side.delete_expired_tokens(now))
        return deleted

    def session_of_live_token(self, token: str, now: datetime) -> Session | None:
        found = self.primary.session_of_live_token(token, now)
        return self._compare(
            "session of token",
            token_hint(token),
            found,
            lambda: self._side.session_of_live_token(token, now),
        )

    # ----------------------------------------------------------------- inbox primitives
    #
    # Both sides hold every command under one seq, so diff_stores can compare them field by
    # field. A new seq is past the largest either side ever gave: in a cutover the secondary
    # may already hold commands the primary never saw (the legacy inbox imported into ccr.db
    # while json is still the primary), and a seq of the primary's alone collided with them.

    def load_command(self, command_id: str) -> Command | None:
        found = self.primary.load_command(command_id)
        return self._compare(
            "command", command_id, found, lambda: self._side.load_command(command_id)
        )

    def save_command(self, command: Command) -> None:
        self.primary.save_command(command)
        self._mirror(lambda: self._side.save_command(command))

    def next_command_seq(self) -> int:
        seq = self.primary.next_command_seq()
        if self.secondary is not None and not self._local.broken:
            try:
                seq = max(seq, self.secondary.next_command_seq())
            except Exception as exc:
                self._local.broken = True
                self._secondary_failed("read", exc)
        return seq

    def reserve_command_seq(self, next_seq: int) -> None:
        self.primary.reserve_command_seq(next_seq)
        self._mirror(lambda: self._side.reserve_command_seq(next_seq))

    def select_commands(
        self, *, session_id: str | None, state: str | None, host: str | None = None
    ) -> list[Command]:
        def select(side: BaseStore) -> list[Command]:
            return side.select_commands(session_id=session_id, state=state, host=host)

        what = f"list(session_id={session_id}, state={state}, host={host})"
        return self._compare("commands", what, select(self.primary), lambda: select(self._side))

    def next_claimable(self, now: datetime, host: str) -> Command | None:
        return self.primary.next_claimable(now, host)  # inside a write unit: the primary decides

    def end_commands_of(self, session_ids: list[str], now: datetime, error: str) -> None:
        self.primary.end_commands_of(session_ids, now, error)
        self._mirror(lambda: self._side.end_commands_of(session_ids, now, error))

    def finished_command_ids(self, cutoff: datetime) -> list[str]:
        return self.primary.finished_command_ids(cutoff)

    def delete_commands(self, command_ids: list[str]) -> None:
        self.primary.delete_commands(command_ids)
        self._mirror(lambda: self._side.delete_commands(command_ids))
