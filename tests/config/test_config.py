"""StoreConfig and open_store(): mappings, TOML files, the environment, and clear errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from registry import ConfigError, StoreConfig, open_store
from registry.config import BACKEND_NAMES
from registry.factory import BACKENDS


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
        "lock_timeout_s = 0\n"
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
    assert (config.lock_timeout_s, config.migrate_from_json) == (0, False)
    assert (config.dual.primary, config.dual.secondary) == ("sqlite", "json")
    assert (config.dual.compare_reads, config.dual.strict) == (False, True)


def test_mapping_paths_are_expanded(tmp_path: Path) -> None:
    config = StoreConfig.from_mapping({"data_dir": "~/x"})
    assert config.data_dir == tmp_path / "home" / "x"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"backend": "postgres"}, "json, sqlite, dual"),
        ({"bakend": "json"}, "valid keys: backend, data_dir"),
        ({"dual": {"primary": "json", "secondary": "json"}}, "must differ"),
        ({"dual": {"primary": "redis"}}, "json, sqlite"),
        ({"dual": {"compare": True}}, "valid keys: primary, secondary, compare_reads, strict"),
        ({"session_ttl_hours": 0}, "positive"),
        ({"token_ttl_hours": -1}, "positive"),
        ({"lock_timeout_s": "10"}, "number"),
        ({"lock_timeout_s": True}, "number"),
        ({"migrate_from_json": "yes"}, "true or false"),
        ({"data_dir": ""}, "path"),
        ({"data_dir": 5}, "path"),
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
