"""The sqlite backend's SQL, connection set-up, schema, error translation and row codec.

:class:`registry.backends.sqlite.SqliteStore` is built on these functions, and so is the hook's
fast path (``ccr-registry hook``), which writes one session without importing attrs: both run
the very same statements through the same encoder, so the contract suite that tests the store
tests the hook's writes. The decoders need the models and are bound on first import.

Every connection gets ``foreign_keys=ON`` (off by default, per connection: without it ON DELETE
CASCADE silently does nothing), ``synchronous=NORMAL``, a busy timeout, and
``isolation_level=None`` so that transactions are explicit. Every writing transaction starts
with ``BEGIN IMMEDIATE``: a deferred transaction that upgrades from read to write fails at once
with SQLITE_BUSY under contention, whatever the busy timeout.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from registry import _json, defaults
from registry.defaults import SESSION_REMOVED
from registry.errors import RegistryError, StoreBusy, StoreCorrupted
from registry.validation import (
    check_details,
    check_kind,
    check_notify,
    check_pid,
    check_start_time,
    check_state,
    check_text,
)

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final

    # A path as str or Path: pathlib is not imported at run time (a hook's fast path passes a
    # str; not importing pathlib, fnmatch, urllib.parse and ipaddress saves it about 3 ms).
    StrPath = str | os.PathLike[str]

SCHEMA_VERSION: Final = 3

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
    # Version 2: the command inbox (SPEC 3.4). No foreign key to sessions: a removed session's
    # commands stay (dead) until retention, as the dedup memory of their ids. The partial
    # indexes hold only pending commands, so claim and the per-session head check stay index
    # lookups however many done commands the table keeps.
    """
    CREATE TABLE commands (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      command_id TEXT NOT NULL UNIQUE,
      session_id TEXT,
      payload TEXT NOT NULL, chat_id INTEGER,
      state TEXT NOT NULL DEFAULT 'ready'
        CHECK (state IN ('ready', 'leased', 'done', 'dead')),
      attempts INTEGER NOT NULL DEFAULT 0, available_at INTEGER NOT NULL,
      lease_owner TEXT, lease_until INTEGER, last_error TEXT,
      created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
    CREATE INDEX idx_commands_queue ON commands(seq, session_id)
      WHERE state IN ('ready', 'leased');
    CREATE INDEX idx_commands_head ON commands(session_id, seq)
      WHERE state IN ('ready', 'leased');
    CREATE INDEX idx_commands_session ON commands(session_id, seq);
    CREATE INDEX idx_commands_finished ON commands(updated_at)
      WHERE state IN ('done', 'dead');
    """,
    # Version 3: the machine of each session and command (SPEC 2, 4). Rows of an older
    # database get the opening store's host_id: prepare_schema fills the '' this step leaves,
    # in the same transaction. The ppid lookup and claim filter by host, so their indexes lead
    # with it; the head check stays a probe of idx_commands_head (one session's pending
    # commands), and idx_commands_queue still serves the lists of pending commands.
    """
    ALTER TABLE sessions ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE commands ADD COLUMN host TEXT NOT NULL DEFAULT '';
    DROP INDEX idx_sessions_ppid;
    CREATE INDEX idx_sessions_host_ppid ON sessions(host, ppid);
    CREATE INDEX idx_commands_claim ON commands(host, seq, session_id)
      WHERE state IN ('ready', 'leased');
    """,
)
# What the version-3 step leaves in the rows it found, until prepare_schema fills it.
_NO_HOST: Final = ""
assert len(MIGRATIONS) == SCHEMA_VERSION

# The columns in table order. Statements, the encoder and the decoder are all written against
# these names: a new column is one entry here, one in the codec below, and one schema step.
SESSION_FIELDS: Final = (
    "session_id", "ppid", "pid", "start_time", "cwd", "label", "notify", "transport_kind",
    "transport_details", "state", "created_at", "updated_at", "last_seen", "expires_at", "host",
)  # fmt: skip
TOKEN_FIELDS: Final = (
    "token", "session_id", "chat_id", "scopes", "context", "created_at", "expires_at",
)  # fmt: skip
COMMAND_FIELDS: Final = (
    "seq", "command_id", "session_id", "payload", "chat_id", "state", "attempts", "available_at",
    "lease_owner", "lease_until", "last_error", "created_at", "updated_at", "host",
)  # fmt: skip
SESSION_COLUMNS: Final = ", ".join(SESSION_FIELDS)
TOKEN_COLUMNS: Final = ", ".join(TOKEN_FIELDS)
COMMAND_COLUMNS: Final = ", ".join(COMMAND_FIELDS)
ORDER: Final = "ORDER BY last_seen DESC, session_id ASC"
# The timestamp columns, which the store sets itself; every other session column is given
# (register, update, the hook), session_id first.
STAMPS: Final = ("created_at", "updated_at", "last_seen", "expires_at")
GIVEN_COLUMNS: Final = tuple(c for c in SESSION_FIELDS if c not in STAMPS)


def _params(count: int) -> str:
    return ", ".join("?" * count)


# Statements are built once, here, with positional parameters: building SQL text per call and
# binding named parameters cost about 1.5 us per register.
SELECT_SESSION: Final = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?"
SELECT_TOKEN: Final = f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token = ?"
SESSION_EXISTS: Final = "SELECT 1 FROM sessions WHERE session_id = ?"
# INSERT OR REPLACE is not used: it deletes the old row, which cascades to the session's tokens
# and resets created_at. The upsert updates in place and leaves created_at alone.
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

# register's merge in one statement, made for the columns given (register_row): a given column
# is written on insert and on update, one not given takes its default on insert and keeps its
# value on update; created_at is set on insert only. One statement per set of given columns,
# built once: a single statement over every column with COALESCE(?, column) bound 15 parameters
# and rewrote every column, about 4 us more per new session and 9 us more per existing one. The
# row is read back with SELECT_SESSION in the same transaction: RETURNING cost 0.7 to 0.9 us
# more per write (SQLite buffers returned rows).
_REGISTER_SQL: dict[tuple[str, ...], str] = {}


def _register_statement(names: tuple[str, ...]) -> str:
    """The statement for these given columns; parameters: session_id, the columns, now,
    expires_at."""
    if not set(names) <= set(GIVEN_COLUMNS[1:]) or len(set(names)) != len(names):
        raise ValueError(f"not the given columns of a session: {names!r}")
    now, expires = f"?{len(names) + 2}", f"?{len(names) + 3}"
    values = [f"?{i}" for i in range(1, len(names) + 2)] + [now, now, now, expires]
    sql = _REGISTER_SQL[names] = (
        f"INSERT INTO sessions ({', '.join(('session_id', *names, *STAMPS))}) "
        f"VALUES ({', '.join(values)}) ON CONFLICT (session_id) DO UPDATE SET "
        + "".join(f"{c} = excluded.{c}, " for c in names)
        + f"updated_at = {now}, last_seen = {now}, expires_at = {expires}"
    )
    return sql


TOUCH: Final = "UPDATE sessions SET last_seen = ?, expires_at = ? WHERE session_id = ?"
REMOVE: Final = "DELETE FROM sessions WHERE session_id = ?"

# The inbox. PENDING is spelled once: the partial indexes match it only when the query's text
# says exactly the same.
PENDING: Final = "state IN ('ready', 'leased')"
SELECT_COMMAND: Final = f"SELECT {COMMAND_COLUMNS} FROM commands WHERE command_id = ?"
# seq is given by the caller (the store's next_command_seq, or a dual store's primary); the
# upsert never changes it.
UPSERT_COMMAND: Final = (
    f"INSERT INTO commands ({COMMAND_COLUMNS}) VALUES ({_params(len(COMMAND_FIELDS))}) "
    "ON CONFLICT (command_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COMMAND_FIELDS if c not in ("seq", "command_id"))
)
# AUTOINCREMENT keeps the largest seq ever used in sqlite_sequence, also after that row is
# deleted, so a seq is never given twice.
NEXT_SEQ: Final = (
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'commands'), 0) + 1"
)
# The claimable command with the smallest seq that heads its session's group (SPEC 3.4): the
# outer scan walks idx_commands_claim (the host's pending commands only, in seq order), the
# head check is one probe of idx_commands_head. ``IS`` makes the session-less commands one
# group. Only the store's host's commands take part, in the scan and in the head check (?2).
NEXT_CLAIMABLE: Final = (
    f"SELECT {COMMAND_COLUMNS} FROM commands AS c INDEXED BY idx_commands_claim "
    f"WHERE c.host = ?2 AND c.{PENDING} "
    "AND (CASE c.state WHEN 'ready' THEN c.available_at ELSE c.lease_until END) <= ?1 "
    "AND NOT EXISTS (SELECT 1 FROM commands AS p INDEXED BY idx_commands_head "
    f"WHERE p.session_id IS c.session_id AND p.host = ?2 AND p.{PENDING} AND p.seq < c.seq) "
    "ORDER BY c.seq LIMIT 1"
)
END_COMMANDS: Final = (
    "UPDATE commands SET state = 'dead', last_error = ?, lease_owner = NULL, "
    f"lease_until = NULL, updated_at = ? WHERE session_id = ? AND {PENDING}"
)
FINISHED_COMMANDS: Final = (
    "SELECT command_id FROM commands WHERE state IN ('done', 'dead') AND updated_at <= ?"
)


# --------------------------------------------------------------------------- error translation

# SQLite's primary result codes (the low byte of an extended code), from sqlite3.h. Python 3.11
# puts the code on every sqlite3.Error as ``sqlite_errorcode``; the message text is not stable
# across SQLite versions, the code is.
_BUSY: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_CORRUPT: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_REASONS: Final = {
    3: "permission denied by the operating system",  # SQLITE_PERM
    8: "the database is read-only (file mode, directory or mount)",  # SQLITE_READONLY
    10: "a disk I/O error",  # SQLITE_IOERR
    13: "the disk or its quota is full",  # SQLITE_FULL
    # SQLite says no more than "unable to open database file"; the descriptor limit (EMFILE) is
    # the cause a long-running daemon meets, a missing directory or permission the others.
    14: "cannot open the database (a missing directory, no permission, or too many open files)",
    23: "access denied (SQLITE_AUTH)",  # SQLITE_AUTH
}


def translate(exc: BaseException, path: StrPath) -> RegistryError:
    """The registry error for a driver or OS error raised while using the database at ``path``.

    The one translator: by SQLite's result code, never by the message text. BUSY and LOCKED
    are :class:`StoreBusy`, CORRUPT and NOTADB :class:`StoreCorrupted`, everything else a
    :class:`RegistryError` that names the cause when the code tells it.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if primary in _BUSY:
        return StoreBusy(f"{path}: the database stayed busy past the busy timeout ({name}: {exc})")
    if primary in _CORRUPT:
        return StoreCorrupted(f"{path}: not a sound ccr-registry database ({name}: {exc})")
    reason = _REASONS.get(primary) if primary is not None else None
    if reason is not None:
        return RegistryError(f"{path}: {reason} ({name}: {exc})")
    return RegistryError(f"{path}: {name}: {exc}")


class Translator:
    """A reusable context manager that re-raises sqlite3 and OS errors as registry errors."""

    __slots__ = ("path",)

    def __init__(self, path: StrPath) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.Error | OSError):
            raise translate(exc, self.path) from exc


