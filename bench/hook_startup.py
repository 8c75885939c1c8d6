"""Whole-process cost of a Claude Code hook: `ccr-registry hook session-start` vs `python -c pass`.

    python bench/hook_startup.py [--runs 40] [--sessions 1000]

Runs each command many times against an sqlite store that already holds --sessions sessions,
and prints the median and p90 wall time of each and the ratio to a bare interpreter. It also
times the imports a hook cannot avoid, to show where the time goes: `registry.cli` (what the
console script imports first) and `registry.hook` (what it then hands a hook to).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "ccr-registry"

# The least any Python hook of this design does: parse its arguments and the JSON on stdin,
# resolve a path, and upsert one row in a WAL database. No ccr-registry code at all.
FLOOR = """
import argparse, json, pathlib, sqlite3, sys, time
argparse.ArgumentParser().parse_args([])
data = json.loads(sys.stdin.read())
conn = sqlite3.connect(pathlib.Path(sys.argv[1]), isolation_level=None, timeout=2)
conn.execute("PRAGMA foreign_keys = ON")
conn.execute("BEGIN IMMEDIATE")
now = time.time_ns() // 1_000_000
conn.execute(
    "INSERT INTO sessions (session_id, created_at, updated_at, last_seen, expires_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET last_seen = excluded.last_seen",
    ("floor-" + data["session_id"], now, now, now, now + 86_400_000),
)
conn.execute("COMMIT")
conn.close()
"""


def timed(cmd: list[str], runs: int, *, stdin: bytes = b"", env: dict[str, str]) -> list[float]:
    subprocess.run(cmd, input=stdin, env=env, check=True, capture_output=True)  # warm caches
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, input=stdin, env=env, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples


def describe(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    from registry import open_store

    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "CCR_DATA_DIR": root}
        env.pop("CCR_REGISTRY_CONFIG", None)
        # As installed for real, modules load from bytecode: let the warm-up run write it (an
        # environment with PYTHONDONTWRITEBYTECODE would otherwise recompile on every run).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with open_store({"backend": "sqlite", "data_dir": root}) as store, store.atomic():
            for i in range(args.sessions):
                store.sessions.register(f"existing-{i}", ppid=10_000 + i, cwd=f"/w/{i}")
        payload = json.dumps({"session_id": "bench", "cwd": "/w/bench"}).encode()
        rows = [
            ("python -c pass", [sys.executable, "-c", "pass"], b""),
            ("python -c 'import attrs'", [sys.executable, "-c", "import attrs"], b""),
            (
                "python -c 'import registry.cli'",
                [sys.executable, "-c", "import registry.cli"],
                b"",
            ),
            (
                "python -c 'import registry.hook'",
                [sys.executable, "-c", "import registry.hook"],
                b"",
            ),
            (
                "floor: stdlib imports + one write",
                [sys.executable, "-c", FLOOR, str(Path(root) / "ccr.db")],
                payload,
            ),
            ("ccr-registry hook session-start", [str(SCRIPT), "hook", "session-start"], payload),
            ("ccr-registry hook session-end", [str(SCRIPT), "hook", "session-end"], payload),
        ]
        results = {
            name: describe(timed(cmd, args.runs, stdin=data, env=env)) for name, cmd, data in rows
        }
        with open_store({"backend": "sqlite", "data_dir": root}) as store:
            # start then end leave nothing behind; the floor script adds its one row
            assert len(store.sessions.list_sessions()) == args.sessions + 1
    bare = results["python -c pass"][0]
    print(
        f"{args.runs} runs each, store of {args.sessions} sessions, Python {sys.version.split()[0]}"
    )
    print(f"{'command':<36} {'median ms':>10} {'p90 ms':>8} {'x bare':>7}")
    for name, (median, p90) in results.items():
        print(f"{name:<36} {median:>10.1f} {p90:>8.1f} {median / bare:>7.2f}")


if __name__ == "__main__":
    main()
