"""The postgres backend against a raw psycopg floor and against the sqlite backend.

    python bench/postgres.py --quick       # small budgets, prints the figures
    python bench/postgres.py               # longer budgets, writes docs/postgres-benchmarks.md

Starts its own throwaway PostgreSQL server on a Unix socket, as the tests do
(tests/helpers/pg.py: initdb, no fsync, deleted at the end). Three subjects run the same
workload against the same data:

- ``floor``: the backend's own SQL text (imported from registry.backends.postgres), in the
  backend's order, through a ``psycopg_pool.ConnectionPool`` with the backend's settings
  (min_size 1, max_size 8, autocommit, the same configure and check), with tuples and
  hand-built parameter rows instead of models: a write is BEGIN, the advisory lock, the
  statements, the data_version bump, COMMIT.
- ``postgres``: the library through ``open_store`` on the same schema.
- ``sqlite``: the library's sqlite backend in a temporary directory.

Also: 8 processes each doing N read-modify-write increments of one session's label in one
unit (nothing may be lost), and the start-up of ``ccr-registry --config X hook session-start``
on postgres (the hook's one-plain-connection store, and the same script on a pooled store through
``open_store``: before and after) against ``python -c pass``; ``--hook-only RUNS`` runs only
that. ``--drain REPEATS``: only the inbox, one-process claim + complete and drains by 4 and 8
consumer processes with exactly-once delivery and per-session order checked. The backend has no
``FOR UPDATE SKIP LOCKED`` claim (measured and dropped: docs/postgres.md): claim runs under
the writer's advisory lock, and that is what is measured. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402
from workers import release_together, wall_s  # noqa: E402  bench/workers.py, beside this script

from registry import defaults, open_store  # noqa: E402
from registry.backends.postgres import (  # noqa: E402
    BUMP_DATA_VERSION,
    NEXT_CLAIMABLE,
    SELECT_COMMAND,
    SELECT_SESSION,
    SELECT_TOKEN,
    SESSION_EXISTS,
    UPSERT_COMMAND,
    UPSERT_SESSION,
    UPSERT_TOKEN,
    lock_key,
)
from registry.backends.sqlite_sql import COMMAND_FIELDS, SESSION_FIELDS  # noqa: E402
from tests.helpers.pg import PgServer, unavailable_reason  # noqa: E402

DAY_MS = 86_400_000
LEASE_MS = 300_000
SCHEMA = "bench"
SUBJECT_NAMES = ("floor", "postgres", "sqlite")
OPS = ("get", "register_new", "register_existing", "mint", "validate", "claim_complete")
# The targets: the library's median over the floor's.
READ_TARGET, WRITE_TARGET = 1.5, 1.3
TARGETS = {
    "get": READ_TARGET,
    "validate": READ_TARGET,
    "register_new": WRITE_TARGET,
    "register_existing": WRITE_TARGET,
    "mint": WRITE_TARGET,
    "claim_complete": WRITE_TARGET,
}
S = {name: i for i, name in enumerate(SESSION_FIELDS)}
C = {name: i for i, name in enumerate(COMMAND_FIELDS)}
# The host the library's store stamps on its rows (host_id's default): the floor writes and
# claims with the same value.
HOST = defaults.host_id()
PAYLOAD = {"text": "run the tests and fix what fails", "chatId": 7}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pg_config(dsn: str) -> dict[str, Any]:
    return {
        "backend": "postgres",
        "postgres": {"dsn": dsn, "schema": SCHEMA},
        "lock_timeout_s": 600,  # contention measures throughput, not giving up
        "inbox_lease_s": LEASE_MS / 1000,
    }


def sqlite_config(data_dir: Path) -> dict[str, Any]:
    return {
        "backend": "sqlite",
        "data_dir": str(data_dir),
        "migrate_from_json": False,
        "lock_timeout_s": 600,
        "inbox_lease_s": LEASE_MS / 1000,
    }


# --------------------------------------------------------------------------- subjects


class Library:
    """ccr-registry through open_store (postgres or sqlite)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.store = open_store(config)

    def close(self) -> None:
        self.store.close()

    def get(self, sid: str) -> Any:
        return self.store.sessions.get(sid)

    def register(self, sid: str, ppid: int) -> None:
        self.store.sessions.register(sid, ppid=ppid)

    def mint(self, sid: str, chat: int) -> str:
        return self.store.tokens.mint_token(sid, chat).token

    def validate(self, token: str, chat: int) -> bool:
        return self.store.tokens.validate_token(token, chat) is not None

    def claim_complete(self, owner: str) -> str:
        command = self.store.inbox.claim(owner)
        assert command is not None, "no command left to claim"
        self.store.inbox.complete(command.command_id, owner)
        return command.command_id

    def increment(self, sid: str) -> None:
        with self.store.atomic():
            session = self.store.sessions.get(sid)
            assert session is not None and session.label is not None
            self.store.sessions.update(sid, label=str(int(session.label) + 1))

    def label(self, sid: str) -> str | None:
        session = self.store.sessions.get(sid)
        return None if session is None else session.label