def translated(path: StrPath) -> Translator:
    """Re-raise sqlite3 and OS errors as registry errors, chained with ``from``."""
    return Translator(path)


# --------------------------------------------------------------------------- the row codec
#
# The pair every path goes through (diskcache's Disk.store / Disk.fetch): SqliteStore's writes,
# the hook's fast path and the importer encode with encode_given / encode_session, the store and
# ``doctor`` decode with decode_session / decode_token. The encoder needs no models (the hook
# must not import attrs); the decoders are bound to the models on first use (__getattr__ below).

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


def ms_of(moment: datetime) -> int:
    """Integer epoch milliseconds of an aware datetime."""
    return (moment - EPOCH) // _ONE_MS


def compact_json(mapping: Mapping[str, Any]) -> str:
    """The JSON text of a details or context column: compact, ASCII (as every row so far)."""
    if not mapping:
        return "{}"
    return _json.dumps(dict(mapping), separators=(",", ":"))


def _check_transport(value: object) -> tuple[str, dict[str, Any]]:
    pair: tuple[object, object] = value  # type: ignore[assignment]
    return check_kind(pair[0]), check_details(pair[1])


# The session fields the API can set, by model name (the transport is one field of two columns),
# each with its check.
_CHECKS: Final[dict[str, Callable[[object], object]]] = {
    "ppid": lambda v: check_pid("ppid", v),
    "pid": lambda v: check_pid("pid", v),
    "start_time": check_start_time,
    "cwd": lambda v: check_text("cwd", v),
    "label": lambda v: check_text("label", v),
    "notify": check_notify,
    "transport": _check_transport,
    "state": check_state,
}
GIVEN_FIELDS: Final = tuple(_CHECKS)


