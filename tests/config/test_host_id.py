"""The ``host_id`` key (SPEC 5): its default, its validation, and its way to every store."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from registry import ConfigError, StoreConfig, open_store
from tests.conftest import FILE_BACKENDS, backend_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CCR_REGISTRY_CONFIG", raising=False)
    monkeypatch.delenv("CCR_HOST_ID", raising=False)
    monkeypatch.setenv("CCR_DATA_DIR", str(tmp_path / "data"))


def test_the_default_is_ccr_host_id_else_the_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StoreConfig().host_id == socket.gethostname()
    monkeypatch.setenv("CCR_HOST_ID", "from-env")
    assert StoreConfig().host_id == "from-env"
    assert StoreConfig.from_mapping({"host_id": "given"}).host_id == "given"
    monkeypatch.setenv("CCR_HOST_ID", "")  # empty: as if unset
    assert StoreConfig().host_id == socket.gethostname()


@pytest.mark.parametrize("value", ["", "x" * 257, "tab\there", "nul\x00", 5, True])
def test_a_bad_host_id_is_a_config_error_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"store\.host_id"):
        StoreConfig.from_mapping({"host_id": value})


def test_a_bad_host_id_in_a_file_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "ccr-registry.toml"
    file.write_text('[store]\nhost_id = ""\n')
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/ccr-registry\.toml: .*store\.host_id"):
        open_store(file)


def test_a_bad_ccr_host_id_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCR_HOST_ID", "line\nbreak")
    with pytest.raises(ConfigError, match=r"store\.host_id"):
        StoreConfig()


@pytest.mark.parametrize("name", FILE_BACKENDS)
def test_every_store_gets_the_configured_host_id(tmp_path: Path, name: str) -> None:
    config = {**backend_config(name, tmp_path / "data"), "host_id": "configured"}
    with open_store(config) as store:
        assert store.sessions.register("s1").host == "configured"
        command, _ = store.inbox.enqueue("c1", {})
        assert command.host == "configured"
