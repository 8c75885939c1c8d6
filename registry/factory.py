"""Pick and open a backend from config: the one-line switch between json, sqlite and dual."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.backends._base import BaseStore, Clock
from registry.config import BACKEND_NAMES, StoreConfig
from registry.errors import ConfigError, RegistryError

if TYPE_CHECKING:
    from registry.protocols import Store

__all__ = ["BACKENDS", "open_store", "system_clock"]


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
        lock_timeout_s=config.lock_timeout_s,
    )


def _open_dual(config: StoreConfig, clock: Clock) -> BaseStore:
    from registry.backends.dual import DualStore

    primary = BACKENDS[config.dual.primary](config, clock)
    secondary: BaseStore | None = None
    secondary_error: str | None = None
    try:
        secondary = BACKENDS[config.dual.secondary](config, clock)
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


# Backends are imported when opened, so a hook that uses one never imports the other.
BACKENDS: dict[str, Callable[[StoreConfig, Clock], BaseStore]] = {
    "json": _open_json,
    "sqlite": _open_sqlite,
    "dual": _open_dual,
}


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
    opener = BACKENDS.get(resolved.backend)
    if opener is None:
        raise ConfigError(
            f"backend {resolved.backend!r} is not available; choose one of: {', '.join(BACKENDS)}"
        )
    return opener(resolved, clock or system_clock)


assert set(BACKENDS) <= set(BACKEND_NAMES)


def store_exists(config: StoreConfig) -> bool:
    """True if opening ``config`` would find a store rather than create one.

    A command that only reads asks this first: opening a store creates the data directory and
    the database, and may import the legacy files (SPEC 6). sqlite needs its database file; json
    its data directory (missing files are an empty store); dual both of its sides.
    """
    if config.backend == "json":
        return config.data_dir.is_dir()
    if config.backend == "sqlite":
        return config.db_path.is_file()
    return config.data_dir.is_dir() and config.db_path.is_file()
