"""The sqlite backend's SQL, connection set-up and schema, without the models.

:class:`registry.backends.sqlite.SqliteStore` is built on these functions, and so is the hook's
fast path (``ccr-registry hook``), which writes one session without importing attrs: both run
the very same statements, so the contract suite that tests the store tests the hook's writes.

Every connection gets ``foreign_keys=ON`` (off by default, per connection: without it ON DELETE
CASCADE silently does nothing), ``synchronous=NORMAL``, a busy timeout, and
``isolation_level=None`` so that transactions are explicit. Every writing transaction starts
with ``BEGIN IMMEDIATE``: a deferred transaction that upgrades from read to write fails at once
with SQLITE_BUSY under contention, whatever the busy timeout.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from registry.errors import RegistryError, StoreBusy, StoreCorrupted

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Final

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

SESSION_COLUMNS: Final = (
    "session_id, ppid, pid, start_time, cwd, label, notify, transport_kind, transport_details, "
    "state, created_at, updated_at, last_seen, expires_at"
)
TOKEN_COLUMNS: Final = "token, session_id, chat_id, scopes, context, created_at, expires_at"
ORDER: Final = "ORDER BY last_seen DESC, session_id ASC"

# INSERT OR REPLACE is not used: it deletes the old row, which cascades to the session's tokens
# and resets created_at. The upsert updates in place and leaves created_at alone.
UPSERT_SESSION: Final = f"""
INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET
  ppid = excluded.ppid, pid = excluded.pid, start_time = excluded.start_time,
  cwd = excluded.cwd, label = excluded.label, notify = excluded.notify,
  transport_kind = excluded.transport_kind, transport_details = excluded.transport_details,
  state = excluded.state, updated_at = excluded.updated_at, last_seen = excluded.last_seen,
  expires_at = excluded.expires_at
"""
UPSERT_TOKEN: Final = f"""
INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (token) DO UPDATE SET
  session_id = excluded.session_id, chat_id = excluded.chat_id, scopes = excluded.scopes,
  context = excluded.context, created_at = excluded.created_at, expires_at = excluded.expires_at
"""

# register's merge in one statement: an argument given as NULL keeps the stored value on update,
# or takes the column's default on insert; created_at is set on insert only.
REGISTER: Final = f"""
INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (
  :session_id, :ppid, :pid, :start_time, :cwd, :label, COALESCE(:notify, 0),
  COALESCE(:transport_kind, 'unknown'), COALESCE(:transport_details, '{{}}'),
  COALESCE(:state, 'running'), :now, :now, :now, :expires_at)
ON CONFLICT (session_id) DO UPDATE SET
  ppid = COALESCE(:ppid, ppid), pid = COALESCE(:pid, pid),
  start_time = COALESCE(:start_time, start_time), cwd = COALESCE(:cwd, cwd),
  label = COALESCE(:label, label), notify = COALESCE(:notify, notify),
  transport_kind = COALESCE(:transport_kind, transport_kind),
  transport_details = COALESCE(:transport_details, transport_details),
  state = COALESCE(:state, state), updated_at = :now, last_seen = :now, expires_at = :expires_at
RETURNING {SESSION_COLUMNS}
"""
TOUCH: Final = f"""
UPDATE sessions SET last_seen = :now, expires_at = :expires_at WHERE session_id = :session_id
RETURNING {SESSION_COLUMNS}
"""
REMOVE: Final = "DELETE FROM sessions WHERE session_id = ?"


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
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in message:
        # SQLite says no more than this when open() fails; EMFILE (the descriptor limit) is the
        # cause a long-running daemon meets, a missing directory or permission the others.
        return RegistryError(
            f"{path}: cannot open the database ({message}: a missing directory, no permission, "
            "or too many open files)"
        )
    return RegistryError(f"{path}: {type(exc).__name__}: {message}")


class Translator:
    """A reusable context manager that re-raises sqlite3 errors as registry errors."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.Error | OSError):
            raise translate(exc, self.path) from exc


