"""Store configuration: the ``[store]`` table of a TOML file, a mapping, or the environment.

Resolution when ``open_store()`` gets no config (SPEC 5): ``$CCR_REGISTRY_CONFIG`` if set, else
``ccr-registry.toml`` in the default data directory (``$CCR_DATA_DIR``, or ``~/.ccr`` when that
is unset) if it exists, else the defaults with that data directory. ``~`` is expanded
everywhere; a relative path in a TOML file is relative to that file's directory.

A backend of another distribution (SPEC 5) keeps its settings in a ``[store.<name>]`` table of its
own: any table under ``[store]`` that is not one of :data:`TABLE_KEYS` is kept, unchecked, in
:attr:`StoreConfig.plugin_settings`, and :func:`registry.factory.check_backends` refuses one that
no installed backend is named after (this module does not read entry points).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

from registry import defaults
from registry.errors import ConfigError, ValidationError
from registry.validation import check_key, shown

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from registry.backends._inbox import InboxSettings

__all__ = [
    "BACKEND_NAMES",
    "CONFIG_FILE_NAME",
    "TABLE_KEYS",
    "DualConfig",
    "PostgresConfig",
    "StoreConfig",
    "default_data_dir",
]

# Spelled once, in registry.defaults (the hook reads them there without importing this module).
# The names are not checked here: registry.factory is the one place that refuses a backend it
# does not have, naming the ones it has.
BACKEND_NAMES: Final = defaults.BACKEND_NAMES
SIDE_NAMES: Final = defaults.SIDE_NAMES
CONFIG_FILE_NAME: Final = defaults.CONFIG_FILE_NAME
ENV_CONFIG: Final = defaults.ENV_CONFIG
ENV_DATA_DIR: Final = defaults.ENV_DATA_DIR
# ``StoreConfig.source`` of a config that was not read from a file.
SOURCE_DEFAULTS: Final = "defaults"
SOURCE_MAPPING: Final = "mapping"
STORE_KEYS: Final = (
    "backend",
    "data_dir",
    "sqlite_path",
    "session_ttl_hours",
    "token_ttl_hours",
    "lock_timeout_s",
    "migrate_from_json",
    "host_id",
    "legacy_inbox_dir",
    "inbox_lease_s",
    "inbox_max_attempts",
    "inbox_retention_hours",
    "dual",
    "postgres",
)
# The tables of [store] this module reads itself; any other table is a plug-in backend's.
TABLE_KEYS: Final = ("dual", "postgres")
DUAL_KEYS: Final = ("primary", "secondary", "compare_reads", "strict")
POSTGRES_KEYS: Final = ("dsn", "schema")
# A schema name as the store spells it: unquoted PostgreSQL identifier rules, lower case (a
# mixed-case name would need quoting in every psql session), at most 63 bytes.
SCHEMA_NAME_RULE: Final = "lower-case letters, digits and _, not starting with a digit, 1 to 63"

# Valid ranges, both ends included. The lock timeout ends at an hour: SQLite's busy timeout is a
# C int of milliseconds, and a value past it silently became "do not wait at all"; below 1 ms
# it is rounded to 0 ms, "do not wait" again. TTLs run from a minute to ten years: 1e-300 hours
# made every token born expired, 1e9 hours put every expiry past the calendar (each register
# failed) and 1e300 overflowed timedelta inside open_store.
LOCK_TIMEOUT_S_RANGE: Final = (0.001, 3600.0)
TTL_HOURS_RANGE: Final = (1 / 60, 10 * 365.25 * 24)
# An inbox lease runs from a second (less and a healthy consumer loses every command it types)
# to a day; a consumer that needs longer calls extend(). Attempts run from 1 (no retry) to a
# thousand (the backoff is capped at 5 minutes, so that is days of retrying).
INBOX_LEASE_S_RANGE: Final = (1.0, 86400.0)
INBOX_MAX_ATTEMPTS_RANGE: Final = (1, 1000)
_RANGE_TEXT: Final = {
    LOCK_TIMEOUT_S_RANGE: "0.001 to 3600 (seconds)",
    TTL_HOURS_RANGE: "0.0166667 (1 minute) to 87660 (10 years), in hours",
    INBOX_LEASE_S_RANGE: "1 to 86400 (seconds)",
}


def default_data_dir() -> Path:
    """``$CCR_DATA_DIR`` if set, else ``~/.ccr``."""
    return Path(os.environ.get(ENV_DATA_DIR) or defaults.DATA_DIR).expanduser()


def _name(name: str, value: object) -> str:
    # Only the form: whether a backend of that name exists is the factory's question.
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} = {shown(value)} is not valid: a backend name is a string")
    return value


def _number(name: str, value: object, valid: tuple[float, float]) -> float:
    low, high = valid
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number from {_RANGE_TEXT[valid]}, got {shown(value)}")
    # NaN fails both comparisons; an int too large for a float compares exactly.
    if not low <= value <= high:
        raise ConfigError(
            f"{name} = {shown(value)} is out of range: valid from {_RANGE_TEXT[valid]}"
        )
    return float(value)


def _count(name: str, value: object, valid: tuple[int, int]) -> int:
    low, high = valid
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {shown(value)}")
    return value


def _host_id(value: object) -> str:
    # Validated like an id (SPEC 2): it is stored in every session and command.
    try:
        return check_key("store.host_id", value)
    except ValidationError as exc:
        raise ConfigError(f"store.host_id = {shown(value)} is not valid: {exc}") from exc


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {shown(value)}")
    return value


def _checked_path(name: str, value: object) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ConfigError(f"{name} must be a path, got {shown(value)}")
    if "\x00" in str(value):
        # The OS cannot take it: every open would raise a raw ValueError.
        raise ConfigError(f"{name} must not contain a NUL character, got {shown(str(value))}")
    return Path(value)


def _path(name: str, value: object, base_dir: Path | None) -> Path:
    path = _checked_path(name, value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path


def _check_keys(table: str, mapping: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    # By their text: a mapping given in code may have keys that are not strings (they do not sort).
    unknown = sorted(set(mapping) - set(valid), key=shown)
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(shown, unknown))} in "
            f"[{table}]; valid keys: {', '.join(valid)}"
        )


# A plug-in backend's table when the config has none.
EMPTY_TABLE: Final[Mapping[str, object]] = MappingProxyType({})


def _read_only(value: object) -> object:
    # A table becomes a read-only mapping and an array a tuple, all the way down, so that no
    # store can change the settings another store of the same config reads.
    if isinstance(value, Mapping):
        return MappingProxyType({key: _read_only(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_read_only(item) for item in value)
    return value


def _plugin_settings(value: object) -> Mapping[str, Mapping[str, object]]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"plugin_settings must be a mapping of backend names to tables, got {shown(value)}"
        )
    tables: dict[str, Mapping[str, object]] = {}
    for name, table in value.items():
        if not isinstance(name, str) or not name or name in STORE_KEYS:
            raise ConfigError(
                f"{shown(name)} cannot name a plug-in backend's table: not a [store] key "
                f"({', '.join(STORE_KEYS)})"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"[store.{name}] must be a table, got {shown(table)}")
        try:
            tables[name] = MappingProxyType({key: _read_only(item) for key, item in table.items()})
        except RecursionError:
            raise ConfigError(f"[store.{name}] is nested too deeply") from None
    return MappingProxyType(tables)


class _Frozen:
    """Immutable, compared and shown by the names in ``_fields``.

    Config is read by every short-lived hook process, so it is a plain class: attrs' import
    alone would double a hook's start-up time.
    """

    __slots__: tuple[str, ...] = ()
    _fields: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use replace()")

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in self._fields))

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({shown})"


class DualConfig(_Frozen):
    """``[store.dual]``: which backend is authoritative during a cutover."""

    __slots__ = ("compare_reads", "primary", "secondary", "strict")
    _fields = DUAL_KEYS
    primary: str
    secondary: str
    compare_reads: bool
    strict: bool

    def __init__(
        self,
        *,
        primary: str = defaults.DUAL_PRIMARY,
        secondary: str = defaults.DUAL_SECONDARY,
        compare_reads: bool = defaults.DUAL_COMPARE_READS,
        strict: bool = defaults.DUAL_STRICT,
    ) -> None:
        _name("store.dual.primary", primary)
        _name("store.dual.secondary", secondary)
        if primary == secondary:
            raise ConfigError("store.dual.primary and store.dual.secondary must differ")
        self._set(
            primary=primary,
            secondary=secondary,
            compare_reads=_bool("store.dual.compare_reads", compare_reads),
            strict=_bool("store.dual.strict", strict),
        )

    @classmethod
    def from_mapping(cls, mapping: object) -> DualConfig:
        if not isinstance(mapping, Mapping):
            raise ConfigError("[store.dual] must be a table")
        _check_keys("store.dual", mapping, DUAL_KEYS)
        return cls(**mapping)


def _schema_name(value: object) -> str:
    import re  # only when a postgres table is read

    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise ConfigError(
            f"store.postgres.schema = {shown(value)} is not valid: use {SCHEMA_NAME_RULE} "
            "characters"
        )
    if value.startswith("pg_"):
        raise ConfigError(
            f"store.postgres.schema = {shown(value)} is not valid: names starting with pg_ "
            "are reserved by PostgreSQL"
        )
    return value


class PostgresConfig(_Frozen):
    """``[store.postgres]``: where the postgres backend keeps its tables.

    ``dsn`` is a libpq connection string or URI (None: not configured; opening the postgres
    backend then raises a ConfigError). ``schema`` is created if missing.
    """

    __slots__ = POSTGRES_KEYS
    _fields = POSTGRES_KEYS
    dsn: str | None
    schema: str

    def __init__(self, *, dsn: str | None = None, schema: str = defaults.POSTGRES_SCHEMA) -> None:
        if dsn is not None and (not isinstance(dsn, str) or not dsn.strip()):
            raise ConfigError(
                f"store.postgres.dsn must be a non-empty connection string, got {shown(dsn)}"
            )
        if isinstance(dsn, str) and "\x00" in dsn:
            raise ConfigError("store.postgres.dsn must not contain a NUL character")
        self._set(dsn=dsn, schema=_schema_name(schema))

    def __repr__(self) -> str:
        # A DSN may carry a password: never shown.
        shown_dsn = None if self.dsn is None else "..."
        return f"PostgresConfig(dsn={shown_dsn!r}, schema={self.schema!r})"

    @classmethod
    def from_mapping(cls, mapping: object) -> PostgresConfig:
        if not isinstance(mapping, Mapping):
            raise ConfigError("[store.postgres] must be a table")
        _check_keys("store.postgres", mapping, POSTGRES_KEYS)
        return cls(**mapping)


class StoreConfig(_Frozen):
    """The resolved ``[store]`` table.

    ``source`` says where it came from (a file path, ``"mapping"`` or ``"defaults"``),
    ``explicit`` which keys that source set (``dual.*`` for the dual table, ``<name>`` and
    ``<name>.*`` for a plug-in table) and ``base_dir`` the directory its relative paths were
    resolved against (a TOML file's directory; None: the current directory); none of them takes
    part in equality.

    ``plugin_settings`` holds every other table of ``[store]``, ``[store.<name>]``, by name: the
    settings of a backend of another distribution (SPEC 5), which reads them with
    :meth:`backend_settings`. They are read-only (a table is a read-only mapping and an array a
    tuple, all the way down) and compared, but are neither hashed (their values need not be
    hashable) nor shown by ``repr`` beyond their keys (they may hold a password).
    """

    __slots__ = (*STORE_KEYS, "base_dir", "explicit", "plugin_settings", "source")
    _fields = (*STORE_KEYS, "plugin_settings")
    backend: str
    data_dir: Path
    sqlite_path: Path | None
    session_ttl_hours: float
    token_ttl_hours: float
    lock_timeout_s: float
    migrate_from_json: bool
    host_id: str
    legacy_inbox_dir: Path | None
    inbox_lease_s: float
    inbox_max_attempts: int
    inbox_retention_hours: float
    dual: DualConfig
    postgres: PostgresConfig
    plugin_settings: Mapping[str, Mapping[str, object]]
    source: str
    explicit: frozenset[str]
    base_dir: Path | None

    def __init__(
        self,
        *,
        backend: str = defaults.BACKEND,
        data_dir: Path | None = None,
        sqlite_path: Path | None = None,
        session_ttl_hours: float = defaults.SESSION_TTL_HOURS,
        token_ttl_hours: float = defaults.TOKEN_TTL_HOURS,
        lock_timeout_s: float = defaults.LOCK_TIMEOUT_S,
        migrate_from_json: bool = defaults.MIGRATE_FROM_JSON,
        host_id: str | None = None,
        legacy_inbox_dir: Path | None = None,
        inbox_lease_s: float = defaults.INBOX_LEASE_S,
        inbox_max_attempts: int = defaults.INBOX_MAX_ATTEMPTS,
        inbox_retention_hours: float = defaults.INBOX_RETENTION_HOURS,
        dual: DualConfig | None = None,
        postgres: PostgresConfig | None = None,
        plugin_settings: Mapping[str, Mapping[str, object]] | None = None,
        source: str = SOURCE_DEFAULTS,
        explicit: frozenset[str] = frozenset(),
        base_dir: Path | None = None,
    ) -> None:
        if dual is not None and not isinstance(dual, DualConfig):
            raise ConfigError("store.dual must be a DualConfig")
        if postgres is not None and not isinstance(postgres, PostgresConfig):
            raise ConfigError("store.postgres must be a PostgresConfig")
        self._set(
            backend=_name("store.backend", backend),
            data_dir=_checked_path(
                "store.data_dir", default_data_dir() if data_dir is None else data_dir
            ),
            sqlite_path=None
            if sqlite_path is None
            else _checked_path("store.sqlite_path", sqlite_path),
            session_ttl_hours=_number(
                "store.session_ttl_hours", session_ttl_hours, TTL_HOURS_RANGE
            ),
            token_ttl_hours=_number("store.token_ttl_hours", token_ttl_hours, TTL_HOURS_RANGE),
            lock_timeout_s=_number("store.lock_timeout_s", lock_timeout_s, LOCK_TIMEOUT_S_RANGE),
            migrate_from_json=_bool("store.migrate_from_json", migrate_from_json),
            host_id=_host_id(defaults.host_id() if host_id is None else host_id),
            legacy_inbox_dir=None
            if legacy_inbox_dir is None
            else _checked_path("store.legacy_inbox_dir", legacy_inbox_dir),
            inbox_lease_s=_number("store.inbox_lease_s", inbox_lease_s, INBOX_LEASE_S_RANGE),
            inbox_max_attempts=_count(
                "store.inbox_max_attempts", inbox_max_attempts, INBOX_MAX_ATTEMPTS_RANGE
            ),
            inbox_retention_hours=_number(
                "store.inbox_retention_hours", inbox_retention_hours, TTL_HOURS_RANGE
            ),
            dual=DualConfig() if dual is None else dual,
            postgres=PostgresConfig() if postgres is None else postgres,
            plugin_settings=EMPTY_TABLE
            if plugin_settings is None
            else _plugin_settings(plugin_settings),
            source=source,
            explicit=frozenset(explicit),
            base_dir=base_dir,
        )

    def __hash__(self) -> int:
        # Equal configs have equal plug-in tables, hence the same names.
        return hash((*(getattr(self, f) for f in STORE_KEYS), frozenset(self.plugin_settings)))

    def __repr__(self) -> str:
        parts = [f"{f}={getattr(self, f)!r}" for f in STORE_KEYS]
        # The keys of each plug-in table, not its values: a value may be a password.
        tables = ", ".join(
            f"{name!r}: {{{', '.join(f'{key!r}: ...' for key in table)}}}"
            for name, table in self.plugin_settings.items()
        )
        parts.append(f"plugin_settings={{{tables}}}")
        return f"StoreConfig({', '.join(parts)})"

    def replace(self, **changes: Any) -> StoreConfig:
        """A copy with some values changed (validated like the constructor)."""
        names = (*self._fields, "source", "explicit", "base_dir")
        _check_keys("store", changes, names)
        values = {name: getattr(self, name) for name in names}
        return StoreConfig(**{**values, **changes})

    def backend_settings(self, name: str) -> Mapping[str, object]:
        """``[store.<name>]``: the settings of the plug-in backend ``name``, read-only.

        The keys and values as the TOML file (or mapping) gave them, unchecked: the backend
        validates them, and raises :meth:`error` with the key ``"<name>.<key>"`` so that the
        message names the file. A table is a read-only mapping and an array a tuple; a relative
        path is left as written (this module cannot tell which values are paths): resolve it
        against :attr:`base_dir`, as the built-in keys are. An empty mapping if there is no
        such table.
        :raises ValueError: for ``dual`` and ``postgres``, whose tables are :attr:`dual` and
            :attr:`postgres`.
        """
        if name in TABLE_KEYS:
            raise ValueError(f"[store.{name}] is read by StoreConfig.{name}")
        return self.plugin_settings.get(name, EMPTY_TABLE)

    @property
    def db_path(self) -> Path:
        """The sqlite database: ``sqlite_path``, or ``data_dir/ccr.db``."""
        if self.sqlite_path is not None:
            return self.sqlite_path
        return self.data_dir / defaults.DB_FILE_NAME

    def error(self, key: str, message: str) -> ConfigError:
        """A :class:`ConfigError` about ``key``, led by the file's path if the file set it.

        For checks made after reading (the factory's backend names), so that the message
        names the file to fix, as one raised while reading does.
        """
        from_file = self.source not in (SOURCE_DEFAULTS, SOURCE_MAPPING)
        if from_file and key in self.explicit:
            return ConfigError(f"{self.source}: {message}")
        return ConfigError(message)

    @property
    def session_ttl(self) -> timedelta:
        return timedelta(hours=self.session_ttl_hours)

    @property
    def token_ttl(self) -> timedelta:
        return timedelta(hours=self.token_ttl_hours)

    @property
    def inbox_dir(self) -> Path:
        """Where the legacy machine agent kept ``inbox-<machine>.db``: ``legacy_inbox_dir``,
        else ``$CCR_DATA_DIR`` or ``~/.ccr`` (SPEC 6)."""
        if self.legacy_inbox_dir is not None:
            return self.legacy_inbox_dir
        return default_data_dir()

    @property
    def inbox_settings(self) -> InboxSettings:
        """The inbox's lease, attempt limit and retention, as the stores take them."""
        from registry.backends._inbox import InboxSettings

        return InboxSettings(
            lease=timedelta(seconds=self.inbox_lease_s),
            max_attempts=self.inbox_max_attempts,
            retention=timedelta(hours=self.inbox_retention_hours),
        )

    # ----------------------------------------------------------------- readers

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        source: str = SOURCE_MAPPING,
    ) -> StoreConfig:
        """A config from a mapping shaped like the ``[store]`` table.

        Relative paths are relative to ``base_dir`` (default: the current directory). A key
        that is not a ``[store]`` key and holds a table is a plug-in backend's table, kept in
        :attr:`plugin_settings`.
        :raises ConfigError: for an unknown key or a bad value, naming the choices (a backend
            name, or the name of a plug-in table, is only checked to be a string here;
            :func:`registry.factory.open_store` refuses one it does not have).
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"[store] must be a table, got {type(mapping).__name__}")
        plugins = {
            key: value
            for key, value in mapping.items()
            if isinstance(key, str) and key not in STORE_KEYS and isinstance(value, Mapping)
        }
        values: dict[str, Any] = {k: v for k, v in mapping.items() if k not in plugins}
        _check_keys("store", values, STORE_KEYS)
        if "data_dir" in values:
            values["data_dir"] = _path("store.data_dir", values["data_dir"], base_dir)
        for key in ("sqlite_path", "legacy_inbox_dir"):
            if values.get(key) is not None:
                values[key] = _path(f"store.{key}", values[key], base_dir)
        explicit = set(values) - {"dual", "postgres"}
        if "dual" in values and not isinstance(values["dual"], DualConfig):
            values["dual"] = DualConfig.from_mapping(values["dual"])
            explicit |= {f"dual.{key}" for key in mapping["dual"]}
        if "postgres" in values and not isinstance(values["postgres"], PostgresConfig):
            values["postgres"] = PostgresConfig.from_mapping(values["postgres"])
            explicit |= {f"postgres.{key}" for key in mapping["postgres"]}
        for name, table in plugins.items():
            explicit |= {name, *(f"{name}.{key}" for key in table)}
        return cls(
            **values,
            plugin_settings=plugins,
            source=source,
            explicit=frozenset(explicit),
            base_dir=base_dir,
        )

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> StoreConfig:
        """A config from the ``[store]`` table of a TOML file.

        :raises ConfigError: if the file cannot be read or parsed, or holds an unknown key or a
            bad value; the message starts with the file's path.
        """
        import tomllib  # only when a file is read: a hook without one never imports it

        file = _checked_path("config file", path).expanduser()
        try:
            document = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read config: {exc}") from exc
        try:
            _check_keys("top level", document, ("store",))
            return cls.from_mapping(
                document.get("store", {}), base_dir=file.resolve().parent, source=str(file)
            )
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from exc

    @classmethod
    def resolve(
        cls, config: StoreConfig | Mapping[str, Any] | str | os.PathLike[str] | None
    ) -> StoreConfig:
        """Whatever ``open_store`` was given, or the environment when it was given nothing."""
        if isinstance(config, StoreConfig):
            return config
        if isinstance(config, Mapping):
            return cls.from_mapping(config)
        if isinstance(config, str | os.PathLike):
            return cls.from_toml(config)
        if config is not None:
            kind = type(config).__name__
            raise ConfigError(f"config must be a StoreConfig, a mapping or a TOML path, not {kind}")
        if os.environ.get(ENV_CONFIG):
            return cls.from_toml(os.environ[ENV_CONFIG])
        candidate = default_data_dir() / CONFIG_FILE_NAME
        if candidate.is_file():
            return cls.from_toml(candidate)
        return cls()
