"""A rollback export gives live agents the start time the legacy dead-session check expects.

The legacy daemon removes a running session whose ``start_time`` is not within 2 s of the
timestamp of ``/proc/<pid>``. That timestamp is set when the kernel first instantiates the entry,
which can be long after the process started; the test injects such a late timestamp instead of
waiting for one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from registry import liveness, open_store
from registry.migrate import diff_stores, export_json

LATE_S = 100  # the /proc entry was first looked at this long after the agent started


@pytest.fixture
def agent() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for a coding agent; it ends when its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def legacy_is_alive(pid: int, start_time: int) -> bool:
    """The legacy daemon's rule: the process exists and its /proc timestamp is within 2 s."""
    stamp = liveness.proc_timestamp(pid)
    return psutil.pid_exists(pid) and stamp is not None and abs(stamp - start_time) <= 2


def test_export_gives_a_live_agent_the_legacy_start_time(
    tmp_path: Path, agent: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    started = int(psutil.Process(agent.pid).create_time())
    real_proc_timestamp = liveness.proc_timestamp
    monkeypatch.setattr(
        liveness,
        "proc_timestamp",
        lambda pid: started + LATE_S if pid == agent.pid else real_proc_timestamp(pid),
    )
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone_pid = int(gone.stdout)
    config = {"backend": "sqlite", "data_dir": str(tmp_path / "data")}
    with open_store(config) as store:
        store.sessions.register("live", ppid=agent.pid, start_time=started)
        store.sessions.register("gone", ppid=gone_pid, start_time=started)
        store.sessions.register("stopped", ppid=agent.pid, start_time=started, state="stopped")
    assert not legacy_is_alive(agent.pid, started)  # what the legacy daemon would remove

    out = tmp_path / "legacy"
    export_json(tmp_path / "data" / "ccr.db", out)

    exported = json.loads((out / "claude-sessions.json").read_text())
    assert exported["live"]["start_time"] == started + LATE_S
    assert legacy_is_alive(agent.pid, exported["live"]["start_time"])
    assert liveness.is_process_alive(agent.pid, exported["live"]["start_time"])
    # A dead agent and a stopped session keep what was recorded.
    assert exported["gone"]["start_time"] == exported["stopped"]["start_time"] == started
    # The database took the same value, so the two sides of a rollback agree.
    with open_store(config) as sq, open_store({"backend": "json", "data_dir": str(out)}) as js:
        assert diff_stores(sq, js) == []
