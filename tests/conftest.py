"""Fixtures shared by every test: one ``store`` parametrised over every backend, and a fake clock.

A backend added to ``BACKENDS`` gets the whole contract and property suites with no other change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from registry import Store, open_store

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

# Every backend the suites run against, by the [store] table that opens it (data_dir is added
# per test). The dual backend runs both ways round.
BACKENDS: dict[str, dict[str, Any]] = {
    "json": {"config": {"backend": "json"}},
    "sqlite": {"config": {"backend": "sqlite"}},
    "dual-json-sqlite": {
        "config": {"backend": "dual", "dual": {"primary": "json", "secondary": "sqlite"}}
    },
    "dual-sqlite-json": {
        "config": {"backend": "dual", "dual": {"primary": "sqlite", "secondary": "json"}}
    },
}


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
    """Every file that holds data in ``data_dir`` (not lock files or SQLite's shared memory)."""
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


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store_config(backend_name: str, data_dir: Path) -> dict[str, Any]:
    return {**BACKENDS[backend_name]["config"], "data_dir": str(data_dir)}


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
