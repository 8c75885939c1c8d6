"""The postgres backend: the sessions and tokens of daemons on several machines (SPEC 4).

The same tables as the sqlite backend, in a configurable schema (``[store.postgres] schema``,
default ``ccr``), versioned by the ``schema_version`` row of its ``meta`` table and created or
upgraded in one transaction under a transaction-level advisory lock.

Column types. Timestamps are ``BIGINT`` epoch milliseconds, compared with a ``now`` from the
store's clock, never the server's. The JSON columns (transport details, scopes, context) are
``TEXT`` holding the very text the shared row codec writes, not ``jsonb``: jsonb refuses
``\\u0000`` (a valid context may hold a NUL), reorders keys and drops duplicates, and nothing
queries inside the JSON. ``cwd`` and ``label`` are ``BYTEA`` (UTF-8): PostgreSQL text cannot
hold a NUL character, and both must be kept exactly (SPEC 2). Ids and token values are
``TEXT COLLATE "C"``, so that lists come in code-point order as on every other backend,
whatever the database's collation.

Concurrency. Every writing unit is one transaction whose first statement is
``pg_advisory_xact_lock`` on a key derived from the schema name: one writer at a time, as
sqlite's ``BEGIN IMMEDIATE``, at the default READ COMMITTED level (a read-modify-write under
the lock sees every earlier commit, and nothing can fail with a serialization error). Reads
take no lock: each read scope runs in autocommit, each statement on its own snapshot; a read
that must see one moment (a token and its session) is one statement. A nested ``atomic()`` is a
``SAVEPOINT``. The server's ``lock_timeout`` is the config's ``lock_timeout_s``: a writer that
waits longer for the lock raises :class:`~registry.errors.StoreBusy`.

Connections. A ``psycopg_pool.ConnectionPool`` per store and process (imported on first
use); a thread takes a connection for one read scope or one outermost write unit and gives it
back after, so idle threads hold none. After ``fork()`` the child builds its own pool on first
use and never uses, closes or finalises what it inherited: closing a libpq connection sends the
server a Terminate message on the socket the parent still uses. Those objects are kept
referenced for the child's life (:data:`_INHERITED`).

Every psycopg and pool error is translated with ``raise ... from``: a lock timeout is
:class:`~registry.errors.StoreBusy`, missing or mistyped tables :class:`StoreCorrupted`, a
lost or refused connection a :class:`RegistryError` saying so. The pool checks a connection
each time it hands one out and replaces one the server ended; a connection that breaks while
in use fails that operation (a unit then keeps nothing) and is dropped when given back. So the
store works again once the server does, without being reopened.

A hook process (:func:`_open_hook_store`) uses one plain connection instead (SPEC 4:
``single_connection=True``): opened on first use, held by one scope at a time (another
thread waits for it up to the lock timeout), not checked before use, and dropped when it
broke or was given back inside a transaction, so that the next scope connects again. That
store never imports ``psycopg_pool``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from registry.errors import ConfigError, RegistryError, StoreBusy, StoreCorrupted

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg import sql
    from psycopg.pq import TransactionStatus
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigError(
        "backend 'postgres' needs psycopg 3 and psycopg_pool: "
        f"pip install 'ccr-registry[postgres]' ({exc})"
    ) from exc

from registry.backends._base import BaseStore, Clock
from registry.backends._inbox import InboxSettings
from registry.backends.sqlite_sql import (
    COMMAND_FIELDS,
    SESSION_FIELDS,
    TOKEN_FIELDS,
    decode_command,
    decode_session,
    decode_token,
    encode_command,
    encode_session,
    encode_token,
)
from registry.models import Command, Session, Token, to_ms

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from registry.config import StoreConfig

__all__ = ["SCHEMA_VERSION", "PostgresStore", "open_backend"]

SCHEMA_VERSION: Final = 3

# Ordered upgrade steps: MIGRATIONS[n] takes a schema from version n to n + 1, inside the one
# transaction that also records the new version.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE sessions (
      session_id TEXT COLLATE "C" PRIMARY KEY, ppid BIGINT, pid BIGINT, start_time BIGINT,
      cwd BYTEA, label BYTEA,
      notify INTEGER NOT NULL DEFAULT 0 CHECK (notify IN (0, 1)),
      transport_kind TEXT NOT NULL DEFAULT 'unknown',
      transport_details TEXT NOT NULL DEFAULT '{}',
      state TEXT NOT NULL DEFAULT 'running',
      created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, last_seen BIGINT NOT NULL,
      expires_at BIGINT NOT NULL);
    CREATE INDEX idx_sessions_ppid ON sessions(ppid);
    CREATE INDEX idx_sessions_notify ON sessions(notify) WHERE notify = 1;
    CREATE INDEX idx_sessions_expires ON sessions(expires_at);
    CREATE TABLE tokens (
      token TEXT COLLATE "C" PRIMARY KEY,
      session_id TEXT COLLATE "C" NOT NULL
        REFERENCES sessions(session_id) ON DELETE CASCADE,
      chat_id BIGINT NOT NULL, scopes TEXT NOT NULL DEFAULT '["send_cmd"]',
      context TEXT NOT NULL DEFAULT '{}',
      created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL);
    CREATE INDEX idx_tokens_session ON tokens(session_id);
    CREATE INDEX idx_tokens_expires ON tokens(expires_at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('data_version', '0');
    """,
    # Version 2: the command inbox (SPEC 3.4), as in sqlite: no foreign key to sessions, and
    # partial indexes on the pending commands for claim and the per-session head check. seq is
    # given by the store (next_command_seq), never by a sequence: a dual store saves the
    # primary's seq on the secondary. meta's command_seq keeps the largest seq ever deleted,
    # so that a seq is never given twice.
    """
    CREATE TABLE commands (
      seq BIGINT PRIMARY KEY,
      command_id TEXT COLLATE "C" NOT NULL UNIQUE,
      session_id TEXT COLLATE "C",
      payload TEXT NOT NULL, chat_id BIGINT,
      state TEXT NOT NULL DEFAULT 'ready'
        CHECK (state IN ('ready', 'leased', 'done', 'dead')),
      attempts INTEGER NOT NULL DEFAULT 0, available_at BIGINT NOT NULL,
      lease_owner TEXT COLLATE "C", lease_until BIGINT, last_error BYTEA,
      created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
    CREATE INDEX idx_commands_queue ON commands(seq, session_id)
      WHERE state IN ('ready', 'leased');
    CREATE INDEX idx_commands_head ON commands(session_id, seq)
      WHERE state IN ('ready', 'leased');
    CREATE INDEX idx_commands_session ON commands(session_id, seq);
    CREATE INDEX idx_commands_finished ON commands(updated_at)
      WHERE state IN ('done', 'dead');
    INSERT INTO meta (key, value) VALUES ('command_seq', '0');
    """,
    # Version 3: the machine of each session and command (SPEC 2, 4), as in sqlite. Rows of an
    # older schema get the upgrading store's host_id (_prepare_schema fills the '' left here,
    # in the same transaction); the ppid lookup and claim filter by host, so their indexes
    # lead with it (the head check stays a probe of idx_commands_head: one session's pending
    # commands).
    """
    ALTER TABLE sessions ADD COLUMN host TEXT COLLATE "C" NOT NULL DEFAULT '';
    ALTER TABLE commands ADD COLUMN host TEXT COLLATE "C" NOT NULL DEFAULT '';
    DROP INDEX idx_sessions_ppid;
    CREATE INDEX idx_sessions_host_ppid ON sessions(host, ppid);
    CREATE INDEX idx_commands_claim ON commands(host, seq, session_id)
      WHERE state IN ('ready', 'leased');
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# The meta rows the store itself keeps.
VERSION_KEY: Final = "schema_version"
DATA_VERSION_KEY: Final = "data_version"

# Objects a forked child inherited (pools, connections): never closed, never finalised.
_INHERITED: list[object] = []

SESSION_COLUMNS: Final = ", ".join(SESSION_FIELDS)
TOKEN_COLUMNS: Final = ", ".join(TOKEN_FIELDS)
COMMAND_COLUMNS: Final = ", ".join(COMMAND_FIELDS)
ORDER: Final = "ORDER BY last_seen DESC, session_id ASC"


def _params(count: int) -> str:
    return ", ".join(["%s"] * count)


SELECT_SESSION: Final = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = %s"
SELECT_TOKEN: Final = f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token = %s"
SESSION_EXISTS: Final = "SELECT 1 FROM sessions WHERE session_id = %s"
# An upsert in place: a delete-and-insert would cascade to the session's tokens.
UPSERT_SESSION: Final = (
    f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({_params(len(SESSION_FIELDS))}) "
    "ON CONFLICT (session_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}" for c in SESSION_FIELDS if c not in ("session_id", "created_at")
    )
)
UPSERT_TOKEN: Final = (
    f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({_params(len(TOKEN_FIELDS))}) "
    "ON CONFLICT (token) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in TOKEN_FIELDS if c != "token")
)
SESSION_OF_TOKEN: Final = (
    "SELECT "
    + ", ".join(f"s.{c}" for c in SESSION_FIELDS)
    + " FROM tokens t JOIN sessions s ON s.session_id = t.session_id"
    " WHERE t.token = %s AND t.expires_at > %s"
)
BUMP_DATA_VERSION: Final = (
    "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'data_version'"
)
READ_DATA_VERSION: Final = "SELECT value FROM meta WHERE key = 'data_version'"

# The inbox. PENDING is spelled as the partial indexes' predicate, so the planner uses them.
PENDING: Final = "state IN ('ready', 'leased')"
SELECT_COMMAND: Final = f"SELECT {COMMAND_COLUMNS} FROM commands WHERE command_id = %s"
UPSERT_COMMAND: Final = (
    f"INSERT INTO commands ({COMMAND_COLUMNS}) VALUES ({_params(len(COMMAND_FIELDS))}) "
    "ON CONFLICT (command_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COMMAND_FIELDS if c not in ("seq", "command_id"))
)
NEXT_SEQ: Final = (
    "SELECT GREATEST((SELECT COALESCE(max(seq), 0) FROM commands),"
    " (SELECT value::bigint FROM meta WHERE key = 'command_seq')) + 1"
)
# A copy carries the source's next seq over: meta's command_seq is raised, never lowered.
RESERVE_SEQ: Final = (
    "UPDATE meta SET value = GREATEST(value::bigint, %s)::text WHERE key = 'command_seq'"
)
# Before a delete: remember the largest seq going away.
KEEP_DELETED_SEQ: Final = (
    "UPDATE meta SET value = GREATEST(value::bigint,"
    " (SELECT COALESCE(max(seq), 0) FROM commands WHERE command_id = ANY(%s)))::text"
    " WHERE key = 'command_seq'"
)
# The claimable command with the smallest seq that heads its session's group (SPEC 3.4);
# IS NOT DISTINCT FROM makes the session-less commands one group. Only the store's host's
# commands take part, in the scan and in the head check.
NEXT_CLAIMABLE: Final = (
    f"SELECT {COMMAND_COLUMNS} FROM commands AS c "
    f"WHERE c.host = %(host)s AND c.{PENDING} "
    "AND (CASE c.state WHEN 'ready' THEN c.available_at ELSE c.lease_until END) <= %(now)s "
    "AND NOT EXISTS (SELECT 1 FROM commands AS p WHERE p.host = %(host)s "
    f"AND p.session_id IS NOT DISTINCT FROM c.session_id AND p.{PENDING} AND p.seq < c.seq) "
    "ORDER BY c.seq LIMIT 1"
)
END_COMMANDS: Final = (
    "UPDATE commands SET state = 'dead', last_error = %s, lease_owner = NULL, "
    f"lease_until = NULL, updated_at = %s WHERE session_id = ANY(%s) AND {PENDING}"
)
FINISHED_COMMANDS: Final = (
    "SELECT command_id FROM commands WHERE state IN ('done', 'dead') AND updated_at <= %s"
)

# --------------------------------------------------------------------------- the row codec
# The sqlite backend's codec (registry.backends.sqlite_sql), with cwd and label as UTF-8 bytes.

_CWD: Final = SESSION_FIELDS.index("cwd")
_LABEL: Final = SESSION_FIELDS.index("label")


def _to_bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def _to_text(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).decode("utf-8")


def encode_pg_session(session: Session) -> list[Any]:
    row = list(encode_session(session))
    row[_CWD] = _to_bytes(row[_CWD])
    row[_LABEL] = _to_bytes(row[_LABEL])
    return row


def decode_pg_session(row: Sequence[Any]) -> Session:
    values = list(row)
    values[_CWD] = _to_text(values[_CWD])
    values[_LABEL] = _to_text(values[_LABEL])
    return decode_session(values)


_LAST_ERROR: Final = COMMAND_FIELDS.index("last_error")


def encode_pg_command(command: Command) -> list[Any]:
    row = list(encode_command(command))
    row[_LAST_ERROR] = _to_bytes(row[_LAST_ERROR])
    return row


def decode_pg_command(row: Sequence[Any]) -> Command:
    values = list(row)
    values[_LAST_ERROR] = _to_text(values[_LAST_ERROR])
    return decode_command(values)


# --------------------------------------------------------------------------- errors


def lock_key(purpose: str, schema: str) -> int:
    """A signed 64-bit advisory lock key for ``purpose`` on ``schema`` (stable across runs)."""
    digest = hashlib.blake2b(f"ccr-registry {purpose} {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def translate(exc: BaseException, where: str) -> RegistryError:
    """The registry error for a psycopg or pool error met while using the schema ``where``."""
    name = type(exc).__name__
    if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.QueryCanceled):
        return StoreBusy(f"{where}: the write lock stayed taken past lock_timeout ({name}: {exc})")
    if isinstance(exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure):
        return StoreBusy(f"{where}: the database gave up on a conflicting unit ({name}: {exc})")
    if type(exc).__name__ == "PoolTimeout":  # psycopg_pool's, imported only by a pool
        return RegistryError(
            f"{where}: no database connection within the lock timeout; the server may be "
            f"down or unreachable, or every pooled connection busy ({name}: {exc})"
        )
    if isinstance(
        exc,
        pg_errors.UndefinedTable
        | pg_errors.UndefinedColumn
        | pg_errors.DatatypeMismatch
        | pg_errors.InvalidTextRepresentation,
    ):
        return StoreCorrupted(f"{where}: not a sound ccr-registry schema ({name}: {exc})")
    if isinstance(exc, psycopg.OperationalError):
        return RegistryError(f"{where}: the database connection failed or was lost ({name}: {exc})")
    return RegistryError(f"{where}: {name}: {exc}")


# psycopg_pool's PoolTimeout is a psycopg.OperationalError: one class catches both drivers.
_DRIVER_ERRORS: Final = (psycopg.Error,)


# --------------------------------------------------------------------------- scopes


class _Local(threading.local):
    conn: psycopg.Connection[Any] | None = None
    pid = 0
    depth = 0  # how deep this thread is in write units (0: none open)
    reads = 0  # how deep in read scopes outside a unit
    dirty = False  # the open unit wrote something


def _leave_parent_scopes(local: _Local) -> None:
    """In a forked child: forget the parent's connection (kept referenced, never used).

    :raises RegistryError: inside a unit the parent had begun before fork(): the child can
        neither go on with it nor end it.
    """
    if local.pid == _PID or (local.conn is None and not local.depth):
        return
    if local.conn is not None:
        _INHERITED.append(local.conn)  # a parent's connection, left as it is
    begun = local.depth
    local.conn = None
    local.depth = local.reads = 0
    local.pid = _PID
    if begun:
        raise RegistryError("a unit begun before fork() cannot go on in the child")


class _ReadScope:
    """A read outside a unit takes a pooled connection (autocommit) and gives it back."""

    __slots__ = ("store",)

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        local = self.store._local
        _leave_parent_scopes(local)
        if local.pid == _PID:
            if local.depth:
                return  # inside this thread's unit: the unit's connection answers
            if local.reads:
                local.reads += 1
                return
        self.store._take(local)
        local.reads = 1

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        local = self.store._local
        if not local.depth:
            local.reads -= 1
            if not local.reads:
                self.store._give_back(local)
        if isinstance(exc, _DRIVER_ERRORS):
            raise translate(exc, self.store.where) from exc


class _Unit:
    """The one transaction helper: BEGIN and the advisory lock for a thread's outermost unit,
    a SAVEPOINT for a nested ``atomic()``; a write inside an open unit joins it."""

    __slots__ = ("depth", "savepoint", "store")

    def __init__(self, store: PostgresStore, savepoint: bool) -> None:
        self.store = store
        self.savepoint = savepoint

    def __enter__(self) -> None:
        store = self.store
        local = store._local
        _leave_parent_scopes(local)
        depth = self.depth = local.depth
        try:
            if depth == 0:
                if local.reads:
                    raise RegistryError("a write unit cannot begin inside a read scope")
                conn = store._take(local)
                try:
                    conn.execute("BEGIN")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (store.write_key,))
                except BaseException:
                    store._discard(local)
                    raise
                local.dirty = False
                local.depth = 1
            elif self.savepoint:
                store._conn().execute(f"SAVEPOINT sp{depth}")
                local.depth = depth + 1
        except _DRIVER_ERRORS as exc:
            raise translate(exc, store.where) from exc

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        store = self.store
        local = store._local
        depth = self.depth
        if local.pid != _PID or local.conn is None:
            if exc is None:
                raise RegistryError("a unit begun before fork() cannot go on in the child")
            return
        if depth == 0:
            local.depth = 0
            self._end_transaction(exc)
        elif self.savepoint:
            local.depth = depth
            self._end_savepoint(f"sp{depth}", exc)
        elif isinstance(exc, _DRIVER_ERRORS):  # joined the open unit
            raise translate(exc, store.where) from exc

    def _end_transaction(self, exc: BaseException | None) -> None:
        store = self.store
        local = store._local
        conn = local.conn
        assert conn is not None
        try:
            if exc is None:
                if local.dirty:
                    conn.execute(BUMP_DATA_VERSION)
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except _DRIVER_ERRORS as failed:
            # The connection is in an unknown state: the pool closes it. A failed ROLLBACK
            # still undoes the unit (the server aborts a transaction whose connection ends).
            store._discard(local)
            if exc is None or isinstance(exc, _DRIVER_ERRORS):
                raise translate(failed, store.where) from failed
            return  # the block's own exception goes on
        store._give_back(local)
        if isinstance(exc, _DRIVER_ERRORS):
            raise translate(exc, store.where) from exc

    def _end_savepoint(self, name: str, exc: BaseException | None) -> None:
        conn = self.store._conn()
        where = self.store.where
        try:
            if exc is None:
                conn.execute(f"RELEASE SAVEPOINT {name}")
                return
            conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            conn.execute(f"RELEASE SAVEPOINT {name}")
        except _DRIVER_ERRORS as failed:
            raise translate(failed, where) from failed
        if isinstance(exc, _DRIVER_ERRORS):
            raise translate(exc, where) from exc


# This process's id, kept by an at-fork handler: cheaper than os.getpid() per scope.
_PID = os.getpid()


def _after_fork_child() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork_child)


class PostgresStore(BaseStore):
    """Sessions and tokens in a PostgreSQL schema; see the module docstring."""

    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        clock: Clock,
        session_ttl: timedelta,
        token_ttl: timedelta,
        lock_timeout_s: float,
        inbox: InboxSettings | None = None,
        pool_size: int = 8,
        host_id: str | None = None,
        single_connection: bool = False,
    ) -> None:
        super().__init__(
            clock=clock,
            session_ttl=session_ttl,
            token_ttl=token_ttl,
            inbox=inbox,
            host_id=host_id,
        )
        self.dsn = dsn
        self.schema = schema
        self.where = f"postgres schema {schema!r}"
        self.write_key = lock_key("write", schema)
        self.upgrade_key = lock_key("upgrade", schema)
        self._timeout = lock_timeout_s
        self._pool_size = pool_size
        self._local = _Local()
        self._pool_lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_pid = 0
        # single_connection: one plain connection instead of the pool (the hook's store).
        self._single = single_connection
        self._plain: psycopg.Connection[Any] | None = None
        self._plain_pid = 0
        self._plain_lock = threading.Lock()
        self._read_scope = _ReadScope(self)
        self._select_sql: dict[tuple[bool, bool, bool, int | None, bool], str] = {}
        try:
            self._prepare_schema()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- connections

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Every pooled connection: the schema first on the search path, the lock timeout."""
        conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('lock_timeout', %s, false)",
            (
                sql.Identifier(self.schema).as_string(conn),
                f"{max(1, round(self._timeout * 1000))}ms",
            ),
        )

    def _current_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is not None and self._pool_pid == _PID:
            return pool
        with self._pool_lock:
            if self._pool is not None and self._pool_pid != _PID:
                _INHERITED.append(self._pool)  # the parent's: never closed here
                self._pool = None
            if self._pool is None:
                self._check_open()
                try:
                    from psycopg_pool import ConnectionPool
                except ImportError as exc:  # pragma: no cover - without the extra installed
                    raise ConfigError(
                        "backend 'postgres' needs psycopg_pool: "
                        f"pip install 'ccr-registry[postgres]' ({exc})"
                    ) from exc
                self._pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    kwargs={"autocommit": True},
                    configure=self._configure,
                    # An empty query on every checkout: a connection the server ended (a
                    # restart, pg_terminate_backend, an idle timeout) is replaced before
                    # use instead of failing the caller's operation. About 30 us a scope.
                    check=ConnectionPool.check_connection,
                    timeout=self._timeout,
                    name=f"ccr-registry-{self.schema}",
                    open=False,
                )
                self._pool.open(wait=False)
                self._pool_pid = _PID
            return self._pool

    def _take_plain(self) -> psycopg.Connection[Any]:
        """The store's one plain connection, held by one scope at a time.

        Opened on first use (again after fork(), and after one that broke), configured as a
        pooled one, and not checked before use: the hook's store lives for one event.
        """
        if self._plain_pid != _PID:
            if self._plain is not None:
                _INHERITED.append(self._plain)  # the parent's: never closed here
            self._plain, self._plain_pid = None, _PID
            self._plain_lock = threading.Lock()
        if not self._plain_lock.acquire(timeout=self._timeout):
            raise StoreBusy(f"{self.where}: the store's one connection stayed in use")
        try:
            conn = self._plain
            if conn is None or conn.closed:
                conn = psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(2, math.ceil(self._timeout)),
                )
                try:
                    self._configure(conn)
                except BaseException:
                    conn.close()
                    raise
                self._plain = conn
        except BaseException:
            self._plain_lock.release()
            raise
        return conn

    def _give_back_plain(self, conn: psycopg.Connection[Any]) -> None:
        if conn is not self._plain or self._plain_pid != _PID:
            _INHERITED.append(conn)
            return
        if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            self._plain = None  # the next scope connects again
        self._plain_lock.release()

    def _take(self, local: _Local) -> psycopg.Connection[Any]:
        """Take a connection for this thread's scope: a pooled one, or the plain one."""
        self._check_open()
        _leave_parent_scopes(local)
        try:
            conn = self._take_plain() if self._single else self._current_pool().getconn()
        except _DRIVER_ERRORS as exc:
            raise translate(exc, self.where) from exc
        local.conn = conn
        local.pid = _PID
        return conn

    def _give_back(self, local: _Local) -> None:
        conn, local.conn = local.conn, None
        if conn is None:
            return
        if self._single:
            self._give_back_plain(conn)
            return
        pool = self._pool
        if pool is None or self._pool_pid != _PID or local.pid != _PID:
            _INHERITED.append(conn)
            return
        try:
            pool.putconn(conn)  # a broken connection is closed and replaced by the pool
        except _DRIVER_ERRORS as exc:
            raise translate(exc, self.where) from exc

    def _discard(self, local: _Local) -> None:
        """Give back a connection whose transaction state is unknown: the pool closes it."""
        conn = local.conn
        if conn is not None and local.pid == _PID:
            with contextlib.suppress(psycopg.Error):  # closing a broken one may fail too
                conn.close()
        self._give_back(local)

    def _conn(self) -> psycopg.Connection[Any]:
        conn = self._local.conn
        if conn is None:
            raise RegistryError("a storage primitive ran outside a read or write scope")
        return conn

    def _close(self) -> None:
        plain, self._plain = self._plain, None
        if plain is not None:
            if self._plain_pid == _PID:
                plain.close()
            else:
                _INHERITED.append(plain)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._pool_pid != _PID:
            _INHERITED.append(pool)
            return
        pool.close()

    # ----------------------------------------------------------------- schema

    def _prepare_schema(self) -> None:
        """Create or upgrade the schema; on a current one, only read its version."""
        with self._read_scope:
            version = self._version(self._conn())
        if version == SCHEMA_VERSION:
            return  # the common case: no write and no DDL
        self._refuse_newer(version)
        local = self._local
        conn = self._take(local)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.upgrade_key,))
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
                # Another process may have created or upgraded it while this one waited.
                version = self._version(conn)
                self._refuse_newer(version)
                if version == 0 and self._has_tables(conn):
                    raise StoreCorrupted(
                        f"{self.where}: has tables but no ccr-registry schema version; "
                        "not touching it"
                    )
                for step in range(version, SCHEMA_VERSION):
                    # One round trip per step: without parameters, psycopg sends the text
                    # with the simple query protocol, which takes several statements.
                    conn.execute(MIGRATIONS[step])
                if 0 < version < 3:
                    for table in ("sessions", "commands"):
                        conn.execute(
                            sql.SQL("UPDATE {} SET host = %s WHERE host = ''").format(
                                sql.Identifier(table)
                            ),
                            (self.host_id,),
                        )
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (VERSION_KEY, str(SCHEMA_VERSION)),
                )
        except _DRIVER_ERRORS as exc:
            self._discard(local)
            raise translate(exc, self.where) from exc
        except BaseException:
            self._discard(local)
            raise
        self._give_back(local)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        """The schema's version; 0 when it has no ``meta`` table (a new or foreign schema)."""
        if conn.execute("SELECT to_regclass('meta')").fetchone() == (None,):
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = %s", (VERSION_KEY,)).fetchone()
        if row is None:
            return 0
        try:
            return int(row[0])
        except ValueError as exc:
            raise StoreCorrupted(
                f"{self.where}: schema version {row[0]!r} is not a number; not touching it"
            ) from exc

    def _has_tables(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (self.schema,)
        ).fetchone()
        return row is not None and int(row[0]) > 0

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.where}: database schema version {version} is newer than this code "
                f"supports (version {SCHEMA_VERSION}); upgrade ccr-registry. Left unmodified."
            )

    # ----------------------------------------------------------------- scopes

    def reading(self) -> _ReadScope:
        self._check_open()
        return self._read_scope

    def writing(self, *, savepoint: bool) -> _Unit:
        return _Unit(self, savepoint)

    # ----------------------------------------------------------------- primitives

    def load_session(self, session_id: str) -> Session | None:
        row = self._conn().execute(SELECT_SESSION, (session_id,)).fetchone()
        return None if row is None else decode_pg_session(row)

    def has_session(self, session_id: str) -> bool:
        return self._conn().execute(SESSION_EXISTS, (session_id,)).fetchone() is not None

    def save_session(self, session: Session) -> None:
        self._local.dirty = True
        self._conn().execute(UPSERT_SESSION, encode_pg_session(session))

    def delete_sessions(self, session_ids: list[str]) -> None:
        # Tokens go with them through ON DELETE CASCADE.
        self._local.dirty = True
        self._conn().execute(
            "DELETE FROM sessions WHERE session_id = ANY(%s)", (list(session_ids),)
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
        key = (ppid is not None, notify_only, active_only, limit, host is not None)
        query = self._select_sql.get(key)
        if query is None:
            where = []
            if host is not None:
                where.append("host = %(host)s")
            if ppid is not None:
                where.append("ppid = %(ppid)s")
            if notify_only:
                where.append("notify = 1")
            if active_only:
                where.append("state = 'running' AND expires_at > %(now)s")
            query = f"SELECT {SESSION_COLUMNS} FROM sessions"
            if where:
                query += " WHERE " + " AND ".join(where)
            query += " " + ORDER
            if limit is not None:
                query += f" LIMIT {int(limit)}"
            self._select_sql[key] = query
        params = {"ppid": ppid, "now": to_ms(now), "host": host} if "%(" in query else None
        rows = self._conn().execute(query, params).fetchall()
        return [decode_pg_session(row) for row in rows]

    def expired_session_ids(self, now: datetime) -> list[str]:
        rows = self._conn().execute(
            "SELECT session_id FROM sessions WHERE expires_at <= %s", (to_ms(now),)
        )
        return [row[0] for row in rows.fetchall()]

    def load_token(self, token: str) -> Token | None:
        row = self._conn().execute(SELECT_TOKEN, (token,)).fetchone()
        return None if row is None else decode_token(row)

    def save_token(self, token: Token) -> None:
        self._local.dirty = True
        self._conn().execute(UPSERT_TOKEN, encode_token(token))

    def delete_token(self, token: str) -> bool:
        self._local.dirty = True
        cursor = self._conn().execute("DELETE FROM tokens WHERE token = %s", (token,))
        return cursor.rowcount > 0

    def tokens_of(self, session_id: str) -> list[Token]:
        rows = self._conn().execute(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE session_id = %s ORDER BY created_at, token",
            (session_id,),
        )
        return [decode_token(row) for row in rows.fetchall()]

    def snapshot(self) -> tuple[list[Session], list[Token]]:
        """Every session and token, read inside one write unit (joined when one is open).

        Reads run each statement on its own snapshot; the unit's advisory lock keeps every
        writer out between the two statements, so they show one moment (verify, copy).
        """
        with self.writing(savepoint=False):
            conn = self._conn()
            sessions = conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions {ORDER}").fetchall()
            tokens = conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY session_id, created_at, token"
            ).fetchall()
        return [decode_pg_session(row) for row in sessions], [decode_token(row) for row in tokens]

    def delete_expired_tokens(self, now: datetime) -> int:
        self._local.dirty = True
        cursor = self._conn().execute("DELETE FROM tokens WHERE expires_at <= %s", (to_ms(now),))
        return cursor.rowcount

    # ----------------------------------------------------------------- inbox primitives

    def load_command(self, command_id: str) -> Command | None:
        row = self._conn().execute(SELECT_COMMAND, (command_id,)).fetchone()
        return None if row is None else decode_pg_command(row)

    def save_command(self, command: Command) -> None:
        self._local.dirty = True
        self._conn().execute(UPSERT_COMMAND, encode_pg_command(command))

    def next_command_seq(self) -> int:
        row = self._conn().execute(NEXT_SEQ).fetchone()
        assert row is not None
        return int(row[0])

    def reserve_command_seq(self, next_seq: int) -> None:
        self._local.dirty = True
        self._conn().execute(RESERVE_SEQ, (next_seq - 1,))

    def select_commands(
        self, *, session_id: str | None, state: str | None, host: str | None = None
    ) -> list[Command]:
        where: list[str] = []
        params: list[str] = []
        if host is not None:
            where.append("host = %s")
            params.append(host)
        if session_id is not None:
            where.append("session_id = %s")
            params.append(session_id)
        if state is not None:
            where.append("state = %s")
            params.append(state)
        query = f"SELECT {COMMAND_COLUMNS} FROM commands"
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = self._conn().execute(query + " ORDER BY seq", params).fetchall()
        return [decode_pg_command(row) for row in rows]

    def next_claimable(self, now: datetime, host: str) -> Command | None:
        row = self._conn().execute(NEXT_CLAIMABLE, {"now": to_ms(now), "host": host}).fetchone()
        return None if row is None else decode_pg_command(row)

    def end_commands_of(self, session_ids: list[str], now: datetime, error: str) -> None:
        self._local.dirty = True
        self._conn().execute(END_COMMANDS, (_to_bytes(error), to_ms(now), list(session_ids)))

    def finished_command_ids(self, cutoff: datetime) -> list[str]:
        rows = self._conn().execute(FINISHED_COMMANDS, (to_ms(cutoff),)).fetchall()
        return [row[0] for row in rows]

    def delete_commands(self, command_ids: list[str]) -> None:
        if not command_ids:
            return
        self._local.dirty = True
        conn = self._conn()
        ids = list(command_ids)
        conn.execute(KEEP_DELETED_SEQ, (ids,))
        conn.execute("DELETE FROM commands WHERE command_id = ANY(%s)", (ids,))

    def data_version(self) -> object:
        # A counter every unit that wrote bumps as it commits (under the write lock, so it
        # never goes back). Read inside a unit, after the lock: every earlier commit counted.
        row = self._conn().execute(READ_DATA_VERSION).fetchone()
        return None if row is None else row[0]

    def session_of_live_token(self, token: str, now: datetime) -> Session | None:
        # One statement, so the token and its session come from one snapshot.
        row = self._conn().execute(SESSION_OF_TOKEN, (token, to_ms(now))).fetchone()
        return None if row is None else decode_pg_session(row)


def open_backend(
    config: StoreConfig, clock: Clock, *, single_connection: bool = False
) -> PostgresStore:
    """The entry point of ``ccr_registry.backends``: a store from ``[store.postgres]``."""
    settings = config.postgres
    if settings.dsn is None:
        raise config.error(
            "postgres.dsn",
            "store.postgres.dsn is required for backend 'postgres' "
            '(for example "postgresql:///ccr?host=/run/postgresql")',
        )
    return PostgresStore(
        settings.dsn,
        schema=settings.schema,
        clock=clock,
        session_ttl=config.session_ttl,
        token_ttl=config.token_ttl,
        inbox=config.inbox_settings,
        lock_timeout_s=config.lock_timeout_s,
        host_id=config.host_id,
        single_connection=single_connection,
    )


def _open_hook_store(config: StoreConfig, clock: Clock) -> PostgresStore:
    """The store of a hook process (SPEC 4): one plain connection, no pool, no pool threads.

    :mod:`registry.hook` calls this for ``backend = "postgres"`` instead of
    :func:`registry.factory.open_store`: a hook writes one event and exits, so a pool (its
    import, its worker threads, its checks) is pure start-up cost.
    """
    return open_backend(config, clock, single_connection=True)
