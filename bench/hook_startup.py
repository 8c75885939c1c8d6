"""Whole-process cost of a Claude Code hook: `ccr-registry hook session-start` vs `python -c pass`.

    python bench/hook_startup.py [--runs 40] [--sessions 1000] [--pip-arg=--no-index ...]

Measured as users run it: the project is installed with ``pip install`` (not editable: an
editable install adds an import hook to every start) into a new virtual environment, and its
real ``ccr-registry`` command is timed. Runs each command many times, the commands taking turns,
against an sqlite store that already holds --sessions sessions, and prints the median and p90
wall time of each
and the ratio to a bare interpreter of that environment. It also times the imports a hook
cannot avoid, to show where the time goes: `registry.hook` (what the console script's entry
module, `registry._entry`, hands a hook to) and, for comparison, `registry.cli` (what every other
command imports, and a hook no longer does). ``bench/run.py`` calls
:func:`clean_install` and :func:`measure` for its hook target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What `pip install` needs of the project (pyproject.toml names the readme); copied so that the
# build's egg-info and build directories land in a temporary directory, not in the checkout.
SOURCE_FILES = ("pyproject.toml", "README.md", "bin", "registry")
BARE = "python -c pass"
HOOK = "ccr-registry hook session-start"

# What a Python hook of this design does at the least, no ccr-registry code at all: read the
# JSON on stdin with the json module and upsert one row in a WAL database (FLOOR); and the same
# with a command line parsed by argparse and the path made a pathlib.Path, as a first hook did
# (FLOOR_ARGPARSE).
FLOOR = """
import json, sqlite3, sys, time
data = json.loads(sys.stdin.read())
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=2)
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
_ARGPARSE = (
    ("import json, sqlite3, sys, time\n", "import argparse, json, pathlib, sqlite3, sys, time\n"
     "argparse.ArgumentParser().parse_args([])\n"),
    ("sqlite3.connect(sys.argv[1],", "sqlite3.connect(pathlib.Path(sys.argv[1]),"),
)  # fmt: skip
FLOOR_ARGPARSE = FLOOR
for _old, _new in _ARGPARSE:
    assert _old in FLOOR_ARGPARSE
    FLOOR_ARGPARSE = FLOOR_ARGPARSE.replace(_old, _new)


def timed(
    commands: list[tuple[list[str], bytes]], runs: int, *, env: dict[str, str]
) -> list[list[float]]:
    """Wall times of every command, ``runs`` each, the commands taking turns (A B C, B C A, ...):
    a command timed all at once, then the next, would compare two moments of a shared machine
    (a first report put the hook at 1.6x and, a run later, 2.9x a bare interpreter that way)."""
    for cmd, stdin in commands:  # warm caches (and write the bytecode)
        subprocess.run(cmd, input=stdin, env=env, check=True, capture_output=True)
    samples: list[list[float]] = [[] for _ in commands]
    for k in range(runs):
        for i in [*range(k % len(commands), len(commands)), *range(k % len(commands))]:
            cmd, stdin = commands[i]
            started = time.perf_counter()
            subprocess.run(cmd, input=stdin, env=env, check=True, capture_output=True)
            samples[i].append(time.perf_counter() - started)
    return samples


def describe(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would make the clean install import another copy."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # As installed for real, modules load from bytecode: let the warm-up run write it (an
    # environment with PYTHONDONTWRITEBYTECODE would otherwise recompile on every run).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return {**env, **extra}


def clean_install(where: Path, pip_args: Sequence[str] = ()) -> Path:
    """Install this checkout with ``pip install`` (not editable) into a new venv at ``where``.

    Returns the venv's ``bin`` directory. The dependencies come from the index (or whatever
    ``pip_args`` say, e.g. ``--no-index --find-links DIR`` offline).
    """
    source = where / "source"
    source.mkdir(parents=True)
    for name in SOURCE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *pip_args, str(source)],
        check=True, env=clean_env(),
    )  # fmt: skip
    shutil.rmtree(source)  # nothing can import the copy by accident
    where_from = subprocess.run(
        [str(python), "-c", "import registry; print(registry.__file__)"],
        check=True, capture_output=True, text=True, cwd=where, env=clean_env(),
    ).stdout.strip()  # fmt: skip
    if not where_from.startswith(str(venv)):
        raise RuntimeError(f"the clean install imports registry from {where_from}")
    return venv / "bin"


def measure(bin_dir: Path, runs: int, sessions: int) -> dict[str, tuple[float, float]]:
    """``{command: (median ms, p90 ms)}`` of every row below, run with ``bin_dir``'s python."""
    from registry import open_store

    python = str(bin_dir / "python")
    script = str(bin_dir / "ccr-registry")
    with tempfile.TemporaryDirectory() as root:
        env = clean_env(CCR_DATA_DIR=root)
        env.pop("CCR_REGISTRY_CONFIG", None)
        with open_store({"backend": "sqlite", "data_dir": root}) as store, store.atomic():
            for i in range(sessions):
                store.sessions.register(f"existing-{i}", ppid=10_000 + i, cwd=f"/w/{i}")
        payload = json.dumps({"session_id": "bench", "cwd": "/w/bench"}).encode()
        rows = [
            (BARE, [python, "-c", "pass"], b""),
            ("python -c 'import attrs'", [python, "-c", "import attrs"], b""),
            ("python -c 'import registry.cli'", [python, "-c", "import registry.cli"], b""),
            ("python -c 'import registry.hook'", [python, "-c", "import registry.hook"], b""),
            (
                "floor: json, sqlite3, one upsert",
                [python, "-c", FLOOR, str(Path(root) / "ccr.db")],
                payload,
            ),
            (
                "floor with argparse and pathlib",
                [python, "-c", FLOOR_ARGPARSE, str(Path(root) / "ccr.db")],
                payload,
            ),
            (HOOK, [script, "hook", "session-start"], payload),
            ("ccr-registry hook session-end", [script, "hook", "session-end"], payload),
        ]
        samples = timed([(cmd, data) for _, cmd, data in rows], runs, env=env)
        results = {name: describe(times) for (name, _, _), times in zip(rows, samples, strict=True)}
        with open_store({"backend": "sqlite", "data_dir": root}) as store:
            # The two floor scripts upsert one row; the hook's session is there or not as
            # start or end ran last (the commands take turns); nothing else was added.
            ids = {s.session_id for s in store.sessions.list_sessions()} - {"bench"}
            assert "floor-bench" in ids and len(ids) == sessions + 1, len(ids)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--pip-arg", action="append", default=[], help="passed to pip install")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccr-hook-") as where:
        results = measure(clean_install(Path(where), args.pip_arg), args.runs, args.sessions)
    bare = results[BARE][0]
    print(
        f"{args.runs} runs each, store of {args.sessions} sessions, "
        f"Python {sys.version.split()[0]}, clean (non-editable) install"
    )
    print(f"{'command':<36} {'median ms':>10} {'p90 ms':>8} {'x bare':>7}")
    for name, (median, p90) in results.items():
        print(f"{name:<36} {median:>10.1f} {p90:>8.1f} {median / bare:>7.2f}")


if __name__ == "__main__":
    main()
