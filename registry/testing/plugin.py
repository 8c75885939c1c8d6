"""The pytest plugin that runs the exported suites on a backend (SPEC 5: backends are pluggable).

Load it from a top-level ``conftest.py`` with ``pytest_plugins = ["registry.testing.plugin"]``
(or ``-p registry.testing.plugin``) and say which stores to test with one hook::

    def pytest_ccr_backends(config):
        return {"memjson": Backend({"backend": "memjson"})}

A hook, not a fixture: the suites are parametrised over the backends' names, which pytest must
know when it collects, before any fixture runs. From that one answer the plugin provides the
fixtures the suites use: ``backend_name`` (each test once per backend), ``data_dir``,
``store_config``, ``clock`` (a :class:`FakeClock`), ``open_`` (open or reopen a store on the
test's data, closed afterwards) and ``store``. A test marked ``ccr_file_backends`` runs only on
the backends that keep their data in files under ``data_dir``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from registry import Store
from registry.testing.backend import Backend, OpenStore
from registry.testing.clock import FakeClock

__all__ = ["Backend", "OpenStore", "configured_backends"]

# The suites' modules are imported by the test modules that use them: their asserts are
# rewritten as a test module's are, so a failure shows the values compared.
pytest.register_assert_rewrite("registry.testing.contract", "registry.testing.property")


class _Hooks:
    """The hook a conftest implements to choose the backends."""

    @pytest.hookspec(firstresult=True)
    def pytest_ccr_backends(self, config: pytest.Config) -> Mapping[str, Backend] | None:
        """The backends the exported suites run against, by name (the test ids)."""
        raise NotImplementedError


_CONFIG: list[pytest.Config] = []


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_Hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ccr_file_backends: run only on the backends that keep their data in files"
    )
    _CONFIG.append(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    if config in _CONFIG:
        _CONFIG.remove(config)


def configured_backends(config: pytest.Config | None = None) -> dict[str, Backend]:
    """The backends the ``pytest_ccr_backends`` hook gives, sorted by name.

    :raises pytest.UsageError: when no conftest or plugin implements the hook.
    """
    if config is None:
        if not _CONFIG:
            raise RuntimeError("registry.testing.plugin is not loaded in this pytest run")
        config = _CONFIG[-1]
    backends: Mapping[str, Backend] | None = config.hook.pytest_ccr_backends(config=config)
    if not backends:
        raise pytest.UsageError(
            "registry.testing.plugin: implement pytest_ccr_backends(config) in a conftest, "
            "returning {name: Backend(...)}, to say which stores to test"
        )
    return {name: backends[name] for name in sorted(backends)}


def _directly_parametrised(metafunc: pytest.Metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [part.strip() for part in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" not in metafunc.fixturenames:
        return
    if _directly_parametrised(metafunc, "backend_name"):
        return
    backends = configured_backends(metafunc.config)
    if metafunc.definition.get_closest_marker("ccr_file_backends") is not None:
        names = [name for name, backend in backends.items() if backend.keeps_files]
    else:
        names = list(backends)
    metafunc.parametrize("backend_name", names, indirect=True)


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend this test runs on (parametrised by the plugin)."""
    name = str(request.param)
    backend = configured_backends(request.config).get(name)
    if backend is not None:
        backend.check()
    return name


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store_config(
    request: pytest.FixtureRequest, backend_name: str, data_dir: Path
) -> Iterator[dict[str, Any]]:
    backend = configured_backends(request.config)[backend_name]
    config = backend.store_config(data_dir)
    yield config
    backend.cleanup(config)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_(
    request: pytest.FixtureRequest,
    backend_name: str,
    store_config: dict[str, Any],
    clock: FakeClock,
) -> Iterator[OpenStore]:
    """Open (or reopen) a store on this test's data; every store opened is closed afterwards."""
    backend = configured_backends(request.config)[backend_name]
    opened: list[Store] = []

    def _open(**overrides: Any) -> Store:
        store = backend.open({**store_config, **overrides}, clock)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_: OpenStore) -> Store:
    return open_()


@pytest.fixture(autouse=True)
def legacy_inbox_dir_of_the_test(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep every store's first start out of the developer's ``~/.ccr``.

    The sqlite backend's first start imports each ``inbox-<machine>.db`` in ``legacy_inbox_dir``,
    by default ``$CCR_DATA_DIR`` else ``~/.ccr``, where the legacy machine agent keeps them
    (SPEC 6); a test reads nothing outside its own directories.
    """
    monkeypatch.setenv("CCR_DATA_DIR", str(tmp_path / "ccr-data-dir"))