def encode_given(values: Mapping[str, Any], *, check: bool = True) -> dict[str, Any]:
    """The encoder: column values of the session fields in ``values``, by column name.

    ``values`` maps GIVEN_FIELDS names to values (the transport as a ``(kind, details)`` pair);
    each is validated in that order unless ``check`` is False (a model, valid by construction,
    or a legacy record read under the legacy rules). notify becomes 0 or 1 and the details
    compact JSON; a None stays None (for register and the hook: "not given", keep or default).
    """
    columns: dict[str, Any] = {}
    for name in GIVEN_FIELDS:
        if name not in values:
            continue
        value = values[name]
        if check and value is not None:
            _CHECKS[name](value)
        if name == "transport":
            if value is None:
                columns["transport_kind"] = columns["transport_details"] = None
            else:
                columns["transport_kind"] = value[0]
                columns["transport_details"] = compact_json(value[1])
        elif name == "notify":
            columns["notify"] = None if value is None else int(value)
        else:
            columns[name] = value
    return columns


def encode_session(session: Any) -> tuple[Any, ...]:
    """A whole Session model as a row of SESSION_FIELDS (the upsert's parameters)."""
    values = {name: getattr(session, name) for name in GIVEN_FIELDS}
    transport = values["transport"]
    values["transport"] = (transport.kind, transport.details)
    columns = encode_given(values, check=False)
    columns["session_id"] = session.session_id
    columns["host"] = session.host
    for stamp in STAMPS:
        columns[stamp] = ms_of(getattr(session, stamp))
    return tuple(columns[c] for c in SESSION_FIELDS)


