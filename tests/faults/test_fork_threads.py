"""Life cycles of the sqlite backend: fork() while other threads are busy, short-lived threads,
the descriptor limit. Each case runs in its own interpreter (a real fork, real threads, a real
rlimit), with timeouts, so that a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from registry import open_store
from registry.backends.sqlite import SqliteStore
from tests.conftest import FakeClock

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=timeout,
    )


FORK_SCRIPT = r"""
import os, sys, threading, time
from registry import open_store

data_dir, rounds = sys.argv[1], int(sys.argv[2])
store = open_store({"backend": "sqlite", "data_dir": data_dir, "lock_timeout_s": 5})
store.sessions.register("seed")
stop = threading.Event()

def busy(n):
    # Units, single writes and reads, without pause: at any moment some thread of this
    # process holds the write lock, a read snapshot or SQLite's own mutexes.
    i = 0
    while not stop.is_set():
        with store.atomic():
            store.sessions.register(f"t{n}-{i % 20}", ppid=1000 + n)
            store.sessions.get("seed")
        store.sessions.touch("seed")
        store.sessions.list_sessions()
        i += 1

threads = [threading.Thread(target=busy, args=(n,), daemon=True) for n in range(3)]
for thread in threads:
    thread.start()
problems = []
for r in range(rounds):
    pid = os.fork()
    if pid == 0:
        # The child writes through the store object it inherited, at once, closes it and
        # leaves through the interpreter's normal exit (finalisers and all).
        code = 3
        try:
            started = time.monotonic()
            store.sessions.register(f"child-{r}")
            found = store.sessions.get(f"child-{r}") is not None
            store.close()
            code = 0 if found and time.monotonic() - started < 4 else 2
        except BaseException as exc:
            print(f"child {r}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(code)
    deadline = time.monotonic() + 15
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                problems.append(f"round {r}: child exited {os.waitstatus_to_exitcode(status)}")
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            problems.append(f"round {r}: child hung")
            break
        time.sleep(0.005)
stop.set()
for thread in threads:
    thread.join()
missing = [r for r in range(rounds) if store.sessions.get(f"child-{r}") is None]
store.close()
print("problems", problems)
print("missing", missing)
"""


def test_children_forked_while_threads_are_busy_write_at_once_and_exit(tmp_path: Path) -> None:
    done = run_script(FORK_SCRIPT, str(tmp_path / "data"), "50")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["problems []", "missing []"], done.stderr


def test_a_unit_begun_before_fork_cannot_go_on_in_the_child(tmp_path: Path) -> None:
    """The child leaves the parent's unit with an error; the parent's connection is untouched."""
    script = r"""
import os, sys
from registry import open_store, RegistryError
store = open_store({"backend": "sqlite", "data_dir": sys.argv[1], "lock_timeout_s": 5})
parent = os.getpid()
try:
    with store.atomic():
        store.sessions.register("parent-unit")
        pid = os.fork()
        if pid != 0:
            _, status = os.waitpid(pid, 0)
except RegistryError as exc:
    if os.getpid() == parent:
        raise
    os._exit(0 if "begun before fork()" in str(exc) else 4)
if os.getpid() != parent:
    os._exit(5)  # the child committed the parent's transaction on the parent's connection
print("child", os.waitstatus_to_exitcode(status))
store.sessions.register("after")
print(sorted(s.session_id for s in store.sessions.list_sessions()))
"""
    done = run_script(script, str(tmp_path / "data"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child 0", "['after', 'parent-unit']"], done.stderr


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_threads_connection_is_closed_when_the_thread_ends(
    tmp_path: Path, clock: FakeClock
) -> None:
    with open_store({"backend": "sqlite", "data_dir": str(tmp_path)}, clock=clock) as store:
        store.sessions.register("s1")
        before = open_fds()
        for _ in range(50):
            threads = [threading.Thread(target=store.sessions.get, args=("s1",)) for _ in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        # 500 threads used to leave two descriptors each (the database and its -wal): about
        # 1,000. A thread's connection is closed as its thread state is torn down, which can
        # finish just after join() returns, so the last batch of 10 may still hold theirs.
        assert open_fds() - before <= 2 * 10
        assert store.sessions.get("s1") is not None


def test_the_descriptor_limit_gives_a_registry_error(tmp_path: Path) -> None:
    script = r"""
import os, resource, sys, threading
from registry import open_store, RegistryError
store = open_store({"backend": "sqlite", "data_dir": sys.argv[1]})
store.sessions.register("s1")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
outcome = []

def call(name, action):
    try:
        action()
    except RegistryError as exc:
        outcome.append(f"{name} RegistryError {'open' in str(exc)}")
    except BaseException as exc:
        outcome.append(f"{name} {type(exc).__module__}.{type(exc).__name__}")
    else:
        outcome.append(f"{name} ok")

for name, action in (
    ("write", lambda: store.sessions.register("s2")),
    ("read", lambda: store.sessions.get("s1")),
):
    thread = threading.Thread(target=call, args=(name, action))  # a new thread: a new connection
    thread.start()
    thread.join()
for fd in held:
    os.close(fd)
print(outcome)
"""
    done = run_script(script, str(tmp_path / "data"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['write RegistryError True', 'read RegistryError True']"


def test_close_releases_every_threads_connection(tmp_path: Path, clock: FakeClock) -> None:
    store = open_store({"backend": "sqlite", "data_dir": str(tmp_path)}, clock=clock)
    assert isinstance(store, SqliteStore)
    before = open_fds()
    release = threading.Event()
    started = threading.Barrier(6)

    def hold() -> None:  # threads that stay alive until after close()
        store.sessions.get("x")
        started.wait()
        release.wait()

    threads = [threading.Thread(target=hold) for _ in range(5)]
    for thread in threads:
        thread.start()
    started.wait()
    assert open_fds() - before >= 5
    store.close()
    assert open_fds() <= before
    release.set()
    for thread in threads:
        thread.join()
