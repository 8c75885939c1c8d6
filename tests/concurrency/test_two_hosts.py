"""Two machines on one store (SPEC 4, 5), as real processes with different ``host_id``s.

A janitor of host A, probing with the real liveness check, removes A's dead sessions and never
B's, even while B registers more and although B's ppids are dead on this machine too. Four
consumers, two per host, deliver every command exactly once, each by a consumer of the
command's own host. Workers: tests/helpers/worker.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry import open_store
from registry.liveness import is_process_alive
from tests.conftest import USES_POSTGRES, backend_config, drop_schema, require_postgres
from tests.helpers.processes import Worker, start_together

HOST_A = "host-a"
HOST_B = "host-b"
SESSIONS = {HOST_A: ["a0", "a1", "a2"], HOST_B: ["b0", "b1", "b2"]}
PER_SESSION = 6
FREE = 4  # session-less commands per host


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    name = str(request.param)
    if name in USES_POSTGRES:
        require_postgres()
    config = {**backend_config(name, tmp_path / "data"), "lock_timeout_s": 60}
    yield config
    if "postgres" in config:
        drop_schema(config["postgres"]["schema"])


def on(config: dict[str, Any], host: str) -> dict[str, Any]:
    return {**config, "host_id": host}


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: dead on this machine."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    assert not is_process_alive(child.pid, None)
    return child.pid


def test_a_janitor_of_host_a_never_removes_host_bs_sessions(config: dict[str, Any]) -> None:
    gone = dead_pid()
    with open_store(on(config, HOST_A)) as a, open_store(on(config, HOST_B)) as b:
        for i in range(5):
            a.sessions.register(f"a-dead-{i}", ppid=gone)
            b.sessions.register(f"b-dead-{i}", ppid=gone)
        a.sessions.register("a-alive", ppid=1)  # pid 1 is always alive
    janitor = Worker("janitor-dead", on(config, HOST_A), "0", 20)
    # Host B keeps registering sessions whose ppid is dead here too, while the janitor runs.
    registrar = Worker("register-ppid", on(config, HOST_B), str(gone), 40)
    start_together([janitor, registrar])
    registrar.finish()
    out, err = janitor.proc.communicate(timeout=120)
    assert janitor.proc.returncode == 0, err
    removed = [sid for line in out.splitlines() if line.startswith("removed") for sid in
               line.split()[1:]]  # fmt: skip
    assert sorted(removed) == [f"a-dead-{i}" for i in range(5)]  # each once, only A's
    with open_store(on(config, HOST_B)) as b:
        left = {s.session_id: s.host for s in b.sessions.list_sessions()}
        # Host B's own janitor is the one that may remove them.
        assert sorted(b.sessions.cleanup_dead_sessions()) == sorted(
            [f"b-dead-{i}" for i in range(5)] + [f"p{gone}-{i}" for i in range(40)]
        )
    assert left == {
        "a-alive": HOST_A,
        **{f"b-dead-{i}": HOST_B for i in range(5)},
        **{f"p{gone}-{i}": HOST_B for i in range(40)},
    }


def _enqueue_all(config: dict[str, Any]) -> dict[str, str]:
    """Commands of every session of both hosts and session-less ones of each, interleaved in
    seq order; returns each command's host."""
    hosts: dict[str, str] = {}
    with open_store(on(config, HOST_A)) as a, open_store(on(config, HOST_B)) as b:
        stores = {HOST_A: a, HOST_B: b}
        a.sessions.register("ticket", label="0")
        for host, ids in SESSIONS.items():
            for sid in ids:
                stores[host].sessions.register(sid)
        for i in range(PER_SESSION):
            for host, ids in SESSIONS.items():
                for sid in ids:
                    # Enqueued through the other host's store: the session decides the host.
                    other = stores[HOST_B if host == HOST_A else HOST_A]
                    command, created = other.inbox.enqueue(f"{sid}-{i}", {"n": i}, session_id=sid)
                    assert created and command.host == host
                    hosts[command.command_id] = host
        for i in range(FREE):
            for host, store in stores.items():
                command, created = store.inbox.enqueue(f"free-{host}-{i}", {"n": i})
                assert created and command.host == host
                hosts[command.command_id] = host
    return hosts


def test_consumers_on_two_hosts_deliver_each_command_once_on_its_host(
    config: dict[str, Any],
) -> None:
    hosts = _enqueue_all(config)
    consumers = {"0": HOST_A, "1": HOST_A, "2": HOST_B, "3": HOST_B}
    workers = {n: Worker("inbox-consume", on(config, host), n, 0) for n, host in consumers.items()}
    start_together(list(workers.values()))
    claimed: list[tuple[str, str]] = []  # command id, consumer
    done: list[tuple[str, str]] = []
    for n, worker in workers.items():
        out, err = worker.proc.communicate(timeout=180)
        assert worker.proc.returncode == 0, err
        for line in out.splitlines():
            kind, *fields = line.split()
            if kind == "claim":
                claimed.append((fields[0], n))
            elif kind == "done" and fields:
                done.append((fields[0], n))
    assert sorted(cid for cid, _ in claimed) == sorted(hosts)  # each command claimed once
    assert sorted(done) == sorted(claimed)  # and completed once, by the consumer that claimed it
    assert {cid: consumers[n] for cid, n in claimed} == hosts  # always on its own host
    with open_store(on(config, HOST_A)) as a:
        assert {c.state for c in a.inbox.list_commands()} == {"done"}
        counter = a.sessions.get("ticket")
        assert counter is not None and counter.label == str(2 * len(hosts))
