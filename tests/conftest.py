"""Fixtures shared by every test: one ``store`` parametrised over every backend, and a fake clock.

A backend added to ``BACKENDS`` gets the whole contract and property suites with no other change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from registry import Store, open_store
from tests.helpers import pg as pg_helper

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

EPOCH_START = datetime(2026, 2, 9, 1, 20, tzinfo=UTC)

# Legacy JSON files as the legacy daemon writes them ("real") and as the consolidation plan
# documents them ("plan"): the project's own copies, so the suite needs nothing outside the clone.
LEGACY_SAMPLES = Path(__file__).resolve().parent / "data" / "legacy"

# Hostile values (STYLE habit 4), shared by the contract and property suites so that every
# backend meets them. Text that is not valid Unicode: lone surrogates, which os.environ,
# os.fsdecode and sys.argv make of bytes that are not UTF-8 (a TMUX_PANE, a path).
INVALID_UNICODE = ["\udcff", "pane-\udcff", "\ud800", "emoji \U0001f99c and \udfff"]
# Valid text that is easy to get wrong: a NUL, a terminal escape sequence, Unicode line
# separators, a byte-order mark, the last code point, a C1 control; stored and read back exactly.
ODD_TEXT = ["a\x00b", "\x1b]0;title\x07", "\u2028\u2029", "\ufeffbom", "\U0010ffff", "\x85next"]
# Integers no signed 64-bit column can hold.
BEYOND_INT64 = [2**63, 2**64, -(2**63) - 1, 10**30]
# One with more digits than Python will print: an error message that shows it raised ValueError.
# (Kept out of BEYOND_INT64: Hypothesis prints its strategies.)
UNPRINTABLE_INT = -(10**5000)
# Arguments of the wrong kind where an int is expected (a bool is an int to Python, not to us).
NOT_INTS: list[Any] = [True, 1.5, "5", b"5", None]
# Arguments of the wrong kind where a string (an id, a token) is expected.
NOT_STRINGS: list[Any] = [5, 2**64, None, b"s1", ["s1"], {"s1": 1}, 1.5]
# What the legacy daemon stores in a token's context.summary: the whole last assistant message,
# untruncated; 30,000 non-ASCII characters (90,000 bytes of UTF-8, 216,000 characters once
# escaped as ASCII JSON).
LEGACY_SUMMARY = "é☕🦜日本" * 6000

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


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, start: datetime = EPOCH_START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self.now += delta if delta is not None else timedelta(**kwargs)
        return self.now


def data_files(data_dir: Path) -> dict[str, bytes]:
    """Every file that holds data in ``data_dir`` (not lock files or SQLite's shared memory).

    Empty for a store that keeps nothing there (postgres alone never creates ``data_dir``).
    """
    if not data_dir.exists():
        return {}
    return {
        path.name: path.read_bytes()
        for path in sorted(data_dir.iterdir())
        if path.is_file() and not path.name.endswith(("-shm", ".lock"))
    }


@pytest.fixture(autouse=True)
def legacy_inbox_dir_of_the_test(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep every store's first start out of the developer's ``~/.ccr``.

    The sqlite backend's first start imports each ``inbox-<machine>.db`` in ``legacy_inbox_dir``,
    by default ``$CCR_DATA_DIR`` else ``~/.ccr``, where the legacy machine agent keeps them
    (SPEC 6); a test reads nothing outside the repository. Tests of the defaults unset it.
    """
    monkeypatch.setenv("CCR_DATA_DIR", str(tmp_path / "ccr-data-dir"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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


@pytest.fixture(params=sorted(ALL_BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name in USES_POSTGRES:
        require_postgres()
    return name


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store_config(backend_name: str, data_dir: Path) -> Iterator[dict[str, Any]]:
    config = backend_config(backend_name, data_dir)
    yield config
    if "postgres" in config:
        drop_schema(config["postgres"]["schema"])


OpenStore = Callable[..., Store]


@pytest.fixture
def open_(store_config: dict[str, Any], clock: FakeClock) -> Iterator[OpenStore]:
    """Open (or reopen) a store on this test's data; every store opened is closed afterwards."""
    opened: list[Store] = []

    def _open(**overrides: Any) -> Store:
        store = open_store({**store_config, **overrides}, clock=clock)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_: OpenStore) -> Store:
    return open_()
