"""The command inbox's speed: the sqlite backend against the raw floor and the legacy inbox.

    python bench/inbox.py --quick                                # print the tables
    python bench/inbox.py --quick --out docs/inbox-benchmarks.md  # ...and write them as Markdown
    python bench/inbox.py                                        # bigger budgets and drain

``bench/run.py`` runs it too (a full run writes docs/inbox-benchmarks.md). Never run by the
test suite.

Subjects:

- **sqlite**: ``store.inbox`` of ccr-registry's sqlite backend through ``open_store``.
- **floor**: the same database file layout, pragmas and SQL text (the statements are imported
  from ``registry.backends.sqlite_sql``: ``SELECT_COMMAND``, ``SESSION_EXISTS``, ``NEXT_SEQ``,
  ``UPSERT_COMMAND``, ``NEXT_CLAIMABLE``), run in the same order inside the same
  ``BEGIN IMMEDIATE`` units with plain ``sqlite3`` and tuples: what the library costs is the
  Python around the statements (validation, models, the clock, the unit helpers).
- **legacy**: the machine agent's former inbox (SPEC 6): its own file, table ``inbox``,
  ``INSERT OR IGNORE INTO inbox``, ``SELECT ... WHERE status != 'done'`` with no ``ORDER BY``
  (the first row it returns is taken), ``UPDATE ... SET status = 'done'``, each statement its own
  transaction. No lease and no order: it is a peer for speed, not for what it guarantees. It
  gets the same pragmas as the others (WAL, ``synchronous=NORMAL``), so the journal is not
  what differs.

Workloads, on a table already holding 100 and 100,000 finished commands (90% done, 10% dead,
all within retention, so they stay in the table): ``enqueue`` of new commands (16 sessions, in
turn), then ``claim`` and ``complete`` of each, timed one call at a time (median and p99).
The same claim again with 1,000 pending commands held back behind one session's retrying head.
sqlite and the floor, at both sizes and with the held-back commands, take turns call by call
(the first to go rotates), so a machine shared with other work slows them all alike; the
legacy inbox takes turns between its two sizes, on its own. Then a drain: N ready
commands over 64 sessions, 4 processes each claiming and completing until nothing is pending;
commands per second over the wall time from the first start to the last end, the subjects
taking turns drain by drain for three rounds (the median round is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workers import release_together, wall_s  # bench/workers.py, beside this script

from registry import defaults, open_store
from registry.backends.sqlite_sql import (
    COMMAND_FIELDS,
    NEXT_CLAIMABLE,
    NEXT_SEQ,
    SELECT_COMMAND,
    SESSION_EXISTS,
    UPSERT_COMMAND,
)

SIZES = (100, 100_000)
SESSIONS = 16  # sessions of the single-process workloads
DRAIN_SESSIONS = 64  # more sessions than consumers: per-session order still leaves work for all
CONSUMERS = 4
DRAIN_ROUNDS = 3
HELD_BACK = 1_000  # pending commands waiting behind one session's retrying head
LEASE_MS = 60_000
MAX_ATTEMPTS = 10
DAY_MS = 86_400_000
COL = {name: i for i, name in enumerate(COMMAND_FIELDS)}
# The host the library's store stamps on its commands (host_id's default), so the floor's rows and
# its claim see the same values.
HOST = defaults.host_id()
PENDING_LEFT = "SELECT EXISTS (SELECT 1 FROM commands WHERE state IN ('ready', 'leased'))"
LEGACY_SCHEMA = (
    "CREATE TABLE inbox (command_id TEXT PRIMARY KEY, received_at INTEGER, payload TEXT, "
    "status TEXT, updated_at INTEGER)"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def payload_of(session_id: str) -> dict[str, Any]:
    return {"text": "run the tests and fix what fails", "sessionId": session_id, "chatId": 7}


def compact(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def session_ids(count: int) -> list[str]:
    return [f"s{i:03d}" for i in range(count)]


# --------------------------------------------------------------------------- subjects


class Subject:
    """One inbox behind four calls; ``claim`` returns the claimed command's id or None."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def build(self, finished: int, ready: int, sessions: list[str]) -> None:
        """A new inbox holding ``finished`` done/dead commands, then ``ready`` ready ones."""
        raise NotImplementedError

    def open(self) -> None: ...

    def close(self) -> None: ...

    def enqueue(self, command_id: str, session_id: str) -> None:
        raise NotImplementedError

    def claim(self, owner: str) -> str | None:
        raise NotImplementedError

    def complete(self, command_id: str, owner: str) -> None:
        raise NotImplementedError

    def pending_left(self) -> bool:
        raise NotImplementedError

    def count_done(self) -> int:
        raise NotImplementedError


