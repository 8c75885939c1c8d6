"""I/O errors injected at every call of a write, until the write gets through.

For each N, the Nth call of the target (``os.write``, ``os.fsync``, ``os.replace`` for the json
backend; ``execute`` for sqlite) raises ENOSPC or EIO, either once or for every call from the Nth
on. The operation must fail with a clean RegistryError; the store must hold either the old state
or, when the failure struck after the commit point, the complete new state (never half of a
unit); and once the fault stops, the same store object must work normally.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, Store, open_store
from registry.backends import json_file
from registry.backends.json_file import JOURNAL_FILE
from registry.backends.sqlite import SqliteStore
from tests.conftest import FakeClock

ERRNOS = [errno.ENOSPC, errno.EIO]
MODES = ["once", "from-then-on"]


class Fault:
    """Counts calls and decides which one fails."""

    def __init__(self, nth: int, mode: str, code: int) -> None:
        self.nth, self.mode, self.code = nth, mode, code
        self.calls = 0
        self.active = True
        self.fired = False

    def strike(self) -> bool:
        if not self.active:
            return False
        self.calls += 1
        hit = self.calls == self.nth or (self.mode == "from-then-on" and self.calls > self.nth)
        self.fired = self.fired or hit
        return hit


class FaultyOS:
    """The os module, with one function failing as the Fault says."""

    def __init__(self, target: str, fault: Fault) -> None:
        self._target, self._fault = target, fault
        self.committed = False  # the journal (or a single data file) was published

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name == "replace":
            return self._replace
        if name != self._target:
            return real

        def failing(*args: Any, **kwargs: Any) -> Any:
            if self._fault.strike():
                raise OSError(self._fault.code, os.strerror(self._fault.code))
            return real(*args, **kwargs)

        return failing

    def _replace(self, src: Any, dst: Any) -> None:
        if self._target == "replace" and self._fault.strike():
            code = self._fault.code
            raise OSError(code, os.strerror(code))
        os.replace(src, dst)
        if Path(dst).name in (JOURNAL_FILE, "claude-sessions.json", "claude-tokens.json"):
            self.committed = True


State = tuple[list[tuple[str, str | None]], list[str]]


def state(data_dir: Path, backend: str) -> State:
    """Session ids with labels, and token values, as a fresh store reads them."""
    with open_store({"backend": backend, "data_dir": str(data_dir)}) as store:
        found = store.sessions.list_sessions()
        tokens = sorted(
            t.token for s in found for t in store.tokens.tokens_for_session(s.session_id)
        )
    return sorted((s.session_id, s.label) for s in found), tokens


def two_file_unit(store: Store) -> None:
    with store.atomic():
        store.sessions.register("new", label="unit")
        store.tokens.store_token("new-token", "new", 1)
        store.sessions.remove("old")


def single_write(store: Store) -> None:
    store.sessions.register("old", label="changed")


OLD: State = ([("old", None)], ["old-token"])
NEW_UNIT: State = ([("new", "unit")], ["new-token"])
NEW_LABEL: State = ([("old", "changed")], ["old-token"])


def seed(data_dir: Path, backend: str, clock: FakeClock) -> Store:
    store = open_store({"backend": backend, "data_dir": str(data_dir)}, clock=clock)
    store.sessions.register("old")
    store.tokens.store_token("old-token", "old", 1)
    return store


def run_until_success(
    tmp_path: Path,
    backend: str,
    operation: Callable[[Store], None],
    inject: Callable[[Store, Fault], Iterator[FaultyOS | None]],
    mode: str,
    code: int,
    expected_new: State,
    clock: FakeClock,
) -> int:
    """Fail the 1st, 2nd, ... call until the operation succeeds; returns how many calls it makes."""
    nth = 1
    while True:
        data_dir = tmp_path / f"n{nth}"
        store = seed(data_dir, backend, clock)
        fault = Fault(nth, mode, code)
        injected = inject(store, fault)
        probe = next(injected)
        try:
            operation(store)
        except RegistryError as exc:
            assert fault.fired, f"RegistryError without an injected fault: {exc}"
            assert not isinstance(exc.__cause__, RegistryError | None), "cause not chained"
            fault.active = False
            after = state(data_dir, backend)
            committed = probe.committed if probe is not None else False
            if committed:
                assert after in (OLD, expected_new), after
            else:
                assert after == OLD, f"call {nth}: old state damaged: {after}"
            # The fault has stopped: the same store object works normally.
            operation(store)
            assert state(data_dir, backend) == expected_new
        else:
            assert not fault.fired, f"call {nth} failed but the operation reported success"
            assert state(data_dir, backend) == expected_new
            store.close()
            next(injected, None)
            print(f"{backend} {mode}: the operation made {nth - 1} faultable calls")
            return nth - 1
        store.close()
        next(injected, None)
        nth += 1


def inject_json(target: str) -> Callable[[Store, Fault], Iterator[FaultyOS | None]]:
    def inject(store: Store, fault: Fault) -> Iterator[FaultyOS | None]:
        faulty = FaultyOS(target, fault)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(json_file, "os", faulty)
            patch.setattr("registry.paths.os", faulty)
            yield faulty

    return inject


class FaultyConnection:
    """A sqlite3 connection whose execute/executemany fail as the Fault says."""

    def __init__(self, real: sqlite3.Connection, fault: Fault) -> None:
        self._real, self._fault = real, fault

    def _check(self) -> None:
        if self._fault.strike():
            if self._fault.code == errno.ENOSPC:
                raise sqlite3.OperationalError("database or disk is full")
            raise sqlite3.OperationalError("disk I/O error")

    def execute(self, *args: Any) -> sqlite3.Cursor:
        self._check()
        return self._real.execute(*args)

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        self._check()
        return self._real.executemany(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def inject_sqlite(store: Store, fault: Fault) -> Iterator[FaultyOS | None]:
    assert isinstance(store, SqliteStore)
    real = store._conn()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "_conn", lambda: FaultyConnection(real, fault))
        yield None


# (backend, what fails, injector, the least number of faultable calls the operations make)
TARGETS = [
    ("json", "write", inject_json("write"), 1),
    ("json", "fsync", inject_json("fsync"), 1),
    ("json", "replace", inject_json("replace"), 1),
    ("sqlite", "execute", inject_sqlite, 3),  # BEGIN, the writes, COMMIT
]


@pytest.mark.parametrize("code", ERRNOS, ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("backend", "inject", "least_calls"),
    [(backend, inject, least) for backend, _, inject, least in TARGETS],
    ids=[f"{backend}-{target}" for backend, target, _, _ in TARGETS],
)
@pytest.mark.parametrize(
    ("operation", "expected"),
    [(two_file_unit, NEW_UNIT), (single_write, NEW_LABEL)],
    ids=["unit", "single-write"],
)
def test_io_errors(
    tmp_path: Path,
    clock: FakeClock,
    backend: str,
    inject: Callable[[Store, Fault], Iterator[FaultyOS | None]],
    least_calls: int,
    mode: str,
    code: int,
    operation: Callable[[Store], None],
    expected: State,
) -> None:
    calls = run_until_success(tmp_path, backend, operation, inject, mode, code, expected, clock)
    assert calls >= least_calls  # the faults were real: every one of those calls failed once