@contextmanager
def translated(path: Path) -> Iterator[None]:
    """Re-raise sqlite3 and OS errors as registry errors, chained with ``from``."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise translate(exc, path) from exc


def refuse_orphan_wal(path: Path) -> None:
    """Refuse a ``-wal`` file whose database is missing: SQLite would replay it into a new one."""
    wal = path.with_name(path.name + "-wal")
    if not path.exists() and wal.exists():
        raise StoreCorrupted(
            f"{wal} exists without its database {path.name}; it holds committed data that "
            "belongs to a database that is gone. Move it away (or restore the database) first."
        )


def refuse_symlinks(path: Path) -> None:
    """Refuse a database, ``-wal`` or ``-shm`` path that is a symbolic link, dangling or not.

    SQLite follows a link and creates the files at its target with the default mode (0644 under
    the usual umask), so the tokens would land where the link points, readable by others.
    """
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        candidate = path.with_name(name)
        if os.path.islink(candidate):
            raise RegistryError(
                f"{candidate} is a symbolic link; the database and its -wal and -shm files "
                "must be regular files (point sqlite_path or data_dir at the real location)"
            )


def connect(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection with the pragmas every connection needs (see the module docstring).

    :raises RegistryError: if the database or its ``-wal`` or ``-shm`` path is a symlink.
    """
    refuse_symlinks(path)
    conn = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=False, cached_statements=64
    )
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise RegistryError(
            f"{path}: database schema version {version} is newer than this code "
            f"supports (version {SCHEMA_VERSION}); upgrade ccr-registry. Left unmodified."
        )


def prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create or upgrade the schema; on a current database, only read its version."""
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return  # the common case: no write and no DDL
    refuse_newer(version, path)
    with transaction(conn, path):
        # Another process may have upgraded while this one waited for the write lock.
        version = schema_version(conn)
        refuse_newer(version, path)
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreCorrupted(
                f"{path}: has tables but no ccr-registry schema version; not touching it"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    # journal_mode is persistent in the file; it cannot change inside a transaction.
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")


@contextmanager
def transaction(
    conn: sqlite3.Connection, path: Path, *, owner: int | None = None
) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (errors translated).

    ``owner``: the pid the connection belongs to; in another process (a child that forked
    inside the unit) the connection is left alone, neither committed nor rolled back.
    """
    with translated(path):
        if conn.in_transaction:
            # A ROLLBACK that failed (an I/O error) left this connection inside a transaction.
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        if owner is not None and owner != os.getpid():
            return
        conn.execute("COMMIT")
    except BaseException as exc:
        if owner is not None and owner != os.getpid():
            raise
        if conn.in_transaction:
            with translated(path):
                conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, path) from exc
        raise


def register_row(conn: sqlite3.Connection, **values: Any) -> tuple[Any, ...]:
    """Run :data:`REGISTER` (inside the caller's transaction); the stored row."""
    rows = conn.execute(REGISTER, values).fetchall()
    return tuple(rows[0])


def touch_row(
    conn: sqlite3.Connection, session_id: str, now: int, expires_at: int
) -> tuple[Any, ...] | None:
    rows = conn.execute(
        TOUCH, {"session_id": session_id, "now": now, "expires_at": expires_at}
    ).fetchall()
    return tuple(rows[0]) if rows else None


def update_row(
    conn: sqlite3.Connection, session_id: str, columns: dict[str, Any], now: int
) -> tuple[Any, ...] | None:
    """Set validated column values and ``updated_at``; the stored row, or None if unknown."""
    assignments = "".join(f"{name} = :{name}, " for name in columns)  # names from a fixed set
    rows = conn.execute(
        f"UPDATE sessions SET {assignments}updated_at = :now WHERE session_id = :session_id "
        f"RETURNING {SESSION_COLUMNS}",
        {**columns, "now": now, "session_id": session_id},
    ).fetchall()
    return tuple(rows[0]) if rows else None


def remove_row(conn: sqlite3.Connection, session_id: str) -> bool:
    """Delete a session; its tokens go with it through ON DELETE CASCADE."""
    return conn.execute(REMOVE, (session_id,)).rowcount > 0
