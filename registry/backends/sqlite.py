"""The sqlite backend: one database file in WAL mode (SPEC 4).

Connections are per thread and per process (a child after ``fork()`` opens its own and never
touches the parent's). Every connection gets ``foreign_keys=ON`` (off by default, per
connection: without it ON DELETE CASCADE silently does nothing), ``synchronous=NORMAL``, a busy
timeout, and ``isolation_level=None`` so that transactions are explicit. Every writing
transaction starts with ``BEGIN IMMEDIATE``: a deferred transaction that upgrades from read to
write fails at once with SQLITE_BUSY under contention, whatever the busy timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from registry.backends._base import BaseStore, Clock
from registry.errors import RegistryError, StoreBusy, StoreCorrupted
from registry.models import Session, Token, Transport, from_ms, to_ms
from registry.paths import create_private_file, ensure_private_dir

SCHEMA_VERSION: Final = 1

# Ordered upgrade steps: MIGRATIONS[n] takes a database from user_version n to n + 1. Each runs
# inside the same BEGIN IMMEDIATE transaction as the version bump, so it is all-or-nothing.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE sessions (
      session_id TEXT PRIMARY KEY, ppid INTEGER, pid INTEGER, start_time INTEGER, cwd TEXT,
      label TEXT,
      notify INTEGER NOT NULL DEFAULT 0 CHECK (notify IN (0, 1)),
      transport_kind TEXT NOT NULL DEFAULT 'unknown',
      transport_details TEXT NOT NULL DEFAULT '{}',
      state TEXT NOT NULL DEFAULT 'running',
      created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_seen INTEGER NOT NULL,
      expires_at INTEGER NOT NULL);
    CREATE INDEX idx_sessions_ppid ON sessions(ppid);
    CREATE INDEX idx_sessions_notify ON sessions(notify) WHERE notify = 1;
    CREATE INDEX idx_sessions_expires ON sessions(expires_at);
    CREATE TABLE tokens (
      token TEXT PRIMARY KEY,
      session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
      chat_id INTEGER NOT NULL, scopes TEXT NOT NULL DEFAULT '["send_cmd"]',
      context TEXT NOT NULL DEFAULT '{}',
      created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
    CREATE INDEX idx_tokens_session ON tokens(session_id);
    CREATE INDEX idx_tokens_expires ON tokens(expires_at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_SESSION_COLUMNS: Final = (
    "session_id, ppid, pid, start_time, cwd, label, notify, transport_kind, transport_details, "
    "state, created_at, updated_at, last_seen, expires_at"
)
_TOKEN_COLUMNS: Final = "token, session_id, chat_id, scopes, context, created_at, expires_at"
_ORDER: Final = "ORDER BY last_seen DESC, session_id ASC"

# INSERT OR REPLACE is not used: it deletes the old row, which cascades to the session's tokens
# and resets created_at. The upsert updates in place and leaves created_at alone.
_UPSERT_SESSION: Final = f"""
INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET
  ppid = excluded.ppid, pid = excluded.pid, start_time = excluded.start_time,
  cwd = excluded.cwd, label = excluded.label, notify = excluded.notify,
  transport_kind = excluded.transport_kind, transport_details = excluded.transport_details,
  state = excluded.state, updated_at = excluded.updated_at, last_seen = excluded.last_seen,
  expires_at = excluded.expires_at
"""
_UPSERT_TOKEN: Final = f"""
INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (token) DO UPDATE SET
  session_id = excluded.session_id, chat_id = excluded.chat_id, scopes = excluded.scopes,
  context = excluded.context, created_at = excluded.created_at, expires_at = excluded.expires_at
