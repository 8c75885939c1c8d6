"""The sqlite backend: one database file in WAL mode (SPEC 4).

The SQL, the schema, the connection pragmas and the row codec live in
:mod:`registry.backends.sqlite_sql`. The store's one transaction helper, :class:`_Unit`, begins
every writing unit with ``BEGIN IMMEDIATE`` and nests units as savepoints.

Life cycle of connections (SPEC 4, "safe across threads and after fork()"):

* One connection per thread and process. It is closed when its thread ends (a finalizer on the
  thread's holder object), not only at ``close()``: 500 short-lived threads used to leave about
  1,000 descriptors open.
* A child after ``fork()`` opens its own connection and never uses, finalises or closes one it
  inherited: those are kept referenced for the rest of the child's life (closing one could
  checkpoint or unlock on the parent's behalf; finalising one could wait for a mutex that a
  thread of the parent held at the moment of the fork and that nobody in the child will release).
* Every use of SQLite in the process holds a share of one process-wide quiesce lock, and
  ``os.register_at_fork`` waits (at most :data:`FORK_WAIT_S`) until no share is held before the
  process forks. SQLite keeps its lock state per process: a child forked while another thread
  held the write lock saw that lock as held for ever (24 of 56 such children failed with
  "database is locked" in a measurement with raw sqlite3). After a quiesced fork the child can
  write at once.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from registry.backends._base import BaseStore, Clock
from registry.backends._inbox import InboxSettings
from registry.backends.sqlite_sql import (
    COMMAND_COLUMNS,
    END_COMMANDS,
    FINISHED_COMMANDS,
    NEXT_CLAIMABLE,
    NEXT_SEQ,
    ORDER,
    PENDING,
    SCHEMA_VERSION,
    SELECT_COMMAND,
    SELECT_SESSION,
    SELECT_TOKEN,
    SESSION_COLUMNS,
    SESSION_EXISTS,
    TOKEN_COLUMNS,
    TOKEN_FIELDS,
    UPSERT_COMMAND,
    UPSERT_SESSION,
    UPSERT_TOKEN,
    Transaction,
    connect,
    decode_command,
    decode_session,
    decode_token,
    encode_command,
    encode_given,
    encode_session,
    encode_token,
    prepare_schema,
    refuse_orphan_wal,
    refuse_symlinks,
    register_row,
    remove_row,
    token_row,
    touch_row,
    translate,
    translated,
    update_row,
)
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
    Command,
    Session,
    Token,
    Transport,
    add_ttl,
    check_update,
    from_ms,
    to_ms,
)
from registry.paths import create_private_file, ensure_private_dir
from registry.validation import (
    INT64_MAX,
    INT64_MIN,
    check_bool,
    check_chat_id,
    check_context,
    check_key,
    check_pid,
    check_scopes,
    is_key,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

# How long fork() waits for the threads of this process to leave SQLite. A unit that waits for
# the write lock holds its share meanwhile, so this covers the default lock timeout; past it the
# fork goes ahead (a thread may hold a unit open while it waits for the forking thread).
FORK_WAIT_S: Final = 10.0

# Connections a forked child inherited. SQLite forbids using them across fork(), and closing one
# in the child could disturb the parent's WAL; they are kept referenced (and their reference
# count raised, so that not even the interpreter's exit finalises them).
_INHERITED: list[sqlite3.Connection] = []
# Connections of ended threads whose close had to wait for a fork in progress.
_PENDING_CLOSE: list[sqlite3.Connection] = []


def _keep_forever(conn: sqlite3.Connection) -> None:
    """Never finalise a connection inherited across fork(): not on collection, not at exit."""
    import ctypes  # only in a forked child that inherited a connection

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
    _INHERITED.append(conn)


class _Quiesce:
    """Shares held by every use of SQLite in this process; fork() waits until none is held.

    A thread's nested uses hold one share. ``before_fork`` keeps the lock from the moment it
    starts waiting until the fork is done, so no thread starts a new use meanwhile.

    A share is taken and given back without the lock: one entry appended to or popped from
    ``_shares`` (a list's append and pop are atomic), then a look at ``_forking``. The forking
    thread does the opposite under the lock: it sets ``_forking``, then counts the entries.
    Either the thread sees ``_forking`` and gives its share back to wait for the fork, or the
    forking thread counts its share and waits for it; a share given back while a fork waits
    wakes it. Two lock round trips per use cost about 0.6 us of a 10 us get.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._shares: list[None] = []  # one entry per thread holding a share
        self._forking = False
        self._depth = threading.local()

    def enter(self) -> None:
        local = self._depth
        depth: int = getattr(local, "n", 0)
        if not depth:
            self._shares.append(None)
            if self._forking:
                self._wait_for_fork()
        local.n = depth + 1

    def _wait_for_fork(self) -> None:
        """Give back the share just taken, wait until the fork is done, and take it again."""
        with self._idle:  # free only while the forking thread waits, or once it has forked
            self._shares.pop()
            self._idle.notify_all()  # the forking thread may have counted this share
            while self._forking:
                self._idle.wait()
            self._shares.append(None)

    def try_enter(self) -> bool:
        """Enter without waiting; False while a fork is in progress."""
        depth: int = getattr(self._depth, "n", 0)
        if not depth:
            if not self._lock.acquire(blocking=False):
                return False
            try:
                if self._forking:
                    return False
                self._shares.append(None)
            finally:
                self._lock.release()
        self._depth.n = depth + 1
        return True

    def leave(self) -> None:
        local = self._depth
        depth: int = local.n - 1
        local.n = depth
        if not depth:
            self._shares.pop()
            if self._forking:
                with self._idle:
                    self._idle.notify_all()

    def before_fork(self) -> None:
        self._lock.acquire()
        self._forking = True
        # The forking thread's own share (it may fork inside a unit) is not waited for.
        own = 1 if getattr(self._depth, "n", 0) else 0
        deadline = time.monotonic() + FORK_WAIT_S
        while len(self._shares) > own:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._idle.wait(remaining)

    def after_fork_parent(self) -> None:
        self._forking = False
        self._idle.notify_all()
        self._lock.release()

    def after_fork_child(self) -> None:
        # Only the forking thread exists in the child: the other shares left with their threads.
        depth = getattr(self._depth, "n", 0)
        self._reset()
        if depth:
            self._depth.n = depth
            self._shares.append(None)


_QUIESCE: Final = _Quiesce()
os.register_at_fork(
    before=_QUIESCE.before_fork,
    after_in_parent=_QUIESCE.after_fork_parent,
    after_in_child=_QUIESCE.after_fork_child,
)

# This process's id, kept by the at-fork handler below: a connection lookup compares a holder's
# pid with it instead of calling os.getpid() (a system call, about 0.25 us per operation).
_PID = os.getpid()


def _after_fork_child() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork_child)


