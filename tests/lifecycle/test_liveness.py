"""is_process_alive and cleanup_dead_sessions against real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from registry import Store
from registry.liveness import is_process_alive
from tests.conftest import FakeClock, OpenStore


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def start_of(pid: int) -> int:
    return int(psutil.Process(pid).create_time())


def dead_pid() -> tuple[int, int]:
    """A pid and start time of a process that ran and was reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = start_of(proc.pid)
    proc.wait()
    return proc.pid, started


def test_live_child_with_its_start_time_is_alive(child: subprocess.Popen[bytes]) -> None:
    assert is_process_alive(child.pid)
    assert is_process_alive(child.pid, start_of(child.pid))


def test_same_pid_with_another_start_time_is_not(child: subprocess.Popen[bytes]) -> None:
    # What PID reuse looks like: the pid exists, but it is not the process that was recorded.
    assert not is_process_alive(child.pid, start_of(child.pid) - 100)
    assert not is_process_alive(child.pid, start_of(child.pid) + 100)


def test_killed_unreaped_child_is_not_alive(child: subprocess.Popen[bytes]) -> None:
    started = start_of(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.01)  # waiting for the kernel, not for a timestamp
    assert not is_process_alive(child.pid)
    assert not is_process_alive(child.pid, started)


def test_reaped_process_is_not_alive() -> None:
    pid, started = dead_pid()
    assert not is_process_alive(pid)
    assert not is_process_alive(pid, started)


def test_nonsense_pids_are_not_alive() -> None:
    assert not is_process_alive(0)
    assert not is_process_alive(-5)
    assert not is_process_alive(2**22 + 12345)  # above Linux's pid_max


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc timestamps are Linux's")
def test_legacy_proc_timestamp_is_accepted(
    child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Legacy hooks recorded `stat -c %Y /proc/<pid>`, the time /proc/<pid> was first looked up.

    That can be long after the real start (here the real start is shifted 100 s back, as for a
    process whose /proc entry nobody looked at for a while): the /proc timestamp still matches.
    """
    legacy = int(os.stat(f"/proc/{child.pid}").st_mtime)
    real_create_time = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: real_create_time(self) - 100)
    assert is_process_alive(child.pid, legacy)
    assert not is_process_alive(child.pid, legacy + 100)
    assert not is_process_alive(child.pid, legacy - 50)


def test_other_users_process_counts_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that exists but cannot be inspected is not declared dead."""

    class Denied:
        def __init__(self, pid: int) -> None:
            raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", Denied)
    assert is_process_alive(4242, 123)


def test_cleanup_with_the_default_probe_and_real_children(
    store: Store, child: subprocess.Popen[bytes]
) -> None:
    gone_pid, gone_start = dead_pid()
    store.sessions.register("live", ppid=child.pid, start_time=start_of(child.pid))
    store.sessions.register("dead", ppid=gone_pid, start_time=gone_start)
    store.sessions.register("reused", ppid=child.pid, start_time=start_of(child.pid) - 500)
    store.sessions.register("stopped", ppid=gone_pid, state="stopped")
    store.sessions.register("no-ppid")
    token = store.tokens.mint_token("dead", 1)
    assert store.sessions.cleanup_dead_sessions() == ["dead", "reused"]
    assert {s.session_id for s in store.sessions.list_sessions()} == {"live", "stopped", "no-ppid"}
    assert store.tokens.get_session_by_token(token.token) is None
    assert store.tokens.tokens_for_session("dead") == []


def test_probe_that_reregisters_from_another_process_neither_deadlocks_nor_loses_it(
    open_: OpenStore, store_config: dict[str, Any], clock: FakeClock
) -> None:
    """The probe runs outside every lock: another process can write the store meanwhile."""
    store = open_(lock_timeout_s=5)
    store.sessions.register("racing", ppid=100, start_time=1)
    script = (
        "import json, sys; from registry import open_store; "
        "store = open_store(json.loads(sys.argv[1])); "
        "store.sessions.register('racing', ppid=777, start_time=2); store.close()"
    )

    def probe(pid: int, start_time: int | None) -> bool:
        clock.advance(seconds=1)
        config = {**store_config, "lock_timeout_s": 5}
        subprocess.run([sys.executable, "-c", script, json.dumps(config)], check=True, timeout=60)
        return False

    assert store.sessions.cleanup_dead_sessions(probe) == []
    kept = store.sessions.get("racing")
    assert kept is not None and kept.ppid == 777
