"""The sqlite backend: one database file in WAL mode (SPEC 4).

The SQL, the schema and the connection pragmas live in :mod:`registry.backends.sqlite_sql`.
The store's one transaction helper, :meth:`SqliteStore._transaction`, begins every writing unit
with ``BEGIN IMMEDIATE`` and nests units as savepoints.

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
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from registry.backends._base import BaseStore, Clock
from registry.backends.sqlite_sql import (
    ORDER,
    SCHEMA_VERSION,
    SESSION_COLUMNS,
    TOKEN_COLUMNS,
    UPSERT_SESSION,
    UPSERT_TOKEN,
    connect,
    prepare_schema,
    refuse_orphan_wal,
    refuse_symlinks,
    register_row,
    remove_row,
    touch_row,
    transaction,
    translate,
    translated,
    update_row,
)
from registry.errors import RegistryError, SessionNotFound, ValidationError
from registry.models import (
    Session,
    Token,
    Transport,
    add_ttl,
    check_update,
    to_ms,
    trusted_session,
    trusted_token,
)
from registry.paths import create_private_file, ensure_private_dir
from registry.validation import (
    check_key,
    check_notify,
    check_pid,
    check_start_time,
    check_state,
    check_text,
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
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._forking = False
        self._depth = threading.local()

    def enter(self) -> None:
        depth: int = getattr(self._depth, "n", 0)
        if not depth:
            with self._lock:
                while self._forking:
                    self._idle.wait()
                self._active += 1
        self._depth.n = depth + 1

    def try_enter(self) -> bool:
        """Enter without waiting; False while a fork is in progress."""
        depth: int = getattr(self._depth, "n", 0)
        if not depth:
            if not self._lock.acquire(blocking=False):
                return False
            try:
                if self._forking:
                    return False
                self._active += 1
            finally:
                self._lock.release()
        self._depth.n = depth + 1
        return True

    def leave(self) -> None:
        depth: int = self._depth.n - 1
        self._depth.n = depth
        if not depth:
            with self._lock:
                self._active -= 1
                if self._forking and self._active <= 1:
                    self._idle.notify_all()

    def before_fork(self) -> None:
        self._lock.acquire()
        self._forking = True
        # The forking thread's own share (it may fork inside a unit) is not waited for.
        own = 1 if getattr(self._depth, "n", 0) else 0
        deadline = time.monotonic() + FORK_WAIT_S
        while self._active > own:
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
            self._active = 1


_QUIESCE: Final = _Quiesce()
os.register_at_fork(
    before=_QUIESCE.before_fork,
    after_in_parent=_QUIESCE.after_fork_parent,
    after_in_child=_QUIESCE.after_fork_child,
)


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


def _session_row(session: Session) -> tuple[Any, ...]:
    return (
        session.session_id,
        session.ppid,
        session.pid,
        session.start_time,
        session.cwd,
        session.label,
        int(session.notify),
        session.transport.kind,
        _details_json(session.transport),
        session.state,
        to_ms(session.created_at),
        to_ms(session.updated_at),
        to_ms(session.last_seen),
        to_ms(session.expires_at),
    )


def _update_columns(changes: dict[str, Any]) -> dict[str, Any]:
    """Column values for ``update``'s fields, validated by the model's rules."""
    check_update(changes)
    columns = {k: v for k, v in changes.items() if k != "transport"}
    if "notify" in columns:
        columns["notify"] = int(columns["notify"])
    if "transport" in changes:
        columns["transport_kind"] = changes["transport"].kind
        columns["transport_details"] = _details_json(changes["transport"])
    return columns


def _details_json(transport: Transport) -> str:
    return json.dumps(dict(transport.details), separators=(",", ":"))


def _token_row(token: Token) -> tuple[Any, ...]:
    return (
        token.token,
        token.session_id,
        token.chat_id,
        json.dumps(list(token.scopes)),
        json.dumps(token.context.to_dict(), separators=(",", ":")),
        to_ms(token.created_at),
        to_ms(token.expires_at),
    )


class _Local(threading.local):
    holder: _Holder | None = None


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
    ) -> None:
        super().__init__(clock=clock, session_ttl=session_ttl, token_ttl=token_ttl)
        # Absolute once, here: a relative path would follow every later os.chdir, and a thread
        # opening its connection after one would open (and create) another, empty database.
        self.path = Path(os.path.abspath(path))
        self._timeout = lock_timeout_s
        self._local = _Local()
        self._read_scope = _ReadScope(self.path)
        self._select_sql: dict[tuple[bool, bool, bool, int | None], str] = {}
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
                prepare_schema(self._conn(), self.path)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- connections

    def _holder(self) -> _Holder:
        holder = self._local.holder
        if holder is not None and holder.pid == os.getpid():
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
        if holder is not None and holder.pid == os.getpid():
            return holder.conn
        return self._holder().conn

    def _close(self) -> None:
        with self._holders_lock:
            holders, self._holders = list(self._holders), weakref.WeakSet()
        for holder in holders:
            holder.finalizer()  # closes it, or keeps it for ever in a forked child

    # ----------------------------------------------------------------- scopes

    def _reading(self) -> AbstractContextManager[None]:
        return self._read_scope

    def _writing(self, *, savepoint: bool) -> AbstractContextManager[None]:
        return self._transaction(savepoint=savepoint)

    @contextmanager
    def _transaction(self, *, savepoint: bool) -> Iterator[None]:
        """The one transaction helper: BEGIN IMMEDIATE, or a savepoint when nested."""
        _QUIESCE.enter()
        try:
            holder = self._holder()
            with self._unit(holder, self._conn(), savepoint=savepoint):
                yield
            if holder.pid != os.getpid():
                # fork() inside a unit: the child must not finish (or even roll back) the
                # parent's transaction on the parent's connection.
                raise RegistryError("a unit begun before fork() cannot go on in the child")
        finally:
            _QUIESCE.leave()

    @contextmanager
    def _unit(
        self, holder: _Holder, conn: sqlite3.Connection, *, savepoint: bool
    ) -> Iterator[None]:
        depth = holder.depth
        if depth and not savepoint:
            # A write inside an open unit joins it.
            with translated(self.path):
                yield
            return
        if depth == 0:
            holder.depth = 1
            try:
                with transaction(conn, self.path, owner=holder.pid):
                    yield
            finally:
                holder.depth = 0
            return
        name = f"sp{depth}"
        with translated(self.path):
            conn.execute(f"SAVEPOINT {name}")
        holder.depth = depth + 1
        try:
            yield
            if holder.pid == os.getpid():
                conn.execute(f"RELEASE {name}")
        except BaseException as exc:
            if holder.pid == os.getpid():
                with translated(self.path):
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, self.path) from exc
            raise
        finally:
            holder.depth = depth

    # ----------------------------------------------------------------- one-statement writes
    # register, touch and remove run the same statements as the hook's fast path (sqlite_sql).

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
        check_pid("ppid", ppid)
        check_pid("pid", pid)
        check_start_time(start_time)
        check_text("cwd", cwd)
        check_text("label", label)
        if notify is not None:
            check_notify(notify)
        if state is not None:
            check_state(state)
        if transport is not None and not isinstance(transport, Transport):
            raise ValidationError(f"transport must be a Transport, got {type(transport).__name__}")
        with self._write() as now:
            row = register_row(
                self._conn(),
                session_id=session_id,
                ppid=ppid,
                pid=pid,
                start_time=start_time,
                cwd=cwd,
                label=label,
                notify=None if notify is None else int(notify),
                transport_kind=None if transport is None else transport.kind,
                transport_details=None if transport is None else _details_json(transport),
                state=state,
                now=to_ms(now),
                expires_at=to_ms(add_ttl(now, self.session_ttl)),
            )
        # The model is built after COMMIT: the write lock is held no longer than SQLite needs.
        return trusted_session(row)

    def touch(self, session_id: str) -> Session:
        if not is_key("session_id", session_id):
            self._check_open()
            raise SessionNotFound(f"no session {session_id!r}")
        with self._write() as now:
            row = touch_row(
                self._conn(), session_id, to_ms(now), to_ms(add_ttl(now, self.session_ttl))
            )
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
        return trusted_session(row)

    def update(self, session_id: str, **changes: Any) -> Session:
        columns = _update_columns(changes)
        if not is_key("session_id", session_id):
            self._check_open()
            raise SessionNotFound(f"no session {session_id!r}")
        with self._write() as now:
            row = update_row(self._conn(), session_id, columns, to_ms(now))
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
        return trusted_session(row)

    def remove(self, session_id: str) -> bool:
        if not is_key("session_id", session_id):
            self._check_open()
            return False
        with self._write():
            return remove_row(self._conn(), session_id)

    # ----------------------------------------------------------------- primitives

    def _get(self, session_id: str) -> Session | None:
        row = (
            self._conn()
            .execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))
            .fetchone()
        )
        return None if row is None else trusted_session(row)

    def _put(self, session: Session) -> None:
        self._conn().execute(UPSERT_SESSION, _session_row(session))

    def _delete_sessions(self, session_ids: list[str]) -> None:
        # Tokens go with them through ON DELETE CASCADE (foreign_keys is on for every connection).
        self._conn().executemany(
            "DELETE FROM sessions WHERE session_id = ?", [(sid,) for sid in session_ids]
        )

    def _select(
        self,
        now: datetime,
        *,
        active_only: bool,
        notify_only: bool,
        ppid: int | None = None,
        limit: int | None = None,
    ) -> list[Session]:
        key = (ppid is not None, notify_only, active_only, limit)
        sql = self._select_sql.get(key)
        if sql is None:
            where = []
            if ppid is not None:
                where.append("ppid = :ppid")
            if notify_only:
                where.append("notify = 1")
            if active_only:
                where.append("state = 'running' AND expires_at > :now")
            sql = f"SELECT {SESSION_COLUMNS} FROM sessions"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " " + ORDER
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            self._select_sql[key] = sql
        params = {"ppid": ppid, "now": to_ms(now)}
        return [trusted_session(row) for row in self._conn().execute(sql, params)]

    def _expired_ids(self, now: datetime) -> list[str]:
        rows = self._conn().execute(
            "SELECT session_id FROM sessions WHERE expires_at <= ?", (to_ms(now),)
        )
        return [row[0] for row in rows]

    def _get_token(self, token: str) -> Token | None:
        row = (
            self._conn()
            .execute(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token = ?", (token,))
            .fetchone()
        )
        return None if row is None else trusted_token(row)

    def _put_token(self, token: Token) -> None:
        self._conn().execute(UPSERT_TOKEN, _token_row(token))

    def _delete_token(self, token: str) -> bool:
        return self._conn().execute("DELETE FROM tokens WHERE token = ?", (token,)).rowcount > 0

    def _tokens_of(self, session_id: str) -> list[Token]:
        rows = self._conn().execute(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE session_id = ? ORDER BY created_at, token",
            (session_id,),
        )
        return [trusted_token(row) for row in rows]

    def _delete_expired_tokens(self, now: datetime) -> int:
        cursor = self._conn().execute("DELETE FROM tokens WHERE expires_at <= ?", (to_ms(now),))
        return cursor.rowcount

    def _data_version(self) -> object:
        # data_version changes when another connection (thread or process) commits;
        # total_changes counts this connection's own inserts, updates and deletes.
        conn = self._conn()
        return id(conn), conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes

    def _session_of_live_token(self, token: str, now: datetime) -> Session | None:
        # One statement, so the token and its session come from one snapshot.
        columns = ", ".join(f"s.{c.strip()}" for c in SESSION_COLUMNS.split(","))
        row = (
            self._conn()
            .execute(
                f"SELECT {columns} FROM tokens t JOIN sessions s ON s.session_id = t.session_id "
                "WHERE t.token = ? AND t.expires_at > ?",
                (token, to_ms(now)),
            )
            .fetchone()
        )
        return None if row is None else trusted_session(row)

    # ----------------------------------------------------------------- whole-store operations

    def snapshot(self) -> tuple[list[Session], list[Token]]:
        """Every session and token, read in one transaction (WAL contents included).

        Records come in insertion order (rowid), as the legacy files keep them: an import then
        export round trip reproduces the files' order.
        """
        self._check_open()
        with _shared(self.path):
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                sessions = [
                    trusted_session(row)
                    for row in conn.execute(
                        f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY rowid"
                    )
                ]
                tokens = [
                    trusted_token(row)
                    for row in conn.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY rowid")
                ]
            finally:
                conn.execute("COMMIT")
        return sessions, tokens

    def load(self, sessions: list[Session], tokens: list[Token], meta: dict[str, str]) -> None:
        """Insert records and meta entries in one transaction (the import's bulk path)."""
        with self._transaction(savepoint=False):
            conn = self._conn()
            conn.executemany(UPSERT_SESSION, [_session_row(s) for s in sessions])
            conn.executemany(UPSERT_TOKEN, [_token_row(t) for t in tokens])
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