def connect(path: Path) -> sqlite3.Connection:
    """The pragmas of registry.backends.sqlite_sql.connect, without the library."""
    conn = sqlite3.connect(path, timeout=600, isolation_level=None, cached_statements=64)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def command_row(seq: int, command_id: str, session_id: str, state: str, at: int) -> tuple[Any, ...]:
    """A row of COMMAND_FIELDS, encoded as the library encodes a Command."""
    error = "gave up after 10 attempts" if state == "dead" else None
    attempts = 1 if state == "done" else (MAX_ATTEMPTS if state == "dead" else 0)
    return (seq, command_id, session_id, compact(payload_of(session_id)), 7, state, attempts,
            at, None, None, error, at, at, HOST)  # fmt: skip


class Ours(Subject):
    name = "sqlite"

    def config(self) -> dict[str, Any]:
        return {
            "backend": "sqlite",
            "data_dir": str(self.root),
            "migrate_from_json": False,
            "lock_timeout_s": 600,  # contention runs measure throughput, not giving up
            "inbox_lease_s": LEASE_MS / 1000,
            "inbox_max_attempts": MAX_ATTEMPTS,
        }

    def build(self, finished: int, ready: int, sessions: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open_store(self.config()) as store, store.atomic():
            for sid in sessions:
                store.sessions.register(sid, ppid=4242)
        # The finished commands are written with the library's own statement and encoding.
        at = now_ms()
        rows = [
            command_row(seq, f"old-{seq}", sessions[seq % len(sessions)],
                        "dead" if seq % 10 == 0 else "done", at - DAY_MS // 2)
            for seq in range(1, finished + 1)
        ] + [
            command_row(seq, f"cmd-{seq}", sessions[seq % len(sessions)], "ready", at)
            for seq in range(finished + 1, finished + ready + 1)
        ]  # fmt: skip
        conn = connect(self.root / "ccr.db")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(UPSERT_COMMAND, rows)
        conn.execute("COMMIT")
        next_seq = conn.execute(NEXT_SEQ).fetchone()[0]
        conn.close()
        assert next_seq == finished + ready + 1, next_seq

    def hold_back(self, count: int) -> None:
        """A session whose head waits out an hour's retry, with ``count`` commands behind it."""
        conn = connect(self.root / "ccr.db")
        conn.execute("BEGIN IMMEDIATE")
        seq = int(conn.execute(NEXT_SEQ).fetchone()[0])
        at = now_ms()
        head = list(command_row(seq, "stuck-head", "stuck", "ready", at))
        head[COL["available_at"]] = at + 3_600_000
        head[COL["attempts"]] = 1
        head[COL["last_error"]] = "pane busy"
        behind = [
            command_row(seq + 1 + i, f"stuck-{i}", "stuck", "ready", at) for i in range(count)
        ]
        conn.executemany(UPSERT_COMMAND, [head, *behind])
        conn.execute("COMMIT")
        conn.close()

    def open(self) -> None:
        self.store = open_store(self.config())
        self.inbox = self.store.inbox
        self.side = connect(self.root / "ccr.db")

    def close(self) -> None:
        self.store.close()
        self.side.close()

    def enqueue(self, command_id: str, session_id: str) -> None:
        self.inbox.enqueue(command_id, payload_of(session_id), session_id=session_id, chat_id=7)

    def claim(self, owner: str) -> str | None:
        command = self.inbox.claim(owner)
        return None if command is None else command.command_id

    def complete(self, command_id: str, owner: str) -> None:
        self.inbox.complete(command_id, owner)

    def pending_left(self) -> bool:
        return bool(self.side.execute(PENDING_LEFT).fetchone()[0])

    def count_done(self) -> int:
        return int(
            self.side.execute(
                "SELECT count(*) FROM commands WHERE state = 'done' AND command_id LIKE 'cmd-%'"
            ).fetchone()[0]
        )


class Floor(Ours):
    """The library's statements in the library's order, in plain sqlite3 with tuples."""

    name = "floor"

    def open(self) -> None:
        self.conn = connect(self.root / "ccr.db")
        self.side = self.conn

    def close(self) -> None:
        self.conn.close()

    def enqueue(self, command_id: str, session_id: str) -> None:
        conn = self.conn
        body = compact(payload_of(session_id))
        now = now_ms()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(SELECT_COMMAND, (command_id,)).fetchone() is None:
                if conn.execute(SESSION_EXISTS, (session_id,)).fetchone() is None:
                    raise LookupError(session_id)
                seq = conn.execute(NEXT_SEQ).fetchone()[0]
                conn.execute(
                    UPSERT_COMMAND,
                    (seq, command_id, session_id, body, 7, "ready", 0, now, None, None, None,
                     now, now, HOST),
                )  # fmt: skip
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def claim(self, owner: str) -> str | None:
        conn = self.conn
        now = now_ms()
        conn.execute("BEGIN IMMEDIATE")
        try:
            while True:
                row = conn.execute(NEXT_CLAIMABLE, (now, HOST)).fetchone()
                if row is None:
                    conn.execute("COMMIT")
                    return None
                new = list(row)
                new[COL["updated_at"]] = now
                if row[COL["attempts"]] >= MAX_ATTEMPTS:
                    new[COL["state"]] = "dead"
                    new[COL["lease_owner"]] = new[COL["lease_until"]] = None
                    conn.execute(UPSERT_COMMAND, new)
                    continue
                new[COL["state"]] = "leased"
                new[COL["attempts"]] = row[COL["attempts"]] + 1
                new[COL["lease_owner"]] = owner
                new[COL["lease_until"]] = now + LEASE_MS
                conn.execute(UPSERT_COMMAND, new)
                conn.execute("COMMIT")
                return str(row[COL["command_id"]])
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def complete(self, command_id: str, owner: str) -> None:
        conn = self.conn
        now = now_ms()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(SELECT_COMMAND, (command_id,)).fetchone()
            if row is None or row[COL["state"]] != "leased" or row[COL["lease_owner"]] != owner:
                raise RuntimeError(f"lease lost: {command_id}")
            new = list(row)
            new[COL["state"]] = "done"
            new[COL["lease_owner"]] = new[COL["lease_until"]] = None
            new[COL["updated_at"]] = now
            conn.execute(UPSERT_COMMAND, new)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class Legacy(Subject):
    """The former machine agent's inbox: one table, autocommit statements, no lease, no order."""

    name = "legacy"

    def build(self, finished: int, ready: int, sessions: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = connect(self.root / "inbox-bench.db")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise RuntimeError("no WAL")
        conn.execute(LEGACY_SCHEMA)
        at = now_ms()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO inbox VALUES (?, ?, ?, ?, ?)",
            [
                (f"old-{n}", at - DAY_MS // 2, compact(payload_of(sessions[n % len(sessions)])),
                 "done", at - DAY_MS // 2)
                for n in range(1, finished + 1)
            ]
            + [
                (f"cmd-{n}", at, compact(payload_of(sessions[n % len(sessions)])), "received", at)
                for n in range(finished + 1, finished + ready + 1)
            ],
        )  # fmt: skip
        conn.execute("COMMIT")
        conn.close()

    def open(self) -> None:
        self.conn = connect(self.root / "inbox-bench.db")

    def close(self) -> None:
        self.conn.close()

    def enqueue(self, command_id: str, session_id: str) -> None:
        now = now_ms()
        self.conn.execute(
            "INSERT OR IGNORE INTO inbox (command_id, received_at, payload, status, updated_at) "
            "VALUES (?, ?, ?, 'received', ?)",
            (command_id, now, compact(payload_of(session_id)), now),
        )

    def claim(self, owner: str) -> str | None:
        row = self.conn.execute(
            "SELECT command_id, received_at, payload, status, updated_at FROM inbox "
            "WHERE status != 'done'"
        ).fetchone()
        return None if row is None else str(row[0])

    def complete(self, command_id: str, owner: str) -> None:
        self.conn.execute(
            "UPDATE inbox SET status = 'done', updated_at = ? WHERE command_id = ?",
            (now_ms(), command_id),
        )

    def pending_left(self) -> bool:
        return self.claim("") is not None

    def count_done(self) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM inbox WHERE status = 'done' AND command_id LIKE 'cmd-%'"
            ).fetchone()[0]
        )


SUBJECTS: dict[str, type[Subject]] = {"sqlite": Ours, "floor": Floor, "legacy": Legacy}


# --------------------------------------------------------------------------- single process


def timed(call: Callable[[], object]) -> tuple[int, object]:
    started = time.perf_counter_ns()
    result = call()
    return time.perf_counter_ns() - started, result


Setup = tuple[str, int, int]  # subject name, finished commands, commands held back


def run_single(
    setups: list[Setup], root: Path, ops: int, budget_s: float
) -> dict[Setup, dict[str, list[int]]]:
    """Enqueue ``ops`` commands into each set-up inbox, then claim and complete them.

    The inboxes take turns call by call (the first to go rotates), so a machine shared with
    other work slows them alike. Claims stop after ``budget_s`` seconds (at least 20 each).
    Held back: that many pending commands of one more session wait behind its head, a command
    waiting out an hour's retry; every claim below passes them by.
    """
    sessions = session_ids(SESSIONS)
    subjects = []
    for n, (name, finished, held_back) in enumerate(setups):
        subject = SUBJECTS[name](root / f"{n}-{name}")
        subject.build(finished, 0, sessions)
        if held_back:
            assert isinstance(subject, Ours), "only the ordered inboxes hold commands back"
            subject.hold_back(held_back)
        subject.open()
        subject.enqueue("warm-up", sessions[0])  # not recorded, and claimed first: not recorded
        subjects.append(subject)
    samples: dict[int, dict[str, list[int]]] = {
        id(s): {"enqueue": [], "claim": [], "complete": [], "claim+complete": []} for s in subjects
    }

    def turns(k: int) -> list[Subject]:
        shift = k % len(subjects)
        return subjects[shift:] + subjects[:shift]

    for k in range(ops):
        for subject in turns(k):
            ns, _ = timed(lambda s=subject, k=k: s.enqueue(f"cmd-{k}", sessions[k % SESSIONS]))
            samples[id(subject)]["enqueue"].append(ns)
    for subject in subjects:
        warm = subject.claim("bench")
        assert warm == "warm-up", warm
        subject.complete(warm, "bench")
    deadline = time.perf_counter() + budget_s
    for k in range(ops):
        if k >= 20 and time.perf_counter() > deadline:
            break
        for subject in turns(k):
            claim_ns, claimed = timed(lambda s=subject: s.claim("bench"))
            # Every subject hands out the oldest pending command here (the legacy table returns
            # rows in insertion order), so the claimed id is checked, not trusted.
            assert claimed == f"cmd-{k}", (subject.name, claimed, k)
            complete_ns, _ = timed(lambda s=subject, c=claimed: s.complete(c, "bench"))
            got = samples[id(subject)]
            got["claim"].append(claim_ns)
            got["complete"].append(complete_ns)
            got["claim+complete"].append(claim_ns + complete_ns)
    for subject in subjects:
        subject.close()
    return {setup: samples[id(s)] for setup, s in zip(setups, subjects, strict=True)}


# --------------------------------------------------------------------------- drain


def drain_worker(name: str, root: str) -> None:
    """One consumer: claim and complete until nothing is pending; report on stdout."""
    subject = SUBJECTS[name](Path(root))
    subject.open()
    owner = f"consumer-{os.getpid()}"
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter_ns()
    done = idle = 0
    while True:
        claimed = subject.claim(owner)
        if claimed is None:
            if not subject.pending_left():
                break
            idle += 1  # every remaining session's head is leased by another consumer
            time.sleep(0.001)
            continue
        subject.complete(claimed, owner)
        done += 1
    ended = time.perf_counter_ns()
    subject.close()
    print(json.dumps({"started": started, "ended": ended, "done": done, "idle": idle}), flush=True)


def run_drain(name: str, root: Path, commands: int) -> dict[str, Any]:
    subject = SUBJECTS[name](root)
    subject.build(0, commands, session_ids(DRAIN_SESSIONS))
    reports = release_together(
        [[sys.executable, __file__, "--drain-worker", name, str(root)]] * CONSUMERS, timeout=3600
    )
    wall = wall_s(reports)
    subject.open()
    landed = subject.count_done()
    subject.close()
    delivered = sum(r["done"] for r in reports)
    assert landed == commands, (name, landed, commands)
    return {
        "commands": commands,
        "consumers": CONSUMERS,
        "wall_s": wall,
        "throughput": commands / wall,
        # More deliveries than commands: several consumers took the same command (the legacy
        # inbox has no claim); the others must show exactly one per command.
        "deliveries": delivered,
        "idle_polls": sum(r["idle"] for r in reports),
    }


# --------------------------------------------------------------------------- report


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def p99_us(samples: list[int]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


def summary(samples: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    return {
        op: {"median_us": median_us(v), "p99_us": p99_us(v), "ops": len(v)}
        for op, v in samples.items()
    }


def fmt(us: float) -> str:
    if us >= 1000:
        return f"{us / 1000:,.1f} ms"
    return f"{us:,.1f} µs"


def run_inbox(scratch: Path, *, quick: bool, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every workload on every subject; the results as plain data (bench/run.py stores them)."""
    ops, budget, drain_n = (300, 3.0, 2_000) if quick else (2_000, 20.0, 20_000)
    load_before = os.getloadavg()
    started = time.time()
    single: dict[str, dict[str, dict[str, dict[str, float]]]] = {name: {} for name in SUBJECTS}
    # The library and its floor, at every size and with commands held back, take turns in one
    # group; the legacy inbox runs in a group of its own, as its claim reads the whole table at
    # 100,000 rows and would leave the others' pages cold between their calls.
    ordered: list[Setup] = [(n, size, 0) for n in ("sqlite", "floor") for size in SIZES]
    ordered += [(n, SIZES[-1], HELD_BACK) for n in ("sqlite", "floor")]
    by_setup = run_single(ordered, scratch / "ordered", ops, budget)
    by_setup |= run_single([("legacy", size, 0) for size in SIZES], scratch / "legacy", ops, budget)
    held: dict[str, dict[str, dict[str, float]]] = {}
    for (name, size, held_back), samples in by_setup.items():
        shown = "  ".join(
            f"{op} {fmt(median_us(v))}" for op, v in samples.items() if op != "claim+complete"
        )
        if held_back:
            held[name] = summary(samples)
            say(f"inbox {name:<7} {size:>7,} in table, {held_back:,} held back: {shown}")
        else:
            single[name][str(size)] = summary(samples)
            say(f"inbox {name:<7} {size:>7,} in table: {shown}")
    # Drains take turns too, whole drain by whole drain; the median of the rounds is reported.
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SUBJECTS}
    for r in range(DRAIN_ROUNDS):
        for name in SUBJECTS:
            d = run_drain(name, scratch / f"drain-{name}-{r}", drain_n)
            rounds[name].append(d)
            say(
                f"inbox {name:<7} drain {d['commands']:,} by {d['consumers']} processes: "
                f"{d['throughput']:,.0f} commands/s, {d['deliveries']:,} deliveries"
            )
    drain: dict[str, dict[str, Any]] = {}
    for name, runs in rounds.items():
        middle = sorted(runs, key=lambda d: d["throughput"])[len(runs) // 2]
        drain[name] = {
            **middle,
            "rounds": [d["throughput"] for d in runs],
            "max_deliveries": max(d["deliveries"] for d in runs),
        }
    results = {
        "quick": quick,
        "elapsed_s": time.time() - started,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "single": single,
        "held_back": held,
        "drain": drain,
    }
    for line in ratio_lines(results):
        say(line)
    return results


def med(results: dict[str, Any], name: str, size: int, op: str) -> float:
    return float(results["single"][name][str(size)][op]["median_us"])


def ratio_lines(results: dict[str, Any]) -> list[str]:
    low, high = SIZES
    lines = []
    for op in ("enqueue", "claim", "complete", "claim+complete"):
        for size in SIZES:
            ours, floor = med(results, "sqlite", size, op), med(results, "floor", size, op)
            legacy = med(results, "legacy", size, op)
            lines.append(
                f"{op:<15} {size:>7,}: sqlite / floor {ours / floor:5.2f}x, "
                f"legacy / floor {legacy / floor:7.2f}x"
            )
    for name in SUBJECTS:
        growth = med(results, name, high, "claim") / med(results, name, low, "claim")
        lines.append(f"claim growth {low:,} -> {high:,} rows, {name:<7} {growth:7.2f}x")
    held = results["held_back"]
    for name in ("sqlite", "floor"):
        slower = held[name]["claim"]["median_us"] / med(results, name, high, "claim")
        lines.append(f"claim with {HELD_BACK:,} held back / without, {name:<7} {slower:7.2f}x")
    drain = results["drain"]
    for name in ("sqlite", "legacy"):
        lines.append(
            f"4-process drain, {name} / floor: "
            f"{drain[name]['throughput'] / drain['floor']['throughput']:.2f}x"
        )
    return lines


def busy_note(results: dict[str, Any]) -> str:
    cpus = results["cpus"] or 1
    load = max(results["load_before"][0], results["load_after"][0])
    if load >= cpus / 2:
        return (
            f"The machine was shared while this ran (1-minute load average up to {load:.1f} on "
            f"{cpus} cores): every figure is noisy. The library and its floor took turns call "
            "by call, so the load fell on both alike; absolute times, p99s and the drain's "
            "rates are noisier (its rounds show how much)."
        )
    return f"1-minute load average up to {load:.1f} on {cpus} cores during the run."


def write_report(results: dict[str, Any], out: Path, *, machine: str, command: str) -> None:
    """docs/inbox-benchmarks.md from one run's results."""
    low, high = SIZES
    kind = (
        "a quick run (fewer operations and a smaller drain)" if results["quick"] else "a full run"
    )
    some = next(iter(results["single"]["sqlite"].values()))
    lines = [
        "# Inbox benchmarks",
        "",
        f"Measured on {datetime.now(UTC).strftime('%Y-%m-%d')}, {kind}: {machine}.",
        f"Command: `{command}` (the inbox workloads took {results['elapsed_s']:.0f} s). "
        f"{busy_note(results)}",
        "Every figure below comes from that one run; what the subjects and workloads are is in the",
        "docstring of `bench/inbox.py`. How the inbox is used: [inbox.md](inbox.md).",
        "",
        "## One process, median latency",
        "",
        "Each subject's table first holds the finished commands (90% done, 10% dead), then",
        f"{some['enqueue']['ops']:,} commands are enqueued over {SESSIONS} sessions and claimed "
        "and completed one by one",
        "(up to a time budget: the counts of sqlite / floor / legacy are in the last column). p99",
        "in brackets. sqlite and the floor, at both sizes and with the held-back commands below,",
        "take turns call by call; the legacy inbox takes turns between its two sizes on its own",
        "(its claim reads the whole table and would leave the others' pages cold).",
        "",
        "| op | rows in table | sqlite | floor | legacy | sqlite / floor | legacy / floor | ops |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for op in ("enqueue", "claim", "complete", "claim+complete"):
        for size in SIZES:
            cells = []
            for name in SUBJECTS:
                v = results["single"][name][str(size)][op]
                cells.append(f"{fmt(v['median_us'])} ({fmt(v['p99_us'])})")
            floor = med(results, "floor", size, op)
            ops = " / ".join(f"{results['single'][n][str(size)][op]['ops']:,}" for n in SUBJECTS)
            lines.append(
                f"| {op} | {size:,} | {' | '.join(cells)} | "
                f"{med(results, 'sqlite', size, op) / floor:.2f}x | "
                f"{med(results, 'legacy', size, op) / floor:.2f}x | {ops} |"
            )
    lines += [
        "",
        f"Growth of the median claim from {low:,} to {high:,} rows in the table:",
        "",
        "| subject | claim growth |",
        "| --- | --- |",
    ]
    for name in SUBJECTS:
        growth = med(results, name, high, "claim") / med(results, name, low, "claim")
        lines.append(f"| {name} | {growth:.2f}x |")
    held = results["held_back"]
    lines += [
        "",
        "## Claim past held-back commands",
        "",
        f"The same workload on sqlite and the floor at {high:,} finished commands, with one more",
        f"session whose head waits out an hour's retry and {HELD_BACK:,} pending commands queued",
        "behind it (older than every command enqueued by the workload). Claim walks the pending",
        "commands in `seq` order and passes each held-back one with one index probe.",
        "",
        "| subject | claim median (p99) | without them | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("sqlite", "floor"):
        with_them = held[name]["claim"]
        without = med(results, name, high, "claim")
        lines.append(
            f"| {name} | {fmt(with_them['median_us'])} ({fmt(with_them['p99_us'])}) | "
            f"{fmt(without)} | {with_them['median_us'] / without:.2f}x |"
        )
    drain = results["drain"]
    floor_rate = drain["floor"]["throughput"]
    lines += [
        "",
        "## Four consumers draining",
        "",
        f"{drain['sqlite']['commands']:,} ready commands over {DRAIN_SESSIONS} sessions, "
        f"{CONSUMERS} processes each claiming and",
        "completing until nothing is pending (a consumer that finds every remaining head leased by",
        "another waits 1 ms: the idle polls column). The subjects take turns, drain by drain, for",
        f"{DRAIN_ROUNDS} rounds: the table shows the median round, and every round's rate.",
        "Deliveries: claims that handed out a command (most of any round); more than the commands",
        "means the same command went to two consumers.",
        "",
        "| subject | commands/s | / floor | wall | every round | deliveries | idle polls |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, d in drain.items():
        every = ", ".join(f"{rate:,.0f}" for rate in d["rounds"])
        lines.append(
            f"| {name} | {d['throughput']:,.0f} | {d['throughput'] / floor_rate:.2f}x | "
            f"{d['wall_s']:.2f} s | {every} | {d['max_deliveries']:,} of {d['commands']:,} | "
            f"{d['idle_polls']:,} |"
        )
    lines.append("")
    out.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description="ccr-registry inbox benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer operations, smaller drain")
    parser.add_argument("--out", default=None, help="also write the tables as Markdown here")
    parser.add_argument("--drain-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain_worker:
        drain_worker(*args.drain_worker)
        return
    scratch = Path(tempfile.mkdtemp(prefix="ccr-bench-inbox-"))
    try:
        results = run_inbox(scratch, quick=args.quick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.out:
        from run import machine

        command = "python bench/inbox.py" + (" --quick" if args.quick else "")
        write_report(results, Path(args.out), machine=machine(), command=command)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
