"""Health checks behind ``ccr-registry doctor``: integrity, schema, modes, locks, filesystems.

The command inbox is covered on every side: the database's command rows (through the model's
validators, counted by state, dead ones named), the json backend's ``ccr-inbox.json`` and the
legacy machine agent's ``inbox-<machine>.db`` files that an import would read.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs
import filelock

from registry.backends.json_file import INBOX_FILE, LOCK_FILE, SESSIONS_FILE, TOKENS_FILE
from registry.config import StoreConfig
from registry.models import Command

__all__ = ["Check", "run_checks"]

# Filesystems on which POSIX locks or SQLite's shared memory are unreliable.
NETWORK_FILESYSTEMS: Final = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "9p", "ceph", "glusterfs", "lustre"}
)
NETWORK_FUSE: Final = ("fuse.sshfs", "fuse.rclone", "fuse.davfs", "fuse.s3fs", "fuse.gcsfuse")


@attrs.frozen
class Check:
    name: str
    status: str  # "ok", "warn", "fail" or "info"
    detail: str


def run_checks(config: StoreConfig, *, config_error: str | None = None) -> list[Check]:
    """Every check, in order. Nothing is written; the lock checks take and release each lock.

    ``config_error``: the config file could not be used (``config`` is then the defaults); it is
    the first row, failed. A check that raises (a garbage or truncated database, a file that
    vanished meanwhile) becomes a failed row naming the error: doctor reports, it never crashes.
    """
    if config_error is not None:
        checks = [Check("config", "fail", config_error)]
    else:
        checks = [Check("config", "info", f"backend {config.backend} from {config.source}")]
    data_dir = config.data_dir
    try:
        exists, is_dir = data_dir.exists(), data_dir.is_dir()
    except OSError as exc:  # a name too long, a parent this user cannot search
        checks.append(Check("data dir", "fail", f"{data_dir}: {exc.strerror}"))
        return checks
    if not exists:
        checks.append(Check("data dir", "warn", f"{data_dir} does not exist yet"))
        return checks
    if not is_dir:
        checks.append(Check("data dir", "fail", f"{data_dir} is not a directory"))
        return checks
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("data dir", lambda: _mode_check("data dir", data_dir, 0o700)),
        ("filesystem", lambda: _filesystem_check(data_dir)),
        ("legacy files", lambda: _legacy_checks(data_dir)),
        ("json inbox", lambda: _json_inbox_check(data_dir)),
        ("legacy inbox", lambda: _legacy_inbox_check(config)),
        ("database", lambda: _database_checks(config.db_path)),
        ("json lock", lambda: _json_lock_check(data_dir)),
    ]
    if config.backend == "dual":
        steps.append(("dual secondary", lambda: _dual_check(config)))
    for name, step in steps:
        try:
            found = step()
        except Exception as exc:  # a report, not a crash (see the docstring)
            found = Check(name, "fail", f"{type(exc).__name__}: {exc}")
        checks.extend(found if isinstance(found, list) else [found])
    return checks


def _mode_check(name: str, path: Path, private: int) -> Check:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~private & 0o077:
        return Check(name, "warn", f"{path} is {mode:04o}: readable by others (want {private:04o})")
    return Check(name, "ok", f"{path} is {mode:04o}")


def filesystem_type(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    resolved = str(path.resolve())
    best, kind = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def _filesystem_check(data_dir: Path, mounts: Path = Path("/proc/mounts")) -> Check:
    kind = filesystem_type(data_dir, mounts)
    if kind is None:
        return Check("filesystem", "info", "type unknown (no /proc/mounts)")
    if kind in NETWORK_FILESYSTEMS or kind.startswith(NETWORK_FUSE):
        return Check(
            "filesystem",
            "warn",
            f"{data_dir} is on {kind}: file locks and SQLite's WAL are unreliable on network "
            "filesystems; use a local data directory",
        )
    return Check("filesystem", "ok", kind)


def _journal_check(data_dir: Path) -> Check:
    """A commit journal left by a writer that died: the next writer rolls it forward; one
    this backend did not write makes every command refuse the store."""
    from registry.backends.json_file import read_journal
    from registry.errors import RegistryError

    try:
        pairs = read_journal(data_dir)
    except RegistryError as exc:
        return Check("journal", "fail", str(exc))
    except OSError as exc:
        return Check("journal", "fail", f"cannot be read: {exc.strerror}")
    if pairs is None:
        return Check("journal", "ok", "none")
    return Check("journal", "warn", "an interrupted commit; the next write completes it")


def _legacy_checks(data_dir: Path) -> list[Check]:
    from registry.backends.json_file import inspect_files
    from registry.errors import RegistryError

    checks = []
    present = False
    for name in (SESSIONS_FILE, TOKENS_FILE):
        path = data_dir / name
        if path.exists():
            present = True
            checks.append(Check(name, "info", f"present, {path.stat().st_size} bytes"))
            checks.append(_mode_check(f"{name} mode", path, 0o600))
        else:
            checks.append(Check(name, "info", "absent"))
    checks.append(_journal_check(data_dir))
    if present:
        try:
            counts = inspect_files(data_dir)
        except RegistryError as exc:
            checks.append(Check("legacy records", "fail", str(exc)))
        else:
            # Kept verbatim on every rewrite and never shown: worth knowing, not an error.
            unreadable, orphans = counts["unreadable"], counts["orphan_tokens"]
            status = "warn" if unreadable or orphans else "ok"
            detail = f"{unreadable} unreadable (kept as they are), {orphans} orphan tokens (hidden)"
            checks.append(Check("legacy records", status, detail))
    return checks


def _database_checks(db_path: Path) -> list[Check]:
    from registry.backends.sqlite import SCHEMA_VERSION

    if not db_path.exists():
        wal = db_path.with_name(db_path.name + "-wal")
        if wal.exists():
            return [Check("database", "fail", f"{wal} exists without its database")]
        return [Check("database", "info", f"{db_path} absent")]
    checks = [_mode_check("database mode", db_path, 0o600)]
    for suffix in ("-wal", "-shm"):
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            checks.append(_mode_check(f"database{suffix} mode", side, 0o600))
    # as_uri() percent-encodes the path: a "#" or "?" in a directory name (data#1) would
    # otherwise end the path, and SQLite would open (and create) another file.
    uri = db_path.absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=2)
    except sqlite3.Error as exc:
        return [*checks, Check("database", "fail", f"cannot open: {exc}")]
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            checks.append(Check("schema", "ok", f"version {version}"))
        elif version > SCHEMA_VERSION:
            detail = f"version {version} is newer than this code's {SCHEMA_VERSION}"
            checks.append(Check("schema", "fail", detail))
        else:
            checks.append(Check("schema", "warn", f"version {version}; opening upgrades it"))
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            problems = [f"integrity_check stopped: {exc}"]
        if problems == ["ok"]:
            checks.append(Check("integrity", "ok", "integrity_check passed"))
        else:
            checks.append(Check("integrity", "fail", "; ".join(problems[:5])))
        checks.append(_records_check(conn))
        checks.append(_commands_check(conn))
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        checks.append(Check("journal mode", "ok" if mode == "wal" else "warn", mode))
    except sqlite3.DatabaseError as exc:
        checks.append(Check("database", "fail", f"not a readable database: {exc}"))
    finally:
        conn.close()
    checks.append(_database_lock_check(db_path))
    return checks


def _records_check(conn: sqlite3.Connection) -> Check:
    """Every stored record through the model's validators (reads trust the rows; this checks)."""
    from registry.backends.sqlite_sql import SESSION_COLUMNS, TOKEN_COLUMNS, decode_checked
    from registry.errors import ValidationError

    bad: list[str] = []
    count = 0
    for row in conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions"):
        count += 1
        try:
            decode_checked("session", row)
        except (ValidationError, ValueError, TypeError) as exc:
            bad.append(f"session {row[0]!r}: {exc}")
    for row in conn.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens"):
        count += 1
        try:
            decode_checked("token", row)
        except (ValidationError, ValueError, TypeError) as exc:
            bad.append(f"a token of session {row[1]!r}: {exc}")
    if bad:
        return Check("records", "fail", f"{len(bad)} invalid: " + "; ".join(bad[:3]))
    return Check("records", "ok", f"{count} records valid")


