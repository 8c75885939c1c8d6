"""StoreConfig and open_store(): mappings, TOML files, the environment, and clear errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from registry import ConfigError, StoreConfig, open_store
from registry.config import BACKEND_NAMES, DualConfig
from registry.factory import BACKENDS, store_exists
from tests.conftest import UNPRINTABLE_INT, FakeClock


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CCR_REGISTRY_CONFIG", raising=False)
    monkeypatch.delenv("CCR_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_defaults(tmp_path: Path) -> None:
    config = StoreConfig.resolve(None)
    assert config.backend == "sqlite"
    assert config.data_dir == tmp_path / "home" / ".ccr"
    assert config.db_path == tmp_path / "home" / ".ccr" / "ccr.db"
    assert config.session_ttl == config.token_ttl == timedelta(hours=24)
    assert (config.lock_timeout_s, config.migrate_from_json) == (10, True)
    assert (config.dual.primary, config.dual.secondary) == ("json", "sqlite")


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CCR_DATA_DIR", str(tmp_path / "d"))
    assert StoreConfig.resolve(None).data_dir == tmp_path / "d"


def test_toml_in_the_data_dir_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "ccr-registry.toml").write_text('[store]\nbackend = "json"\ndata_dir = "."\n')
    monkeypatch.setenv("CCR_DATA_DIR", str(data))
    config = StoreConfig.resolve(None)
    assert (config.backend, config.data_dir, config.source) == (
        "json",
        data,
        str(data / "ccr-registry.toml"),
    )


def test_config_env_variable_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "elsewhere.toml"
    file.write_text(
        "[store]\n"
        'backend = "dual"\n'
        'data_dir = "rel/data"\n'
        'sqlite_path = "~/db.sqlite"\n'
        "session_ttl_hours = 1.5\n"
        "token_ttl_hours = 2\n"
        "lock_timeout_s = 0.5\n"
        "migrate_from_json = false\n"
        "[store.dual]\n"
        'primary = "sqlite"\n'
        'secondary = "json"\n'
        "compare_reads = false\n"
        "strict = true\n"
    )
    monkeypatch.setenv("CCR_REGISTRY_CONFIG", str(file))
    monkeypatch.setenv("CCR_DATA_DIR", str(tmp_path / "ignored"))
    config = StoreConfig.resolve(None)
    assert config.backend == "dual"
    assert config.data_dir == tmp_path / "rel" / "data"  # relative to the file's directory
    assert config.db_path == tmp_path / "home" / "db.sqlite"  # ~ expanded
    assert config.session_ttl == timedelta(minutes=90)
    assert config.token_ttl == timedelta(hours=2)
    assert (config.lock_timeout_s, config.migrate_from_json) == (0.5, False)
    assert (config.dual.primary, config.dual.secondary) == ("sqlite", "json")
    assert (config.dual.compare_reads, config.dual.strict) == (False, True)


def test_mapping_paths_are_expanded(tmp_path: Path) -> None:
    config = StoreConfig.from_mapping({"data_dir": "~/x"})
    assert config.data_dir == tmp_path / "home" / "x"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"backend": "mongodb"}, "json, sqlite, dual"),
        ({"bakend": "json"}, "valid keys: backend, data_dir"),
        ({"dual": {"primary": "json", "secondary": "json"}}, "must differ"),
        ({"dual": {"primary": "redis"}}, "json, sqlite"),
        ({"dual": {"compare": True}}, "valid keys: primary, secondary, compare_reads, strict"),
        ({"session_ttl_hours": 0}, "out of range"),
        ({"token_ttl_hours": -1}, "out of range"),
        ({"lock_timeout_s": "10"}, "number"),
        ({"lock_timeout_s": True}, "number"),
        ({"migrate_from_json": "yes"}, "true or false"),
        ({"data_dir": ""}, "path"),
        ({"data_dir": 5}, "path"),
        ({"dual": 5}, r"\[store.dual\] must be a table"),
        ({"backend": UNPRINTABLE_INT}, "an int of 16610 bits is not valid"),
        ({"lock_timeout_s": UNPRINTABLE_INT}, "an int of 16610 bits is out of range"),
        ({UNPRINTABLE_INT: 1, "bakend": 1}, "unknown keys 'bakend', an int of 16610 bits in"),
        ({1: "x", "bakend": "json"}, "unknown keys 'bakend', 1 in"),
        ({"dual": {1: "x", "strikt": True}}, r"unknown keys 'strikt', 1 in \[store.dual\]"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_choices(
    mapping: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        open_store(mapping)


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[store\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        open_store(bad)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        open_store(tmp_path / "missing.toml")
    other = tmp_path / "other.toml"
    other.write_text("[stroe]\nbackend = 'json'\n")
    with pytest.raises(ConfigError, match="stroe"):
        open_store(other)
    with pytest.raises(ConfigError, match="StoreConfig, a mapping or a TOML path"):
        open_store(42)  # type: ignore[arg-type]


def test_one_line_switch_selects_the_backend(tmp_path: Path) -> None:
    for name in ("json", "sqlite"):
        file = tmp_path / f"{name}.toml"
        file.write_text(f'[store]\nbackend = "{name}"\ndata_dir = "data-{name}"\n')
        with open_store(file) as store:
            assert store.backend == name


def test_every_configurable_backend_can_be_opened() -> None:
    assert set(BACKENDS) == set(BACKEND_NAMES)


# --------------------------------------------------------------------------- bounds

TTL_KEYS = ("session_ttl_hours", "token_ttl_hours")
TTL_RANGE = "0.0166667 (1 minute) to 87660 (10 years), in hours"
LOCK_RANGE = "0.001 to 3600 (seconds)"
OUT_OF_RANGE: list[tuple[str, object, str]] = [
    *[
        (key, value, TTL_RANGE)
        for key in TTL_KEYS
        for value in (
            0,
            -1,
            1 / 120,  # 30 s
            1e-300,  # every token born expired
            87661,
            1e9,  # every expiry past the calendar: every register failed
            1e300,  # OverflowError inside open_store
            10**400,
            float("nan"),
            float("inf"),
            float("-inf"),
        )
    ],
    # SQLite's busy timeout is a C int of milliseconds: past it, "no wait at all"; under 1 ms, 0.
    *[
        ("lock_timeout_s", value, LOCK_RANGE)
        for value in (0, -1, 0.0001, 3600.5, 1e300, float("nan"), float("inf"))
    ],
]


@pytest.mark.parametrize(
    ("key", "value", "valid"), OUT_OF_RANGE, ids=[f"{k}={v!r}" for k, v, _ in OUT_OF_RANGE]
)
def test_a_value_out_of_range_names_the_key_and_the_range(
    key: str, value: object, valid: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store({key: value})
    assert f"store.{key}" in str(caught.value)
    assert valid in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("session_ttl_hours", "1e300"), ("token_ttl_hours", "nan"), ("lock_timeout_s", "1e10")],
)
def test_a_value_out_of_range_in_a_file_names_the_file_the_key_and_the_range(
    tmp_path: Path, key: str, value: str
) -> None:
    file = tmp_path / "ccr-registry.toml"
    file.write_text(f"[store]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        open_store(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: ")
    assert f"store.{key}" in message
    assert "out of range" in message


@pytest.mark.parametrize(
    "body",
    [
        'backend = "mongodb"',
        "migrate_from_json = 1",
        "data_dir = 5",
        "bakend = 1",
        '[store.dual]\nprimary = "redis"',
    ],
)
def test_any_bad_value_in_a_file_names_the_file(tmp_path: Path, body: str) -> None:
    file = tmp_path / "named-config.toml"
    file.write_text(f"[store]\n{body}\n")
    with pytest.raises(ConfigError, match=r"^.*named-config\.toml: "):
        open_store(file)


def test_the_bounds_themselves_are_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for hours in (1 / 60, 87660):
        for backend in BACKEND_NAMES:
            config = {
                "backend": backend,
                "data_dir": str(tmp_path / f"{backend}-{hours}"),
                "session_ttl_hours": hours,
                "token_ttl_hours": hours,
                "lock_timeout_s": 0.001 if hours < 1 else 3600,
            }
            with open_store(config) as store:
                session = store.sessions.register("s1")
                token = store.tokens.mint_token("s1", 1)
                assert session.expires_at - session.last_seen == timedelta(hours=hours)
                assert token.expires_at - token.created_at == timedelta(hours=hours)
                assert store.tokens.validate_token(token.token, 1) == token


@pytest.mark.parametrize("key", ["data_dir", "sqlite_path"])
def test_a_nul_byte_in_a_path_is_a_config_error(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"store.{key} must not contain a NUL"):
        open_store({key: str(tmp_path / "a\x00b")})
    with pytest.raises(ConfigError, match=f"store.{key} must not contain a NUL"):
        StoreConfig(**{key: tmp_path / "a\x00b"})  # type: ignore[arg-type]
    file = tmp_path / "nul.toml"
    file.write_text(f'[store]\n{key} = "a\\u0000b"\n')
    with pytest.raises(ConfigError, match=rf"nul\.toml: store\.{key} must not contain a NUL"):
        open_store(file)
    assert not (tmp_path / "a").exists()


def test_replace_validates_like_the_constructor() -> None:
    config = StoreConfig()
    assert config.replace(lock_timeout_s=2).lock_timeout_s == 2
    with pytest.raises(ConfigError, match="unknown key 'lock_timeout'"):
        config.replace(lock_timeout=2)
    with pytest.raises(ConfigError, match=r"store\.token_ttl_hours"):
        config.replace(token_ttl_hours=1e300)


def test_a_nul_byte_in_the_config_file_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NUL"):
        open_store(str(tmp_path / "c\x00.toml"))


# --------------------------------------------------------------------------- backend names


def test_config_takes_any_backend_name_and_the_factory_refuses_an_unknown_one(
    tmp_path: Path,
) -> None:
    # The one check is the factory's: the config only reads the name.
    for config in (
        StoreConfig(backend="mongodb", data_dir=tmp_path),
        StoreConfig(data_dir=tmp_path, dual=DualConfig(primary="redis", secondary="json")),
        StoreConfig(data_dir=tmp_path, dual=DualConfig(primary="sqlite", secondary="dual")),
    ):
        with pytest.raises(ConfigError, match="is not valid; choose one of: json, sqlite"):
            open_store(config)
        with pytest.raises(ConfigError, match="is not valid; choose one of: json, sqlite"):
            store_exists(config)
    assert not any(tmp_path.iterdir())  # refused before anything was created


def test_a_backend_name_is_refused_naming_the_file_only_when_the_file_gave_it(
    tmp_path: Path,
) -> None:
    file = tmp_path / "named-config.toml"
    file.write_text('[store]\nbackend = "mongodb"\n')
    config = StoreConfig.from_toml(file)
    assert config.backend == "mongodb"
    with pytest.raises(ConfigError, match=r"^.*named-config\.toml: store\.backend = 'mongodb'"):
        open_store(config)
    file.write_text("[store]\nlock_timeout_s = 5\n")
    renamed = StoreConfig.from_toml(file).replace(backend="redis")
    with pytest.raises(ConfigError, match=r"^store\.backend = 'redis' is not valid"):
        open_store(renamed)


def test_config_defaults_are_read_from_the_defaults_module() -> None:
    import inspect

    from registry import defaults

    signature = inspect.signature(StoreConfig)
    assert signature.parameters["backend"].default is defaults.BACKEND
    assert signature.parameters["session_ttl_hours"].default is defaults.SESSION_TTL_HOURS
    assert signature.parameters["lock_timeout_s"].default is defaults.LOCK_TIMEOUT_S
    assert BACKEND_NAMES is defaults.BACKEND_NAMES
    assert tuple(BACKENDS) == defaults.BACKEND_NAMES


# --------------------------------------------------------------------------- inbox keys

INBOX_EDGES: list[tuple[str, str, object]] = [
    ("inbox_lease_s", "1", 1.0),
    ("inbox_lease_s", "86400", 86400.0),
    ("inbox_max_attempts", "1", 1),
    ("inbox_max_attempts", "1000", 1000),
    ("inbox_retention_hours", str(1 / 60), 1 / 60),
    ("inbox_retention_hours", "87660", 87660.0),
]
LEASE_RANGE = "1 to 86400 (seconds)"
ATTEMPTS_RANGE = "from 1 to 1000"
INBOX_REFUSED: list[tuple[str, str, str]] = [
    *[("inbox_lease_s", v, LEASE_RANGE) for v in ("0.999", "86400.5", "0", "-1", "nan", "inf")],
    *[("inbox_lease_s", v, "must be a number") for v in ('"60"', "true")],
    *[("inbox_max_attempts", v, ATTEMPTS_RANGE) for v in ("0", "1001", "-1", "10.0", '"10"')],
    ("inbox_max_attempts", "true", ATTEMPTS_RANGE),
    *[("inbox_retention_hours", v, TTL_RANGE) for v in ("0.0083", "87661", "0", "nan", "1e300")],
    ("legacy_inbox_dir", "5", "store.legacy_inbox_dir must be a path"),
    ("legacy_inbox_dir", '""', "store.legacy_inbox_dir must be a path"),
    ("legacy_inbox_dir", '"a\\u0000b"', "store.legacy_inbox_dir must not contain a NUL"),
]


def test_inbox_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = StoreConfig.resolve(None)
    assert (config.inbox_lease_s, config.inbox_max_attempts) == (60, 10)
    assert config.inbox_retention_hours == 24
    assert config.legacy_inbox_dir is None
    assert config.inbox_dir == tmp_path / "home" / ".ccr"
    settings = config.inbox_settings
    assert (settings.lease, settings.max_attempts, settings.retention) == (
        timedelta(seconds=60),
        10,
        timedelta(hours=24),
    )
    monkeypatch.setenv("CCR_DATA_DIR", str(tmp_path / "d"))
    assert StoreConfig.resolve(None).inbox_dir == tmp_path / "d"
    # An explicit legacy_inbox_dir wins over the environment.
    assert StoreConfig(legacy_inbox_dir=tmp_path / "x").inbox_dir == tmp_path / "x"


@pytest.mark.parametrize(
    ("key", "text", "value"), INBOX_EDGES, ids=[f"{k}={t}" for k, t, _ in INBOX_EDGES]
)
def test_an_inbox_key_at_the_edge_of_its_range_is_accepted(
    tmp_path: Path, key: str, text: str, value: object
) -> None:
    file = tmp_path / "ccr-registry.toml"
    file.write_text(f"[store]\n{key} = {text}\n")
    config = StoreConfig.from_toml(file)
    assert getattr(config, key) == value
    assert key in config.explicit
    assert getattr(StoreConfig.from_mapping({key: value}), key) == value


@pytest.mark.parametrize(
    ("key", "text", "message"), INBOX_REFUSED, ids=[f"{k}={t}" for k, t, _ in INBOX_REFUSED]
)
def test_an_inbox_key_out_of_range_names_the_key_and_the_file(
    tmp_path: Path, key: str, text: str, message: str
) -> None:
    file = tmp_path / "named-config.toml"
    file.write_text(f"[store]\n{key} = {text}\n")
    with pytest.raises(ConfigError) as caught:
        open_store(file)
    text_of = str(caught.value)
    assert text_of.startswith(f"{file}: store.{key}")
    assert message in text_of


def test_legacy_inbox_dir_is_relative_to_the_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    file = folder / "ccr-registry.toml"
    monkeypatch.chdir(tmp_path)  # not the file's directory
    for written, expected in (
        ("legacy", folder / "legacy"),
        ("../agent/inboxes", folder / ".." / "agent" / "inboxes"),
        ("~/inboxes", tmp_path / "home" / "inboxes"),
        (str(tmp_path / "absolute"), tmp_path / "absolute"),
    ):
        file.write_text(f"[store]\nlegacy_inbox_dir = {json.dumps(written)}\n")
        config = StoreConfig.from_toml(file)
        assert config.legacy_inbox_dir == expected
        assert config.inbox_dir == expected
    assert StoreConfig.from_mapping({"legacy_inbox_dir": "rel"}).inbox_dir == tmp_path / "rel"


def test_inbox_keys_reach_the_store(tmp_path: Path) -> None:
    clock = FakeClock()
    config = {
        "data_dir": str(tmp_path / "data"),
        "inbox_lease_s": 1,
        "inbox_max_attempts": 1,
        "inbox_retention_hours": 1 / 60,
    }
    with open_store(config, clock=clock) as store:
        store.inbox.enqueue("c1", {"text": "ls"})
        claimed = store.inbox.claim("worker")
        assert claimed is not None and claimed.lease_until == clock.now + timedelta(seconds=1)
        failed = store.inbox.fail("c1", "worker", "no pane")  # one attempt is the limit
        assert failed.state == "dead"
        clock.advance(seconds=59)
        assert store.inbox.cleanup_inbox() == []
        clock.advance(seconds=1)  # a minute of retention
        assert store.inbox.cleanup_inbox() == ["c1"]


# --------------------------------------------------------------------------- postgres settings


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"dsn": ""}, "store.postgres.dsn must be a non-empty connection string"),
        ({"dsn": 5}, "store.postgres.dsn must be a non-empty connection string"),
        ({"schema": "Mixed"}, r"store.postgres.schema = 'Mixed' is not valid: use lower-case"),
        ({"schema": "1abc"}, "store.postgres.schema = '1abc' is not valid"),
        ({"schema": 'a"; drop'}, "is not valid"),
        ({"schema": "a" * 64}, "is not valid"),
        ({"schema": "pg_temp"}, "reserved by PostgreSQL"),
        ({"dns": "x"}, r"unknown key 'dns' in \[store.postgres\]; valid keys: dsn, schema"),
        (5, r"\[store.postgres\] must be a table"),
    ],
)
def test_bad_postgres_settings_are_config_errors(table: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StoreConfig.from_mapping({"backend": "postgres", "postgres": table})


def test_postgres_settings_default_and_never_show_the_dsn() -> None:
    config = StoreConfig.from_mapping(
        {"backend": "postgres", "postgres": {"dsn": "postgresql://u:secret@h/db"}}
    )
    assert config.postgres.schema == "ccr"
    assert config.postgres.dsn == "postgresql://u:secret@h/db"
    assert "secret" not in repr(config)


def test_postgres_without_a_dsn_is_refused_naming_the_key(tmp_path: Path) -> None:
    file = tmp_path / "pg.toml"
    file.write_text('[store]\nbackend = "postgres"\n[store.postgres]\nschema = "mine"\n')
    with pytest.raises(ConfigError, match=r"store\.postgres\.dsn is required"):
        open_store(file)


def test_an_installed_backend_is_found_through_its_entry_point() -> None:
    from registry.factory import installed_backends

    entry = installed_backends()["postgres"]
    assert entry.value == "registry.backends.postgres:open_backend"
    # An unknown name lists the built-in and the installed ones.
    with pytest.raises(ConfigError, match="choose one of: json, sqlite, dual, postgres"):
        open_store({"backend": "mongodb"})
    with pytest.raises(ConfigError, match="choose one of: json, sqlite, postgres"):
        open_store({"dual": {"primary": "json", "secondary": "mongodb"}})


def test_a_missing_driver_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "registry.backends.postgres", raising=False)
    with pytest.raises(ConfigError, match=r"ccr-registry\[postgres\]"):
        open_store({"backend": "postgres", "postgres": {"dsn": "host=/nowhere"}})


# --------------------------------------------------------------------------- plug-in tables

PLUGIN_TOML = """
[store]
backend = "json"
data_dir = "data"

