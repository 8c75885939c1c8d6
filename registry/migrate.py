"""Import the legacy JSON files into SQLite, export back, and diff two stores (SPEC 6).

The import validates and normalises every record; a bad or orphaned record is skipped and
reported, never fatal, while a file that cannot be read at all is fatal (:class:`MigrationError`
naming the file). The database is built under a temporary name in its final directory and linked
into place only when complete, so a crash part-way leaves nothing that blocks a clean retry. A
lock file around the import makes concurrent first starts import exactly once. The JSON files
are only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import attrs
import filelock

from registry.errors import MigrationError, ValidationError
from registry.models import (
    Session,
    Token,
    differing_fields,
    parse_json_object,
    session_from_legacy,
    token_from_legacy,
    token_hint,
    unwrap_sessions_document,
)
from registry.paths import FILE_MODE, ensure_private_dir, fsync_dir
from registry.protocols import Store

__all__ = [
    "Difference",
    "MigrationReport",
    "SkippedRecord",
    "diff_stores",
    "export_json",
    "import_json",
    "import_on_first_start",
    "legacy_files_present",
]

SESSIONS_FILE: Final = "claude-sessions.json"
TOKENS_FILE: Final = "claude-tokens.json"
REPORT_KEY: Final = "import_report"
DEFAULT_TTL: Final = timedelta(hours=24)
_BUILD_MARK: Final = ".import-"


@attrs.frozen(kw_only=True)
class SkippedRecord:
    """A legacy record the import left out, and why. A token's key is a short hash."""

    kind: str  # "session" or "token"
    key: str
    reason: str


@attrs.frozen(kw_only=True)
class MigrationReport:
    """What an import did; also stored as JSON under ``meta.import_report`` in the database."""

    sessions_imported: int
    tokens_imported: int
    skipped: list[SkippedRecord]
    sources: dict[str, dict[str, Any]]  # file name -> {"sha256", "bytes"}
    db_path: str
    imported_at: str

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

    kind: str  # "session" or "token"
    key: str  # a session id, or a token's short hash
    field: str | None  # None when the record exists on one side only
    a: Any
    b: Any

    def __str__(self) -> str:
        where = f"{self.kind} {self.key}"
        if self.field is None:
            return f"{where}: {self.a} in a, {self.b} in b"
        return f"{where}: {self.field} differs: {self.a!r} != {self.b!r}"


def _utcnow() -> datetime:
    # Import and export copy the records' own timestamps; this clock only satisfies the stores.
    return datetime.now(UTC)


# --------------------------------------------------------------------------- reading legacy files


def legacy_files_present(json_dir: Path) -> bool:
    """True if ``json_dir`` holds either legacy file."""
    return (json_dir / SESSIONS_FILE).is_file() or (json_dir / TOKENS_FILE).is_file()


def _read_source(path: Path, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise MigrationError(f"{path}: cannot read: {exc.strerror}") from exc
    sources[path.name] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    try:
        return parse_json_object(raw)
    except ValidationError as exc:
        raise MigrationError(f"{path}: {exc}; nothing imported") from exc


def read_legacy(
    json_dir: Path, *, session_ttl: timedelta = DEFAULT_TTL, token_ttl: timedelta = DEFAULT_TTL
) -> tuple[list[Session], list[Token], list[SkippedRecord], dict[str, dict[str, Any]]]:
    """Every valid record of the legacy files in ``json_dir``, what was skipped, and checksums."""
    sources: dict[str, dict[str, Any]] = {}
    sessions_doc = _read_source(json_dir / SESSIONS_FILE, sources)
    tokens_doc = _read_source(json_dir / TOKENS_FILE, sources)
    if not sources:
        raise MigrationError(f"{json_dir}: neither {SESSIONS_FILE} nor {TOKENS_FILE} exists")
    skipped: list[SkippedRecord] = []
    sessions: dict[str, Session] = {}
    try:
        records = unwrap_sessions_document(sessions_doc)
    except ValidationError as exc:
        raise MigrationError(f"{json_dir / SESSIONS_FILE}: {exc}") from exc
    for key, raw in records.items():
        try:
            sessions[key] = session_from_legacy(key, raw, session_ttl=session_ttl)
        except ValidationError as exc:
            skipped.append(SkippedRecord(kind="session", key=key, reason=str(exc)))
    tokens: list[Token] = []
    for key, raw in tokens_doc.items():
        try:
            token = token_from_legacy(key, raw, token_ttl=token_ttl)
        except ValidationError as exc:
            skipped.append(SkippedRecord(kind="token", key=token_hint(key), reason=str(exc)))
            continue
        if token.session_id not in sessions:
            reason = f"its session {token.session_id!r} is missing"
            skipped.append(SkippedRecord(kind="token", key=token_hint(key), reason=reason))
            continue
        tokens.append(token)
    return list(sessions.values()), tokens, skipped, sources


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
) -> MigrationReport:
    """Build a new sqlite database at ``db_path`` from the legacy files in ``json_dir``.

    :raises MigrationError: if ``db_path`` already exists, no legacy file exists, or a file
        cannot be read or parsed; no database is created then.
    """
    json_dir, db_path = Path(json_dir).expanduser(), Path(db_path).expanduser()
    ensure_private_dir(db_path.parent)
    try:
        with _lock(db_path, lock_timeout_s):
            if db_path.exists():
                raise MigrationError(f"{db_path} already exists; move it away to import again")
            return _build(json_dir, db_path, session_ttl=session_ttl, token_ttl=token_ttl)
    except filelock.Timeout as exc:
        raise MigrationError(f"{db_path}: another import holds the lock") from exc