def _release(conn: sqlite3.Connection, pid: int) -> None:
    """Close a connection whose thread ended, or whose store closed (the holder's finalizer)."""
    if pid != os.getpid():
        _keep_forever(conn)
        return
    if not _QUIESCE.try_enter():
        _PENDING_CLOSE.append(conn)  # a fork is in progress: closed by the next new connection
        return
    try:
        with contextlib.suppress(sqlite3.Error):  # closing must not fail a shutdown
            conn.close()
    finally:
        _QUIESCE.leave()


class _Holder:
    """A thread's connection; when the thread ends its holder goes, and the finalizer closes it."""

    __slots__ = ("__weakref__", "conn", "depth", "finalizer", "pid")

    def __init__(self, conn: sqlite3.Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.depth = 0  # how deep this thread is in write units
        self.finalizer = weakref.finalize(self, _release, conn, pid)


class _ReadScope:
    """The scope of one read: a quiesce share, and sqlite3 errors translated.

    A plain object, not a generator: reads are the hot path, and a generator-based context
    manager costs more than the SELECT of a lookup by id.
    """

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        _QUIESCE.enter()

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        _QUIESCE.leave()
        if isinstance(exc, sqlite3.Error | OSError):
            raise translate(exc, self.path) from exc


@contextmanager
def _shared(path: Path) -> Iterator[None]:
    """A quiesce share with errors translated, for calls outside the read and write scopes."""
    with _ReadScope(path):
        yield


class _Local(threading.local):
    holder: _Holder | None = None


_TOKEN_EXPIRES: Final = TOKEN_FIELDS.index("expires_at")
_CONSTRAINT_FOREIGNKEY: Final = 787  # SQLITE_CONSTRAINT_FOREIGNKEY, from sqlite3.h
_LATEST_MS: Final = to_ms(datetime.max.replace(tzinfo=UTC))

_SESSION_OF_TOKEN: Final = (
    "SELECT "
    + ", ".join(f"s.{c.strip()}" for c in SESSION_COLUMNS.split(","))
    + " FROM tokens t JOIN sessions s ON s.session_id = t.session_id"
    " WHERE t.token = ? AND t.expires_at > ?"
)


class _Unit:
    """The one transaction helper: ``BEGIN IMMEDIATE`` for a thread's outermost unit, a
    ``SAVEPOINT`` for a nested ``atomic()``, and a write inside an open unit joins it.

    One small class instead of nested generator-based context managers: an empty write unit
    cost 9.6 us that way against 4.3 us for a bare ``BEGIN IMMEDIATE; COMMIT``. A
    unit begun before fork() cannot go on in the child: leaving it there raises RegistryError
    without committing or rolling back the parent's transaction.
    """

    __slots__ = ("conn", "depth", "holder", "joined", "savepoint", "store", "transaction")

    def __init__(self, store: SqliteStore, savepoint: bool) -> None:
        self.store = store
        self.savepoint = savepoint

    def __enter__(self) -> None:
        holder = self.store._local.holder
        if not self.savepoint and holder is not None and holder.depth and holder.pid == _PID:
            # A write inside this thread's open unit joins it, and that unit already holds the
            # quiesce share and the connection: taking them again cost about 1 us of each
            # write inside atomic(), with the write lock held (2.2 -> 1.3 us a joined unit).
            self.holder, self.joined = holder, True
            return
        self.joined = False
        _QUIESCE.enter()
        try:
            holder = self.holder = self.store._holder()
            conn = self.conn = self.store._conn()
            depth = self.depth = holder.depth
            self.transaction = None
            if depth == 0:
                # The unit checks the owner itself, against _PID (see __exit__).
                transaction = Transaction(conn, self.store.path)
                transaction.__enter__()
                self.transaction = transaction
                holder.depth = 1
            elif self.savepoint:
                with translated(self.store.path):
                    conn.execute(f"SAVEPOINT sp{depth}")
                holder.depth = depth + 1
        except BaseException:
            _QUIESCE.leave()
            raise

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if self.joined:
            if isinstance(exc, sqlite3.Error | OSError):
                raise translate(exc, self.store.path) from exc
            if exc is None and self.holder.pid != _PID:
                raise RegistryError("a unit begun before fork() cannot go on in the child")
            return
        try:
            holder, depth = self.holder, self.depth
            # This process's id from the at-fork handler, not os.getpid(): a system call each
            # here and in Transaction cost about 0.5 us per write.
            owned = holder.pid == _PID
            if self.transaction is not None:
                holder.depth = 0
                if owned:
                    self.transaction.__exit__(kind, exc, tb)
            elif depth and self.savepoint:
                holder.depth = depth
                self._end_savepoint(holder, f"sp{depth}", exc)
            elif isinstance(exc, sqlite3.Error | OSError):  # joined the open unit
                raise translate(exc, self.store.path) from exc
            if exc is None and not owned:
                # fork() inside a unit: the child must not finish (or even roll back) the
                # parent's transaction on the parent's connection.
                raise RegistryError("a unit begun before fork() cannot go on in the child")
        finally:
            _QUIESCE.leave()

    def _end_savepoint(self, holder: _Holder, name: str, exc: BaseException | None) -> None:
        """RELEASE the savepoint, or roll back to it when the block (or the RELEASE) failed."""
        conn = self.conn
        owned = holder.pid == os.getpid()
        failed_here = False
        if exc is None:
            if not owned:
                return
            try:
                conn.execute(f"RELEASE {name}")
                return
            except BaseException as failed:
                exc, failed_here = failed, True
        if owned:
            with translated(self.store.path):
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, self.store.path) from exc
        if failed_here:
            raise exc


