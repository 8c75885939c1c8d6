"""Dual-backend write contention: N processes, each R registers and M increments in atomic().

    python bench/dual_contention.py                      # sqlite primary, json secondary
    python bench/dual_contention.py --primary json       # the other way round
    python bench/dual_contention.py --processes 32 --increments 20 --lock-timeout 10

The store first holds ``--sessions`` sessions (json rewrites the whole file on every write, so
its size sets how long a writer holds the locks). Every process opens the same dual store,
waits at a barrier, registers R new sessions, then increments one counter (``label`` of the
session ``counter``) M times, each inside ``atomic()``. A call that raises ``StoreBusy`` is
counted and tried again, so the counter must end at exactly N x M.
Prints the wall time, the StoreBusy count and the final value. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def worker(
    config: dict[str, Any], n: int, registers: int, increments: int, barrier: Any, results: Any
) -> None:
    from registry import StoreBusy, open_store

    def increment() -> None:
        with store.atomic():
            session = store.sessions.get("counter")
            assert session is not None and session.label is not None
            store.sessions.update("counter", label=str(int(session.label) + 1))

    busy = 0
    with open_store(config) as store:
        barrier.wait()
        calls = [lambda i=i: store.sessions.register(f"w{n}-{i}", ppid=1) for i in range(registers)]
        calls += [increment] * increments
        for call in calls:
            while True:
                try:
                    call()
                except StoreBusy:
                    busy += 1
                    continue
                break
        failures = getattr(store, "secondary_failures", 0)
    results.put((busy, failures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=32)
    parser.add_argument("--increments", type=int, default=20)
    parser.add_argument("--registers", type=int, default=20, help="plain registers per process")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions stored beforehand")
    parser.add_argument("--primary", choices=("sqlite", "json"), default="sqlite")
    parser.add_argument("--lock-timeout", type=float, default=10.0)
    args = parser.parse_args()
    secondary = "json" if args.primary == "sqlite" else "sqlite"

    from registry import open_store

    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "backend": "dual",
            "data_dir": str(Path(tmp) / "data"),
            "lock_timeout_s": args.lock_timeout,
            "dual": {"primary": args.primary, "secondary": secondary},
        }
        with open_store(config) as store, store.atomic():
            for i in range(args.sessions):
                store.sessions.register(f"pre-{i:05d}", ppid=10_000 + i, cwd="/home/dev/p")
            store.sessions.register("counter", label="0")
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(args.processes + 1)
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=worker,
                args=(config, n, args.registers, args.increments, barrier, results),
            )
            for n in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        barrier.wait()
        started = time.monotonic()
        outcomes = [results.get() for _ in procs]
        elapsed = time.monotonic() - started
        for proc in procs:
            proc.join()
        with open_store(config) as store:
            counter = store.sessions.get("counter")
            final = counter.label if counter is not None else None
    busy = sum(b for b, _ in outcomes)
    failures = sum(f for _, f in outcomes)
    operations = args.processes * (args.increments + args.registers)
    print(
        f"dual {args.primary}->{secondary} on {args.sessions} sessions: {args.processes} "
        f"processes x ({args.registers} registers + {args.increments} increments) = "
        f"{operations} calls: {elapsed:.1f} s, {operations / elapsed:.0f} calls/s, "
        f"StoreBusy {busy} ({100 * busy / (operations + busy):.1f}% of attempts), "
        f"secondary failures {failures}, final counter {final}"
    )
    expected = args.processes * args.increments
    if final != str(expected):
        sys.exit(f"lost increments: expected {expected}, got {final}")


if __name__ == "__main__":
    main()
