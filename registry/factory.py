"""Pick and open a backend from config: the one-line switch between json, sqlite and dual."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import defaults
from registry.backends._base import BaseStore, Clock
from registry.config import TABLE_KEYS, StoreConfig
from registry.errors import ConfigError, RegistryError
from registry.validation import shown

if TYPE_CHECKING:
    from registry.protocols import Store

__all__ = ["BACKENDS", "check_backends", "open_store", "store_exists", "system_clock"]


def system_clock() -> datetime:
    """The real time, as an aware UTC datetime."""
    return datetime.now(UTC)


def _open_json(config: StoreConfig, clock: Clock) -> BaseStore:
    from registry.backends.json_file import JsonStore

    return JsonStore(
        config.data_dir,
        clock=clock,
        session_ttl=config.session_ttl,
        token_ttl=config.token_ttl,
        inbox=config.inbox_settings,
        host_id=config.host_id,
        lock_timeout_s=config.lock_timeout_s,
    )


def _open_sqlite(config: StoreConfig, clock: Clock) -> BaseStore:
    from registry.backends.sqlite import SqliteStore
    from registry.backends.sqlite_sql import refuse_symlinks

    # Before the first-start check: a dangling link does not "exist", and the import would
    # then start on a database SQLite would create at the link's target.
    refuse_symlinks(config.db_path)
    try:
        first_start = config.migrate_from_json and not config.db_path.exists()
        if first_start:
            from registry.migrate import import_on_first_start

            import_on_first_start(
                config.data_dir,
                config.db_path,
                inbox_dir=config.inbox_dir,
                host_id=config.host_id,
                session_ttl=config.session_ttl,
                token_ttl=config.token_ttl,
                lock_timeout_s=max(config.lock_timeout_s, 60),
            )
    except OSError as exc:
        raise RegistryError(f"{config.db_path}: cannot prepare the database: {exc}") from exc

    return SqliteStore(
        config.db_path,
        clock=clock,
        session_ttl=config.session_ttl,
        token_ttl=config.token_ttl,
        inbox=config.inbox_settings,
        host_id=config.host_id,
        lock_timeout_s=config.lock_timeout_s,
    )


def _open_dual(config: StoreConfig, clock: Clock) -> BaseStore:
    from registry.backends.dual import DualStore

    primary = _lookup(config.dual.primary)(config, clock)
    secondary: BaseStore | None = None
    secondary_error: str | None = None
    try:
        secondary = _lookup(config.dual.secondary)(config, clock)
    except RegistryError as exc:
        # SPEC 4: a secondary failure is counted and logged, not raised, unless strict. The
        # shadow copy of a cutover must not keep the daemon from starting on its primary.
        if config.dual.strict:
            primary.close()
            raise
        secondary_error = f"{type(exc).__name__}: {exc}"
    except BaseException:
        primary.close()
        raise
    return DualStore(
        primary,
        secondary,
        secondary_name=config.dual.secondary,
        secondary_error=secondary_error,
        compare_reads=config.dual.compare_reads,
        strict=config.dual.strict,
        clock=clock,
        session_ttl=config.session_ttl,
        token_ttl=config.token_ttl,
        inbox=config.inbox_settings,
        host_id=config.host_id,
    )


def _absolute(config: StoreConfig) -> StoreConfig:
    """The config with its paths made absolute, once, at open.

    A relative data directory ($CCR_DATA_DIR, ``--data-dir``, a StoreConfig built by hand)
    would otherwise be resolved again at every file access, so after an ``os.chdir`` a thread
    would open (and create) another, empty store.
    """
    changes: dict[str, Any] = {}
    if not config.data_dir.is_absolute():
        changes["data_dir"] = Path(os.path.abspath(config.data_dir))
    if config.sqlite_path is not None and not config.sqlite_path.is_absolute():
        changes["sqlite_path"] = Path(os.path.abspath(config.sqlite_path))
    return config.replace(**changes) if changes else config


# Backends are imported when opened, so a hook that uses one never imports the other. Keyed
# by the names of registry.defaults, which the command line and the hook offer as choices.
BACKENDS: dict[str, Callable[[StoreConfig, Clock], BaseStore]] = dict(
    zip(defaults.BACKEND_NAMES, (_open_json, _open_sqlite, _open_dual), strict=True)
)
# The backends a dual store can have as a side: every one but dual itself.
SIDES: tuple[str, ...] = defaults.SIDE_NAMES


# Backends provided by installed distributions (this one included: postgres) through this
# entry-point group: name -> a callable (config, clock) -> Store.
ENTRY_POINT_GROUP = "ccr_registry.backends"


def installed_backends() -> dict[str, Any]:
    """The entry points of :data:`ENTRY_POINT_GROUP` by name, built-in names excluded."""
    return dict(_entry_points())


@functools.cache
def _entry_points() -> tuple[tuple[str, Any], ...]:
    # Read once per process: scanning every installed distribution's metadata cost about 7 ms
    # per call, twice per open_store of an installed backend.
    from importlib.metadata import entry_points

    return tuple(
        (ep.name, ep) for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BACKENDS
    )


def _lookup(name: str) -> Callable[[StoreConfig, Clock], BaseStore]:
    """The opener of a built-in or installed backend (the name was checked)."""
    opener = BACKENDS.get(name)
    if opener is not None:
        return opener
    entry = installed_backends()[name]
    try:
        loaded: Callable[[StoreConfig, Clock], BaseStore] = entry.load()
    except ImportError as exc:
        extra = defaults.PLUGIN_EXTRAS.get(name)
        hint = f"; install the extra {extra}" if extra else ""
        raise ConfigError(f"backend {name!r} cannot be loaded: {exc}{hint}") from exc
    return loaded


def check_backends(config: StoreConfig) -> None:
    """Refuse a backend this factory does not have: the one check of backend names.

    The config module accepts any name, so that this is the one place that knows which
    backends exist; :func:`open_store` and :func:`store_exists` call it, and so does the
    command line once it has read a config. Both sides of a dual table are checked whatever the
    backend, as a typo there should not wait for the day the backend is switched to dual.
    Likewise every plug-in table (``StoreConfig.plugin_settings``) must be named after an
    installed backend whatever the backend: a misspelt ``[store.<name>]`` would otherwise be
    ignored in silence. Its contents are the plug-in's to check, when it is opened.
    :raises ConfigError: naming the bad value, the valid names, and the file it came from.
    """
    names = (config.backend, config.dual.primary, config.dual.secondary)
    # Entry points are only looked up for a name that is not built in: the common case reads
    # no distribution metadata.
    unknown = set(names) - set(BACKENDS)
    installed = tuple(installed_backends()) if unknown or config.plugin_settings else ()
    checks = (
        ("backend", "store.backend", config.backend, (*BACKENDS, *installed)),
        ("dual.primary", "store.dual.primary", config.dual.primary, (*SIDES, *installed)),
        ("dual.secondary", "store.dual.secondary", config.dual.secondary, (*SIDES, *installed)),
    )
    for key, name, value, choices in checks:
        if value not in choices:
            raise config.error(
                key, f"{name} = {shown(value)} is not valid; choose one of: {', '.join(choices)}"
            )
    tables = (*TABLE_KEYS, *(name for name in installed if name not in TABLE_KEYS))
    for table in config.plugin_settings:
        if table not in installed:
            raise config.error(
                table,
                f"[store.{table}] is not valid: neither a built-in table nor an installed "
                f"backend's; choose one of: {', '.join(tables)}",
            )


def _opener(config: StoreConfig) -> Callable[[StoreConfig, Clock], BaseStore]:
    check_backends(config)
    return _lookup(config.backend)


def open_store(
    config: StoreConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    clock: Clock | None = None,
) -> Store:
    """Open the store that ``config`` names (see :mod:`registry.config` for the fallbacks).

    ``clock`` returns the current time as an aware datetime (default: the system clock).
    :raises ConfigError: for an unknown backend or key, naming the valid choices.
    """
    resolved = _absolute(StoreConfig.resolve(config))
    return _opener(resolved)(resolved, clock or system_clock)


def store_exists(config: StoreConfig) -> bool:
    """True if opening ``config`` would find a store rather than create one.

    A command that only reads asks this first: opening a store creates the data directory and
    the database, and may import the legacy files (SPEC 6). sqlite needs its database file; json
    one of its files (or its journal); dual both of its sides; a server-side backend counts as
    existing.
    :raises ConfigError: for an unknown backend, as :func:`open_store` would.
    """
    check_backends(config)
    try:
        if config.backend == "dual":
            return _side_exists(config, config.dual.primary) and _side_exists(
                config, config.dual.secondary
            )
        return _side_exists(config, config.backend)
    except OSError as exc:  # a path too long, a directory this user cannot search
        raise RegistryError(f"{exc.filename or config.data_dir}: {exc.strerror}") from exc


def _side_exists(config: StoreConfig, name: str) -> bool:
    if name == "json":
        return _json_files_exist(config.data_dir)
    if name == "sqlite":
        return config.db_path.is_file()
    # A server-side backend (postgres, a plug-in): opening it is the only way to tell, and
    # opening creates nothing in data_dir; it counts as existing.
    return True


def _json_files_exist(data_dir: Path) -> bool:
    # The json store exists once something was written: one of its files or its journal. A
    # directory without them (a mistyped --data-dir, a home directory) is not a store, and a
    # read must not create its lock file there.
    from registry.backends.json_file import INBOX_FILE, JOURNAL_FILE, SESSIONS_FILE, TOKENS_FILE

    names = (SESSIONS_FILE, TOKENS_FILE, INBOX_FILE, JOURNAL_FILE)
    return any((data_dir / name).is_file() for name in names)
