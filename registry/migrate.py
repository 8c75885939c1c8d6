"""Import the legacy JSON files into SQLite, export back, and diff two stores (SPEC 6).

The import reads the legacy daemon's two JSON files, the json backend's own inbox file
(``ccr-inbox.json``, whose commands are kept exactly) and the legacy machine agent's inbox
databases (``inbox-<machine>.db``, see :func:`read_legacy_inbox`). It validates and
normalises every record; a bad or orphaned record is skipped and reported, never fatal, while
a file that cannot be read at all is fatal (:class:`MigrationError` naming the file). The
database is built under a temporary name in its final directory and linked into place only
when complete, so a crash part-way leaves nothing that blocks a clean retry. A lock file around
the import makes concurrent first starts import exactly once. The JSON files are only read,
under the json backend's own lock, so a json writer's unit is seen whole.

Once a database exists (often built by the first-start import), :func:`import_status` compares
its stored report with the legacy files as they are now, and :func:`reimport_json` builds a new
database from them and swaps it in, keeping the old one as a timestamped backup.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Set
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import attrs
import filelock

from registry import defaults
from registry.backends._base import BaseStore
from registry.backends.json_file import (
    INBOX_FILE,
    LOCK_FILE,
    SESSIONS_FILE,
    TOKENS_FILE,
    parse_inbox,
    recover_journal,
)
from registry.errors import MigrationError, RegistryError, ValidationError
from registry.models import (
    Command,
    Session,
    Token,
    changed_command,
    differing_fields,
    from_ms,
    parse_json_object,
    session_from_legacy,
    shown_legacy_key,
    token_from_legacy,
    token_hint,
    token_hint_legacy,
    unwrap_sessions_document,
)
from registry.paths import FILE_MODE, ensure_private_dir, fsync_dir
from registry.protocols import Store
from registry.validation import check_key

__all__ = [
    "CopyReport",
    "Difference",
    "ImportStatus",
    "MigrationReport",
    "Progress",
    "SkippedRecord",
    "StoreNotEmpty",
    "copy_store",
    "diff_stores",
    "export_json",
    "import_json",
    "import_on_first_start",
    "import_status",
    "legacy_files_present",
    "legacy_inbox_files",
    "read_legacy_inbox",
    "reimport_json",
]

# ``progress(done, total)``: called as work advances, and with ``done == total`` at the end.
Progress = Callable[[int, int], None]

REPORT_KEY: Final = "import_report"
DEFAULT_TTL: Final = timedelta(hours=24)
_BUILD_MARK: Final = ".import-"
_BACKUP_MARK: Final = ".backup-"
_PROGRESS_STEP: Final = 1000


@attrs.frozen(kw_only=True)
class SkippedRecord:
    """A legacy record the import left out, and why. A token's key is a short hash."""

    kind: str  # "session", "token" or "command"
    key: str
    reason: str


@attrs.frozen(kw_only=True)
class MigrationReport:
    """What an import did; also stored as JSON under ``meta.import_report`` in the database."""

    sessions_imported: int
    tokens_imported: int
    # Every command imported: those of ccr-inbox.json and of the legacy inbox databases (the
    # latter alone in a report stored before the import read ccr-inbox.json; 0 in one stored
    # before the inbox existed).
    commands_imported: int = 0
    skipped: list[SkippedRecord]
    # A JSON file (ccr-inbox.json included) by its name, an inbox database by its absolute
    # path -> {"sha256", "bytes"}
    sources: dict[str, dict[str, Any]]
    db_path: str
    imported_at: str
    backup: str | None = None  # where a re-import moved the database it replaced

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationReport:
        return cls(
            **{**data, "skipped": [SkippedRecord(**entry) for entry in data.get("skipped", [])]}
        )


@attrs.frozen(kw_only=True)
class Difference:
    """One way two stores differ: a record on one side only, or one field of a shared record."""

    kind: str  # "session", "token" or "command"
    key: str  # a session id, a token's short hash, or a command id
    field: str | None  # None when the record exists on one side only
    a: Any
    b: Any

    def __str__(self) -> str:
        where = f"{self.kind} {self.key}"
        if self.field is None:
            return f"{where}: {self.a} in a, {self.b} in b"
        a, b = (json.dumps(_plain(v), ensure_ascii=False) for v in (self.a, self.b))
        return f"{where}: {self.field} differs: a {a}, b {b}"

    def to_json(self) -> dict[str, Any]:
        """The difference as JSON values: timestamps ISO-8601 UTC with ``Z``, as elsewhere."""
        return {
            "kind": self.kind,
            "key": self.key,
            "field": self.field,
            "a": _plain(self.a),
            "b": _plain(self.b),
        }


def _plain(value: Any) -> Any:
    """A field value as the CLI's JSON shows it (the shapes of ``cli.session_to_json``)."""
    from registry.models import FrozenMap, Transport, iso

    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Transport):
        return {"kind": value.kind, "details": value.details.to_dict()}
    if isinstance(value, FrozenMap):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def _utcnow() -> datetime:
    # Import and export copy the records' own timestamps; this clock only satisfies the stores.
    return datetime.now(UTC)


# --------------------------------------------------------------------------- reading legacy files


def legacy_files_present(json_dir: Path, inbox_dir: Path | None = None) -> bool:
    """True if ``json_dir`` holds either legacy JSON file, or it or ``inbox_dir`` a legacy inbox.

    Without ``inbox_dir`` only the JSON files count.
    """
    if (json_dir / SESSIONS_FILE).is_file() or (json_dir / TOKENS_FILE).is_file():
        return True
    return inbox_dir is not None and bool(legacy_inbox_files(inbox_dir, json_dir))


def _json_files_present(json_dir: Path) -> bool:
    """True if ``json_dir`` holds either legacy JSON file or the json backend's inbox file."""
    return legacy_files_present(json_dir) or (json_dir / INBOX_FILE).is_file()