[store.ext]
file = "rel/ext.db"
flag = true
ports = [1, 2, [3]]
when = 2026-01-02T03:04:05Z
password = "hunter2"

[store.ext.nested]
depth = 2
"""


def test_a_plugin_table_is_kept_as_written_and_read_only(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    file = tmp_path / "conf" / "ccr-registry.toml"
    file.parent.mkdir()
    file.write_text(PLUGIN_TOML)
    config = StoreConfig.from_toml(file)
    settings = config.backend_settings("ext")
    assert dict(settings) == {
        "file": "rel/ext.db",  # not resolved: which values are paths is the plugin's to know
        "flag": True,
        "ports": (1, 2, (3,)),
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "password": "hunter2",
        "nested": {"depth": 2},
    }
    assert config.plugin_settings == {"ext": settings}
    assert config.base_dir == tmp_path / "conf"  # what a plugin resolves a relative path against
    assert config.data_dir == tmp_path / "conf" / "data"
    assert {"ext", "ext.file", "ext.nested"} <= config.explicit
    with pytest.raises(TypeError):
        settings["flag"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        settings["nested"]["depth"] = 3  # type: ignore[index]
    with pytest.raises(TypeError):
        config.plugin_settings["other"] = {}  # type: ignore[index]
    assert config.backend_settings("absent") == {}


def test_a_plugin_table_given_in_code_is_a_copy(tmp_path: Path) -> None:
    table: dict[str, object] = {"items": [1, 2], "sub": {"a": 1}}
    config = StoreConfig.from_mapping({"data_dir": str(tmp_path), "ext": table})
    table["items"].append(3)  # type: ignore[attr-defined]
    table["sub"]["a"] = 2  # type: ignore[index]
    table["new"] = 1
    assert dict(config.backend_settings("ext")) == {"items": (1, 2), "sub": {"a": 1}}
    assert config.base_dir is None  # a mapping's relative paths are the current directory's
    assert {"ext", "ext.items", "ext.sub"} <= config.explicit


def test_the_built_in_tables_are_not_plugin_tables() -> None:
    config = StoreConfig.from_mapping(
        {"dual": {"strict": True}, "postgres": {"schema": "mine"}, "ext": {}}
    )
    assert (config.dual.strict, config.postgres.schema) == (True, "mine")
    assert set(config.plugin_settings) == {"ext"}
    for name in ("dual", "postgres"):
        with pytest.raises(ValueError, match=rf"StoreConfig\.{name}"):
            config.backend_settings(name)
    for name in ("dual", "postgres", "backend", "data_dir", ""):
        with pytest.raises(ConfigError, match="cannot name a plug-in backend's table"):
            StoreConfig(plugin_settings={name: {}})
    with pytest.raises(ConfigError, match=r"\[store.ext\] must be a table"):
        StoreConfig(plugin_settings={"ext": 5})  # type: ignore[dict-item]
    # A key of [store] with a value that is not a table is still an unknown key.
    with pytest.raises(ConfigError, match=r"unknown key 'ext' in \[store\]; valid keys: backend"):
        StoreConfig.from_mapping({"ext": "x"})


def test_plugin_tables_take_part_in_equality_and_hash_but_show_only_their_keys() -> None:
    first = StoreConfig.from_mapping({"ext": {"password": "hunter2", "n": [1]}})
    second = StoreConfig.from_mapping({"ext": {"n": [1], "password": "hunter2"}})
    assert first == second and hash(first) == hash(second)
    assert first != StoreConfig.from_mapping({"ext": {"password": "other", "n": [1]}})
    assert first != StoreConfig.from_mapping({"other": {"password": "hunter2", "n": [1]}})
    assert first != StoreConfig()
    shown = repr(first)
    assert "plugin_settings={'ext': {'password': ..., 'n': ...}}" in shown
    assert "hunter2" not in shown
    assert repr(StoreConfig()).endswith("plugin_settings={})")
    # replace keeps them (and the base directory), and may change them, validated.
    changed = first.replace(lock_timeout_s=2)
    assert changed.plugin_settings == first.plugin_settings
    assert changed.base_dir == first.base_dir
    assert first.replace(plugin_settings={}).plugin_settings == {}
    with pytest.raises(ConfigError, match="cannot name a plug-in backend's table"):
        first.replace(plugin_settings={"dual": {}})


@pytest.mark.parametrize("table", ["nosuch", "json", "sqlite"])
def test_a_table_of_no_installed_backend_is_refused_naming_the_file_and_the_choices(
    tmp_path: Path, table: str
) -> None:
    file = tmp_path / "named-config.toml"
    file.write_text(f'[store]\nbackend = "json"\ndata_dir = "data"\n[store.{table}]\nx = 1\n')
    config = StoreConfig.from_toml(file)  # read: whether the backend exists is the factory's
    assert set(config.plugin_settings) == {table}
    # postgres is the one backend installed in this environment (an entry point of its own).
    message = rf"^.*named-config\.toml: \[store\.{table}\] is not valid.*; choose one of: "
    for check in (open_store, store_exists):
        with pytest.raises(ConfigError, match=message + "dual, postgres$"):
            check(config)
    with pytest.raises(ConfigError, match=rf"^\[store\.{table}\] is not valid"):
        open_store({"data_dir": str(tmp_path / "data"), table: {}})
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_a_plugin_backend_reads_its_table_from_the_config_it_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from registry import factory
    from registry.backends._base import BaseStore, Clock
    from registry.backends.json_file import JsonStore

    seen: list[object] = []

    def open_ext(config: StoreConfig, clock: Clock) -> BaseStore:
        seen.append(config.backend_settings("ext"))
        subdir = config.backend_settings("ext")["subdir"]
        assert isinstance(subdir, str)
        return JsonStore(
            config.data_dir / subdir,
            clock=clock,
            session_ttl=config.session_ttl,
            token_ttl=config.token_ttl,
            inbox=config.inbox_settings,
            host_id=config.host_id,
            lock_timeout_s=config.lock_timeout_s,
        )

    class Entry:
        value = "third_party:open_ext"

        def load(self) -> object:
            return open_ext

    monkeypatch.setattr(factory, "installed_backends", lambda: {"ext": Entry()})
    file = tmp_path / "ccr-registry.toml"
    file.write_text('[store]\nbackend = "ext"\ndata_dir = "d"\n[store.ext]\nsubdir = "s"\n')
    with open_store(file) as store:
        store.sessions.register("s1")
    assert seen == [{"subdir": "s"}]
    assert "s1" in (tmp_path / "d" / "s" / "claude-sessions.json").read_text()
    # As a dual side it reads the same table; a table of another name is refused.
    file.write_text(
        '[store]\nbackend = "dual"\ndata_dir = "d2"\n[store.dual]\nprimary = "json"\n'
        'secondary = "ext"\n[store.ext]\nsubdir = "side"\n'
    )
    with open_store(file) as store:
        store.sessions.register("s2")
    assert "s2" in (tmp_path / "d2" / "side" / "claude-sessions.json").read_text()
    file.write_text('[store]\nbackend = "json"\n[store.ext2]\nsubdir = "s"\n')
    with pytest.raises(ConfigError, match=r"choose one of: dual, postgres, ext$"):
        open_store(file)


def test_config_show_lists_a_plugin_tables_keys_but_not_its_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from registry import cli, factory

    class Entry:
        value = "third_party:open_ext"

    monkeypatch.setattr(factory, "installed_backends", lambda: {"ext": Entry()})
    file = tmp_path / "ccr-registry.toml"
    file.write_text('[store]\nbackend = "ext"\n[store.ext]\nsubdir = "s"\npassword = "hunter2"\n')
    assert cli.main(["--config", str(file), "--json", "config", "show"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["backend"] == {"value": "ext", "source": str(file)}
    for key in ("ext.subdir", "ext.password"):
        assert shown[key] == {"value": "(set, not shown)", "source": str(file)}
    assert "hunter2" not in out