def import_on_first_start(
    json_dir: Path,
    db_path: Path,
    *,
    session_ttl: timedelta,
    token_ttl: timedelta,
    lock_timeout_s: float,
) -> MigrationReport | None:
    """Import if the database does not exist yet and legacy files do; else do nothing.

    Of several processes starting at once, one imports and the others wait for the lock and
    then find the finished database.
    """
    if db_path.exists() or not legacy_files_present(json_dir):
        return None
    ensure_private_dir(db_path.parent)
    try:
        with _lock(db_path, lock_timeout_s):
            if db_path.exists():
                return None
            return _build(json_dir, db_path, session_ttl=session_ttl, token_ttl=token_ttl)
    except filelock.Timeout as exc:
        raise MigrationError(f"{db_path}: the first-start import did not finish in time") from exc


def _build(
    json_dir: Path, db_path: Path, *, session_ttl: timedelta, token_ttl: timedelta
) -> MigrationReport:
    from registry.backends.sqlite import SqliteStore
    from registry.backends.sqlite_sql import refuse_orphan_wal

    refuse_orphan_wal(db_path)
    sessions, tokens, skipped, sources = read_legacy(
        json_dir, session_ttl=session_ttl, token_ttl=token_ttl
    )
    report = MigrationReport(
        sessions_imported=len(sessions),
        tokens_imported=len(tokens),
        skipped=skipped,
        sources=sources,
        db_path=str(db_path),
        imported_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
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
        )
        try:
            store.load(sessions, tokens, {REPORT_KEY: json.dumps(report.to_dict())})
            store.checkpoint()
        finally:
            store.close()  # the last connection removes the (empty) WAL
        fd = os.open(build, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() never replaces: if the target appeared meanwhile, this fails instead of
        # clobbering it.
        os.link(build, db_path)
        fsync_dir(db_path.parent)
    except OSError as exc:
        raise MigrationError(f"{db_path}: import failed: {exc}") from exc
    finally:
        for leftover in (build, *_sidecars(build)):
            leftover.unlink(missing_ok=True)
    return report


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _remove_stale_builds(db_path: Path) -> None:
    """Delete half-built databases of imports that died (the import lock is held)."""
    for leftover in db_path.parent.glob(f".{db_path.name}{_BUILD_MARK}*"):
        leftover.unlink(missing_ok=True)


def stored_report(db_path: str | os.PathLike[str]) -> MigrationReport | None:
    """The report of the import that built ``db_path``, if it was built by one.

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
    )
    try:
        raw = store.read_meta(REPORT_KEY)
    finally:
        store.close()
    return None if raw is None else MigrationReport.from_dict(json.loads(raw))


# --------------------------------------------------------------------------- export


def export_json(db_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Write the database's content to ``out_dir`` as the legacy JSON files.

    The content comes from one read transaction (WAL included) and both files are replaced as
    one all-or-nothing unit, under the json backend's lock, so a json store using ``out_dir``
    never sees half an export. Tokens are written in full: the legacy format needs them.
    :raises MigrationError: if the database does not exist.
    """
    from registry.backends.json_file import JsonStore
    from registry.backends.sqlite import SqliteStore

    db_path, out_dir = Path(db_path).expanduser(), Path(out_dir).expanduser()
    if not db_path.is_file():
        raise MigrationError(f"{db_path}: no database to export")
    source = SqliteStore(
        db_path, clock=_utcnow, session_ttl=DEFAULT_TTL, token_ttl=DEFAULT_TTL, lock_timeout_s=10
    )
    try:
        sessions, tokens = source.snapshot()
    finally:
        source.close()
    target = JsonStore(
        out_dir, clock=_utcnow, session_ttl=DEFAULT_TTL, token_ttl=DEFAULT_TTL, lock_timeout_s=10
    )
    try:
        target.replace_contents(sessions, tokens)
    finally:
        target.close()


# --------------------------------------------------------------------------- diff


def _all_tokens(store: Store, session_ids: Iterable[str]) -> dict[str, Token]:
    return {t.token: t for sid in session_ids for t in store.tokens.tokens_for_session(sid)}


def diff_stores(a: Store, b: Store) -> list[Difference]:
    """Every session and token that differs between two stores, field by field.

    Empty when both hold the same records. Sessions come first, by id, then tokens by hash.
    :raises RegistryError: if either store cannot be read.
    """
    sessions_a = {s.session_id: s for s in a.sessions.list_sessions()}
    sessions_b = {s.session_id: s for s in b.sessions.list_sessions()}
    found = list(_diff_records("session", sessions_a, sessions_b, str))
    tokens_a = _all_tokens(a, sessions_a)
    tokens_b = _all_tokens(b, sessions_b)
    found.extend(_diff_records("token", tokens_a, tokens_b, token_hint))
    return found


def _diff_records(
    kind: str, a: dict[str, Any], b: dict[str, Any], show: Any
) -> Iterable[Difference]:
    for key in sorted(set(a) | set(b), key=show):
        left, right = a.get(key), b.get(key)
        if left is None or right is None:
            yield Difference(
                kind=kind,
                key=show(key),
                field=None,
                a="missing" if left is None else "present",
                b="missing" if right is None else "present",
            )
            continue
        for name in differing_fields(left, right):
            if name == "token":
                continue  # same key, so the same value
            yield Difference(
                kind=kind, key=show(key), field=name, a=getattr(left, name), b=getattr(right, name)
            )
