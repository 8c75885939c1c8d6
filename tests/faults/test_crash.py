"""A writer killed with SIGKILL at random moments, round after round, on every backend.

After each kill: the store reopens, every write whose call had returned is there, no atomic()
unit is half there, the next writer gets the lock promptly, litter does not accumulate, and a
database passes SQLite's integrity_check. CCR_CRASH_ROUNDS sets the rounds (CI: 30; the soak in
bench/soak.sh runs 200).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from registry import Store, open_store
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