def encode_token(token: Any) -> tuple[Any, ...]:
    """A Token model as a row of TOKEN_FIELDS."""
    return token_row(
        token.token,
        token.session_id,
        token.chat_id,
        token.scopes,
        token.context,
        ms_of(token.created_at),
        ms_of(token.expires_at),
    )


def encode_command(command: Any) -> tuple[Any, ...]:
    """A Command model as a row of COMMAND_FIELDS."""
    lease_until = command.lease_until
    return (
        command.seq,
        command.command_id,
        command.session_id,
        compact_json(command.payload),
        command.chat_id,
        command.state,
        command.attempts,
        ms_of(command.available_at),
        command.lease_owner,
        None if lease_until is None else ms_of(lease_until),
        command.last_error,
        ms_of(command.created_at),
        ms_of(command.updated_at),
        command.host,
    )


def token_row(
    token: str,
    session_id: str,
    chat_id: int,
    scopes: tuple[str, ...],
    context: Mapping[str, Any],
    created_at: int,
    expires_at: int,
) -> tuple[Any, ...]:
    """A token's checked values (times in epoch ms) as a row of TOKEN_FIELDS."""
    # Scopes repeat (nearly every token has the default): json.dumps cost about 1.5 us a mint.
    scopes_json = _SCOPES_JSON.get(scopes)
    if scopes_json is None:
        if len(_SCOPES_JSON) >= _CACHE_MAX:
            _SCOPES_JSON.clear()
        scopes_json = _SCOPES_JSON[scopes] = _json.dumps(list(scopes))
    return (token, session_id, chat_id, scopes_json, compact_json(context), created_at, expires_at)