def _read_sources(
    json_dir: Path, lock_timeout_s: float, *, required: bool = True
) -> dict[str, bytes]:
    """The JSON files' bytes, read under the json backend's lock (as export writes them).

    The json backend's ``ccr-inbox.json`` is read with the two legacy files, in the same
    hold of the lock: a json store's unit can change all three at once.

    A json store's unit replaces both files one after the other; without its lock an import
    could see one file new and the other old (a token whose session is "missing"). A committed
    journal of a writer that died is rolled forward first, as the json backend would. Where the
    lock file cannot be created (a directory we may only read), no writer of ours can be at
    work either, and the files are read as they are.
    """

    if not _json_files_present(json_dir):
        if not required:
            return {}
        raise MigrationError(
            f"{json_dir}: neither {SESSIONS_FILE}, {TOKENS_FILE} nor {INBOX_FILE} exists"
        )
    lock_path = json_dir / LOCK_FILE
    if not lock_path.exists():
        # A json store creates its lock file before its first write and never removes it: with
        # none before and after the read, no writer of ours was at work, and the import leaves
        # the legacy directory exactly as it found it. One that appeared meanwhile: read again
        # under its lock.
        files = _read_files(json_dir)
        if not lock_path.exists():
            return files
    lock = filelock.FileLock(lock_path, timeout=lock_timeout_s, mode=FILE_MODE, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise MigrationError(
            f"{json_dir}: the json store's lock is still held after {lock_timeout_s} s"
        ) from exc
    except (PermissionError, OSError) as exc:
        if not isinstance(exc, PermissionError) and exc.errno != errno.EROFS:
            raise MigrationError(f"{json_dir}: cannot lock: {exc.strerror or exc}") from exc
        return _read_files(json_dir)
    try:
        try:
            recover_journal(json_dir)
        except RegistryError as exc:
            raise MigrationError(f"{exc}; nothing imported") from exc
        except OSError as exc:
            raise MigrationError(f"{json_dir}: cannot finish a json commit: {exc}") from exc
        return _read_files(json_dir)
    finally:
        lock.release()


def _read_files(json_dir: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in (SESSIONS_FILE, TOKENS_FILE, INBOX_FILE):
        path = json_dir / name
        try:
            found[name] = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise MigrationError(f"{path}: cannot read: {exc.strerror}") from exc
    return found


def _checksums(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {
        name: {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
        for name, raw in files.items()
    }


def _parse_source(path: Path, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        return parse_json_object(raw)
    except ValidationError as exc:
        raise MigrationError(f"{path}: {exc}; nothing imported") from exc


def read_legacy(
    json_dir: Path,
    *,
    session_ttl: timedelta = DEFAULT_TTL,
    token_ttl: timedelta = DEFAULT_TTL,
    lock_timeout_s: float = 60,
    progress: Progress | None = None,
    required: bool = True,
) -> tuple[list[Session], list[Token], list[SkippedRecord], dict[str, dict[str, Any]]]:
    """Every valid record of the legacy files in ``json_dir``, what was skipped, and checksums.

    With ``required`` false, a directory without any of the files reads as empty instead of
    raising (an import of legacy inbox databases alone). A record is read whatever its size
    (the legacy daemon's records are accepted as they are); one that cannot be understood,
    holds text that is not valid Unicode, or is a token whose session is missing is skipped
    with the reason. The checksums include ``ccr-inbox.json`` when it exists (read with the
    other two; its commands: :func:`_read_json_side`).
    """
    sessions, tokens, skipped, sources, _ = _read_json_side(
        json_dir,
        session_ttl=session_ttl,
        token_ttl=token_ttl,
        lock_timeout_s=lock_timeout_s,
        progress=progress,
        required=required,
    )
    return sessions, tokens, skipped, sources


def _parse_json_inbox(
    path: Path, raw: bytes | None, host: str | None = None
) -> tuple[list[Command], int]:
    """The commands of ``ccr-inbox.json`` by ``seq``, and its next seq (1 with no file).

    The file is this project's own: its commands are taken exactly as they are (seq, state,
    attempts, lease, timestamps), and a file the json backend would refuse stops the import.
    """
    if raw is None:
        return [], 1
    try:
        document = parse_inbox(path, raw, host=host)
    except RegistryError as exc:
        raise MigrationError(f"{exc}; nothing imported") from exc
    commands: list[Command] = sorted(document.records.values(), key=lambda c: c.seq)
    return commands, document.next_seq


def _read_json_side(
    json_dir: Path,
    *,
    session_ttl: timedelta,
    token_ttl: timedelta,
    lock_timeout_s: float,
    progress: Progress | None,
    required: bool,
    host: str | None = None,
) -> tuple[
    list[Session],
    list[Token],
    list[SkippedRecord],
    dict[str, dict[str, Any]],
    tuple[list[Command], int],
]:
    """:func:`read_legacy`, and the commands and next seq of ``ccr-inbox.json``.

    A session or command without a ``host`` takes ``host`` (default: this machine's host_id).
    """
    files = _read_sources(json_dir, lock_timeout_s, required=required)
    sources = _checksums(files)
    inbox = _parse_json_inbox(json_dir / INBOX_FILE, files.get(INBOX_FILE), host)
    sessions_doc = _parse_source(json_dir / SESSIONS_FILE, files.get(SESSIONS_FILE))
    tokens_doc = _parse_source(json_dir / TOKENS_FILE, files.get(TOKENS_FILE))
    skipped: list[SkippedRecord] = []
    sessions: dict[str, Session] = {}
    try:
        records = unwrap_sessions_document(sessions_doc)
    except ValidationError as exc:
        raise MigrationError(f"{json_dir / SESSIONS_FILE}: {exc}") from exc
    total = len(records) + len(tokens_doc)
    done = 0
    for key, raw in records.items():
        try:
            sessions[key] = session_from_legacy(key, raw, session_ttl=session_ttl, host=host)
        except ValidationError as exc:
            skipped.append(
                SkippedRecord(kind="session", key=shown_legacy_key(key), reason=str(exc))
            )
        done += 1
        if progress is not None and done % _PROGRESS_STEP == 0:
            progress(done, total)
    tokens: list[Token] = []
    for key, raw in tokens_doc.items():
        done += 1
        if progress is not None and done % _PROGRESS_STEP == 0:
            progress(done, total)
        try:
            token = token_from_legacy(key, raw, token_ttl=token_ttl)
        except ValidationError as exc:
            skipped.append(SkippedRecord(kind="token", key=token_hint_legacy(key), reason=str(exc)))
            continue
        if token.session_id not in sessions:
            reason = f"its session {shown_legacy_key(token.session_id)!r} is missing"
            skipped.append(SkippedRecord(kind="token", key=token_hint_legacy(key), reason=reason))
            continue
        tokens.append(token)
    return list(sessions.values()), tokens, skipped, sources, inbox


# --------------------------------------------------------------------------- the legacy inbox

INBOX_GLOB: Final = "inbox-*.db"
_INBOX_QUERY: Final = "SELECT command_id, received_at, payload, status, updated_at FROM inbox"
_INBOX_STATES: Final = {"received": "ready", "done": "done"}
_NUMERIC: Final = re.compile(r"-?[0-9]+")
_INT64: Final = (-(2**63), 2**63 - 1)


def legacy_inbox_files(*directories: Path | None) -> list[Path]:
    """The legacy machine agent's inbox databases (``inbox-<machine>.db``), in import order.

    Directory by directory in the order given (one named twice, under any spelling, is read
    once), each directory's files by name. Paths are resolved (absolute, no ``..``, no links),
    so that the report names a file the same way whichever spelling the config used. A missing
    directory holds none.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for directory in directories:
        if directory is None:
            continue
        try:
            where = Path(directory).expanduser().resolve()
        except OSError as exc:
            raise MigrationError(f"{directory}: cannot resolve: {exc.strerror or exc}") from exc
        if where in seen:
            continue
        seen.add(where)
        try:
            found.extend(sorted(p for p in where.glob(INBOX_GLOB) if p.is_file()))
        except OSError as exc:
            raise MigrationError(f"{where}: cannot list: {exc.strerror or exc}") from exc
    return found


def _read_inbox_file(path: Path) -> tuple[bytes, list[tuple[Any, ...]]]:
    """The bytes of one legacy inbox database and its rows; the file is left as it was.

    It is opened read-only and ``immutable``: SQLite then takes no lock and creates nothing
    beside it (``mode=ro`` alone leaves a ``-wal`` and a ``-shm`` beside a database in WAL
    mode). An immutable database is read without its ``-wal`` or ``-journal``, so changes
    still in one of those would be missed silently: such a file is refused instead. Text is
    read as bytes, so that one row that is not UTF-8 is skipped, not fatal.
    :raises MigrationError: naming the file, if it cannot be read or has no ``inbox`` table.
    """
    for suffix in ("-wal", "-journal"):
        side = path.with_name(path.name + suffix)
        try:
            pending = side.stat().st_size > 0
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise MigrationError(f"{side}: cannot read: {exc.strerror or exc}") from exc
        if pending:
            raise MigrationError(
                f"{side} exists: {path.name} has changes that are not in its main file yet "
                "(the legacy machine agent is running, or stopped part-way); stop the agent, "
                f"or open {path.name} once with sqlite3 to fold them in, then import again; "
                "nothing imported"
            )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MigrationError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        conn = sqlite3.connect(path.as_uri() + "?mode=ro&immutable=1", uri=True)
        try:
            conn.text_factory = bytes
            rows = conn.execute(_INBOX_QUERY).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise MigrationError(
            f"{path}: not a legacy inbox database ({exc}); nothing imported"
        ) from exc
    return raw, rows


def _inbox_text(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{name} is not UTF-8 text") from exc
    raise ValidationError(f"{name} is not text, got {type(value).__name__}")


def _inbox_time(name: str, value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int):
        return from_ms(value)
    if isinstance(value, float) and math.isfinite(value):
        return from_ms(math.floor(value))
    raise ValidationError(f"{name} {_shown_value(value)} is not epoch milliseconds")


def _shown_value(value: object) -> str:
    if isinstance(value, bytes):
        return repr(value.decode("utf-8", "backslashreplace"))
    return repr(value)


def _inbox_chat_id(value: object) -> int | None:
    """The payload's ``chatId``: an int, or a numeric string made one; anything else None."""
    if isinstance(value, str) and _NUMERIC.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]:
        return value
    return None


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _inbox_command(
    command_id: str, row: tuple[Any, ...], session_ids: set[str], host: str | None = None
) -> Command:
    """One row of a legacy inbox as a command (seq 0: numbered once all rows are sorted).

    :raises ValidationError: saying why the row cannot be imported.
    """
    _, received_raw, payload_raw, status_raw, updated_raw = row
    received_at = _inbox_time("received_at", received_raw)
    updated_at = _inbox_time("updated_at", updated_raw)
    # Each timestamp falls back to the other, never to "now".
    created = received_at if received_at is not None else updated_at
    updated = updated_at if updated_at is not None else received_at
    if created is None or updated is None:
        raise ValidationError("neither received_at nor updated_at is set")
    status = _inbox_text("status", status_raw)
    state = _INBOX_STATES.get(status or "")
    if state is None:
        raise ValidationError(f"status {status!r} is neither 'received' nor 'done'")
    text = _inbox_text("payload", payload_raw)
    if text is None:
        raise ValidationError("payload is missing")
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValidationError("payload is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise ValidationError(f"payload is {_json_kind(payload)}, not a JSON object")
    session_id = payload.get("sessionId")
    return Command(
        command_id=command_id,
        # A session the import does not hold leaves the command without one (SPEC 6).
        session_id=session_id
        if isinstance(session_id, str) and session_id in session_ids
        else None,
        seq=0,
        payload=payload,
        chat_id=_inbox_chat_id(payload.get("chatId")),
        state=state,
        attempts=0,
        available_at=created,
        created_at=created,
        updated_at=updated,
        # The importing store's machine, as its sessions' (SPEC 2).
        host=defaults.host_id() if host is None else host,
    )


def read_legacy_inbox(
    files: Iterable[Path],
    session_ids: Iterable[str],
    *,
    live_ids: Set[str] = frozenset(),
    live_file: Path | None = None,
    first_seq: int = 1,
    host: str | None = None,
) -> tuple[list[Command], list[SkippedRecord], dict[str, dict[str, Any]]]:
    """The commands of legacy inbox databases, what was skipped, and checksums by path.

    Rules (SPEC 6): ``received`` becomes ``ready`` and ``done`` stays ``done``; commands are
    ordered by ``received_at`` (``updated_at`` where it is missing), then ``command_id``, and
    numbered ``seq`` 1, 2, ... in that order; ``session_id`` is the payload's ``sessionId``
    when ``session_ids`` holds it (else None), ``chat_id`` its ``chatId`` (a numeric string
    made an int, anything else None); ``created_at`` is ``received_at`` and ``updated_at`` is
    ``updated_at``, each the other when missing; ``attempts`` 0. A row that cannot be imported
    (a payload that is not a JSON object, an unknown status, no timestamp, an id that is not a
    valid key) is skipped with its reason; so is a command id already imported from an earlier
    file (the first copy that can be imported is kept).

    With ``ccr-inbox.json`` imported too (its commands keep their own seqs): ``live_ids`` are
    its command ids, whose legacy copies are skipped (the live inbox's copy wins), and
    ``first_seq`` is its next seq, from which the legacy commands are numbered instead of 1,
    so that they come after every seq it gave. Every command's ``host`` is ``host`` (default:
    this machine's host_id).
    :raises MigrationError: for a file that cannot be read (see :func:`_read_inbox_file`).
    """
    known = set(session_ids)
    sources: dict[str, dict[str, Any]] = {}
    skipped: list[SkippedRecord] = []
    first_file: dict[str, Path] = {}
    commands: list[Command] = []
    for path in files:
        raw, rows = _read_inbox_file(path)
        sources[str(path)] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
        for row in rows:
            key = row[0]
            shown = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else str(key)
            try:
                command_id = _inbox_text("command_id", row[0])
                if command_id is None:
                    raise ValidationError("command_id is missing")
                check_key("command_id", command_id)
            except ValidationError as exc:
                skipped.append(SkippedRecord(kind="command", key=shown, reason=f"{path}: {exc}"))
                continue
            if command_id in live_ids:
                live = INBOX_FILE if live_file is None else live_file
                reason = f"{path}: the same command id is in {live}, whose copy is kept"
                skipped.append(SkippedRecord(kind="command", key=command_id, reason=reason))
                continue
            if command_id in first_file:
                reason = f"{path}: the same command id was imported from {first_file[command_id]}"
                skipped.append(SkippedRecord(kind="command", key=command_id, reason=reason))
                continue
            try:
                commands.append(_inbox_command(command_id, row, known, host))
            except ValidationError as exc:
                reason = f"{path}: {exc}"
                skipped.append(SkippedRecord(kind="command", key=command_id, reason=reason))
                continue
            first_file[command_id] = path
    commands.sort(key=lambda c: (c.created_at, c.command_id))
    numbered = [changed_command(c, seq=seq) for seq, c in enumerate(commands, first_seq)]
    return numbered, skipped, sources


# --------------------------------------------------------------------------- import


def _lock(db_path: Path, timeout: float) -> filelock.FileLock:
    return filelock.FileLock(
        db_path.parent / f".{db_path.name}.migrate.lock", timeout=timeout, mode=FILE_MODE
    )


def import_json(
    json_dir: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    session_ttl: timedelta = DEFAULT_TTL,
    token_ttl: timedelta = DEFAULT_TTL,
    lock_timeout_s: float = 60,
    progress: Progress | None = None,
    inbox_dir: str | os.PathLike[str] | None = None,
    host_id: str | None = None,
) -> MigrationReport:
    """Build a new sqlite database at ``db_path`` from the legacy files in ``json_dir``.

    The json backend's ``ccr-inbox.json`` in ``json_dir`` is imported with them, each command
    exactly as the file holds it (``seq``, state, attempts, lease, timestamps), and the
    database's next seq is at least the file's. The legacy inbox databases
    (``inbox-<machine>.db``) in ``inbox_dir`` and in ``json_dir`` are imported too
    (:func:`read_legacy_inbox`), numbered after ``ccr-inbox.json``'s seqs; a command id in
    both is taken from ``ccr-inbox.json`` (the live inbox) and the legacy copy is skipped.
    Any of these files alone is enough for an import.
    ``progress(done, total)`` is called as records are read, and once with ``done == total``
    when the database is in place.
    :raises MigrationError: if ``db_path`` already exists (see :func:`import_status` and
        :func:`reimport_json`), no legacy file exists, or a file cannot be read or parsed (a
        damaged ``ccr-inbox.json`` included); no database is created then.
    """
    json_dir, db_path = Path(json_dir).expanduser(), Path(db_path).expanduser()
    inbox = None if inbox_dir is None else Path(inbox_dir).expanduser()
    ensure_private_dir(db_path.parent)
    try:
        with _lock(db_path, lock_timeout_s):
            if db_path.exists():
                raise MigrationError(f"{db_path} already exists; move it away to import again")
            report, build = _build(
                json_dir,
                db_path,
                inbox_dir=inbox,
                session_ttl=session_ttl,
                token_ttl=token_ttl,
                lock_timeout_s=lock_timeout_s,
                progress=progress,
                host_id=host_id,
            )
            _publish(build, db_path)
    except filelock.Timeout as exc:
        raise MigrationError(f"{db_path}: another import holds the lock") from exc
    _finish(progress, report)
    return report


def import_on_first_start(
    json_dir: Path,
    db_path: Path,
    *,
    session_ttl: timedelta,
    token_ttl: timedelta,
    lock_timeout_s: float,
    inbox_dir: Path | None = None,
    host_id: str | None = None,
) -> MigrationReport | None:
    """Import if the database does not exist yet and legacy files do; else do nothing.

    A legacy inbox database in ``inbox_dir`` or ``json_dir`` counts as a legacy file: it alone
    starts the import (SPEC 6); so does ``ccr-inbox.json`` in ``json_dir``. Of several
    processes starting at once, one imports and the others wait for the lock and then find the
    finished database.
    """
    if db_path.exists():
        return None
    if not (legacy_files_present(json_dir, inbox_dir) or _json_files_present(json_dir)):
        return None
    ensure_private_dir(db_path.parent)
    try:
        with _lock(db_path, lock_timeout_s):
            if db_path.exists():
                return None
            report, build = _build(
                json_dir,
                db_path,
                inbox_dir=inbox_dir,
                session_ttl=session_ttl,
                token_ttl=token_ttl,
                lock_timeout_s=lock_timeout_s,
                host_id=host_id,
            )
            _publish(build, db_path)
            return report
    except filelock.Timeout as exc:
        raise MigrationError(f"{db_path}: the first-start import did not finish in time") from exc


def _finish(progress: Progress | None, report: MigrationReport) -> None:
    if progress is not None:
        # Every record read was either imported or skipped: the total read_legacy counted.
        done = (
            report.sessions_imported
            + report.tokens_imported
            + report.commands_imported
            + len(report.skipped)
        )
        progress(done, done)


def _build(
    json_dir: Path,
    db_path: Path,
    *,
    inbox_dir: Path | None,
    session_ttl: timedelta,
    token_ttl: timedelta,
    lock_timeout_s: float,
    progress: Progress | None = None,
    backup: Path | None = None,
    host_id: str | None = None,
) -> tuple[MigrationReport, Path]:
    """A complete, synced database under a temporary name beside ``db_path`` (lock held).

    Records take ``host_id`` (default: this machine's) as their host (SPEC 2, 6).
    """
    from registry.backends.sqlite import SqliteStore
    from registry.backends.sqlite_sql import refuse_orphan_wal

    if backup is None:
        refuse_orphan_wal(db_path)
    inbox_files = legacy_inbox_files(inbox_dir, json_dir)
    if not inbox_files and not _json_files_present(json_dir):
        where = json_dir if inbox_dir is None else f"{json_dir} or {inbox_dir}"
        raise MigrationError(
            f"{json_dir}: neither {SESSIONS_FILE}, {TOKENS_FILE} nor {INBOX_FILE} exists, "
            f"and no {INBOX_GLOB} in {where}"
        )
    sessions, tokens, skipped, sources, (live, next_seq) = _read_json_side(
        json_dir,
        session_ttl=session_ttl,
        token_ttl=token_ttl,
        lock_timeout_s=lock_timeout_s,
        progress=progress,
        required=False,
        host=host_id,
    )
    legacy_commands, command_skips, inbox_sources = read_legacy_inbox(
        inbox_files,
        (s.session_id for s in sessions),
        live_ids={c.command_id for c in live},
        live_file=json_dir / INBOX_FILE,
        first_seq=next_seq,
        host=host_id,
    )
    commands = [*live, *legacy_commands]
    report = MigrationReport(
        sessions_imported=len(sessions),
        tokens_imported=len(tokens),
        commands_imported=len(commands),
        skipped=[*skipped, *command_skips],
        sources={**sources, **inbox_sources},
        db_path=str(db_path),
        # ISO-8601 UTC with a Z, as every timestamp the CLI prints.
        imported_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        backup=None if backup is None else str(backup),
    )
    _remove_stale_builds(db_path)
    build = db_path.with_name(f".{db_path.name}{_BUILD_MARK}{secrets.token_hex(6)}")
    try:
        store = SqliteStore(
            build,
            clock=_utcnow,
            session_ttl=session_ttl,
            token_ttl=token_ttl,
            lock_timeout_s=60,
            host_id=host_id,
        )
        try:
            store.load(
                sessions,
                tokens,
                {REPORT_KEY: json.dumps(report.to_dict())},
                commands=commands,
                next_seq=next_seq,
            )
            store.checkpoint()
        finally:
            store.close()  # the last connection removes the (empty) WAL
        fd = os.open(build, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        _discard(build)
        if isinstance(exc, OSError):
            raise MigrationError(f"{db_path}: import failed: {exc}") from exc
        raise
    return report, build


def _publish(build: Path, db_path: Path) -> None:
    """Link a finished build into place; it never replaces an existing database."""
    try:
        # link() never replaces: if the target appeared meanwhile, this fails instead of
        # clobbering it.
        os.link(build, db_path)
        fsync_dir(db_path.parent)
    except OSError as exc:
        raise MigrationError(f"{db_path}: import failed: {exc}") from exc
    finally:
        _discard(build)


def _discard(build: Path) -> None:
    for leftover in (build, *_sidecars(build)):
        leftover.unlink(missing_ok=True)


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _remove_stale_builds(db_path: Path) -> None:
    """Delete half-built databases of imports that died (the import lock is held)."""
    for leftover in db_path.parent.glob(f".{db_path.name}{_BUILD_MARK}*"):
        leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------- after an import


@attrs.frozen(kw_only=True)
class ImportStatus:
    """The stored import report of a database beside the legacy files as they are now."""

    report: MigrationReport | None  # None: the database was not built by an import
    current: dict[str, dict[str, Any]]  # the legacy files now: name -> {"sha256", "bytes"}
    changed: list[str]  # files whose checksum differs from the report's (or came or went)

    @property
    def unchanged(self) -> bool:
        """True when the database was imported from exactly the files there are now."""
        return self.report is not None and not self.changed

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": None if self.report is None else self.report.to_dict(),
            "current": self.current,
            "changed": self.changed,
            "unchanged": self.unchanged,
        }


def import_status(
    json_dir: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    lock_timeout_s: float = 60,
    inbox_dir: str | os.PathLike[str] | None = None,
    host_id: str | None = None,
) -> ImportStatus:
    """What the import that built ``db_path`` read, and whether the legacy files changed since.

    ``ccr-inbox.json`` (by name) and the legacy inbox databases in ``inbox_dir`` and
    ``json_dir`` (by path) count as legacy files, as the import reads them.
    :raises MigrationError: if there is no database at ``db_path`` or the files cannot be read.
    """
    json_dir, db_path = Path(json_dir).expanduser(), Path(db_path).expanduser()
    inbox = None if inbox_dir is None else Path(inbox_dir).expanduser()
    report = stored_report(db_path, host_id=host_id)
    files = _read_sources(json_dir, lock_timeout_s) if _json_files_present(json_dir) else {}
    current = _checksums(files)
    for path in legacy_inbox_files(inbox, json_dir):
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise MigrationError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        current[str(path)] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    before = {} if report is None else report.sources
    changed = sorted(
        name
        for name in set(before) | set(current)
        if before.get(name, {}).get("sha256") != current.get(name, {}).get("sha256")
    )
    return ImportStatus(report=report, current=current, changed=changed)


def reimport_json(
    json_dir: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    session_ttl: timedelta = DEFAULT_TTL,
    token_ttl: timedelta = DEFAULT_TTL,
    lock_timeout_s: float = 60,
    progress: Progress | None = None,
    inbox_dir: str | os.PathLike[str] | None = None,
    host_id: str | None = None,
) -> MigrationReport:
    """Import the legacy files again over an existing database, keeping it as a backup.

    ``ccr-inbox.json`` and the legacy inbox databases are read as :func:`import_json` reads
    them: in phase 2 (json primary) the commands of the json side are the live inbox, and
    they come over exactly. Commands the old database holds that none of these files has are
    not carried over: the backup keeps them.

    The old database is checkpointed (so its file holds everything) and kept under
    ``<db name>.backup-<UTC time>`` beside it; the report names it (``backup``). Safe against a
    crash at any point: the new database is built complete under a temporary name and swapped in
    with one rename; until then ``db_path`` is the old database, after it the new one, and the
    backup exists in both cases. The import lock keeps a second import, re-import or first-start
    import out. Stop every process that uses the database first: one that keeps it open is
    detected by its write-ahead log and refused.
    :raises MigrationError: if there is no database to replace, it is in use, or the legacy files
        cannot be read; the database is untouched then.
    """
    json_dir, db_path = Path(json_dir).expanduser(), Path(db_path).expanduser()
    inbox = None if inbox_dir is None else Path(inbox_dir).expanduser()
    try:
        with _lock(db_path, lock_timeout_s):
            if not db_path.is_file():
                raise MigrationError(f"{db_path}: no database to replace; run an import")
            _recover_replacement(db_path)
            backup = _backup_name(db_path)
            report, build = _build(
                json_dir,
                db_path,
                inbox_dir=inbox,
                session_ttl=session_ttl,
                token_ttl=token_ttl,
                lock_timeout_s=lock_timeout_s,
                progress=progress,
                host_id=host_id,
                backup=backup,
            )
            try:
                _swap(build, db_path, backup)
            finally:
                _discard(build)
    except filelock.Timeout as exc:
        raise MigrationError(f"{db_path}: another import holds the lock") from exc
    _finish(progress, report)
    return report


_HELD_MARK: Final = ".replaced-"


def _backup_name(db_path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = db_path.with_name(f"{db_path.name}{_BACKUP_MARK}{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = db_path.with_name(f"{db_path.name}{_BACKUP_MARK}{stamp}-{n}")
    return candidate


def _swap(build: Path, db_path: Path, backup: Path) -> None:
    """Put ``build`` in place of ``db_path``, the old database ending up at ``backup``.

    The old file is first given a hidden second name, then the new one replaces it in one
    rename, then the hidden name becomes the backup. :func:`_recover_replacement` finishes or
    undoes a swap that a crash interrupted.
    """
    from registry.backends.sqlite import SqliteStore

    old = SqliteStore(
        db_path, clock=_utcnow, session_ttl=DEFAULT_TTL, token_ttl=DEFAULT_TTL, lock_timeout_s=10
    )
    try:
        old.checkpoint()  # every committed change into the main file, the WAL truncated
    finally:
        old.close()
    wal, shm = _sidecars(db_path)
    try:
        if wal.exists():
            # SQLite deletes the WAL when its last connection closes: another process has the
            # database open.
            raise MigrationError(
                f"{db_path} is in use by another process; stop the daemon and run the "
                "re-import again"
            )
        held = db_path.with_name(f".{db_path.name}{_HELD_MARK}{backup.name}")
        os.link(db_path, held)
        fsync_dir(db_path.parent)
        # The old database's empty WAL and its index must not be taken for the new file's.
        wal.unlink(missing_ok=True)
        shm.unlink(missing_ok=True)
        os.replace(build, db_path)  # the commit point
        fsync_dir(db_path.parent)
        os.replace(held, backup)
        fsync_dir(db_path.parent)
    except OSError as exc:
        raise MigrationError(f"{db_path}: re-import failed: {exc}") from exc


def _recover_replacement(db_path: Path) -> None:
    """Finish or undo a swap a crash interrupted (the import lock is held).

    A hidden name that is still the live database (same inode) is from before the commit
    point: it is only a second name, removed. One that is not the database any more is the
    old database after the commit point: it becomes its backup.
    """
    live = db_path.stat().st_ino
    prefix = f".{db_path.name}{_HELD_MARK}"
    for held in db_path.parent.glob(prefix + "*"):
        if held.stat().st_ino == live:
            held.unlink()
        else:
            os.replace(held, db_path.with_name(held.name[len(prefix) :]))
    fsync_dir(db_path.parent)


def stored_report(
    db_path: str | os.PathLike[str], *, host_id: str | None = None
) -> MigrationReport | None:
    """The report of the import that built ``db_path``, if it was built by one.

    ``host_id``: the host an older database's rows take if this open upgrades it (default:
    this machine's, SPEC 2).

    :raises MigrationError: if there is no database at ``db_path``.
    """
    from registry.backends.sqlite import SqliteStore

    if not Path(db_path).expanduser().is_file():
        raise MigrationError(f"{db_path}: no database")
    store = SqliteStore(
        Path(db_path).expanduser(),
        clock=_utcnow,
        session_ttl=DEFAULT_TTL,
        token_ttl=DEFAULT_TTL,
        lock_timeout_s=10,
        host_id=host_id,
    )
    try:
        raw = store.read_meta(REPORT_KEY)
    finally:
        store.close()
    return None if raw is None else MigrationReport.from_dict(json.loads(raw))


# --------------------------------------------------------------------------- export


def _legacy_start_times(store: Store) -> None:
    """Give every live agent on this machine the ``start_time`` the legacy daemon expects.

    On sqlite the hook records a process's real start time; the legacy daemon's dead-session
    check compares ``start_time`` with the timestamp of ``/proc/<pid>`` (within 2 s), which can
    be later. Exported as it is, a live session could be removed by the legacy daemon once it
    runs again (a rollback). So before the export reads the database, each running session whose
    agent is alive and whose ``start_time`` is not within 2 s of that timestamp takes it, in the
    database too (so ``verify`` still finds the two sides equal); this project's own check
    accepts either value (SPEC 7). The probe runs outside any transaction; a session changed
    meanwhile is left alone.
    """
    from registry.liveness import is_process_alive, proc_timestamp

    for session in store.sessions.list_sessions(active_only=True):
        if session.ppid is None or session.start_time is None:
            continue
        stamp = proc_timestamp(session.ppid)
        if stamp is None or abs(stamp - session.start_time) <= 2:
            continue
        if not is_process_alive(session.ppid, session.start_time):
            continue
        with store.atomic():
            if store.sessions.get(session.session_id) == session:
                store.sessions.update(session.session_id, start_time=stamp)


def export_json(
    db_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    inbox: bool = False,
    host_id: str | None = None,
) -> None:
    """Write the database's content to ``out_dir`` as the legacy JSON files.

    The content comes from one read transaction (WAL included) and both files are replaced as
    one all-or-nothing unit, under the json backend's lock, so a json store using ``out_dir``
    never sees half an export. Tokens are written in full: the legacy format needs them.
    A live agent's ``start_time`` first becomes the one the legacy daemon expects
    (:func:`_legacy_start_times`). Records in ``out_dir``'s files that cannot be understood
    are kept (see :meth:`JsonStore.replace_contents`). Whatever the database holds is written:
    a record beyond our API's limits as it is, and text that UTF-8 cannot encode as a JSON
    escape. ``progress(done, total)`` counts the records read, then written.

    By default no inbox is written, and an existing ``ccr-inbox.json`` is left as it is: the
    legacy daemon and its machine agent never read that file (the agent kept its inbox in its
    own ``inbox-<machine>.db``, which this never writes either). With ``inbox``, the
    database's commands are written to ``ccr-inbox.json`` too, from the same read transaction
    and in the same all-or-nothing unit, with the database's next seq as the file's: the
    rollback to a json primary (phase 3 to 2), whose inbox would otherwise hold stale copies
    of commands the database finished (typed twice) and lack the ones it holds alone.
    A session's ``host`` is written only when it is not ``host_id`` (default: this machine's),
    so a file of this machine's sessions is the legacy daemon's format exactly.
    :raises MigrationError: if the database does not exist.
    """
    from registry.backends.json_file import JsonStore
    from registry.backends.sqlite import SqliteStore

    db_path, out_dir = Path(db_path).expanduser(), Path(out_dir).expanduser()
    if not db_path.is_file():
        raise MigrationError(f"{db_path}: no database to export")
    source = SqliteStore(
        db_path,
        clock=_utcnow,
        session_ttl=DEFAULT_TTL,
        token_ttl=DEFAULT_TTL,
        lock_timeout_s=10,
        host_id=host_id,
    )
    try:
        _legacy_start_times(source)
        if inbox:
            sessions, tokens, commands, next_seq = source.snapshot_with_inbox()
        else:
            (sessions, tokens), commands, next_seq = source.snapshot(), [], 1
    finally:
        source.close()
    total = 2 * (len(sessions) + len(tokens) + len(commands)) or 1
    if progress is not None:
        progress(total // 2, total)
    target = JsonStore(
        out_dir,
        clock=_utcnow,
        session_ttl=DEFAULT_TTL,
        token_ttl=DEFAULT_TTL,
        lock_timeout_s=10,
        host_id=host_id,
    )
    try:
        if inbox:
            target.replace_contents(sessions, tokens, commands=commands, next_seq=next_seq)
        else:
            target.replace_contents(sessions, tokens)
    finally:
        target.close()
    if progress is not None:
        progress(total, total)


# --------------------------------------------------------------------------- diff


def _all_tokens(store: Store, sessions: Iterable[Session]) -> list[Token]:
    return [t for s in sessions for t in store.tokens.tokens_for_session(s.session_id)]


def _records(store: Store) -> tuple[list[Session], list[Token], list[Command]]:
    """Every session, token and command of a store; sessions and tokens as one consistent unit.

    A store with ``snapshot()`` (sqlite: two SELECTs in one read transaction; json: both files
    under the lock) reads everything at once. Any other store (dual) lists its sessions and
    each one's tokens inside one ``atomic()`` unit: one read of the files, but a token lookup
    per session, which on json scans every token (quadratic: 51 s for ``verify`` at 100,000
    sessions before json had ``snapshot()``). The commands are one more read, after that unit:
    no command refers to a token, and one that names a session is compared by its id, so
    reading them apart can only show a change made meanwhile, as the two stores are read one
    after the other anyway.
    """
    snapshot = getattr(store, "snapshot", None)
    if callable(snapshot):
        sessions, tokens = snapshot()
        return list(sessions), list(tokens), store.inbox.list_commands()
    with store.atomic():
        sessions = store.sessions.list_sessions()
        return sessions, _all_tokens(store, sessions), store.inbox.list_commands()


def diff_stores(
    a: Store, b: Store, *, progress: Callable[[int, int], None] | None = None
) -> list[Difference]:
    """Every session, token and command that differs between two stores, field by field.

    Empty when both hold the same records. Sessions come first, by id, then tokens by hash,
    then commands by ``command_id`` (every field, ``seq`` and the lease included).
    Each side is read once and sorted by key, and the two ordered streams are walked side by
    side; a record is compared field by field only when the two are not equal. ``progress``
    is called with ``(records compared, records in all)``.
    :raises RegistryError: if either store cannot be read.
    """
    return _diff(_records(a), _records(b), progress)


_Records = tuple[list[Session], list[Token], list[Command]]


def _diff(
    records_a: _Records, records_b: _Records, progress: Callable[[int, int], None] | None
) -> list[Difference]:
    sessions_a, tokens_a, commands_a = records_a
    sessions_b, tokens_b, commands_b = records_b
    total = len(sessions_a) + len(sessions_b) + len(tokens_a) + len(tokens_b)
    total += len(commands_a) + len(commands_b)
    counter = _Progress(progress, total)
    found = list(
        _diff_records(
            "session",
            sorted(((s.session_id, s) for s in sessions_a), key=_first),
            sorted(((s.session_id, s) for s in sessions_b), key=_first),
            counter,
        )
    )
    found.extend(
        _diff_records(
            "token",
            sorted(((token_hint(t.token), t) for t in tokens_a), key=_first),
            sorted(((token_hint(t.token), t) for t in tokens_b), key=_first),
            counter,
        )
    )
    found.extend(
        _diff_records(
            "command",
            sorted(((c.command_id, c) for c in commands_a), key=_first),
            sorted(((c.command_id, c) for c in commands_b), key=_first),
            counter,
        )
    )
    counter.finish()
    return found


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


class _Progress:
    """Calls ``progress`` every 1,000 records (and at the end), not once per record."""

    __slots__ = ("callback", "done", "total")

    def __init__(self, callback: Callable[[int, int], None] | None, total: int) -> None:
        self.callback, self.done, self.total = callback, 0, total

    def add(self, count: int) -> None:
        before = self.done
        self.done += count
        if self.callback is not None and self.done // 1000 != before // 1000:
            self.callback(self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.total, self.total)


def _diff_records(
    kind: str,
    a: list[tuple[str, Any]],
    b: list[tuple[str, Any]],
    counter: _Progress,
) -> Iterable[Difference]:
    """Merge two lists of ``(key, record)`` sorted by key; yield how they differ."""
    i = j = 0
    while i < len(a) or j < len(b):
        key_a = a[i][0] if i < len(a) else None
        key_b = b[j][0] if j < len(b) else None
        if key_b is None or (key_a is not None and key_a < key_b):
            yield Difference(kind=kind, key=a[i][0], field=None, a="present", b="missing")
            i += 1
            counter.add(1)
            continue
        if key_a is None or key_b < key_a:
            yield Difference(kind=kind, key=b[j][0], field=None, a="missing", b="present")
            j += 1
            counter.add(1)
            continue
        left, right = a[i][1], b[j][1]
        i += 1
        j += 1
        counter.add(2)
        if left == right:
            continue
        for name in differing_fields(left, right):
            if name in ("token", "command_id"):
                continue  # same key, so the same value
            yield Difference(
                kind=kind, key=key_a, field=name, a=getattr(left, name), b=getattr(right, name)
            )


# --------------------------------------------------------------------------- copy


class StoreNotEmpty(RegistryError):
    """``copy_store`` refuses a destination that already holds sessions or commands."""


@attrs.frozen(kw_only=True)
class CopyReport:
    """What :func:`copy_store` copied, and how the destination differs from the snapshot."""

    sessions: int
    tokens: int
    commands: int
    next_seq: int  # the source's next seq, carried over to the destination
    differences: tuple[Difference, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "tokens": self.tokens,
            "commands": self.commands,
            "next_seq": self.next_seq,
            "differences": [d.to_json() for d in self.differences],
        }


def _backend(store: Store, side: str) -> BaseStore:
    if not isinstance(store, BaseStore):
        raise RegistryError(f"copy: the {side} is not a store of this package")
    return store


def _snapshot(src: BaseStore) -> tuple[_Records, int]:
    """Every session, token and command of ``src`` and its next seq, as of one moment.

    sqlite reads in one read transaction (writers go on meanwhile). Every other backend reads
    inside one write unit: it holds the store's write lock (json's file lock, postgres's
    advisory lock, both for dual), so no writer commits between the reads, and the unit writes
    nothing. A store with ``snapshot()`` (json) gives its sessions and tokens in one read; any
    other lists each session's tokens.
    """
    with_inbox = getattr(src, "snapshot_with_inbox", None)
    if callable(with_inbox):
        sessions, tokens, commands, next_seq = with_inbox()
        return (list(sessions), list(tokens), list(commands)), int(next_seq)
    now = src._now()
    with src.writing(savepoint=False):
        snapshot = getattr(src, "snapshot", None)
        if callable(snapshot):
            sessions, tokens = snapshot()
            sessions, tokens = list(sessions), list(tokens)
        else:
            sessions = src.select_sessions(now, active_only=False, notify_only=False)
            tokens = [t for s in sessions for t in src.tokens_of(s.session_id)]
        commands = src.select_commands(session_id=None, state=None)
        next_seq = src.next_command_seq()
    return (sessions, tokens, commands), next_seq


def copy_store(
    src: Store, dst: Store, *, progress: Callable[[int, int], None] | None = None
) -> CopyReport:
    """Copy every session, token and command of ``src`` into the empty store ``dst`` (SPEC 6).

    ``src`` is read as of one moment (see :func:`_snapshot`); the records are written exactly
    (timestamps, state, lease, attempts and each command's ``seq``) in one write unit of
    ``dst``, so a failure leaves ``dst`` as it was. ``dst``'s next seq continues after the
    source's. Then ``dst`` is read back and compared with the snapshot (not with ``src``, which
    may have changed since): :attr:`CopyReport.differences` is empty when the copy is exact.
    ``progress`` is called with ``(records done, records in all)``: the records written, then
    those compared.

    :raises StoreNotEmpty: if ``dst`` holds a session or a command; nothing is written.
    :raises RegistryError: if either store cannot be read or written.
    """
    source, target = _backend(src, "source"), _backend(dst, "destination")
    if source is target:
        raise RegistryError("copy: the source and the destination are the same store")
    records, next_seq = _snapshot(source)
    sessions, tokens, commands = records
    commands = sorted(commands, key=lambda c: c.seq)
    total = len(sessions) + len(tokens) + len(commands)
    counter = _Progress(progress, total)
    now = target._now()
    with target.writing(savepoint=False):
        held = target.select_sessions(now, active_only=False, notify_only=False, limit=1)
        if held or target.select_commands(session_id=None, state=None):
            raise StoreNotEmpty(
                f"copy: the destination ({target.backend}) already holds "
                f"{'sessions' if held else 'commands'}; copy only into an empty store"
            )
        for session in sessions:
            target.save_session(session)
            counter.add(1)
        for token in tokens:
            target.save_token(token)
            counter.add(1)
        for command in commands:
            target.save_command(command)
            counter.add(1)
        target.reserve_command_seq(next_seq)
    counter.finish()
    differences = _diff(records, _records(target), progress)
    return CopyReport(
        sessions=len(sessions),
        tokens=len(tokens),
        commands=len(commands),
        next_seq=next_seq,
        differences=tuple(differences),
    )
