"""The storage contract: every backend implements these protocols exactly as written here.

Each sentence of a docstring is one guarantee, and ``tests/contract/`` tests each one against
every backend. Shared definitions:

* ``now`` is the store's clock (``open_store(..., clock=...)``), read once per call.
* A record is *live* while ``now < expires_at``; at ``now == expires_at`` it has expired.
* A session is *active* while it is live and its state is ``"running"``.
* Every list of sessions is ordered by ``last_seen`` descending, then ``session_id`` ascending.
* Every error raised is a :class:`~registry.errors.RegistryError`; bad arguments raise
  :class:`~registry.errors.ValidationError` before anything is written, and a lock or busy timeout
  raises :class:`~registry.errors.StoreBusy`.
* An argument of the wrong type (a bool or a float where an int is expected, a non-string id or
  token) or an int outside its range (signed 64 bits for ``chat_id``; a positive one for
  ``ppid`` and ``pid``) raises ``ValidationError`` from every method, lookups included.
* Every string a store keeps (ids, tokens, ``cwd``, ``label``, transport detail keys and values,
  scopes, ``context`` keys and values at any depth) must be valid Unicode: encodable as UTF-8, so
  no lone surrogate such as ``"\\udcff"`` (what ``os.environ`` and ``os.fsdecode`` make of bytes
  that are not UTF-8).
* Bounds besides SPEC 2's (256 characters for an id, 4,096 for a text field): at most 256
  transport detail keys, each integer detail within signed 64 bits; at most 256 scopes; a
  ``context`` of at most 1 MiB (1,048,576 bytes) as compact UTF-8 JSON
  (``json.dumps(context, ensure_ascii=False, separators=(",", ":")).encode()``) and at most 100
  levels of nesting (a flat object is one level).
* A lookup by a string that no record can hold (empty, longer than 256 characters, with a control
  character or a lone surrogate) finds nothing, as for any unknown value: None, False, ``[]``,
  :class:`~registry.errors.SessionNotFound` or :class:`~registry.errors.TokenNotFound`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from registry.models import Command, Session, Token, Transport

__all__ = ["AliveProbe", "CommandInbox", "SessionRegistry", "Store", "TokenStore"]

AliveProbe = Callable[[int, "int | None"], bool]
"""``is_alive(pid, start_time) -> bool``, as :func:`registry.liveness.is_process_alive`."""


@runtime_checkable
class SessionRegistry(Protocol):
    """Live coding-agent sessions, keyed by ``session_id``."""

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
        """Insert or update a session and return it as stored.

        An argument left ``None`` keeps the stored value, or for a new session takes the
        default (``notify`` False, transport ``unknown``, state ``running``, other fields None).
        ``created_at`` is set on insert and kept on every later register.
        ``updated_at`` and ``last_seen`` become ``now``; ``expires_at`` becomes
        ``now + session_ttl``. ``host`` becomes the store's ``host_id``: a re-register from
        another machine moves the session there.
        A re-register never drops the session's tokens.
        :raises ValidationError: if an argument is invalid; nothing is written.
        """
        ...

    def get(self, session_id: str) -> Session | None:
        """The session with that id, expired or not, or None if there is none."""
        ...

    def get_by_ppid(self, ppid: int) -> Session | None:
        """Among active sessions with that ``ppid``, the one with the greatest ``last_seen``.

        Only sessions whose ``host`` is the store's ``host_id`` count (a pid means something
        on its own machine only). Ties go to the smallest ``session_id``; None if there is no
        such session.
        :raises ValidationError: if ``ppid`` is not a positive int within signed 64 bits.
        """
        ...

    def get_notify_sessions(self) -> list[Session]:
        """Active sessions whose ``notify`` is true, in list order."""
        ...

    def list_sessions(
        self, *, active_only: bool = False, notify_only: bool = False, host: str | None = None
    ) -> list[Session]:
        """All sessions (expired ones too, until cleaned), in list order.

        ``active_only`` keeps active sessions; ``notify_only`` keeps those with ``notify`` true;
        ``host``, when given, keeps those of that host.
        :raises ValidationError: if a flag is not a bool or ``host`` is not a valid id.
        """
        ...

    def update(self, session_id: str, **changes: Any) -> Session:
        """Set exactly the given fields and ``updated_at = now``; return the session as stored.

        Settable fields: ``ppid, pid, start_time, cwd, label, notify, transport, state``; a value
        of None clears a nullable field. ``last_seen`` and ``expires_at`` are left alone.
        :raises ValidationError: for an unknown field or an invalid value (checked first);
            nothing is written.
        :raises SessionNotFound: if there is no session with that id.
        """
        ...

    def touch(self, session_id: str) -> Session:
        """Heartbeat: ``last_seen = now`` and ``expires_at = now + session_ttl``.

        :raises SessionNotFound: if there is no session with that id.
        """
        ...

    def remove(self, session_id: str) -> bool:
        """Remove the session and all its tokens; True if it existed."""
        ...

    def cleanup_expired_sessions(self) -> list[str]:
        """Remove every expired session (any state) with its tokens; return their ids sorted."""
        ...

    def cleanup_dead_sessions(self, is_alive: AliveProbe | None = None) -> list[str]:
        """Remove running sessions whose parent process is gone; return their ids sorted.

        Every running session with a ``ppid`` whose ``host`` is the store's ``host_id`` is
        probed (another machine's processes cannot be seen from here) with
        ``is_alive(ppid, start_time)`` (default :func:`registry.liveness.is_process_alive`);
        stopped sessions and sessions without a ``ppid`` are never probed.
        The probes run outside any lock or transaction, so a probe may be slow or use the store.
        A session found dead is removed, with its tokens, only if it was not re-registered,
        touched or updated after it was read for the probe, even within the same millisecond.
        How that is known exactly without a version column: if nothing was written to the store
        since the candidates were read (no write call in this process, and the backend's data
        version unchanged: SQLite's ``PRAGMA data_version`` and this connection's change count,
        the json files' inode, size and mtime), every dead session is removed; otherwise one is
        removed only if its record still equals the one probed and its ``updated_at`` and
        ``last_seen`` are both earlier than the pass's ``now`` (every write stamps one of them
        with its own time). So a session written in the very millisecond the pass began may be
        kept one pass longer; a session changed during the probe is never removed.
        :raises ValidationError: if ``is_alive`` is given and is not callable.
        """
        ...


@runtime_checkable
class TokenStore(Protocol):
    """Short-lived tokens that bind a Telegram chat to one session."""

    def mint_token(
        self,
        session_id: str,
        chat_id: int,
        *,
        ttl: timedelta | None = None,
        scopes: tuple[str, ...] | list[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Token:
        """Create, store and return a new random token for the session.

        The value comes from :mod:`secrets`: 128 random bits, URL-safe base64 (22 characters).
        ``ttl`` defaults to the configured token TTL; ``scopes`` to ``("send_cmd",)``;
        ``context`` to an empty mapping. ``context`` is a JSON object (str keys; dict, list, str,
        int, finite float, bool, None) within the bounds above.
        :raises ValidationError: for a ttl that is not a timedelta, is negative or runs past the
            calendar, or another invalid argument (checked first).
        :raises SessionNotFound: if there is no session with that id.
        """
        ...

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
        """Store a given token value (an upsert by value) and return it.

        ``created_at`` becomes ``now`` and ``expires_at`` ``now + ttl``, also on overwrite.
        :raises ValidationError: for an invalid argument, as for ``mint_token`` (checked first).
        :raises SessionNotFound: if there is no session with that id.
        """
        ...

    def get_session_by_token(self, token: str) -> Session | None:
        """The session of a live token.

        None if the token is unknown or expired or its session is gone; only the token needs to
        be live (its session may be past its own expiry).
        """
        ...

    def validate_token(self, token: str, chat_id: int) -> Token:
        """The token, if it is known, live and issued to ``chat_id``; reads never delete.

        :raises ValidationError: if ``chat_id`` is not an int within signed 64 bits, or the token
            is not a string (checked before the lookup).
        :raises TokenNotFound: if no such token exists (checked first).
        :raises TokenExpired: if it has expired (checked second).
        :raises ChatMismatch: if it belongs to another chat (checked last).
        """
        ...

    def revoke_token(self, token: str) -> bool:
        """Delete the token; True if it existed."""
        ...

    def tokens_for_session(self, session_id: str) -> list[Token]:
        """The session's tokens ordered by ``created_at``, then token value.

        Expired tokens are included until cleaned; an unknown session gives ``[]``.
        """
        ...

    def cleanup_expired_tokens(self) -> int:
        """Delete every expired token; return how many were deleted."""
        ...


@runtime_checkable
class CommandInbox(Protocol):
    """Commands from Telegram waiting to be typed into their session's terminal, keyed by id.

    Delivery is at-least-once with an idempotent enqueue: a consumer that dies holding a command
    loses nothing (the command is claimed again once its lease runs out), so a command may be
    delivered twice; a store effect made in the same :meth:`Store.atomic` unit as
    :meth:`complete` happens exactly once. Definitions:

    * ``seq`` is given at enqueue, strictly increasing within a store, and never reused.
    * A command is *pending* while it is ``ready`` or ``leased``; *claimable* when it is
      ``ready`` with ``available_at <= now``, or ``leased`` with ``lease_until <= now``.
    * A command *heads its group* when no command of the same session with a smaller ``seq`` is
      pending; commands without a session form one group of their own.
    * ``lease`` and ``delay``/``retry_in`` arguments are non-negative ``timedelta``s; ``lease``
      defaults to the configured ``inbox_lease_s``. Limits: ``command_id`` and ``owner`` follow
      the rules of ``session_id``; ``payload`` is a JSON object of at most 64 KiB (65,536 bytes)
      as compact UTF-8 JSON and at most 100 levels deep; ``error`` is text of at most 4,096
      characters.
    * Every change to a command sets its ``updated_at = now``.
    * Removing a session (``remove``, ``cleanup_expired_sessions``, ``cleanup_dead_sessions``)
      makes its pending commands ``dead`` with ``last_error = "session removed"`` in the same
      unit; no command is deleted with its session.
    """

    def enqueue(
        self,
        command_id: str,
        payload: Mapping[str, Any],
        *,
        session_id: str | None = None,
        chat_id: int | None = None,
        delay: timedelta | None = None,
    ) -> tuple[Command, bool]:
        """Store a new ``ready`` command, or return the one already stored under that id.

        Arguments are validated first. A known ``command_id``, in any state until cleaned up,
        returns ``(stored, False)`` and writes nothing; the payload is not compared.
        Then the session, when given, must exist. The new command's ``host`` is its session's
        ``host`` (without a session: the store's ``host_id``). It has ``attempts = 0`` and
        ``available_at = now + delay`` (default zero) and is returned as ``(command, True)``.
        :raises ValidationError: if an argument is invalid; nothing is written.
        :raises SessionNotFound: if ``session_id`` names no session (and the id is new).
        """
        ...

    def claim(self, owner: str, *, lease: timedelta | None = None) -> Command | None:
        """Lease the claimable command with the smallest ``seq`` that heads its group.

        Only commands whose ``host`` is the store's ``host_id`` are considered, for the search
        and for the head check (a terminal can only be typed into on its own machine).

        A command the search would choose with ``attempts >= inbox_max_attempts`` becomes
        ``dead`` with ``last_error = "gave up after N attempts"`` instead, and the search goes on.
        The chosen command becomes ``leased`` by ``owner`` until ``now + lease``, with
        ``attempts + 1``; None when nothing is claimable.
        :raises ValidationError: if ``owner`` or ``lease`` is invalid.
        """
        ...

    def extend(self, command_id: str, owner: str, *, lease: timedelta | None = None) -> Command:
        """Set ``lease_until = now + lease`` on a command leased by ``owner``.

        A lease past its time still counts until someone else claims the command.
        :raises CommandNotFound: if there is no command with that id.
        :raises LeaseLost: if the command is not ``leased`` by ``owner``.
        """
        ...

    def complete(self, command_id: str, owner: str) -> Command:
        """Make a command leased by ``owner`` ``done``, clearing its lease.

        :raises CommandNotFound: if there is no command with that id.
        :raises LeaseLost: if the command is not ``leased`` by ``owner``.
        """
        ...

    def fail(
        self,
        command_id: str,
        owner: str,
        error: str,
        *,
        retry_in: timedelta | None = None,
        final: bool = False,
    ) -> Command:
        """Record ``error`` as ``last_error`` on a command leased by ``owner`` and release it.

        It becomes ``dead`` when ``final`` or ``attempts >= inbox_max_attempts``; else ``ready``
        with ``available_at = now + retry_in``, or when ``retry_in`` is None
        ``now + min(1 s * 2 ** (attempts - 1), 5 min)``. Either way its lease is cleared.
        :raises CommandNotFound: if there is no command with that id.
        :raises LeaseLost: if the command is not ``leased`` by ``owner``.
        """
        ...

    def requeue(self, command_id: str) -> Command:
        """Make a ``dead`` or ``done`` command ``ready`` again, for an operator.

        It gets ``attempts = 0`` and ``available_at = now``; its ``last_error`` is kept. A
        ``ready`` or ``leased`` command is returned unchanged.
        :raises CommandNotFound: if there is no command with that id.
        """
        ...

    def get(self, command_id: str) -> Command | None:
        """The command with that id, in any state, or None."""
        ...

    def list_commands(
        self, *, session_id: str | None = None, state: str | None = None, host: str | None = None
    ) -> list[Command]:
        """Every command, or those of one session, in one state and/or of one host, by ``seq``.

        :raises ValidationError: if ``state`` or ``host`` is invalid.
        """
        ...

    def cleanup_inbox(self) -> list[str]:
        """Remove ``done`` and ``dead`` commands with ``updated_at + inbox_retention <= now``.

        Returns the removed ids sorted.
        """
        ...


@runtime_checkable
class Store(Protocol):
    """What :func:`registry.open_store` returns: the three stores over one set of data."""

    @property
    def sessions(self) -> SessionRegistry:
        """The session registry."""
        ...

    @property
    def tokens(self) -> TokenStore:
        """The token store."""
        ...

    @property
    def inbox(self) -> CommandInbox:
        """The command inbox."""
        ...

    @property
    def backend(self) -> str:
        """The backend's name: ``"json"``, ``"sqlite"`` or ``"dual"``."""
        ...

    @property
    def session_ttl(self) -> timedelta:
        """How long a register or touch keeps a session live."""
        ...

    @property
    def token_ttl(self) -> timedelta:
        """The default lifetime of a token."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A unit of work: everything inside commits together or not at all.

        The unit is isolated from other threads and processes: none of them sees part of it.
        Nested ``atomic()`` blocks are savepoints: an exception leaving an inner block undoes
        only that block's changes; an exception leaving the outermost block undoes everything.
        The exception itself propagates.
        """
        ...

    def close(self) -> None:
        """Release connections and locks; closing twice is harmless, using it afterwards is not."""
        ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc_info: object) -> None:
        """Close the store."""
        ...
