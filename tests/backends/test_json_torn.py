"""The legacy daemon rewrites its JSON files in place without this project's lock: a read may
catch a file half-written. Such a read waits for the writer; a really damaged file is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry import StoreCorrupted, open_store
from registry.backends import json_file
from tests.conftest import FakeClock

RECORD = {"session_id": "", "cwd": "/home/dev/" + "p" * 40, "created_at": 1770600000000}


def legacy_sessions(count: int) -> bytes:
    records = {f"legacy-{n}": {**RECORD, "session_id": f"legacy-{n}"} for n in range(count)}
    return json.dumps(records, indent=2).encode()


def test_a_read_that_catches_a_half_written_file_waits_for_the_writer(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = legacy_sessions(20)
    path = tmp_path / json_file.SESSIONS_FILE
    path.write_bytes(whole[: len(whole) // 2])  # the writer has truncated and written half
    sleeps: list[float] = []

    def writer_finishes(seconds: float) -> None:  # the reader's first pause lets it finish
        sleeps.append(seconds)
        path.write_bytes(whole)

    monkeypatch.setattr(json_file.time, "sleep", writer_finishes)
    with open_store({"backend": "json", "data_dir": str(tmp_path)}, clock=clock) as store:
        listed = store.sessions.list_sessions()
        store.sessions.register("ours")
    assert len(listed) == 20 and sleeps
    assert set(json.loads(path.read_bytes())) == {f"legacy-{n}" for n in range(20)} | {"ours"}


def test_a_damaged_file_that_stops_changing_is_refused_untouched(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / json_file.SESSIONS_FILE
    damaged = legacy_sessions(5)[:-7]
    path.write_bytes(damaged)
    monkeypatch.setattr(json_file.time, "sleep", lambda _seconds: None)
    with pytest.raises(StoreCorrupted, match="cannot be read"):
        open_store({"backend": "json", "data_dir": str(tmp_path)}, clock=clock)
    assert path.read_bytes() == damaged


WRITER = textwrap.dedent(
    """
    import os, sys, time
    path, rounds = sys.argv[1], int(sys.argv[2])
    whole = open(path, "rb").read()
    half = len(whole) // 2
    print("ready", flush=True)
    for _ in range(rounds):
        # An in-place writer (truncate, then write) leaves half a file between its two steps;
        # the legacy daemon rewrites its files a few times a second at most.
        with open(path, "r+b") as handle:
            handle.truncate(0)
            handle.write(whole[:half])
            handle.flush()
            time.sleep(0.003)
            handle.write(whole[half:])
        time.sleep(0.01)
    """
)


def test_reads_beside_a_real_in_place_writer_never_fail(tmp_path: Path) -> None:
    path = tmp_path / json_file.SESSIONS_FILE
    path.write_bytes(legacy_sessions(200))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "150"], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    failures = []
    reads = 0
    with open_store({"backend": "json", "data_dir": str(tmp_path)}) as store:
        while writer.poll() is None:
            try:
                assert len(store.sessions.list_sessions()) == 200
            except StoreCorrupted as exc:
                failures.append(str(exc))
            reads += 1
    assert writer.wait(timeout=60) == 0
    assert reads > 10 and failures == []