class Floor:
    """The backend's statements in the backend's order, in plain psycopg with tuples."""

    def __init__(self, dsn: str) -> None:
        self.write_key = lock_key("write", SCHEMA)

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "SELECT set_config('search_path', %s, false), "
                "set_config('lock_timeout', %s, false)",
                (SCHEMA, "600000ms"),
            )

        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=8,
            kwargs={"autocommit": True},
            configure=configure,
            check=ConnectionPool.check_connection,
            timeout=600,
            open=False,
        )
        self.pool.open(wait=True)

    def close(self) -> None:
        self.pool.close()

    def _unit(self, body: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        conn = self.pool.getconn()
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.write_key,))
            result = body(conn)
            conn.execute(BUMP_DATA_VERSION)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            self.pool.putconn(conn)
        return result

    def get(self, sid: str) -> Any:
        conn = self.pool.getconn()
        try:
            return conn.execute(SELECT_SESSION, (sid,)).fetchone()
        finally:
            self.pool.putconn(conn)

    def register(self, sid: str, ppid: int) -> None:
        now = now_ms()

        def body(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(SELECT_SESSION, (sid,)).fetchone()
            if row is None:
                new: list[Any] = [sid, ppid, None, None, None, None, 0, "unknown", "{}",
                                  "running", now, now, now, now + DAY_MS, HOST]  # fmt: skip
            else:
                new = list(row)
                new[S["ppid"]] = ppid
                new[S["updated_at"]] = new[S["last_seen"]] = now
                new[S["expires_at"]] = now + DAY_MS
            conn.execute(UPSERT_SESSION, new)

        self._unit(body)

    def mint(self, sid: str, chat: int) -> str:
        token = secrets.token_urlsafe(16)
        now = now_ms()

        def body(conn: psycopg.Connection[Any]) -> None:
            if conn.execute(SESSION_EXISTS, (sid,)).fetchone() is None:
                raise LookupError(sid)
            conn.execute(UPSERT_TOKEN, (token, sid, chat, '["send_cmd"]', "{}", now, now + DAY_MS))

        self._unit(body)
        return token

    def validate(self, token: str, chat: int) -> bool:
        conn = self.pool.getconn()
        try:
            row = conn.execute(SELECT_TOKEN, (token,)).fetchone()
        finally:
            self.pool.putconn(conn)
        return row is not None and row[6] > now_ms() and row[2] == chat

    def claim_complete(self, owner: str) -> str:
        now = now_ms()

        def claim(conn: psycopg.Connection[Any]) -> str:
            row = conn.execute(NEXT_CLAIMABLE, {"now": now, "host": HOST}).fetchone()
            assert row is not None, "no command left to claim"
            new = list(row)
            new[C["state"]] = "leased"
            new[C["attempts"]] = row[C["attempts"]] + 1
            new[C["lease_owner"]] = owner
            new[C["lease_until"]] = now + LEASE_MS
            new[C["updated_at"]] = now
            conn.execute(UPSERT_COMMAND, new)
            return str(row[C["command_id"]])

        command_id: str = self._unit(claim)

        def complete(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(SELECT_COMMAND, (command_id,)).fetchone()
            if row is None or row[C["state"]] != "leased" or row[C["lease_owner"]] != owner:
                raise RuntimeError(f"lease lost: {command_id}")
            new = list(row)
            new[C["state"]] = "done"
            new[C["lease_owner"]] = new[C["lease_until"]] = None
            new[C["updated_at"]] = now_ms()
            conn.execute(UPSERT_COMMAND, new)

        self._unit(complete)
        return command_id

    def increment(self, sid: str) -> None:
        def body(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(SELECT_SESSION, (sid,)).fetchone()
            assert row is not None
            new = list(row)
            new[S["label"]] = str(int(bytes(row[S["label"]]).decode()) + 1).encode()
            new[S["updated_at"]] = now_ms()
            conn.execute(UPSERT_SESSION, new)

        self._unit(body)

    def label(self, sid: str) -> str | None:
        row = self.get(sid)
        return None if row is None else bytes(row[S["label"]]).decode()


def make(name: str, dsn: str, sqlite_dir: Path) -> Library | Floor:
    if name == "floor":
        return Floor(dsn)
    if name == "postgres":
        return Library(pg_config(dsn))
    return Library(sqlite_config(sqlite_dir))


# --------------------------------------------------------------------------- single process


def seed(config: dict[str, Any], sessions: int, commands: int) -> None:
    """Sessions, one token per ten sessions, ``commands`` ready commands, a counter session."""
    with open_store(config) as store:
        with store.atomic():
            for i in range(sessions):
                store.sessions.register(f"s{i:06d}", ppid=100_000 + i, cwd=f"/home/dev/s{i}")
            for i in range(0, sessions, 10):
                store.tokens.store_token(f"tok-{i:06d}-xxxxxxxxxx", f"s{i:06d}", 7)
            for name in SUBJECT_NAMES:
                store.sessions.register(f"counter-{name}", label="0")
        with store.atomic():
            for k in range(commands):
                sid = f"s{k % sessions:06d}"
                store.inbox.enqueue(f"cmd-{k}", PAYLOAD, session_id=sid, chat_id=7)


def timed_loop(op: Callable[[int], object], start: int, budget_s: float, max_ops: int) -> list[int]:
    samples: list[int] = []
    deadline = time.perf_counter() + budget_s
    k = start
    while len(samples) < max_ops and (len(samples) < 3 or time.perf_counter() < deadline):
        began = time.perf_counter_ns()
        op(k)
        samples.append(time.perf_counter_ns() - began)
        k += 1
    return samples


def run_single(
    dsn: str, sqlite_dir: Path, sessions: int, rounds: int, budget_s: float, max_ops: int
) -> dict[str, dict[str, list[int]]]:
    """Every op, subjects interleaved round by round so that the machine's noise hits each."""
    subjects = {name: make(name, dsn, sqlite_dir) for name in SUBJECT_NAMES}
    samples: dict[str, dict[str, list[int]]] = {n: {op: [] for op in OPS} for n in subjects}
    minted: dict[str, list[str]] = {n: [] for n in subjects}
    done = {n: 0 for n in subjects}

    def ops_of(name: str, subject: Library | Floor) -> dict[str, Callable[[int], object]]:
        def pick(k: int) -> str:
            return f"s{(k * 7919) % sessions:06d}"

        def mint(k: int) -> None:
            minted[name].append(subject.mint(pick(k), 7))

        def validate(k: int) -> None:
            assert subject.validate(minted[name][k % len(minted[name])], 7)

        def claim_complete(k: int) -> None:
            subject.claim_complete(f"owner-{name}")

        return {
            "get": lambda k: subject.get(pick(k)),
            "register_new": lambda k: subject.register(f"new-{name}-{k}", 7),
            "register_existing": lambda k: subject.register(pick(k), 100_001),
            "mint": mint,
            "validate": validate,
            "claim_complete": claim_complete,
        }

    try:
        table = {name: ops_of(name, subject) for name, subject in subjects.items()}
        for name in subjects:  # warm-up, not recorded
            for op in OPS:
                table[name][op](10**6 + done[name])
                done[name] += 1
        for r in range(rounds):
            for op in OPS:
                order = list(subjects) if r % 2 == 0 else list(reversed(subjects))
                for name in order:
                    got = timed_loop(table[name][op], done[name], budget_s, max_ops)
                    done[name] += len(got)
                    samples[name][op].extend(got)
    finally:
        for subject in subjects.values():
            subject.close()
    return samples


# --------------------------------------------------------------------------- contention


def worker(name: str, dsn: str, sqlite_dir: str, increments: int) -> None:
    subject = make(name, dsn, Path(sqlite_dir))
    subject.get("s000000")  # the pool and the first connection, before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    latencies = []
    started = time.perf_counter_ns()
    for _ in range(increments):
        t = time.perf_counter_ns()
        subject.increment(f"counter-{name}")
        latencies.append(time.perf_counter_ns() - t)
    ended = time.perf_counter_ns()
    subject.close()
    print(json.dumps({"started": started, "ended": ended, "latencies": latencies}), flush=True)


def run_contention(
    name: str, dsn: str, sqlite_dir: Path, procs: int, increments: int
) -> dict[str, Any]:
    reports = release_together(
        [[sys.executable, __file__, "--worker", name, dsn, str(sqlite_dir), str(increments)]]
        * procs,
        timeout=1800,
    )
    wall = wall_s(reports)
    latencies = sorted(x for r in reports for x in r["latencies"])
    subject = make(name, dsn, sqlite_dir)
    final = int(subject.label(f"counter-{name}") or 0)
    subject.close()
    return {
        "procs": procs,
        "increments_each": increments,
        "throughput": len(latencies) / wall,
        "p50_ms": latencies[len(latencies) // 2] / 1e6,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1e6,
        "final": final,
        "expected": procs * increments,
    }


# --------------------------------------------------------------------------- drain

# The backend's claim takes the writer lock exclusively, like every other unit. A claim with
# FOR UPDATE SKIP LOCKED under the lock taken shared was measured against it with this section
# (then --claim-modes) and dropped: docs/postgres.md, "Why claim takes the writer lock".
CLAIM_MODES = ("writer_lock",)


def claim_config(dsn: str, schema: str) -> dict[str, Any]:
    return {**pg_config(dsn), "postgres": {"dsn": dsn, "schema": schema}}


def claim_store(dsn: str, schema: str, mode: str) -> Any:
    assert mode in CLAIM_MODES
    return open_store(claim_config(dsn, schema))


def fill_inbox(dsn: str, schema: str, sessions: int, per_session: int) -> list[str]:
    """``sessions`` sessions with ``per_session`` ready commands each, seq round-robin."""
    ids = []
    with open_store(claim_config(dsn, schema)) as store, store.atomic():
        for i in range(sessions):
            store.sessions.register(f"q{i:05d}")
        for k in range(per_session):
            for i in range(sessions):
                ids.append(f"q{i:05d}-{k:04d}")
                store.inbox.enqueue(ids[-1], PAYLOAD, session_id=f"q{i:05d}")
    return ids


def run_claim_single(dsn: str, rounds: int, budget_s: float, max_ops: int) -> dict[str, Any]:
    """claim + complete in one process, the two modes interleaved round by round."""
    fill_inbox(dsn, "claim_single", 500, (2 * rounds * max_ops + 40) // 500 + 1)
    stores = {mode: claim_store(dsn, "claim_single", mode) for mode in CLAIM_MODES}
    samples: dict[str, list[int]] = {mode: [] for mode in CLAIM_MODES}

    def op_of(mode: str) -> Callable[[int], object]:
        def claim_complete(_k: int) -> None:
            claimed = stores[mode].inbox.claim(f"owner-{mode}")
            assert claimed is not None, "no command left to claim"
            stores[mode].inbox.complete(claimed.command_id, f"owner-{mode}")

        return claim_complete

    try:
        for mode in CLAIM_MODES:
            timed_loop(op_of(mode), 0, 0.0, 10)  # warm-up
        for r in range(rounds):
            for mode in CLAIM_MODES if r % 2 == 0 else reversed(CLAIM_MODES):
                samples[mode].extend(timed_loop(op_of(mode), 0, budget_s, max_ops))
    finally:
        for store in stores.values():
            store.close()
    return {
        mode: {"median_us": median_us(v), "p99_us": p99_us(v), "ops": len(v)}
        for mode, v in samples.items()
    }


def drain_worker(mode: str, dsn: str, schema: str, owner: str) -> None:
    """Claim and complete until nothing is ready; report each claim's id and time."""
    store = claim_store(dsn, schema, mode)
    store.inbox.list_commands(state="leased")  # the pool and a connection, before the clock
    print("ready", flush=True)
    sys.stdin.readline()
    claims: list[tuple[str, int]] = []
    empty = 0
    started = time.monotonic_ns()
    while True:
        claimed = store.inbox.claim(owner)
        if claimed is None:
            empty += 1
            if not store.inbox.list_commands(state="ready"):
                break
            continue  # successors wait for a head another consumer holds
        claims.append((claimed.command_id, time.monotonic_ns()))
        store.inbox.complete(claimed.command_id, owner)
    ended = time.monotonic_ns()
    store.close()
    print(json.dumps({"claims": claims, "empty": empty, "started": started, "ended": ended}))


def run_drain(dsn: str, mode: str, procs: int, tag: str, sessions: int, per: int) -> dict[str, Any]:
    """``procs`` consumer processes drain a fresh schema; exactly once and session order
    are checked from their reports and from the store."""
    schema = f"drain_{tag}"
    expected = fill_inbox(dsn, schema, sessions, per)
    reports = release_together(
        [
            [sys.executable, __file__, "--drain-worker", mode, dsn, schema, f"c{n}"]
            for n in range(procs)
        ],
        timeout=1800,
    )
    claims = [(cid, t) for r in reports for cid, t in r["claims"]]
    ids = [cid for cid, _ in claims]
    with open_store(claim_config(dsn, schema)) as store:
        states = {c.command_id: c.state for c in store.inbox.list_commands()}
    # Per session, the claims came in seq order (k is the command's rank in its session).
    by_session: dict[str, list[tuple[int, str]]] = {}
    for cid, t in claims:
        by_session.setdefault(cid.split("-")[0], []).append((t, cid))
    in_order = all(
        [cid for _, cid in sorted(timed)] == sorted(cid for _, cid in timed)
        for timed in by_session.values()
    )
    wall = wall_s(reports)
    return {
        "procs": procs,
        "commands": len(expected),
        "throughput": len(claims) / wall,
        "delivered": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "missing": len(set(expected) - set(ids)),
        "not_done": sum(state != "done" for state in states.values()),
        "in_session_order": in_order,
        "empty_claims": sum(r["empty"] for r in reports),
    }


def run_claim_modes(
    scratch: Path, *, rounds: int, budget_s: float, max_ops: int, repeats: int
) -> list[str]:
    """``--drain``: claim + complete in one process, then drains by 4 and 8 consumer
    processes (every mode of CLAIM_MODES interleaved on one server); the report lines."""
    reason = unavailable_reason()
    if reason is not None:
        return [f"postgres: not measured: {reason}"]
    scratch.mkdir(parents=True, exist_ok=True)
    server = PgServer()
    server.start()
    try:
        load_before = os.getloadavg()
        single = run_claim_single(server.dsn, rounds, budget_s, max_ops)
        drains: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in range(repeats):
            for procs in (4, 8):
                for mode in CLAIM_MODES if r % 2 == 0 else reversed(CLAIM_MODES):
                    tag = f"{mode}_{procs}_{r}"
                    got = run_drain(server.dsn, mode, procs, tag, 200, 5)
                    drains.setdefault((mode, procs), []).append(got)
        load_after = os.getloadavg()
        description = machine(server)
    finally:
        server.stop()
    lines = [description, "claim + complete, one process, medians (p99) in us:"]
    for mode, v in single.items():
        lines.append(f"  {mode:<12} {v['median_us']:7.0f} ({v['p99_us']:6.0f}), {v['ops']} ops")
    lines.append(f"drain: N consumer processes, 200 sessions x 5 commands; median of {repeats}:")
    for (mode, procs), runs in sorted(drains.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rates = ", ".join(f"{x['throughput']:.0f}" for x in runs)
        bad = [
            x
            for x in runs
            if x["duplicates"] or x["missing"] or x["not_done"] or not x["in_session_order"]
        ]
        lines.append(
            f"  {mode:<12} {procs} procs: "
            f"{statistics.median(x['throughput'] for x in runs):6.0f} commands/s ({rates}); "
            f"delivered {sum(x['delivered'] for x in runs)}/{sum(x['commands'] for x in runs)}, "
            f"duplicates {sum(x['duplicates'] for x in runs)}, "
            f"missing {sum(x['missing'] for x in runs)}, "
            f"in session order {'yes' if not bad else 'NO'}, "
            f"empty claims {sum(x['empty_claims'] for x in runs)}"
        )
    before = " ".join(f"{x:.2f}" for x in load_before)
    after = " ".join(f"{x:.2f}" for x in load_after)
    lines.append(f"load average (1, 5, 15 min) before {before}, after {after}")
    return lines


# --------------------------------------------------------------------------- hook start-up

# The console script's hook with the store the hook used before it had its own (a pooled
# store through open_store): the "before" of the one-plain-connection hook store.
POOLED_HOOK = (
    "import sys\n"
    "import registry.backends.postgres as pg\n"
    "from registry.factory import open_store\n"
    "pg._open_hook_store = lambda config, clock: open_store(config, clock=clock)\n"
    "from registry._entry import main\n"
    "sys.exit(main())\n"
)


def run_hook_startup(dsn: str, scratch: Path, runs: int) -> dict[str, Any]:
    """``ccr-registry --config X hook session-start`` on postgres and on sqlite, and a bare
    ``python -c pass``, interleaved run by run; medians in ms."""
    bin_dir = Path(sys.executable).parent
    script = bin_dir / "ccr-registry"
    pg_toml = scratch / "pg.toml"
    pg_toml.write_text(
        f'[store]\nbackend = "postgres"\n\n[store.postgres]\ndsn = "{dsn}"\nschema = "{SCHEMA}"\n'
    )
    lite_toml = scratch / "sqlite.toml"
    lite_toml.write_text(f'[store]\nbackend = "sqlite"\ndata_dir = "{scratch / "hook-sqlite"}"\n')
    # PYTHONPATH: the hook runs this checkout's code, whatever the environment has installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCR_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    hook_args = ["--config", str(pg_toml), "hook", "session-start"]
    commands = {
        "bare": [sys.executable, "-c", "pass"],
        "hook_postgres": [str(script), "--config", str(pg_toml), "hook", "session-start"],
        "hook_postgres_pooled": [sys.executable, "-c", POOLED_HOOK, *hook_args],
        "hook_sqlite": [str(script), "--config", str(lite_toml), "hook", "session-start"],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for k in range(-1, runs):  # run -1 warms the caches and creates the sqlite database
        for name, command in commands.items():
            payload = json.dumps({"session_id": f"hook-{name}-{k}", "cwd": "/home/dev"})
            began = time.perf_counter()
            done = subprocess.run(command, input=payload, env=env, text=True, capture_output=True)
            elapsed = (time.perf_counter() - began) * 1000
            if done.returncode != 0 or done.stderr:
                raise RuntimeError(f"{name} failed: {done.returncode} {done.stderr}")
            if k >= 0:
                walls[name].append(elapsed)
    with open_store(pg_config(dsn)) as store:
        landed = {
            name: sum(store.sessions.get(f"hook-{name}-{k}") is not None for k in range(runs))
            for name in ("hook_postgres", "hook_postgres_pooled")
        }
    result: dict[str, Any] = {n: statistics.median(w) for n, w in walls.items()}
    result["runs"] = runs
    result["landed_postgres"] = landed["hook_postgres"]
    result["landed_postgres_pooled"] = landed["hook_postgres_pooled"]
    return result


# --------------------------------------------------------------------------- run and report


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def p99_us(samples: list[int]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


def machine(server: PgServer) -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    version = server._run("pg_ctl", "--version").stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, psycopg {psycopg.__version__}, {version} "
        "(Unix socket, fsync/synchronous_commit/full_page_writes off)"
    )


def run_postgres(scratch: Path, *, quick: bool) -> dict[str, Any]:
    """Every measurement of this module; ``{"unavailable": reason}`` without a server."""
    reason = unavailable_reason()
    if reason is not None:
        return {"unavailable": reason}
    sessions, rounds, budget, max_ops = (1000, 3, 0.3, 150) if quick else (10000, 5, 1.0, 1000)
    increments = 50 if quick else 200
    hook_runs = 7 if quick else 21
    scratch.mkdir(parents=True, exist_ok=True)
    sqlite_dir = scratch / "sqlite"
    server = PgServer()
    server.start()
    try:
        commands = (rounds * max_ops + 10) * 1  # each subject claims at most this many
        seed(pg_config(server.dsn), sessions, commands * 2)  # floor and library share them
        seed(sqlite_config(sqlite_dir), sessions, commands)
        load_before = os.getloadavg()
        single = run_single(server.dsn, sqlite_dir, sessions, rounds, budget, max_ops)
        contention = {
            name: run_contention(name, server.dsn, sqlite_dir, 8, increments)
            for name in SUBJECT_NAMES
        }
        hook = run_hook_startup(server.dsn, scratch, hook_runs)
        load_after = os.getloadavg()
        description = machine(server)
    finally:
        server.stop()
    return {
        "machine": description,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_before,
        "load_after": load_after,
        "sessions": sessions,
        "single": {
            n: {
                op: {"median_us": median_us(v), "p99_us": p99_us(v), "ops": len(v)}
                for op, v in ops.items()
            }
            for n, ops in single.items()
        },
        "contention": contention,
        "hook_startup": hook,
    }


def run_hook_only(scratch: Path, runs: int) -> list[str]:
    """Only the hook start-up (``--hook-only N``): its report line and the load average."""
    reason = unavailable_reason()
    if reason is not None:
        return [f"postgres: not measured: {reason}"]
    scratch.mkdir(parents=True, exist_ok=True)
    server = PgServer()
    server.start()
    try:
        with open_store(pg_config(server.dsn)):
            pass  # the schema, so that no hook run creates it
        load_before = os.getloadavg()
        hook = run_hook_startup(server.dsn, scratch, runs)
        load_after = os.getloadavg()
        description = machine(server)
    finally:
        server.stop()
    results = {"hook_startup": hook, "load_before": load_before, "load_after": load_after}
    return [description, *report_lines(results)]


def report_lines(results: dict[str, Any]) -> list[str]:
    if "unavailable" in results:
        return [f"postgres: not measured: {results['unavailable']}"]
    if "single" not in results:  # --hook-only
        return hook_lines(results)
    single = results["single"]
    lines = [
        f"{results['sessions']} sessions; medians (p99) in us; ratio = library / floor",
        f"{'op':<18} {'floor':>16} {'postgres':>16} {'sqlite':>16} {'pg/floor':>9} "
        f"{'target':>7} {'pg/sqlite':>9}",
    ]
    for op in OPS:
        cells = [
            f"{single[n][op]['median_us']:7.0f} ({single[n][op]['p99_us']:6.0f})"
            for n in SUBJECT_NAMES
        ]
        ratio = single["postgres"][op]["median_us"] / single["floor"][op]["median_us"]
        vs_sqlite = single["postgres"][op]["median_us"] / single["sqlite"][op]["median_us"]
        met = "met" if ratio <= TARGETS[op] else "MISSED"
        lines.append(
            f"{op:<18} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {ratio:8.2f}x "
            f"<={TARGETS[op]} {met:<6} {vs_sqlite:8.2f}x"
        )
    for name, c in results["contention"].items():
        lost = c["expected"] - c["final"]
        lines.append(
            f"contention {name:<9} {c['procs']} procs x {c['increments_each']}: "
            f"{c['throughput']:7.0f} increments/s, p50 {c['p50_ms']:.1f} ms, "
            f"p99 {c['p99_ms']:.1f} ms, final {c['final']}/{c['expected']} (lost {lost})"
        )
    return lines + hook_lines(results)


def hook_lines(results: dict[str, Any]) -> list[str]:
    h = results["hook_startup"]
    lines = [
        f"hook start-up, median of {h['runs']}: postgres {h['hook_postgres']:.1f} ms "
        f"(one plain connection, {h['hook_postgres'] / h['bare']:.2f}x bare), postgres pooled "
        f"{h['hook_postgres_pooled']:.1f} ms ({h['hook_postgres_pooled'] / h['bare']:.2f}x), "
        f"sqlite {h['hook_sqlite']:.1f} ms, python -c pass {h['bare']:.1f} ms; sessions landed "
        f"{h['landed_postgres']}/{h['runs']} and {h['landed_postgres_pooled']}/{h['runs']}"
    ]
    before = " ".join(f"{x:.2f}" for x in results["load_before"])
    after = " ".join(f"{x:.2f}" for x in results["load_after"])
    lines.append(f"load average (1, 5, 15 min) before {before}, after {after}")
    return lines


def write_report(results: dict[str, Any], out: Path, command: str) -> None:
    """The figures as a fenced block under a short header; the prose is the doc's own."""
    text = out.read_text() if out.exists() else "# PostgreSQL benchmarks\n"
    marker = "<!-- figures -->"
    head = text.split(marker)[0].rstrip() + "\n\n"
    block = "\n".join(report_lines(results))
    out.write_text(
        f"{head}{marker}\n\nCommand: `{command}`, {results['date']}.\n"
        f"Machine: {results['machine']}.\n\n```\n{block}\n```\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="postgres backend benchmarks")
    parser.add_argument("--quick", action="store_true", help="small budgets, print only")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "docs" / "postgres-benchmarks.md"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--hook-only", type=int, metavar="RUNS", help="only the hook start-up, RUNS runs each"
    )
    parser.add_argument(
        "--drain",
        type=int,
        metavar="REPEATS",
        help="only the inbox: one-process claim+complete, and REPEATS drains of 1,000 commands "
        "by 4 and by 8 consumer processes (exactly once and session order checked)",
    )
    parser.add_argument("--drain-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain_worker:
        drain_worker(*args.drain_worker)
        return
    if args.drain:
        scratch = Path(tempfile.mkdtemp(prefix="ccr-bench-pg-"))
        try:
            budget = (3, 0.3, 150) if args.quick else (5, 1.0, 400)
            rounds, budget_s, max_ops = budget
            lines = run_claim_modes(
                scratch, rounds=rounds, budget_s=budget_s, max_ops=max_ops, repeats=args.drain
            )
            print("\n".join(lines))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    if args.hook_only:
        scratch = Path(tempfile.mkdtemp(prefix="ccr-bench-pg-"))
        try:
            print("\n".join(run_hook_only(scratch, args.hook_only)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    if args.worker:
        name, dsn, sqlite_dir, increments = args.worker
        worker(name, dsn, sqlite_dir, int(increments))
        return
    scratch = Path(tempfile.mkdtemp(prefix="ccr-bench-pg-"))
    try:
        results = run_postgres(scratch, quick=args.quick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for line in report_lines(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.quick and "unavailable" not in results:
        write_report(results, Path(args.out), "python bench/postgres.py")


if __name__ == "__main__":
    main()
