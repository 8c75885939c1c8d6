"""Health checks behind ``ccr-registry doctor``: integrity, schema, modes, locks, filesystems."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs
import filelock

from registry.backends.json_file import LOCK_FILE, SESSIONS_FILE, TOKENS_FILE
from registry.config import StoreConfig

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
