"""A writer killed with SIGKILL at random moments, round after round, on every backend.

After each kill: the store reopens, every write whose call had returned is there, no atomic()
unit is half there, the next writer gets the lock promptly, litter does not accumulate, and a
database passes SQLite's integrity_check. CCR_CRASH_ROUNDS sets the rounds (CI: 30; the soak in
bench/soak.sh runs 200).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry import Store, open_store
from registry.backends.sqlite import SqliteStore
from tests.conftest import FILE_BACKENDS
from tests.helpers.processes import Worker, start_together

ROUNDS = int(os.environ.get("CCR_CRASH_ROUNDS", "30"))
LITTER_MARKS = (".ccr-tmp-", ".import-")


def check_store(store: Store, acked: list[int]) -> None:
    sessions = {s.session_id for s in store.sessions.list_sessions()}
    for i in acked:
        assert f"u0-{i}" in sessions, f"acknowledged unit {i} was lost"
        assert f"p0-{i}" in sessions, f"acknowledged register {i} was lost"
    for sid in (s for s in sessions if s.startswith("u")):
        # All-or-nothing: a unit's session never survives without the token stored with it.
        tokens = [t.token for t in store.tokens.tokens_for_session(sid)]
        assert tokens == ["t" + sid[1:]], f"half of unit {sid} survived"


def check_files(data_dir: Path) -> None:
    if not data_dir.exists():
        return  # a store that keeps no local files (postgres) leaves none behind
    litter = [p.name for p in data_dir.iterdir() if p.name.startswith(LITTER_MARKS)]
    assert litter == [], f"litter left after the next write: {litter}"
    database = data_dir / "ccr.db"
    if database.exists():
        conn = sqlite3.connect(database)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()


def test_writer_killed_at_random_moments(store_config: dict[str, Any], data_dir: Path) -> None:
    config = {**store_config, "lock_timeout_s": 60}
    rng = random.Random(20261127)
    acked_total = 0
    for _round in range(ROUNDS):
        worker = Worker("unit-writer", config, "0", 0)
        start_together([worker])
        for _ in range(rng.randrange(0, 6)):
            if not worker.read_ack():
                break
        time.sleep(rng.uniform(0, 0.01))  # jitter: land the kill at a random point in a write
        worker.kill()
        acked_total += len(worker.acked)
        started = time.monotonic()
        with open_store({**config, "lock_timeout_s": 5}) as store:
            check_store(store, worker.acked)
            # The next writer gets the lock at once: no stale lock survives the killed writer.
            store.sessions.register("after-crash")
            assert time.monotonic() - started < 5
            check_files(data_dir)
            # The next round's writer numbers from 0 again: start it from an empty store.
            for session in store.sessions.list_sessions():
                store.sessions.remove(session.session_id)
    assert acked_total > 0, "no write was acknowledged in any round: the kills came too early"


# --------------------------------------------------------------------------- a three-file unit
#
# The same kill, placed exactly: a forked writer runs one unit that changes the sessions, the
# tokens and the inbox together, and is SIGKILLed just before its Nth call of the functions
# below (json: the os calls that write, rename, delete, open and close files; sqlite: each
# statement, BEGIN and COMMIT included), for N = 1, 2, ... until a writer gets through. After
# each kill every side of the store holds the whole unit or none of it.

KILL_POINTS = ("open", "write", "fsync", "replace", "unlink", "close", "ftruncate")
MAX_POINTS = 400


def sides_of(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The plain stores the data lives in: the backend itself, or each side of a dual store."""
    if config["backend"] != "dual":
        return [config]
    return [
        {"backend": name, "data_dir": config["data_dir"], "migrate_from_json": False}
        for name in (config["dual"]["primary"], config["dual"]["secondary"])
    ]


def seed(config: dict[str, Any]) -> None:
    """What is there before the unit: a session with a token and a ready command."""
    with open_store(config) as store:
        store.sessions.register("base")
        store.tokens.store_token("t-base", "base", 1)
        store.inbox.enqueue("c-base", {"n": 0}, session_id="base")