_SCOPES_JSON: dict[tuple[str, ...], str] = {}


# Column positions by name, for the decoders.
_S: Final = {name: i for i, name in enumerate(SESSION_FIELDS)}
_T: Final = {name: i for i, name in enumerate(TOKEN_FIELDS)}
_C: Final = {name: i for i, name in enumerate(COMMAND_FIELDS)}


def session_values(row: Sequence[Any]) -> dict[str, Any]:
    """A session row's columns by name, JSON columns parsed (for a validated construction)."""
    values = {name: row[i] for name, i in _S.items()}
    values["transport_details"] = _json.loads(values["transport_details"])
    return values


def token_values(row: Sequence[Any]) -> dict[str, Any]:
    """A token row's columns by name, JSON columns parsed."""
    values = {name: row[i] for name, i in _T.items()}
    values["scopes"] = _json.loads(values["scopes"])
    values["context"] = _json.loads(values["context"])
    return values


def command_values(row: Sequence[Any]) -> dict[str, Any]:
    """A command row's columns by name, the payload parsed."""
    values = {name: row[i] for name, i in _C.items()}
    values["payload"] = _json.loads(values["payload"])
    return values


def _bind_decoders() -> None:
    """Define the decoders (decode_session, decode_token, decode_command, decode_checked)."""
    from registry.models import Command, FrozenMap, Session, Token, Transport, from_ms

    new = object.__new__
    empty: FrozenMap[Any] = FrozenMap()
    # A slot's descriptor sets it directly: object.__setattr__ by name, as attrs' __init__
    # does per field, cost about 1 us more per Session.
    s_set = {a.name: getattr(Session, a.name).__set__ for a in Session.__attrs_attrs__}
    t_set = {a.name: getattr(Token, a.name).__set__ for a in Token.__attrs_attrs__}
    p_set = {a.name: getattr(Transport, a.name).__set__ for a in Transport.__attrs_attrs__}
    (s_id, s_ppid, s_pid, s_start, s_cwd, s_label, s_notify, s_transport, s_state,
     s_created, s_updated, s_seen, s_expires, s_host) = s_set.values()  # fmt: skip
    t_token, t_sid, t_chat, t_scopes, t_context, t_created, t_expires = t_set.values()
    assert list(s_set) == [
        "transport" if c == "transport_kind" else c
        for c in SESSION_FIELDS
        if c != "transport_details"
    ]
    assert list(t_set) == list(TOKEN_FIELDS)

    # Rows repeat values: sessions share transports and timestamps (created, updated and
    # last_seen are often one moment), tokens share scopes. The objects are immutable, so one
    # object per value serves every row; each cache is cleared when it grows past _CACHE_MAX.
    times: dict[int, datetime] = {}
    transports: dict[tuple[str, str], Transport] = {}
    scopes_of: dict[str, tuple[str, ...]] = {}

    def moment(ms: int) -> datetime:
        found = times.get(ms)
        if found is None:
            if len(times) >= _CACHE_MAX:
                times.clear()
            # Exact: integer seconds and microseconds (fromtimestamp(ms / 1000) is a float).
            found = times[ms] = EPOCH + timedelta(0, ms // 1000, ms % 1000 * 1000)
        return found

    def transport_of(kind: str, details: str) -> Transport:
        key = (kind, details)
        found = transports.get(key)
        if found is None:
            if len(transports) >= _CACHE_MAX:
                transports.clear()
            found = new(Transport)
            p_set["kind"](found, kind)
            p_set["details"](found, empty if details == "{}" else FrozenMap(_json.loads(details)))
            transports[key] = found
        return found

    # The decoders unpack the row in one step and look the caches up inline; a call per
    # timestamp and per index cost about 0.4 us per Session (measured at 2.4 against 2.8 us).
    assert [*SESSION_FIELDS] == [
        "session_id", "ppid", "pid", "start_time", "cwd", "label", "notify", "transport_kind",
        "transport_details", "state", *STAMPS, "host",
    ]  # fmt: skip
    assert [*TOKEN_FIELDS] == [
        "token", "session_id", "chat_id", "scopes", "context", "created_at", "expires_at",
    ]  # fmt: skip
    cached_time = times.get
    cached_transport = transports.get

    def decode_session(row: Sequence[Any]) -> Session:
        """A Session from a row, without the validators: every row was validated when written
        and the schema pins its column types (``ccr-registry doctor`` checks, with
        :func:`decode_checked`, a database something else may have edited)."""
        (sid, ppid, pid, start, cwd, label, notify, kind, details, state,
         created, updated, seen, expires, host) = row  # fmt: skip
        session = new(Session)
        s_id(session, sid)
        s_ppid(session, ppid)
        s_pid(session, pid)
        s_start(session, start)
        s_cwd(session, cwd)
        s_label(session, label)
        s_notify(session, notify == 1)
        s_transport(session, cached_transport((kind, details)) or transport_of(kind, details))
        s_state(session, state)
        s_created(session, cached_time(created) or moment(created))
        s_updated(session, cached_time(updated) or moment(updated))
        s_seen(session, cached_time(seen) or moment(seen))
        s_expires(session, cached_time(expires) or moment(expires))
        s_host(session, host)
        return session

    def decode_token(row: Sequence[Any]) -> Token:
        """A Token from a row, without the validators (see decode_session)."""
        value, sid, chat, raw_scopes, context, created, expires = row
        token = new(Token)
        t_token(token, value)
        t_sid(token, sid)
        t_chat(token, chat)
        scopes = scopes_of.get(raw_scopes)
        if scopes is None:
            if len(scopes_of) >= _CACHE_MAX:
                scopes_of.clear()
            scopes = scopes_of[raw_scopes] = tuple(_json.loads(raw_scopes))
        t_scopes(token, scopes)
        t_context(token, empty if context == "{}" else FrozenMap(_json.loads(context)))
        t_created(token, cached_time(created) or moment(created))
        t_expires(token, cached_time(expires) or moment(expires))
        return token

    c_set = [getattr(Command, a.name).__set__ for a in Command.__attrs_attrs__]
    assert [a.name for a in Command.__attrs_attrs__] == [
        "command_id", "session_id", "seq", "payload", "chat_id", "state", "attempts",
        "available_at", "lease_owner", "lease_until", "last_error", "created_at", "updated_at",
        "host",
    ]  # fmt: skip
    c_order = [_C[a.name] for a in Command.__attrs_attrs__]
    c_payload, c_available, c_lease_until = _C["payload"], _C["available_at"], _C["lease_until"]
    c_created, c_updated = _C["created_at"], _C["updated_at"]

    def decode_command(row: Sequence[Any]) -> Command:
        """A Command from a row, without the validators (see decode_session)."""
        values = list(row)
        payload = values[c_payload]
        values[c_payload] = empty if payload == "{}" else FrozenMap(_json.loads(payload))
        for i in (c_available, c_created, c_updated):
            values[i] = moment(values[i])
        if values[c_lease_until] is not None:
            values[c_lease_until] = moment(values[c_lease_until])
        command = new(Command)
        for setter, i in zip(c_set, c_order, strict=True):
            setter(command, values[i])
        return command

    def decode_checked(kind: str, row: Sequence[Any]) -> Session | Token | Command:
        """A session (``kind`` "session"), token or command row through the validators."""
        if kind == "command":
            c = command_values(row)
            return Command(
                command_id=c["command_id"], session_id=c["session_id"], seq=c["seq"],
                payload=c["payload"], chat_id=c["chat_id"], state=c["state"],
                attempts=c["attempts"], available_at=from_ms(c["available_at"]),
                lease_owner=c["lease_owner"],
                lease_until=None if c["lease_until"] is None else from_ms(c["lease_until"]),
                last_error=c["last_error"], created_at=from_ms(c["created_at"]),
                updated_at=from_ms(c["updated_at"]), host=c["host"],
            )  # fmt: skip
        if kind == "session":
            v = session_values(row)
            return Session(
                session_id=v["session_id"], ppid=v["ppid"], pid=v["pid"],
                start_time=v["start_time"], cwd=v["cwd"], label=v["label"],
                notify=v["notify"] in (0, 1) and bool(v["notify"]),
                transport=Transport(kind=v["transport_kind"], details=v["transport_details"]),
                state=v["state"], created_at=from_ms(v["created_at"]),
                updated_at=from_ms(v["updated_at"]), last_seen=from_ms(v["last_seen"]),
                expires_at=from_ms(v["expires_at"]), host=v["host"],
            )  # fmt: skip
        v = token_values(row)
        return Token(
            token=v["token"], session_id=v["session_id"], chat_id=v["chat_id"],
            scopes=v["scopes"], context=v["context"], created_at=from_ms(v["created_at"]),
            expires_at=from_ms(v["expires_at"]),
        )  # fmt: skip

    globals().update(
        decode_session=decode_session,
        decode_token=decode_token,
        decode_command=decode_command,
        decode_checked=decode_checked,
    )


_CACHE_MAX: Final = 4096
_LAZY: Final = ("decode_session", "decode_token", "decode_command", "decode_checked")


def __getattr__(name: str) -> Any:
    # The decoders need the models (and attrs), which the hook's fast path must not import:
    # they are built the first time someone imports them.
    if name in _LAZY:
        _bind_decoders()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from registry.models import Command, Session, Token

    def decode_session(row: Sequence[Any]) -> Session: ...
    def decode_token(row: Sequence[Any]) -> Token: ...
    def decode_command(row: Sequence[Any]) -> Command: ...
    def decode_checked(kind: str, row: Sequence[Any]) -> Session | Token | Command: ...


def refuse_orphan_wal(path: StrPath) -> None:
    """Refuse a ``-wal`` file whose database is missing: SQLite would replay it into a new one."""
    wal = os.fspath(path) + "-wal"
    if not os.path.exists(path) and os.path.exists(wal):
        raise StoreCorrupted(
            f"{wal} exists without its database {os.path.basename(path)}; it holds committed "
            "data that belongs to a database that is gone. Move it away (or restore the "
            "database) first."
        )


def refuse_symlinks(path: StrPath) -> None:
    """Refuse a database, ``-wal`` or ``-shm`` path that is a symbolic link, dangling or not.

    SQLite follows a link and creates the files at its target with the default mode (0644 under
    the usual umask), so the tokens would land where the link points, readable by others.
    """
    base = os.fspath(path)
    for candidate in (base, base + "-wal", base + "-shm"):
        if os.path.islink(candidate):
            raise RegistryError(
                f"{candidate} is a symbolic link; the database and its -wal and -shm files "
                "must be regular files (point sqlite_path or data_dir at the real location)"
            )


def connect(path: StrPath, timeout: float) -> sqlite3.Connection:
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


def refuse_newer(version: int, path: StrPath) -> None:
    if version > SCHEMA_VERSION:
        raise RegistryError(
            f"{path}: database schema version {version} is newer than this code "
            f"supports (version {SCHEMA_VERSION}); upgrade ccr-registry. Left unmodified."
        )


def prepare_schema(conn: sqlite3.Connection, path: StrPath, host_id: str | None = None) -> None:
    """Create or upgrade the schema; on a current database, only read its version.

    ``host_id``: what the rows of a database older than version 3 take as their host (default
    :func:`registry.defaults.host_id`).
    """
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
        if 0 < version < 3:
            host = defaults.host_id() if host_id is None else host_id
            for table in ("sessions", "commands"):
                conn.execute(f"UPDATE {table} SET host = ? WHERE host = ?", (host, _NO_HOST))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    # journal_mode is persistent in the file; it cannot change inside a transaction.
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (errors translated).

    A class rather than a generator-based context manager: this is every write's path, and
    the generator machinery cost about 3.5 us per write. ``owner``: the pid the
    connection belongs to; in another process (a child that forked inside the unit) the
    connection is left alone, neither committed nor rolled back.
    """

    __slots__ = ("conn", "owner", "path")

    def __init__(
        self, conn: sqlite3.Connection, path: StrPath, *, owner: int | None = None
    ) -> None:
        self.conn = conn
        self.path = path
        self.owner = owner

    def __enter__(self) -> None:
        conn = self.conn
        try:
            if conn.in_transaction:
                # A ROLLBACK that failed (an I/O error) left this connection inside a transaction.
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            raise translate(exc, self.path) from exc

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if self.owner is not None and self.owner != os.getpid():
            return None
        conn = self.conn
        if exc is None:
            try:
                conn.execute("COMMIT")
                return None
            except BaseException as failed:
                exc = failed
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except (sqlite3.Error, OSError) as rollback_failed:
                raise translate(rollback_failed, self.path) from rollback_failed
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, self.path) from exc
        if exc is not None and kind is None:
            raise exc  # COMMIT failed with something other than a driver error
        return None


def transaction(
    conn: sqlite3.Connection, path: StrPath, *, owner: int | None = None
) -> Transaction:
    """The transaction helper for a bare connection (the schema upgrade and the hook)."""
    return Transaction(conn, path, owner=owner)


def register_row(
    conn: sqlite3.Connection,
    session_id: str,
    given: dict[str, Any],
    now: int,
    expires_at: int,
    host: str,
) -> tuple[Any, ...]:
    """Run register's statement with encoded columns (a None: not given) inside the caller's
    transaction, the session's host set to ``host`` (SPEC 2); the stored row."""
    given = {name: value for name, value in given.items() if value is not None}
    given["host"] = host  # a copy: the caller's mapping is left alone
    names = tuple(given)
    sql = _REGISTER_SQL.get(names) or _register_statement(names)
    conn.execute(sql, (session_id, *given.values(), now, expires_at))
    return conn.execute(SELECT_SESSION, (session_id,)).fetchone()  # type: ignore[no-any-return]


def touch_row(
    conn: sqlite3.Connection, session_id: str, now: int, expires_at: int
) -> tuple[Any, ...] | None:
    """Move last_seen and expires_at; the stored row, or None if there is no such session."""
    if conn.execute(TOUCH, (now, expires_at, session_id)).rowcount == 0:
        return None
    return conn.execute(SELECT_SESSION, (session_id,)).fetchone()  # type: ignore[no-any-return]


_UPDATE_SQL: dict[tuple[str, ...], str] = {}


def update_row(
    conn: sqlite3.Connection, session_id: str, columns: dict[str, Any], now: int
) -> tuple[Any, ...] | None:
    """Set encoded column values and ``updated_at``; the stored row, or None if unknown."""
    names = tuple(columns)
    sql = _UPDATE_SQL.get(names)
    if sql is None:
        assignments = "".join(f"{name} = ?, " for name in names if name in _S)  # a fixed set
        sql = _UPDATE_SQL[names] = (
            f"UPDATE sessions SET {assignments}updated_at = ? WHERE session_id = ?"
        )
    if conn.execute(sql, (*columns.values(), now, session_id)).rowcount == 0:
        return None
    return conn.execute(SELECT_SESSION, (session_id,)).fetchone()  # type: ignore[no-any-return]


def remove_row(conn: sqlite3.Connection, session_id: str, now: int) -> bool:
    """Delete a session (its tokens go with it through ON DELETE CASCADE) and make its pending
    commands dead (SPEC 3.4), in the caller's transaction; whether it existed."""
    if conn.execute(REMOVE, (session_id,)).rowcount == 0:
        return False
    conn.execute(END_COMMANDS, (SESSION_REMOVED, now, session_id))
    return True
