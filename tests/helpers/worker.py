"""A store client run as a real process by the concurrency and crash tests.

    python -m tests.helpers.worker MODE CONFIG_JSON WORKER_ID COUNT

It prints ``ready``, waits for a line on stdin (the start barrier), runs MODE and prints one
``ack N`` line after each call has returned, so the parent knows which writes were acknowledged.

The inbox modes print what they did instead: ``inbox-consume`` prints ``claim`` and ``done``
event lines until no command is pending, ``inbox-hold`` prints the command it claimed and then
holds its lease until it is killed. ``janitor-dead`` runs COUNT dead-session passes of a
Janitor with the real liveness probe and prints ``removed ID...`` after each.
"""

from __future__ import annotations

import json
import os
import sys

from registry import Store, open_store
from registry.migrate import stored_report


def ticket(store: Store) -> int:
    """The next number of the store's own counter (session ``ticket``), inside the caller's
    unit: units are serialised, so tickets give the order in which the units committed."""
    counter = store.sessions.get("ticket")
    assert counter is not None and counter.label is not None
    number = int(counter.label) + 1
    store.sessions.update("ticket", label=str(number))
    return number


def consume(store: Store, owner: str, host: str | None = None) -> None:
    """Claim and complete commands until none is pending (of ``host`` when given: the ones
    this store may claim), printing each event with the ticket taken in the same unit as the
    claim or the completion:

        claim COMMAND_ID SEQ ATTEMPTS TICKET PID
        done COMMAND_ID SEQ TICKET PID
    """
    pid = os.getpid()
    while True:
        with store.atomic():
            command = store.inbox.claim(owner)
            number = ticket(store) if command is not None else 0
        if command is None:
            if not any(c.pending for c in store.inbox.list_commands(host=host)):
                return
            os.sched_yield()  # the rest is held back by other consumers' leases
            continue
        print(f"claim {command.command_id} {command.seq} {command.attempts} {number} {pid}")
        with store.atomic():
            store.inbox.complete(command.command_id, owner)
            number = ticket(store)
        print(f"done {command.command_id} {command.seq} {number} {pid}", flush=True)


def main() -> None:
    mode, config, worker, count = (
        sys.argv[1],
        json.loads(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
    )
    if mode == "first-start":
        # The store is opened after the barrier: opening is what this mode races on.
        print("ready", flush=True)
        sys.stdin.readline()
        with open_store(config) as store:
            sessions = store.sessions.list_sessions()
            tokens = sum(len(store.tokens.tokens_for_session(s.session_id)) for s in sessions)
        report = stored_report(config["data_dir"] + "/ccr.db")
        print(f"counts {len(sessions)} {tokens} {report.imported_at if report else None}")
        print("done", flush=True)
        return
    store = open_store(config)
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "register":
        for i in range(count):
            store.sessions.register(f"w{worker}-{i}", ppid=1000 + i, label=worker)
            print(f"ack {i}", flush=True)
    elif mode == "increment":
        for i in range(count):
            with store.atomic():
                session = store.sessions.get("counter")
                assert session is not None and session.label is not None
                store.sessions.update("counter", label=str(int(session.label) + 1))
            print(f"ack {i}", flush=True)
    elif mode == "unit-writer":
        # Runs until killed: each unit adds a session and its token together, then a plain
        # register follows, so kills land inside units, between them, and inside single writes.
        i = 0
        while count == 0 or i < count:
            with store.atomic():
                store.sessions.register(f"u{worker}-{i}", label="x" * (i % 50))
                store.tokens.store_token(f"t{worker}-{i}", f"u{worker}-{i}", 1)
            store.sessions.register(f"p{worker}-{i}")
            print(f"ack {i}", flush=True)
            i += 1
    elif mode == "inbox-consume":
        consume(store, f"w{worker}", config.get("host_id"))
    elif mode == "register-ppid":
        # WORKER is the ppid every session gets.
        for i in range(count):
            store.sessions.register(f"p{worker}-{i}", ppid=int(worker))
            print(f"ack {i}", flush=True)
    elif mode == "janitor-dead":
        from registry.janitor import Janitor

        janitor = Janitor(store)
        for _ in range(count):
            result = janitor.run_dead_pass()
            assert result.error is None, result.error
            print("removed", *result.sessions, flush=True)
    elif mode == "inbox-hold":
        command = store.inbox.claim(f"w{worker}")
        assert command is not None
        print(f"claimed {command.command_id} {command.attempts}", flush=True)
        sys.stdin.readline()  # hold the lease until killed
    elif mode == "hold":
        with store.atomic():
            store.sessions.register(f"holder-{worker}")
            print("holding", flush=True)
            sys.stdin.readline()  # hold the unit open until the parent says so
    else:
        raise SystemExit(f"unknown mode {mode}")
    store.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