"""

# Connections a forked child inherited. SQLite forbids using them across fork(), and closing one
# in the child could disturb the parent's WAL; they are kept referenced so that garbage
# collection never closes them either.
_INHERITED: list[sqlite3.Connection] = []


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
        json.dumps(dict(session.transport.details), separators=(",", ":")),
        session.state,
        to_ms(session.created_at),
        to_ms(session.updated_at),
        to_ms(session.last_seen),
        to_ms(session.expires_at),
    )


def _session_from_row(row: tuple[Any, ...]) -> Session:
    return Session(
        session_id=row[0],
        ppid=row[1],
        pid=row[2],
        start_time=row[3],
        cwd=row[4],
        label=row[5],
        notify=bool(row[6]),
        transport=Transport(kind=row[7], details=json.loads(row[8])),
        state=row[9],
        created_at=from_ms(row[10]),
        updated_at=from_ms(row[11]),
        last_seen=from_ms(row[12]),
        expires_at=from_ms(row[13]),
    )


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


def _token_from_row(row: tuple[Any, ...]) -> Token:
    return Token(
        token=row[0],
        session_id=row[1],
        chat_id=row[2],
        scopes=json.loads(row[3]),
        context=json.loads(row[4]),
        created_at=from_ms(row[5]),
        expires_at=from_ms(row[6]),
    )


def translate(exc: BaseException, path: Path) -> RegistryError:
    """The registry error for a driver error raised while using the database at ``path``."""
    message = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and (
        "locked" in message or "busy" in message.lower()
    ):
        return StoreBusy(f"{path}: the database stayed busy past the busy timeout ({message})")
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in message or "malformed" in message or "corrupt" in message
    ):
        return StoreCorrupted(f"{path}: {message}")
    return RegistryError(f"{path}: {type(exc).__name__}: {message}")


@contextmanager
def translated(path: Path) -> Iterator[None]:
    """Re-raise sqlite3 and OS errors as registry errors, chained with ``from``."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise translate(exc, path) from exc


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    pid: int = 0
    depth: int = 0


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
        self.path = Path(path)
        self._timeout = lock_timeout_s
        self._local = _Local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        with translated(self.path):
            ensure_private_dir(self.path.parent)
            if not self.path.exists():
                # Created 0600 before SQLite opens it: SQLite gives -wal and -shm the mode of
                # the database file.
                create_private_file(self.path)
            try:
                self._prepare_schema(self._conn())
            except BaseException:
                self.close()
                raise

    # ----------------------------------------------------------------- connections

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn = local.conn
        if conn is not None and local.pid == os.getpid():
            return conn
        if conn is not None:
            # This thread's connection came from the parent of a fork().
            _INHERITED.append(conn)
            local.depth = 0
        self._check_open()
        conn = sqlite3.connect(
            self.path,
            timeout=self._timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=64,
        )
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        local.conn, local.pid = conn, os.getpid()
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return  # the common case: no write and no DDL
        self._refuse_newer(version)
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have upgraded while this one waited for the write lock.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            self._refuse_newer(version)
            if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreCorrupted(
                    f"{self.path}: has tables but no ccr-registry schema version; not touching it"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        # journal_mode is persistent in the file; it cannot change inside a transaction.
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path}: database schema version {version} is newer than this code "
                f"supports (version {SCHEMA_VERSION}); upgrade ccr-registry. Left unmodified."
            )

    def _close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            if conn in _INHERITED:
                continue
            with contextlib.suppress(sqlite3.Error):  # closing must not fail a shutdown
                conn.close()

    # ----------------------------------------------------------------- scopes

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with translated(self.path):
            yield

    def _writing(self, *, savepoint: bool) -> AbstractContextManager[None]:
        return self._transaction(savepoint=savepoint)

    @contextmanager
    def _transaction(self, *, savepoint: bool) -> Iterator[None]:
        """The one transaction helper: BEGIN IMMEDIATE, or a savepoint when nested."""
        conn = self._conn()
        local = self._local
        depth = local.depth
        if depth and not savepoint:
            # A write inside an open unit joins it.
            with translated(self.path):
                yield
            return
        name = f"sp{depth}"
        with translated(self.path):
            conn.execute("SAVEPOINT " + name if depth else "BEGIN IMMEDIATE")
        local.depth = depth + 1
        try:
            yield
            conn.execute(f"RELEASE {name}" if depth else "COMMIT")
        except BaseException as exc:
            with translated(self.path):
                if depth:
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, self.path) from exc
            raise
        finally:
            local.depth = depth

    # ----------------------------------------------------------------- primitives

    def _get(self, session_id: str) -> Session | None:
        row = (
            self._conn()
            .execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))
            .fetchone()
        )
        return None if row is None else _session_from_row(row)

    def _put(self, session: Session) -> None:
        self._conn().execute(_UPSERT_SESSION, _session_row(session))

    def _delete_sessions(self, session_ids: list[str]) -> None:
        # Tokens go with them through ON DELETE CASCADE (foreign_keys is on for every connection).
        self._conn().executemany(
            "DELETE FROM sessions WHERE session_id = ?", [(sid,) for sid in session_ids]
        )

    def _select(
        self, now: datetime, *, active_only: bool, notify_only: bool, ppid: int | None = None
    ) -> list[Session]:
        where: list[str] = []
        params: list[Any] = []
        if ppid is not None:
            where.append("ppid = ?")
            params.append(ppid)
        if notify_only:
            where.append("notify = 1")
        if active_only:
            where.append("state = 'running' AND expires_at > ?")
            params.append(to_ms(now))
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " " + _ORDER
        if ppid is not None:
            sql += " LIMIT 1"
        return [_session_from_row(row) for row in self._conn().execute(sql, params)]

    def _expired_ids(self, now: datetime) -> list[str]:
        rows = self._conn().execute(
            "SELECT session_id FROM sessions WHERE expires_at <= ?", (to_ms(now),)
        )
        return [row[0] for row in rows]

    def _get_token(self, token: str) -> Token | None:
        row = (
            self._conn()
            .execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token = ?", (token,))
            .fetchone()
        )
        return None if row is None else _token_from_row(row)

    def _put_token(self, token: Token) -> None:
        self._conn().execute(_UPSERT_TOKEN, _token_row(token))

    def _delete_token(self, token: str) -> bool:
        return self._conn().execute("DELETE FROM tokens WHERE token = ?", (token,)).rowcount > 0

    def _tokens_of(self, session_id: str) -> list[Token]:
        rows = self._conn().execute(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE session_id = ? ORDER BY created_at, token",
            (session_id,),
        )
        return [_token_from_row(row) for row in rows]

    def _delete_expired_tokens(self, now: datetime) -> int:
        cursor = self._conn().execute("DELETE FROM tokens WHERE expires_at <= ?", (to_ms(now),))
        return cursor.rowcount

    def _session_of_live_token(self, token: str, now: datetime) -> Session | None:
        # One statement, so the token and its session come from one snapshot.
        columns = ", ".join(f"s.{c.strip()}" for c in _SESSION_COLUMNS.split(","))
        row = (
            self._conn()
            .execute(
                f"SELECT {columns} FROM tokens t JOIN sessions s ON s.session_id = t.session_id "
                "WHERE t.token = ? AND t.expires_at > ?",
                (token, to_ms(now)),
            )
            .fetchone()
        )
        return None if row is None else _session_from_row(row)

    # ----------------------------------------------------------------- whole-store operations

    def snapshot(self) -> tuple[list[Session], list[Token]]:
        """Every session and token, read in one transaction (WAL contents included).

        Records come in insertion order (rowid), as the legacy files keep them: an import then
        export round trip reproduces the files' order.
        """
        self._check_open()
        conn = self._conn()
        with translated(self.path):
            conn.execute("BEGIN")
            try:
                sessions = [
                    _session_from_row(row)
                    for row in conn.execute(
                        f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY rowid"
                    )
                ]
                tokens = [
                    _token_from_row(row)
                    for row in conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY rowid")
                ]
            finally:
                conn.execute("COMMIT")
        return sessions, tokens

    def load(self, sessions: list[Session], tokens: list[Token], meta: dict[str, str]) -> None:
        """Insert records and meta entries in one transaction (the import's bulk path)."""
        with self._transaction(savepoint=False):
            conn = self._conn()
            conn.executemany(_UPSERT_SESSION, [_session_row(s) for s in sessions])
            conn.executemany(_UPSERT_TOKEN, [_token_row(t) for t in tokens])
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                sorted(meta.items()),
            )

    def read_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (for example the import report), or None."""
        self._check_open()
        with translated(self.path):
            row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def checkpoint(self) -> None:
        """Move the WAL's contents into the database file and truncate the WAL."""
        self._check_open()
        with translated(self.path):
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ----------------------------------------------------------------- queries for tools

    def query_plan(self, sql: str, params: tuple[Any, ...] = ()) -> list[str]:
        """The ``EXPLAIN QUERY PLAN`` details of a statement (for tests and ``doctor``)."""
        with translated(self.path):
            rows = self._conn().execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return [str(row[-1]) for row in rows]
