"""The benchmark: every subject, every workload, one run, ratios to the raw floor and to diskcache.

    python bench/run.py                    # full run, writes docs/benchmarks.md and its plots
    python bench/run.py --quick            # smaller budgets and sizes, prints the targets only

Needs the ``bench`` extra (``pip install -e '.[bench]'``) and, for the hook, ``pip`` able to
install the project and its dependencies into a new virtual environment (``--pip-arg`` passes
options such as ``--no-index --find-links DIR``): the hook is timed in a clean, non-editable
install. About 15 minutes on 2 cores. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hook_startup import BARE, HOOK, clean_env, clean_install, measure
from subjects import OPS, SUBJECTS, Subject, session_record, token_record
from workers import release_together, wall_s

ROOT = Path(__file__).resolve().parents[1]
NOTIFY_SESSIONS = 10  # constant whatever the size: the list's cost should not grow with the store


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dataset(size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    now = now_ms()
    sessions = [
        session_record(f"s{i:06d}", 100_000 + i, now - i, notify=i < NOTIFY_SESSIONS)
        for i in range(size)
    ]
    for i, s in enumerate(sessions):
        s["label"] = "0" if i == 0 else s["label"]
    tokens = [
        token_record(f"tok-{i:06d}-{'x' * 10}", f"s{i:06d}", i, now) for i in range(0, size, 10)
    ]
    return sessions, tokens


# --------------------------------------------------------------------------- single process


def timed_loop(
    op: Callable[[int], object], *, budget_s: float, max_ops: int, min_ops: int, warm_up: bool
) -> list[int]:
    if warm_up:
        op(-1)  # not recorded
    samples: list[int] = []
    deadline = time.perf_counter() + budget_s
    k = 0
    while k < max_ops and (k < min_ops or time.perf_counter() < deadline):
        started = time.perf_counter_ns()
        op(k)
        samples.append(time.perf_counter_ns() - started)
        k += 1
    return samples


class Workloads:
    """One subject's store of one size, open, and the single-process workloads on it."""

    def __init__(self, subject_cls: type[Subject], size: int, root: Path) -> None:
        subject = self.subject = subject_cls(root)
        sessions, tokens = dataset(size)
        subject.load(sessions, tokens)
        subject.open()
        rng = random.Random(size)
        ids = [s["session_id"] for s in sessions]
        minted: list[str] = []
        count = iter(range(10**9))  # register_new's ids, unique across slices

        def pick() -> str:
            return ids[rng.randrange(size)]

        def mint(k: int) -> None:
            minted.append(subject.mint(pick(), 7, now_ms()))

        def validate(k: int) -> None:
            assert subject.validate(minted[k % len(minted)], 7, now_ms())

        def open_get_close(k: int) -> None:
            subject.open()
            assert subject.get(pick()) is not None
            subject.close()

        self.work: dict[str, Callable[[int], object]] = {
            "get": lambda k: subject.get(pick()),
            "register_new": lambda k: subject.register(f"new-{next(count)}", 7, now_ms()),
            "register_existing": lambda k: subject.register(pick(), 100_001, now_ms()),
            "update": lambda k: subject.update(pick(), f"label-{k}", now_ms()),
            "get_by_ppid": lambda k: subject.get_by_ppid(100_000 + rng.randrange(size), now_ms()),
            "notify_list": lambda k: subject.notify_list(now_ms()),
            "mint": mint,
            "validate": validate,
            "cleanup": lambda k: subject.cleanup(now_ms()),
            "open_get_close": open_get_close,  # run with the subject closed (last)
        }
        assert list(self.work) == OPS


