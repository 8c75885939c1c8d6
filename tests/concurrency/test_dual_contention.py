"""Dual with a sqlite primary and a json secondary under contention from real processes.

Both sides' locks are taken in one order, the json file lock first, whichever side is the
primary; with the database's write lock taken first and held through the json wait and commit,
8 processes raised StoreBusy on about one call in six at a 2 s lock timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry import open_store
from tests.helpers.processes import Worker, start_together


def test_dual_sqlite_json_increments_end_exact_without_store_busy(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "backend": "dual",
        "data_dir": str(tmp_path / "data"),
        "lock_timeout_s": 2,
        "dual": {"primary": "sqlite", "secondary": "json"},
    }
    with open_store(config) as store, store.atomic():
        # A store of realistic size: json rewrites the whole file on every write.
        for n in range(1000):
            store.sessions.register(f"pre-{n:04d}", ppid=10_000 + n, cwd="/home/dev/project")
        store.sessions.register("counter", label="0")
    workers = [Worker("increment", config, str(n), 25) for n in range(8)]
    start_together(workers)
    for worker in workers:
        worker.finish()  # a StoreBusy would have ended the worker with a traceback
    assert sorted(len(w.acked) for w in workers) == [25] * 8
    with open_store(config) as store:
        counter = store.sessions.get("counter")
    assert counter is not None and counter.label == "200"


def test_both_cutover_phases_at_once_take_the_locks_in_one_order(tmp_path: Path) -> None:
    """Phase 2 and phase 3 processes during the switch: both sides stay equal, nobody times out."""
    base: dict[str, Any] = {
        "backend": "dual",
        "data_dir": str(tmp_path / "data"),
        "lock_timeout_s": 5,
    }
    phase2 = {**base, "dual": {"primary": "json", "secondary": "sqlite"}}
    phase3 = {**base, "dual": {"primary": "sqlite", "secondary": "json"}}
    with open_store(phase2) as store:
        store.sessions.register("counter", label="0")
    workers = [Worker("increment", phase2 if n % 2 else phase3, str(n), 25) for n in range(8)]
    start_together(workers)
    for worker in workers:
        worker.finish()
    for config in (phase2, phase3):  # each side holds every increment
        with open_store(config) as store:
            counter = store.sessions.get("counter")
            assert counter is not None and counter.label == "200"
            assert store.mismatches == 0