def _inbox_summary(name: str, commands: list[Command], bad: list[str]) -> Check:
    """Counts by state; dead commands named (they wait for a person: ``inbox requeue``)."""
    from registry.validation import COMMAND_STATES

    counts = dict.fromkeys(COMMAND_STATES, 0)
    for command in commands:
        counts[command.state] += 1
    detail = ", ".join(f"{count} {state}" for state, count in counts.items())
    if bad:
        return Check(name, "fail", f"{len(bad)} invalid: " + "; ".join(bad[:3]) + f"; {detail}")
    dead = [c for c in commands if c.state == "dead"]
    if dead:
        shown = "; ".join(f"{c.command_id!r} ({c.last_error})" for c in dead[:3])
        more = f" and {len(dead) - 3} more" if len(dead) > 3 else ""
        return Check(name, "warn", f"{detail}; dead: {shown}{more} (`inbox requeue` retries one)")
    return Check(name, "ok", detail)


def _commands_check(conn: sqlite3.Connection) -> Check:
    """Every command row through the model's validators, counted by state."""
    from registry.backends.sqlite_sql import COMMAND_COLUMNS, COMMAND_FIELDS, decode_checked
    from registry.errors import ValidationError

    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'commands'"
    ).fetchone()
    if found is None:
        return Check("commands", "info", "no commands table (an older schema; opening adds it)")
    key = COMMAND_FIELDS.index("command_id")
    commands: list[Command] = []
    bad: list[str] = []
    for row in conn.execute(f"SELECT {COMMAND_COLUMNS} FROM commands ORDER BY seq"):
        try:
            command = decode_checked("command", row)
        except (ValidationError, ValueError, TypeError) as exc:
            bad.append(f"command {row[key]!r}: {exc}")
            continue
        assert isinstance(command, Command)
        commands.append(command)
    return _inbox_summary("commands", commands, bad)