def three_file_unit(store: Store) -> None:
    with store.atomic():
        store.sessions.register("u", label="unit")
        store.tokens.store_token("t-u", "u", 2)
        store.inbox.enqueue("c-u", {"n": 1}, session_id="u")
        claimed = store.inbox.claim("daemon")
        assert claimed is not None and claimed.command_id == "c-base"


def run_killed_at(config: dict[str, Any], nth: int) -> bool:
    """Run the unit in a forked writer killed before its ``nth`` call; True if it got through."""
    pid = os.fork()
    if pid == 0:  # the writer
        code = 1
        try:
            store = open_store(config)
            calls = 0

            def count() -> None:
                nonlocal calls
                calls += 1
                if calls == nth:
                    os.kill(os.getpid(), signal.SIGKILL)

            def counted(real: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    count()
                    return real(*args, **kwargs)

                return call

            for name in KILL_POINTS:
                setattr(os, name, counted(getattr(os, name)))
            for side in (store, getattr(store, "primary", None), getattr(store, "secondary", None)):
                if isinstance(side, SqliteStore):
                    side._conn().set_trace_callback(lambda _sql: count())
            three_file_unit(store)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return False
    assert os.WEXITSTATUS(status) == 0, f"the writer failed before call {nth}"
    return True


def unit_outcome(config: dict[str, Any]) -> str:
    """Whether one plain store holds "all" of the unit or "none"; anything else fails."""
    with open_store({**config, "lock_timeout_s": 5}) as store:
        sessions = {s.session_id for s in store.sessions.list_sessions()}
        tokens = {t.token for sid in sessions for t in store.tokens.tokens_for_session(sid)}
        commands = {c.command_id: c.state for c in store.inbox.list_commands()}
        whole = (
            sessions == {"base", "u"}
            and tokens == {"t-base", "t-u"}
            and commands == {"c-base": "leased", "c-u": "ready"}
        )
        none = sessions == {"base"} and tokens == {"t-base"} and commands == {"c-base": "ready"}
        assert whole or none, f"half a unit: {sessions}, {tokens}, {commands}"
        store.sessions.register("after-crash")  # the next writer gets the lock
        return "all" if whole else "none"


# The state before the unit is copied as files: the backends that keep files (postgres' kills
# inside and between units: tests/postgres).
@pytest.mark.parametrize("backend_name", FILE_BACKENDS)
def test_a_three_file_unit_killed_at_every_call_is_all_or_nothing(
    store_config: dict[str, Any], tmp_path: Path
) -> None:
    base = tmp_path / "base"
    seed({**store_config, "data_dir": str(base)})
    outcomes: list[tuple[str, ...]] = []
    for nth in range(1, MAX_POINTS):
        data_dir = tmp_path / f"kill-{nth}"
        shutil.copytree(base, data_dir)
        config = {**store_config, "data_dir": str(data_dir), "lock_timeout_s": 5}
        finished = run_killed_at(config, nth)
        outcomes.append(tuple(unit_outcome(side) for side in sides_of(config)))
        check_files(data_dir)  # every side has had its next write: no litter is left
        if finished:
            break
    else:
        raise AssertionError(f"the writer never got through {MAX_POINTS} calls")
    sides = sides_of(store_config)
    assert outcomes[0] == tuple("none" for _ in sides)
    assert outcomes[-1] == tuple("all" for _ in sides)  # the writer that got through
    for i, side in enumerate(sides):
        seen = [outcome[i] for outcome in outcomes]
        # Once a side holds the unit, a later kill never takes it back: the commit point.
        assert seen == sorted(seen, reverse=True), (side["backend"], seen)
        if side["backend"] == "json":
            # Kills after the journal's commit: the next opener finished the unit.
            assert seen.count("all") > 1, seen