def run_single(
    names: list[str], size: int, root: Path, budget_s: float, max_ops: int, slices: int = 3
) -> dict[str, dict[str, list[int]]]:
    """Every subject's single-process workloads at one size, the subjects taking turns.

    For each workload in turn, every subject runs a slice of its budget, in a rotating order,
    ``slices`` times: a subject measured minutes after another would meet another machine (a
    first full run, subject after subject, put validate at 2.18x the floor at 100 sessions and
    1.17x at 1,000, the same statement on the same kind of store). Each subject's workloads still
    run in the same order on its own store, and each is warmed up once, before its first slice.
    """
    loads = {name: Workloads(SUBJECTS[name], size, root / f"{name}-{size}") for name in names}
    results: dict[str, dict[str, list[int]]] = {name: {op: [] for op in OPS} for name in names}
    for op in OPS:
        if op == "open_get_close":
            for load in loads.values():
                load.subject.close()
        for turn in range(slices):
            order = names[turn % len(names) :] + names[: turn % len(names)]
            for name in order:
                results[name][op] += timed_loop(
                    loads[name].work[op],
                    budget_s=budget_s / slices,
                    max_ops=max(1, max_ops // slices),
                    min_ops=1,
                    warm_up=turn == 0,
                )
    return results


# --------------------------------------------------------------------------- contention


def worker(name: str, root: str, worker_id: int, registers: int, increments: int) -> None:
    subject = SUBJECTS[name](Path(root))
    subject.open()
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter_ns()
    latencies = []
    for i in range(registers):
        t = time.perf_counter_ns()
        subject.register(f"w{worker_id}-{i}", 50_000 + worker_id, now_ms())
        latencies.append(time.perf_counter_ns() - t)
    for _ in range(increments):
        t = time.perf_counter_ns()
        subject.increment("s000000", now_ms())
        latencies.append(time.perf_counter_ns() - t)
    ended = time.perf_counter_ns()
    subject.close()
    print(json.dumps({"started": started, "ended": ended, "latencies": latencies}), flush=True)


def run_contention(
    name: str, procs: int, root: Path, registers: int, increments: int
) -> dict[str, Any]:
    subject = SUBJECTS[name](root)
    sessions, tokens = dataset(1000)
    subject.load(sessions, tokens)
    reports = release_together(
        [
            [sys.executable, __file__, "--worker", name, str(root), str(n), str(registers),
             str(increments)]
            for n in range(procs)
        ],
        timeout=1800,
    )  # fmt: skip
    wall = wall_s(reports)
    latencies = sorted(x for r in reports for x in r["latencies"])
    subject.open()
    counter = subject.get("s000000")
    registered = sum(
        subject.get(f"w{n}-{i}") is not None for n in range(procs) for i in range(registers)
    )
    subject.close()
    label = counter["label"] if isinstance(counter, dict) else getattr(counter, "label", None)
    if label is None and isinstance(counter, tuple):
        label = counter[5]
    expected = procs * increments
    return {
        "ops": len(latencies),
        "throughput": len(latencies) / wall,
        "p50_ms": latencies[len(latencies) // 2] / 1e6,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1e6,
        "lost_increments": expected - int(label),
        "lost_registers": procs * registers - registered,
    }


def contention_rounds(
    procs: int, root: Path, rounds: int, registers: int, increments: int
) -> dict[str, Any]:
    """The 8-process target: raw and sqlite in turns, ``rounds`` times, with more work per
    process than the table above (at 50 + 20 operations the floor's 8 processes finish in about
    50 ms, so one late start or one busy-handler sleep moves a single figure by a third)."""
    ratios, raw, ours = [], [], []
    for r in range(rounds):
        figures = {}
        # Alternate which subject goes first, so that neither always meets a warmer machine.
        for name in ("raw", "sqlite") if r % 2 == 0 else ("sqlite", "raw"):
            result = run_contention(name, procs, root / f"{name}-{r}", registers, increments)
            lost = result["lost_increments"] + result["lost_registers"]
            assert lost == 0, f"{name} lost {lost} operations"
            figures[name] = result["throughput"]
        raw.append(figures["raw"])
        ours.append(figures["sqlite"])
        ratios.append(figures["sqlite"] / figures["raw"])
        print(
            f"round {r + 1}: raw {figures['raw']:8.0f} ops/s, sqlite {figures['sqlite']:8.0f} "
            f"ops/s, ratio {ratios[-1]:.2f}",
            flush=True,
        )
    return {
        "procs": procs,
        "registers": registers,
        "increments": increments,
        "raw_ops_s": raw,
        "sqlite_ops_s": ours,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
    }


# --------------------------------------------------------------------------- hook burst


def run_hook_burst(procs: int, root: Path, bin_dir: Path) -> dict[str, float]:
    from registry import open_store

    data = root / "hooks"
    with open_store({"backend": "sqlite", "data_dir": str(data)}) as store, store.atomic():
        for i in range(1000):
            store.sessions.register(f"existing-{i}", ppid=10_000 + i)
    env = clean_env(CCR_DATA_DIR=str(data))
    script = bin_dir / "ccr-registry"
    results = {}
    for label, command, payload in (
        ("bare", [str(bin_dir / "python"), "-c", "import sys; sys.stdin.read()"], "{}"),
        ("hook", [str(script), "hook", "session-start"], None),
    ):
        subprocess.run(
            command,
            input=payload or '{"session_id": "warm"}',
            env=env,
            text=True,
            capture_output=True,
            check=True,
        )
        walls = []
        for _ in range(5):
            children = [
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                    text=True,
                )
                for _ in range(procs)
            ]
            for n, child in enumerate(children):
                assert child.stdin is not None
                child.stdin.write(payload or json.dumps({"session_id": f"burst-{n}"}))
            started = time.perf_counter()
            for child in children:
                assert child.stdin is not None
                child.stdin.close()
            for child in children:
                child.wait()
                assert child.returncode == 0
                assert child.stderr is not None and child.stderr.read() == ""
            walls.append(time.perf_counter() - started)
        results[label] = statistics.median(walls) * 1000
    with open_store({"backend": "sqlite", "data_dir": str(data)}) as store:
        landed = sum(store.sessions.get(f"burst-{n}") is not None for n in range(procs))
    results["landed"] = landed
    return results


# --------------------------------------------------------------------------- report


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def p99_us(samples: list[int]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = "unknown"
    try:
        from registry.doctor import filesystem_type

        fs = filesystem_type(Path(tempfile.gettempdir())) or fs
    except Exception:  # the report must not fail over a detail
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"temp directory on {fs}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="ccr-registry benchmarks")
    parser.add_argument("--quick", action="store_true", help="small budgets, print only")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default=None, help="comma-separated store sizes")
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--pip-arg", action="append", default=[], help="passed to pip for the clean install"
    )
    args = parser.parse_args()
    if args.worker:
        name, root, worker_id, registers, increments = args.worker
        worker(name, root, int(worker_id), int(registers), int(increments))
        return
    sizes = [
        int(x)
        for x in (args.sizes or ("100,1000" if args.quick else "100,1000,10000,100000")).split(",")
    ]
    names = args.subjects.split(",")
    budget, max_ops = (0.2, 200) if args.quick else (0.8, 2000)
    procs_list = [2, 8] if args.quick else [2, 8, 32]
    scratch = Path(tempfile.mkdtemp(prefix="ccr-bench-"))
    started = time.time()
    single: dict[str, dict[int, dict[str, list[int]]]] = {name: {} for name in names}
    try:
        for size in sizes:
            t0 = time.time()
            by_name = run_single(names, size, scratch, budget, max_ops)
            for name in names:
                single[name][size] = by_name[name]
            print(f"{size:>7} sessions, every subject: {time.time() - t0:5.1f} s", flush=True)
        contention: dict[str, dict[int, dict[str, Any]]] = {}
        for name in names:
            contention[name] = {}
            for procs in procs_list:
                contention[name][procs] = run_contention(
                    name, procs, scratch / f"c-{name}-{procs}", 50, 20
                )
                c = contention[name][procs]
                print(
                    f"{name:<10} {procs:>3} procs: {c['throughput']:8.0f} ops/s "
                    f"p99 {c['p99_ms']:.1f} ms lost {c['lost_increments']}/{c['lost_registers']}",
                    flush=True,
                )
        target = contention_rounds(8, scratch / "rounds", 3 if args.quick else 5, 200, 100)
        # The hook is timed as users run it: a clean, non-editable install of this checkout.
        bin_dir = clean_install(scratch / "install", args.pip_arg)
        startup = measure(bin_dir, runs=10 if args.quick else 40, sessions=1000)
        print(f"hook {startup[HOOK][0]:.1f} ms, bare {startup[BARE][0]:.1f} ms", flush=True)
        bursts = {
            procs: run_hook_burst(procs, scratch / f"h-{procs}", bin_dir) for procs in (1, 8, 32)
        }
        print(json.dumps(bursts))
        from inbox import run_inbox  # the command inbox, bench/inbox.py

        inbox = run_inbox(scratch / "inbox", quick=args.quick)
        try:  # the postgres backend, bench/postgres.py: its own throwaway server
            from postgres import run_postgres
        except ImportError as exc:  # no psycopg
            postgres: dict[str, Any] = {"unavailable": str(exc)}
        else:
            postgres = run_postgres(scratch / "postgres", quick=args.quick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.time() - started
    results = {
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "python bench/run.py" + (" --quick" if args.quick else ""),
        "elapsed_s": elapsed,
        "sizes": sizes,
        "single": {
            n: {
                str(s): {
                    op: {"median_us": median_us(v), "p99_us": p99_us(v), "ops": len(v)}
                    for op, v in ops.items()
                }
                for s, ops in by_size.items()
            }
            for n, by_size in single.items()
        },
        "contention": {n: {str(p): v for p, v in by.items()} for n, by in contention.items()},
        "contention_target": target,
        "hook_burst": {str(p): v for p, v in bursts.items()},
        "inbox": inbox,
        "postgres": postgres,
        "hook_startup": {
            name: {"median_ms": median, "p90_ms": p90} for name, (median, p90) in startup.items()
        },
    }
    if args.quick:
        from report import target_rows

        for name, value, met, json_side in target_rows(results):
            print(f"{name:<58} sqlite {value:>7} {met:<12} json {json_side}")
        if "unavailable" in postgres:
            print(f"postgres: not measured: {postgres['unavailable']}")
        else:
            from postgres import report_lines

            print("\n".join(report_lines(postgres)))
        return
    from report import write_report

    write_report(results, Path(args.out))
    from inbox import write_report as write_inbox_report

    inbox_out = Path(args.out).with_name("inbox-benchmarks.md")
    write_inbox_report(inbox, inbox_out, machine=results["machine"], command=results["command"])
    if "unavailable" not in postgres:
        from postgres import write_report as write_postgres_report

        postgres_out = Path(args.out).with_name("postgres-benchmarks.md")
        write_postgres_report(postgres, postgres_out, results["command"])
    print(f"wrote {args.out} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
