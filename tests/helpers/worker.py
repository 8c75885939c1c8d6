"""A store client run as a real process by the concurrency and crash tests.

    python -m tests.helpers.worker MODE CONFIG_JSON WORKER_ID COUNT

It prints ``ready``, waits for a line on stdin (the start barrier), runs MODE and prints one
``ack N`` line after each call has returned, so the parent knows which writes were acknowledged.
"""

from __future__ import annotations

import json
import sys

from registry import open_store
from registry.migrate import stored_report


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