class SqliteStore(BaseStore):
    """Sessions and tokens in one SQLite database; see the module docstring for the pragmas."""

    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock,
        session_ttl: timedelta,
        token_ttl: timedelta,
        lock_timeout_s: float,
        inbox: InboxSettings | None = None,
        host_id: str | None = None,
    ) -> None:
        super().__init__(
            clock=clock,
            session_ttl=session_ttl,
            token_ttl=token_ttl,
            inbox=inbox,
            host_id=host_id,
        )
        # Absolute once, here: a relative path would follow every later os.chdir, and a thread
        # opening its connection after one would open (and create) another, empty database.
        self.path = Path(os.path.abspath(path))
        self._timeout = lock_timeout_s
        self._local = _Local()
        self._read_scope = _ReadScope(self.path)
        self._select_sql: dict[tuple[bool, bool, bool, int | None, bool], tuple[str, int]] = {}
        self._ttl_ms: int | None = None
        self._token_ttl_ms_cached: int | None = None
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._holders_lock = threading.Lock()
        with translated(self.path):
            refuse_symlinks(self.path)
            ensure_private_dir(self.path.parent)
            refuse_orphan_wal(self.path)
            if not self.path.exists():
                # Created 0600 before SQLite opens it: SQLite gives -wal and -shm the mode of
                # the database file.
                create_private_file(self.path)
        try:
            with _shared(self.path):
                prepare_schema(self._conn(), self.path, self.host_id)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- connections

    def _holder(self) -> _Holder:
        holder = self._local.holder
        if holder is not None and holder.pid == _PID:
            return holder
        # No connection yet in this thread, or this thread's came from the parent of a fork()
        # (the holder's finalizer keeps that one for ever instead of closing it).
        self._check_open()
        while _PENDING_CLOSE:
            _release(_PENDING_CLOSE.pop(), os.getpid())
        with translated(self.path):  # past the descriptor limit: "unable to open database file"
            conn = connect(self.path, self._timeout)
        holder = _Holder(conn, os.getpid())
        self._local.holder = holder
        with self._holders_lock:
            self._holders.add(holder)
        return holder

    def _conn(self) -> sqlite3.Connection:
        holder = self._local.holder
        if holder is not None and holder.pid == _PID:
            return holder.conn
        return self._holder().conn

    def _close(self) -> None:
        with self._holders_lock:
            holders, self._holders = list(self._holders), weakref.WeakSet()
        for holder in holders:
            holder.finalizer()  # closes it, or keeps it for ever in a forked child

    # ----------------------------------------------------------------- scopes

    def reading(self) -> AbstractContextManager[None]:
        return self._read_scope

    def writing(self, *, savepoint: bool) -> AbstractContextManager[None]:
        return _Unit(self, savepoint)

    # ----------------------------------------------------------------- one-statement writes
    # register, touch and remove run the same statements as the hook's fast path (sqlite_sql),
    # with the same encoder; rows become models after COMMIT, so the write lock is held for
    # SQL only.

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
        given: dict[str, Any] = {}
        if ppid is not None:
            given["ppid"] = ppid
        if pid is not None:
            given["pid"] = pid
        if start_time is not None:
            given["start_time"] = start_time
        if cwd is not None:
            given["cwd"] = cwd
        if label is not None:
            given["label"] = label
        if notify is not None:
            given["notify"] = notify
        if state is not None:
            given["state"] = state
        if transport is not None:
            if not isinstance(transport, Transport):
                raise ValidationError(
                    f"transport must be a Transport, got {type(transport).__name__}"
                )
            given["transport"] = (transport.kind, transport.details)
        columns = encode_given(given)
        now = self._now_ms()
        expires_at = now + self._session_ttl_ms()
        with self._write_unit():
            row = register_row(self._conn(), session_id, columns, now, expires_at, self.host_id)
        return decode_session(row)

    def touch(self, session_id: str) -> Session:
        if not is_key("session_id", session_id):
            self._check_open()
            raise SessionNotFound(f"no session {session_id!r}")
        now = self._now_ms()
        with self._write_unit():
            row = touch_row(self._conn(), session_id, now, now + self._session_ttl_ms())
        if row is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return decode_session(row)

    def update(self, session_id: str, **changes: Any) -> Session:
        check_update(changes)
        transport = changes.get("transport")
        given = dict(changes)
        if transport is not None:
            given["transport"] = (transport.kind, transport.details)
        columns = encode_given(given, check=False)  # check_update checked them
        if not is_key("session_id", session_id):
            self._check_open()
            raise SessionNotFound(f"no session {session_id!r}")
        now = self._now_ms()
        with self._write_unit():
            row = update_row(self._conn(), session_id, columns, now)
        if row is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return decode_session(row)

    def remove(self, session_id: str) -> bool:
        if not is_key("session_id", session_id):
            self._check_open()
            return False
        now = self._now_ms()
        with self._write_unit():
            return remove_row(self._conn(), session_id, now)

    def _session_ttl_ms(self) -> int:
        ttl_ms = self._ttl_ms
        if ttl_ms is None:
            ttl_ms = self._ttl_ms = self._session_ttl // timedelta(milliseconds=1)
        return ttl_ms

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
        now = self._now_ms()
        # The Token model's checks, in its order (the ttl, its converters, its validators),
        # before the unit; the returned Token is the row decoded, as a read would give it.
        # Building it through attrs' __init__ after the same checks cost about 4 us a mint.
        expires_at = now + self._token_ttl_ms()
        if ttl is not None or expires_at > _LATEST_MS:
            # A given ttl, or a time past the calendar: checked and added as BaseStore does.
            expires_at = to_ms(add_ttl(from_ms(now), self._token_ttl if ttl is None else ttl))
        checked_scopes = DEFAULT_SCOPES if scopes is None else check_scopes(scopes)
        checked_context = {} if context is None else check_context(context)
        check_key("token", token)
        check_key("session_id", session_id)
        check_chat_id(chat_id)
        row = token_row(
            token, session_id, chat_id, checked_scopes, checked_context, now, expires_at
        )
        with self._write_unit():
            # The foreign key is the existence check: a SELECT of the session first cost
            # about 3 us inside the write lock.
            try:
                self._conn().execute(UPSERT_TOKEN, row)
            except sqlite3.IntegrityError as exc:
                if getattr(exc, "sqlite_errorcode", None) != _CONSTRAINT_FOREIGNKEY:
                    raise
                raise SessionNotFound(f"no session {session_id!r}") from None
        return decode_token(row)

    def _token_ttl_ms(self) -> int:
        ttl_ms = self._token_ttl_ms_cached
        if ttl_ms is None:
            ttl_ms = self._token_ttl_ms_cached = self._token_ttl // timedelta(milliseconds=1)
        return ttl_ms

    # ----------------------------------------------------------------- lookups by key
    # get and validate_token, the hot reads, in one read scope with one statement, without
    # BaseStore's layers of calls.
    #
    # The key is checked (is_key) only when it is not plain ASCII text: a non-string is refused
    # as before, and non-ASCII text may hold a lone surrogate, which sqlite3 cannot bind. An
    # ASCII key goes straight to the lookup: one that no record can hold (empty, too long,
    # control characters; every write checks the key) is simply not found there, the same
    # answer. Checking it first cost about 0.5 us of a 12 us get.

    def get(self, session_id: str) -> Session | None:
        self._check_open()
        if (type(session_id) is not str or not session_id.isascii()) and not is_key(
            "session_id", session_id
        ):
            return None
        with self._read_scope:
            row = self._conn().execute(SELECT_SESSION, (session_id,)).fetchone()
        return None if row is None else decode_session(row)

    def validate_token(self, token: str, chat_id: int) -> Token:
        # A plain int in range needs no call: check_chat_id's two cost about 0.1 us here.
        if type(chat_id) is not int or not INT64_MIN <= chat_id <= INT64_MAX:
            check_chat_id(chat_id)
        # The clock in integer ms, compared with the stored column: the same instant as the
        # datetime BaseStore compares, without building it (about 0.5 us).
        now = self._now_ms()
        if (type(token) is not str or not token.isascii()) and not is_key("token", token):
            raise TokenNotFound("no such token")
        with self._read_scope:
            row = self._conn().execute(SELECT_TOKEN, (token,)).fetchone()
        if row is None:
            raise TokenNotFound("no such token")
        found = decode_token(row)
        if not now < row[_TOKEN_EXPIRES]:
            raise TokenExpired(f"token expired at {found.expires_at.isoformat()}")
        if found.chat_id != chat_id:
            raise ChatMismatch("token was issued to another chat")
        return found

    # The list queries read the clock in integer ms, the unit of the column they compare it
    # with: a datetime made and converted back cost about 0.7 us per call (BaseStore's checks,
    # in its order).

    def get_by_ppid(self, ppid: int) -> Session | None:
        if ppid is None:
            raise ValidationError("ppid must be an int, got NoneType")
        check_pid("ppid", ppid)
        now = self._now_ms()
        with self._read_scope:
            found = self._select(now, True, False, ppid, 1, self.host_id)
        return found[0] if found else None

    def list_sessions(
        self, *, active_only: bool = False, notify_only: bool = False, host: str | None = None
    ) -> list[Session]:
        check_bool("active_only", active_only)
        check_bool("notify_only", notify_only)
        if host is not None:
            check_key("host", host)
        now = self._now_ms()
        with self._read_scope:
            return self._select(now, active_only, notify_only, None, None, host)

    # ----------------------------------------------------------------- primitives

    def load_session(self, session_id: str) -> Session | None:
        row = self._conn().execute(SELECT_SESSION, (session_id,)).fetchone()
        return None if row is None else decode_session(row)

    def has_session(self, session_id: str) -> bool:
        return self._conn().execute(SESSION_EXISTS, (session_id,)).fetchone() is not None

    def save_session(self, session: Session) -> None:
        self._conn().execute(UPSERT_SESSION, encode_session(session))

    def delete_sessions(self, session_ids: list[str]) -> None:
        # Tokens go with them through ON DELETE CASCADE (foreign_keys is on for every connection).
        self._conn().executemany(
            "DELETE FROM sessions WHERE session_id = ?", [(sid,) for sid in session_ids]
        )

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
        return self._select(to_ms(now), active_only, notify_only, ppid, limit, host)

    def _select(
        self,
        now: int,
        active_only: bool,
        notify_only: bool,
        ppid: int | None,
        limit: int | None,
        host: str | None,
    ) -> list[Session]:
        """select_sessions with ``now`` in epoch ms."""
        key = (ppid is not None, notify_only, active_only, limit, host is not None)
        cached = self._select_sql.get(key)
        if cached is None:
            # Numbered parameters: ?1 ppid, ?2 now, ?3 host; the call binds as many as the
            # highest number used (sqlite3 refuses more).
            where = []
            used = 0
            if host is not None:
                where.append("host = ?3")  # first: idx_sessions_host_ppid leads with it
                used = 3
            if ppid is not None:
                where.append("ppid = ?1")
                used = max(used, 1)
            if notify_only:
                where.append("notify = 1")
            if active_only:
                where.append("state = 'running' AND expires_at > ?2")
                used = max(used, 2)
            sql = f"SELECT {SESSION_COLUMNS} FROM sessions"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " " + ORDER
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            cached = self._select_sql[key] = (sql, used)
        sql, used = cached
        rows = self._conn().execute(sql, (ppid, now, host)[:used])
        return [decode_session(row) for row in rows]

    def expired_session_ids(self, now: datetime) -> list[str]:
        rows = self._conn().execute(
            "SELECT session_id FROM sessions WHERE expires_at <= ?", (to_ms(now),)
        )
        return [row[0] for row in rows]

    def load_token(self, token: str) -> Token | None:
        row = self._conn().execute(SELECT_TOKEN, (token,)).fetchone()
        return None if row is None else decode_token(row)

    def save_token(self, token: Token) -> None:
        self._conn().execute(UPSERT_TOKEN, encode_token(token))

    def delete_token(self, token: str) -> bool:
        return self._conn().execute("DELETE FROM tokens WHERE token = ?", (token,)).rowcount > 0

    def tokens_of(self, session_id: str) -> list[Token]:
        rows = self._conn().execute(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE session_id = ? ORDER BY created_at, token",
            (session_id,),
        )
        return [decode_token(row) for row in rows]

    def delete_expired_tokens(self, now: datetime) -> int:
        cursor = self._conn().execute("DELETE FROM tokens WHERE expires_at <= ?", (to_ms(now),))
        return cursor.rowcount

    # ----------------------------------------------------------------- inbox primitives

    def load_command(self, command_id: str) -> Command | None:
        row = self._conn().execute(SELECT_COMMAND, (command_id,)).fetchone()
        return None if row is None else decode_command(row)

    def save_command(self, command: Command) -> None:
        self._conn().execute(UPSERT_COMMAND, encode_command(command))

    def next_command_seq(self) -> int:
        return int(self._conn().execute(NEXT_SEQ).fetchone()[0])

    def reserve_command_seq(self, next_seq: int) -> None:
        conn = self._conn()
        if int(conn.execute(NEXT_SEQ).fetchone()[0]) >= next_seq:
            return
        # sqlite_sequence has the row once a command was ever inserted; else it is added.
        updated = conn.execute(
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'commands'", (next_seq - 1,)
        )
        if updated.rowcount == 0:
            conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('commands', ?)", (next_seq - 1,)
            )

    def select_commands(
        self, *, session_id: str | None, state: str | None, host: str | None = None
    ) -> list[Command]:
        # Plain ``?`` with only the given values: a statement numbering ``?1`` alone takes one
        # binding, and sqlite3 refuses a second one.
        where: list[str] = []
        params: list[str] = []
        if host is not None:
            where.append("host = ?")
            params.append(host)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if state is not None:
            where.append("state = ?")
            params.append(state)
            if state in ("ready", "leased"):
                # Spelled as the partial indexes say it, so a list of pending commands walks
                # them instead of scanning every done command the table keeps.
                where.append(PENDING)
        sql = f"SELECT {COMMAND_COLUMNS} FROM commands"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn().execute(sql + " ORDER BY seq", params)
        return [decode_command(row) for row in rows]

    def next_claimable(self, now: datetime, host: str) -> Command | None:
        row = self._conn().execute(NEXT_CLAIMABLE, (to_ms(now), host)).fetchone()
        return None if row is None else decode_command(row)

    def end_commands_of(self, session_ids: list[str], now: datetime, error: str) -> None:
        stamp = to_ms(now)
        self._conn().executemany(END_COMMANDS, [(error, stamp, sid) for sid in session_ids])

    def finished_command_ids(self, cutoff: datetime) -> list[str]:
        return [row[0] for row in self._conn().execute(FINISHED_COMMANDS, (to_ms(cutoff),))]

    def delete_commands(self, command_ids: list[str]) -> None:
        self._conn().executemany(
            "DELETE FROM commands WHERE command_id = ?", [(cid,) for cid in command_ids]
        )

    def data_version(self) -> object:
        # data_version changes when another connection (thread or process) commits;
        # total_changes counts this connection's own inserts, updates and deletes.
        conn = self._conn()
        return id(conn), conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes

    def session_of_live_token(self, token: str, now: datetime) -> Session | None:
        # One statement, so the token and its session come from one snapshot.
        row = self._conn().execute(_SESSION_OF_TOKEN, (token, to_ms(now))).fetchone()
        return None if row is None else decode_session(row)

    # ----------------------------------------------------------------- whole-store operations

    def snapshot(self) -> tuple[list[Session], list[Token]]:
        """Every session and token, read in one transaction (WAL contents included).

        Records come in insertion order (rowid), as the legacy files keep them: an import then
        export round trip reproduces the files' order.
        """
        sessions, tokens, _, _ = self._read_all(commands=False)
        return sessions, tokens

    def snapshot_with_inbox(self) -> tuple[list[Session], list[Token], list[Command], int]:
        """:meth:`snapshot`, and every command (by ``seq``) and the next seq, in the same
        read transaction (the export of ``ccr-inbox.json``)."""
        return self._read_all(commands=True)

    def _read_all(self, *, commands: bool) -> tuple[list[Session], list[Token], list[Command], int]:
        found: list[Command] = []
        next_seq = 0
        self._check_open()
        with _shared(self.path):
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                sessions = [
                    decode_session(row)
                    for row in conn.execute(
                        f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY rowid"
                    )
                ]
                tokens = [
                    decode_token(row)
                    for row in conn.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY rowid")
                ]
                if commands:
                    found = [
                        decode_command(row)
                        for row in conn.execute(
                            f"SELECT {COMMAND_COLUMNS} FROM commands ORDER BY seq"
                        )
                    ]
                    next_seq = int(conn.execute(NEXT_SEQ).fetchone()[0])
            finally:
                conn.execute("COMMIT")
        return sessions, tokens, found, next_seq

    def load(
        self,
        sessions: list[Session],
        tokens: list[Token],
        meta: dict[str, str],
        *,
        commands: Sequence[Command] = (),
        next_seq: int = 1,
    ) -> None:
        """Insert records and meta entries in one transaction (the import's bulk path).

        Commands keep their ``seq``; the next one enqueued gets a larger one, and at least
        ``next_seq`` (an imported inbox's own counter, so that no seq it gave is given again).
        """
        with self.writing(savepoint=False):
            conn = self._conn()
            conn.executemany(UPSERT_SESSION, [encode_session(s) for s in sessions])
            conn.executemany(UPSERT_TOKEN, [encode_token(t) for t in tokens])
            conn.executemany(UPSERT_COMMAND, [encode_command(c) for c in commands])
            if next_seq > int(conn.execute(NEXT_SEQ).fetchone()[0]):
                # AUTOINCREMENT's counter is an ordinary row of sqlite_sequence.
                conn.execute("DELETE FROM sqlite_sequence WHERE name = 'commands'")
                conn.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('commands', ?)",
                    (next_seq - 1,),
                )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                sorted(meta.items()),
            )

    def read_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (for example the import report), or None."""
        self._check_open()
        with _shared(self.path):
            row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def checkpoint(self) -> None:
        """Move the WAL's contents into the database file and truncate the WAL."""
        self._check_open()
        with _shared(self.path):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ----------------------------------------------------------------- queries for tools

    def query_plan(self, sql: str, params: tuple[Any, ...] = ()) -> list[str]:
        """The ``EXPLAIN QUERY PLAN`` details of a statement (for tests and ``doctor``)."""
        with _shared(self.path):
            rows = self._conn().execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return [str(row[-1]) for row in rows]
