"""Fixtures shared by every test: one ``store`` parametrised over every backend, and a fake clock.

The fixtures come from the exported plugin (registry.testing.plugin), fed by the
``pytest_ccr_backends`` hook below: a backend added to ``BACKENDS`` gets the whole contract and
property suites with no other change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from registry import Store
from registry.testing.backend import Backend, OpenStore
from registry.testing.clock import EPOCH_START, FakeClock, data_files
from registry.testing.values import (
    BEYOND_INT64,
    INVALID_UNICODE,
    LEGACY_SUMMARY,
    NOT_INTS,
    NOT_STRINGS,
    ODD_TEXT,
    UNPRINTABLE_INT,
)
from tests.helpers import pg as pg_helper

pytest_plugins = ["registry.testing.plugin"]

# Re-exported for the tests that import them from here.
__all__ = [
    "BEYOND_INT64",
    "EPOCH_START",
    "INVALID_UNICODE",
    "LEGACY_SUMMARY",
    "NOT_INTS",
    "NOT_STRINGS",
    "ODD_TEXT",
    "UNPRINTABLE_INT",
    "FakeClock",
    "OpenStore",
    "data_files",
]

# Hypothesis: a fixed example budget and no deadline in CI (a loaded 2-core runner must not turn
# a slow fsync into a failure); a heavier profile for local soak runs.
settings.register_profile(
    "ci",
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, stateful_step_count=40, deadline=None)
settings.register_profile(
    "soak",
    max_examples=1000,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Legacy JSON files as the legacy daemon writes them ("real") and as the consolidation plan
# documents them ("plan"): the project's own copies, so the suite needs nothing outside the clone.
LEGACY_SAMPLES = Path(__file__).resolve().parent / "data" / "legacy"

# The [store.postgres] table of the backends below that use PostgreSQL: the session's throwaway
# server (tests/helpers/pg.py) fills in the dsn when it starts; backend_config() gives each
# store location its own schema.
POSTGRES_TABLE: dict[str, Any] = {"dsn": None, "schema": "ccr_shared"}
# Why the postgres backends cannot run here (no server binaries, no psycopg), or None. Locally
# their tests are skipped with this one reason; with CI=true they fail instead.
POSTGRES_UNAVAILABLE = pg_helper.unavailable_reason()

# Every backend the suites run against, by the [store] table that opens it (data_dir is added
# per test). The dual backend runs both ways round, with postgres on either side too.
ALL_BACKENDS: dict[str, dict[str, Any]] = {
    "json": {"config": {"backend": "json"}},
    "sqlite": {"config": {"backend": "sqlite"}},
    "dual-json-sqlite": {
        "config": {"backend": "dual", "dual": {"primary": "json", "secondary": "sqlite"}}
    },
    "dual-sqlite-json": {
        "config": {"backend": "dual", "dual": {"primary": "sqlite", "secondary": "json"}}
    },
    "postgres": {"config": {"backend": "postgres", "postgres": POSTGRES_TABLE}},
    "dual-postgres-sqlite": {
        "config": {
            "backend": "dual",
            "dual": {"primary": "postgres", "secondary": "sqlite"},
            "postgres": POSTGRES_TABLE,
        }
    },
    "dual-sqlite-postgres": {
        "config": {
            "backend": "dual",
            "dual": {"primary": "sqlite", "secondary": "postgres"},
            "postgres": POSTGRES_TABLE,
        }
    },
}
USES_POSTGRES = frozenset(
    name for name, entry in ALL_BACKENDS.items() if "postgres" in entry["config"]
)
# The backends that keep all their data in files under data_dir: the tests of file modes,
# damaged files and file-system faults run on these (a postgres store has no files to test).
FILE_BACKENDS = sorted(name for name in ALL_BACKENDS if name not in USES_POSTGRES)
# The backends that can run here (the postgres ones only with a server and the driver).
BACKENDS: dict[str, dict[str, Any]] = {
    name: entry
    for name, entry in ALL_BACKENDS.items()
    if POSTGRES_UNAVAILABLE is None or name not in USES_POSTGRES
}


def postgres_schema(data_dir: Path | str) -> str:
    """The schema of the store at ``data_dir``: one per location, as a directory is."""
    digest = hashlib.blake2b(str(data_dir).encode(), digest_size=8).hexdigest()
    return f"t_{digest}"


def backend_config(name: str, data_dir: Path | str) -> dict[str, Any]:
    """The [store] table of backend ``name`` keeping its data at ``data_dir`` (and, for a
    postgres backend, in a schema of its own, so that two locations never share data)."""
    config = {**BACKENDS[name]["config"], "data_dir": str(data_dir)}
    if "postgres" in config:
        config["postgres"] = {**config["postgres"], "schema": postgres_schema(data_dir)}
    return config


@pytest.fixture(scope="session", autouse=True)
def postgres_server() -> Iterator[pg_helper.PgServer | None]:
    """The session's PostgreSQL server, when this machine can run one; stopped at the end."""
    if POSTGRES_UNAVAILABLE is not None:
        yield None
        return
    server = pg_helper.PgServer()
    try:
        server.start()
        POSTGRES_TABLE["dsn"] = server.dsn
        yield server
    finally:
        POSTGRES_TABLE["dsn"] = None
        server.stop()


def require_postgres() -> None:
    """Skip (locally) or fail (CI) a test that needs PostgreSQL where it cannot run."""
    if POSTGRES_UNAVAILABLE is not None:
        message = f"PostgreSQL tests cannot run: {POSTGRES_UNAVAILABLE}"
        if pg_helper.CI:
            pytest.fail(message + " (CI=true: install postgresql and the [postgres] extra)")
        pytest.skip(message)


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(str(POSTGRES_TABLE["dsn"]), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass(frozen=True)
class _Postgres(Backend):
    """A backend on the session's PostgreSQL server: a schema per location, dropped after the
    test; skipped locally and failed in CI where the server cannot run."""

    name: str = ""

    def store_config(self, data_dir: Path) -> dict[str, Any]:
        return backend_config(self.name, data_dir)

    def check(self) -> None:
        require_postgres()

    def cleanup(self, store_config: Mapping[str, Any]) -> None:
        drop_schema(store_config["postgres"]["schema"])


@dataclass(frozen=True)
class _PostgresHook(_Postgres):
    """The postgres store a hook process opens (SPEC 4): one plain connection, no pool. The
    factory does not build it from a config, so it is opened here as registry.hook opens it."""

    def open(self, store_config: Mapping[str, Any], clock: Callable[[], Any]) -> Store:
        from registry.backends.postgres import PostgresStore, _open_hook_store
        from registry.config import StoreConfig

        store = _open_hook_store(StoreConfig.from_mapping(store_config), clock)
        assert isinstance(store, PostgresStore) and store._single and store._pool is None
        return store


def pytest_ccr_backends(config: pytest.Config) -> dict[str, Backend]:
    """Every backend of ALL_BACKENDS for the exported suites, and the postgres hook's store;
    the postgres ones skip (or fail in CI) where they cannot run."""
    backends: dict[str, Backend] = {
        name: (
            _Postgres(entry["config"], unavailable=POSTGRES_UNAVAILABLE, name=name)
            if name in USES_POSTGRES
            else Backend(entry["config"], keeps_files=True)
        )
        for name, entry in ALL_BACKENDS.items()
    }
    postgres = ALL_BACKENDS["postgres"]["config"]
    backends["postgres-hook"] = _PostgresHook(
        postgres, unavailable=POSTGRES_UNAVAILABLE, name="postgres"
    )
    return backends