def _json_inbox_check(data_dir: Path) -> list[Check]:
    """The json backend's inbox file: absent, or readable as a whole (else every read fails)."""
    from registry.backends.json_file import parse_inbox
    from registry.errors import RegistryError

    path = data_dir / INBOX_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [Check(INBOX_FILE, "info", "absent")]
    except OSError as exc:
        return [Check(INBOX_FILE, "fail", f"cannot read: {exc.strerror or exc}")]
    checks = [_mode_check(f"{INBOX_FILE} mode", path, 0o600)]
    try:
        commands = list(parse_inbox(path, raw).records.values())
    except RegistryError as exc:
        return [*checks, Check(INBOX_FILE, "fail", str(exc))]
    return [*checks, _inbox_summary(INBOX_FILE, commands, [])]


def _legacy_inbox_check(config: StoreConfig) -> Check:
    """The legacy machine agent's inbox databases an import would read (SPEC 6)."""
    from registry.migrate import legacy_inbox_files

    files = legacy_inbox_files(config.inbox_dir, config.data_dir)
    if not files:
        where = {str(config.inbox_dir): None, str(config.data_dir): None}
        return Check("legacy inbox", "info", f"no inbox-*.db in {' or '.join(where)}")
    pending = [
        side.name
        for path in files
        for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal"))
        if side.is_file() and side.stat().st_size > 0
    ]
    names = ", ".join(str(path) for path in files)
    if pending:
        return Check(
            "legacy inbox",
            "warn",
            f"{names}; {', '.join(pending)} not folded in: the machine agent is running or "
            "stopped part-way, and an import refuses the file",
        )
    return Check("legacy inbox", "info", f"{names} (read by an import)")


def _database_lock_check(db_path: Path) -> Check:
    # mode=rw: never create the file (it may have been removed since the first check).
    conn = sqlite3.connect(db_path.absolute().as_uri() + "?mode=rw", uri=True, timeout=0)
    conn.isolation_level = None
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            return Check("database lock", "fail", f"cannot take the write lock: {exc}")
        return Check("database lock", "warn", f"a writer holds the database now ({exc})")
    except sqlite3.DatabaseError as exc:
        return Check("database lock", "fail", f"not a database: {exc}")
    finally:
        conn.close()
    return Check("database lock", "ok", "free")


def _dual_check(config: StoreConfig) -> Check:
    """Can the secondary be opened? A dual store runs on its primary alone when it cannot."""
    from registry.factory import open_store, store_exists

    if not store_exists(config):
        return Check("dual secondary", "info", "no store yet")
    store = open_store(config.replace(lock_timeout_s=min(config.lock_timeout_s, 2.0)))
    try:
        error = getattr(store, "secondary_error", None)
    finally:
        store.close()
    side, primary = config.dual.secondary, config.dual.primary
    if error:
        return Check(
            "dual secondary",
            "fail",
            f"{side} cannot be opened, writes go to {primary} only: {error}",
        )
    return Check("dual secondary", "ok", f"{side} opens")


def _json_lock_check(data_dir: Path) -> Check:
    path = data_dir / LOCK_FILE
    if not path.exists():
        return Check("json lock", "ok", "free")
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return Check("json lock", "warn", f"{path} is held by another process now")
    except OSError as exc:
        return Check("json lock", "warn", f"cannot test {path}: {exc}")
    lock.release()
    return Check("json lock", "ok", "free")
