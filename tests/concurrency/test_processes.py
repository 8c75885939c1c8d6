"""Real processes racing on one store, released together by a barrier, and killed mid-write."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from registry import StoreBusy, open_store
from tests.helpers.processes import Worker, start_together


@pytest.fixture
def config(store_config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield {**store_config, "lock_timeout_s": 60}


def test_parallel_registers_lose_nothing(config: dict[str, Any]) -> None:
    workers = [Worker("register", config, str(n), 40) for n in range(12)]
    start_together(workers)
    for worker in workers:
        worker.finish()
    with open_store(config) as store:
        ids = {s.session_id for s in store.sessions.list_sessions()}
    assert ids == {f"w{n}-{i}" for n in range(12) for i in range(40)}


def test_atomic_read_modify_write_increments_are_serialised(config: dict[str, Any]) -> None:
    with open_store(config) as store:
        store.sessions.register("counter", label="0")
    workers = [Worker("increment", config, str(n), 25) for n in range(8)]
    start_together(workers)
    for worker in workers:
        worker.finish()
    with open_store(config) as store:
        counter = store.sessions.get("counter")
    assert counter is not None and counter.label == "200"


def test_busy_store_raises_store_busy_instead_of_hanging(config: dict[str, Any]) -> None:
    holder = Worker("hold", config, "0", 0)
    start_together([holder])
    holder.expect("holding")
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy):
            store = open_store({**config, "lock_timeout_s": 0.5})
            try:
                store.sessions.register("blocked")
            finally:
                store.close()
        assert time.monotonic() - started < 10
    finally:
        holder.release()
        holder.finish()
    with open_store({**config, "lock_timeout_s": 5}) as store:
        assert store.sessions.get("holder-0") is not None
        assert store.sessions.get("blocked") is None
        store.sessions.register("now-free")


def test_forked_child_uses_its_own_connection(config: dict[str, Any]) -> None:
    with open_store(config) as store:
        store.sessions.register("parent")
        pid = os.fork()
        if pid == 0:  # the child: work through the inherited store object, then leave
            code = 1
            try:
                store.sessions.register("child")
                code = 0 if store.sessions.get("parent") is not None else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.sessions.get("child") is not None
        store.sessions.register("parent-again")
    with open_store(config) as store:
        assert {s.session_id for s in store.sessions.list_sessions()} == {
            "parent",
            "child",
            "parent-again",
        }
