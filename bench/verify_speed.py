"""How long ``ccr-registry verify`` takes to diff the json files against the database.

    python bench/verify_speed.py [--sessions 100000] [--runs 1] [--source DIR]

Builds a data directory holding the same N sessions (and one token per 10 sessions) in both
``claude-sessions.json``/``claude-tokens.json`` and ``ccr.db`` (the database is written through
the library, the files by ``ccr-registry export``), then times the real command, ``python -m
registry --data-dir D verify``, which must report no differences. ``--source DIR`` runs another
copy of the ``registry`` package (a checkout of an older commit, say) for a before/after figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(data: Path, sessions: int) -> None:
    from registry import open_store

    with open_store({"backend": "sqlite", "data_dir": str(data)}) as store, store.atomic():
        for i in range(sessions):
            store.sessions.register(f"s{i:06d}", ppid=100_000 + i, cwd=f"/w/{i}", label=f"{i}")
            if i % 10 == 0:
                store.tokens.store_token(f"tok-{i:06d}-{'x' * 10}", f"s{i:06d}", i)
    subprocess.run(
        [sys.executable, "-m", "registry", "--data-dir", str(data), "export", "--out", str(data)],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--source", help="a directory holding the registry package to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccr-verify-") as root:
        data = Path(root) / "data"
        started = time.perf_counter()
        build(data, args.sessions)
        print(f"built {args.sessions:,} sessions in {time.perf_counter() - started:.1f} s")
        env = dict(os.environ)
        source = Path(args.source).resolve() if args.source else ROOT
        env["PYTHONPATH"] = str(source)
        where = subprocess.run(
            [sys.executable, "-c", "import registry; print(registry.__file__)"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            cwd=root,
        ).stdout.strip()
        assert where.startswith(str(source)), f"{where} is not under {source}"
        walls = []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "registry", "--data-dir", str(data), "verify"],
                env=env,
                capture_output=True,
                text=True,
                cwd=root,
            )
            walls.append(time.perf_counter() - started)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            assert "no differences" in done.stdout, done.stdout[-2000:]
        print(f"verify, {args.sessions:,} sessions, package {where}:")
        print(f"  median {statistics.median(walls):.2f} s over {len(walls)} run(s): {walls}")


if __name__ == "__main__":
    main()
