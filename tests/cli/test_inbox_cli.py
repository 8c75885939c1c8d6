"""``ccr-registry inbox ...`` and ``cleanup --inbox`` through the real console script (SPEC 8).

A command in ``--json`` is the model's fields with ISO-8601 timestamps; time cannot be injected
into a subprocess, so an old command is made through the library with a fake clock on the same
data directory before the command line runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from registry import Store, open_store
from registry.models import Command
from tests.cli.conftest import SCRIPT, Run
from tests.conftest import FakeClock

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIELDS = [field.name for field in attrs.fields(Command)]


def ok(run: Run, *args: str) -> Any:
    """The parsed ``--json`` output of a command that must succeed."""
    done = run("--json", *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


def library(tmp_path: Path, clock: FakeClock | None = None) -> Store:
    """The store the command line uses (sqlite in ``$CCR_DATA_DIR``), opened in this process."""
    return open_store({"backend": "sqlite", "data_dir": str(tmp_path / "data")}, clock=clock)


def finish(store: Store, command_id: str, *, session_id: str | None = None) -> None:
    """Enqueue ``command_id`` and take it through claim to done."""
    store.inbox.enqueue(command_id, {"text": command_id}, session_id=session_id)
    claimed = store.inbox.claim("worker")
    assert claimed is not None and claimed.command_id == command_id
    store.inbox.complete(command_id, "worker")


# --------------------------------------------------------------------------- enqueue


@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_enqueue_new_then_known_id(run: Run, backend: str) -> None:
    b = ("--backend", backend)
    run(*b, "sessions", "register", "s1")
    payload = {"text": "ls -l", "keys": ["Enter"], "meta": {"n": 1, "ok": True, "none": None}}
    new = ok(run, *b, "inbox", "enqueue", "c1", "--session", "s1", "--payload", json.dumps(payload))
    assert new["created"] is True
    command = new["command"]
    assert list(command) == FIELDS
    assert command["payload"] == payload
    assert (command["command_id"], command["session_id"], command["seq"]) == ("c1", "s1", 1)
    assert (command["state"], command["attempts"], command["chat_id"]) == ("ready", 0, None)
    assert (command["lease_owner"], command["lease_until"], command["last_error"]) == (None,) * 3
    for key in ("available_at", "created_at", "updated_at"):
        assert ISO_Z.match(command[key]), command[key]
    assert command["available_at"] == command["created_at"]
    # A known id writes nothing, whatever payload and session it comes with: exit 0, not created.
    again = ok(run, *b, "inbox", "enqueue", "c1", "--session", "nope", "--payload", '{"x": 2}')
    assert again == {"created": False, "command": command}
    human = run(*b, "inbox", "enqueue", "c1", "--session", "s1", "--payload", "{}")
    assert human.returncode == 0
    assert human.stdout.startswith("c1 was already there: nothing written")
    assert re.search(r"^payload +\{\"text\":\"ls -l\",", human.stdout, re.MULTILINE)
    second = run(*b, "inbox", "enqueue", "c2", "--session", "s1", "--payload", "{}")
    assert second.returncode == 0 and second.stdout.startswith("enqueued c2\n")
    assert [c["command_id"] for c in ok(run, *b, "inbox", "list")] == ["c1", "c2"]


def test_enqueue_with_a_chat_and_a_delay(run: Run) -> None:
    run("sessions", "register", "s1")
    for command_id, delay, seconds in (("c1", "90", 90), ("c2", "5m", 300), ("c3", "0", 0)):
        args = ("--payload", "{}", "--chat-id", "-100", "--delay", delay)
        command = ok(run, "inbox", "enqueue", command_id, "--session", "s1", *args)["command"]
        available = datetime.fromisoformat(command["available_at"])
        created = datetime.fromisoformat(command["created_at"])
        assert available - created == timedelta(seconds=seconds)
        assert command["chat_id"] == -100
    for bad in ("-1", "soon", "nan"):
        done = run("inbox", "enqueue", "c9", "--session", "s1", "--payload", "{}", "--delay", bad)
        assert done.returncode == 2 and "--delay" in done.stderr
    assert run("inbox", "show", "c9").returncode == 1


def test_enqueue_for_an_unknown_session_is_not_found_and_writes_nothing(run: Run) -> None:
    run("sessions", "register", "s1")
    done = run("inbox", "enqueue", "c1", "--session", "nope", "--payload", "{}")
    assert done.returncode == 1  # as every SessionNotFound of the command line
    assert done.stdout == ""
    assert done.stderr == "ccr-registry: error: no session 'nope'\n"
    as_json = run("--json", "inbox", "enqueue", "c1", "--session", "nope", "--payload", "{}")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {"error": "no session 'nope'", "code": 1}
    assert ok(run, "inbox", "list") == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("[1, 2]", 'must be a JSON object such as \'{"text": "ls"}\', got an array'),
        ('"ls"', "got a string"),
        ("3", "got a number"),
        ("null", "got null"),
        ("ls -l", "not JSON"),
        ('{"text": "ls"', "not JSON"),
        ('{"n": NaN}', "NaN is not JSON"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_a_payload_that_is_not_a_json_object_is_a_usage_error(
    run: Run, tmp_path: Path, payload: str, message: str
) -> None:
    done = run("inbox", "enqueue", "c1", "--session", "s1", "--payload", payload)
    assert done.returncode == 2
    assert done.stdout == ""
    last = done.stderr.splitlines()[-1]
    assert last.startswith("ccr-registry inbox enqueue: error: argument --payload: ")
    assert message in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_a_payload_the_library_refuses_is_a_usage_error(run: Run) -> None:
    run("sessions", "register", "s1")
    big = json.dumps({"text": "x" * 70_000})  # over the 64 KiB limit of a payload
    done = run("inbox", "enqueue", "c1", "--session", "s1", "--payload", big)
    assert done.returncode == 2
    assert "payload" in done.stderr and len(done.stderr.splitlines()) == 1
    missing = run("inbox", "enqueue", "c1", "--session", "s1")
    assert missing.returncode == 2 and "--payload" in missing.stderr
    surrogate = run("inbox", "enqueue", "c1", "--session", "s1", "--payload", '{"t": "\\ud800"}')
    assert surrogate.returncode == 2 and "payload" in surrogate.stderr
    long_id = run("inbox", "enqueue", "c" * 300, "--session", "s1", "--payload", "{}")
    assert long_id.returncode == 2 and "command_id" in long_id.stderr
    assert ok(run, "inbox", "list") == []


# --------------------------------------------------------------------------- list and show


def test_list_filters_by_state_and_session(run: Run) -> None:
    run("sessions", "register", "s1")
    run("sessions", "register", "s2")
    for command_id, session in (("a", "s1"), ("b", "s2"), ("c", "s1")):
        run("inbox", "enqueue", command_id, "--session", session, "--payload", "{}")
    run("sessions", "remove", "s2")  # its pending command becomes dead, and stays listed

    def ids(*filters: str) -> list[str]:
        return [c["command_id"] for c in ok(run, "inbox", "list", *filters)]

    assert ids() == ["a", "b", "c"]
    assert ids("--state", "ready") == ["a", "c"]
    assert ids("--state", "dead") == ["b"]
    assert ids("--session", "s1") == ["a", "c"]
    assert ids("--session", "s2") == ["b"]
    assert ids("--session", "s2", "--state", "ready") == []
    assert ids("--state", "done") == []
    (dead,) = ok(run, "inbox", "list", "--state", "dead")
    assert (dead["state"], dead["last_error"]) == ("dead", "session removed")
    table = run("inbox", "list").stdout.splitlines()
    assert table[0].split() == [
        *("SEQ", "COMMAND", "SESSION", "STATE", "ATTEMPTS"),
        *("AVAILABLE", "(UTC)", "UPDATED", "(UTC)", "LAST", "ERROR"),
    ]
    assert table[2].split()[:5] == ["2", "b", "s2", "dead", "0"]
    assert table[2].endswith("session removed")
    assert run("inbox", "list", "--state", "done").stdout == "no commands\n"
    typo = run("inbox", "list", "--state", "redy")
    assert typo.returncode == 2 and "did you mean 'ready'?" in typo.stderr


def test_show_is_the_object_list_gives_and_an_unknown_id_is_not_found(run: Run) -> None:
    run("sessions", "register", "s1")
    payload = '{"text": "echo \\u001b]0;title\\u0007"}'
    run("inbox", "enqueue", "c1", "--session", "s1", "--payload", payload, "--chat-id", "7")
    (listed,) = ok(run, "inbox", "list")
    assert ok(run, "inbox", "show", "c1") == listed
    human = run("inbox", "show", "c1").stdout
    assert "\x1b" not in human and "\x07" not in human  # the terminal is not retitled
    assert re.search(r"^chat_id +7$", human, re.MULTILINE)
    missing = run("inbox", "show", "nope")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "ccr-registry: error: no command 'nope'\n"
    as_json = run("--json", "inbox", "show", "nope")
    assert json.loads(as_json.stdout) == {"error": "no command 'nope'", "code": 1}


@pytest.mark.parametrize("args", [("inbox", "list"), ("inbox", "show", "c1")])
def test_reading_commands_never_create_a_store(
    run: Run, tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = run(*args)
    assert done.returncode == 3 and "nothing to read" in done.stderr
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- requeue


def test_requeue_makes_a_dead_command_ready_and_leaves_a_ready_one(
    run: Run, tmp_path: Path
) -> None:
    run("sessions", "register", "s1")
    run("inbox", "enqueue", "c1", "--session", "s1", "--payload", "{}")
    with library(tmp_path) as store:
        assert store.inbox.claim("worker") is not None
        store.inbox.fail("c1", "worker", "no such pane", final=True)
    dead = ok(run, "inbox", "show", "c1")
    assert (dead["state"], dead["attempts"], dead["last_error"]) == ("dead", 1, "no such pane")
    requeued = ok(run, "inbox", "requeue", "c1")
    assert requeued["requeued"] is True
    command = requeued["command"]
    assert (command["state"], command["attempts"]) == ("ready", 0)
    assert command["last_error"] == "no such pane"  # kept
    assert command["available_at"] == command["updated_at"]
    assert ok(run, "inbox", "show", "c1") == command
    again = ok(run, "inbox", "requeue", "c1")
    assert again == {"requeued": False, "command": command}
    human = run("inbox", "requeue", "c1")
    assert human.returncode == 0 and human.stdout.startswith("c1 is ready: unchanged")
    missing = run("inbox", "requeue", "nope")
    assert missing.returncode == 1 and missing.stderr == "ccr-registry: error: no command 'nope'\n"


def test_requeue_in_words(run: Run) -> None:
    run("sessions", "register", "s1")
    run("inbox", "enqueue", "c1", "--session", "s1", "--payload", "{}")
    run("sessions", "remove", "s1")
    done = run("inbox", "requeue", "c1")
    assert done.returncode == 0
    assert done.stdout.startswith("requeued c1: ready, attempts 0\n")
    assert re.search(r"^last_error +session removed$", done.stdout, re.MULTILINE)


# --------------------------------------------------------------------------- cleanup


def test_cleanup_inbox_removes_commands_finished_longer_than_the_retention(
    run: Run, tmp_path: Path
) -> None:
    # The old ones two days ago (the default retention is 24 h), through a fake clock.
    old = FakeClock(datetime.now(UTC) - timedelta(days=2))
    with library(tmp_path, old) as store:
        store.sessions.register("s1")
        finish(store, "old-done", session_id="s1")
        # Pending: never cleaned up. It waits out a delay in a group of its own (its session's),
        # so that it holds back none of the claims below.
        store.sessions.register("s-wait")
        store.inbox.enqueue(
            "old-ready", {"text": "waits"}, session_id="s-wait", delay=timedelta(days=30)
        )
    with library(tmp_path) as store:
        finish(store, "recent-done", session_id="s1")
    cleaned = ok(run, "cleanup", "--inbox")
    assert cleaned == {
        "dead_sessions": None,
        "expired_sessions": None,
        "expired_tokens": None,
        "inbox_commands": ["old-done"],
    }
    assert [c["command_id"] for c in ok(run, "inbox", "list")] == ["old-ready", "recent-done"]
    assert ok(run, "cleanup", "--inbox")["inbox_commands"] == []
    with library(tmp_path, old) as store:
        finish(store, "old-again")
    human = run("cleanup", "--inbox")
    assert (human.returncode, human.stdout) == (0, "inbox commands: 1: old-again\n")


def test_plain_cleanup_runs_the_inbox_cleanup_too(run: Run, tmp_path: Path) -> None:
    old = FakeClock(datetime.now(UTC) - timedelta(days=2))
    with library(tmp_path, old) as store:
        finish(store, "old-done")
    everything = ok(run, "cleanup")
    assert everything["inbox_commands"] == ["old-done"]
    assert everything["dead_sessions"] == [] and everything["expired_tokens"] == 0
    assert ok(run, "cleanup", "--dead")["inbox_commands"] is None
    helped = run("cleanup", "--help")
    assert helped.returncode == 0
    assert "Without a flag, every cleanup runs" in " ".join(helped.stdout.split())
    assert "--inbox" in helped.stdout


# --------------------------------------------------------------------------- config show


def test_config_show_lists_the_inbox_keys_with_their_source(run: Run, tmp_path: Path) -> None:
    shown = ok(run, "config", "show")
    assert shown["inbox_lease_s"] == {"value": 60.0, "source": "default"}
    assert shown["inbox_max_attempts"] == {"value": 10, "source": "default"}
    assert shown["inbox_retention_hours"] == {"value": 24.0, "source": "default"}
    assert shown["legacy_inbox_dir"] == {
        "value": str(tmp_path / "data"),
        "source": "default ($CCR_DATA_DIR)",
    }
    folder = tmp_path / "conf"
    folder.mkdir()
    file = folder / "ccr-registry.toml"
    file.write_text(
        "[store]\n"
        "inbox_lease_s = 5\n"
        "inbox_max_attempts = 3\n"
        "inbox_retention_hours = 0.5\n"
        'legacy_inbox_dir = "legacy"\n'
    )
    shown = ok(run, "--config", str(file), "config", "show")
    assert shown["inbox_lease_s"] == {"value": 5.0, "source": str(file)}
    assert shown["inbox_max_attempts"] == {"value": 3, "source": str(file)}
    assert shown["inbox_retention_hours"] == {"value": 0.5, "source": str(file)}
    assert shown["legacy_inbox_dir"] == {"value": str(folder / "legacy"), "source": str(file)}
    file.write_text("[store]\ninbox_max_attempts = 0\n")
    broken = run("--json", "--config", str(file), "config", "show")
    assert broken.returncode == 1
    assert "store.inbox_max_attempts" in json.loads(broken.stdout)["error"]["value"]


# --------------------------------------------------------------------------- pipes


def test_inbox_list_into_head_ends_quietly(env: dict[str, str], tmp_path: Path) -> None:
    with library(tmp_path) as store, store.atomic():
        for n in range(2000):  # more than a pipe buffer of output
            store.inbox.enqueue(f"command-{n:05d}", {"text": "x" * 40})
    cli = shlex.quote(str(SCRIPT))
    done = subprocess.run(
        ["sh", "-c", f"{cli} inbox list | head -1; {cli} --json inbox list | head -1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.stdout.splitlines() == [done.stdout.splitlines()[0], "["]
    assert done.stdout.startswith("SEQ")
    assert done.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ("inbox", "list"),
        ("--json", "inbox", "list"),
        ("inbox", "show", "c1"),
        ("inbox", "enqueue", "c2", "--session", "s1", "--payload", "{}"),
        ("inbox", "requeue", "c1"),
        ("inbox", "show", "missing"),
        ("cleanup", "--inbox"),
    ],
)
def test_every_inbox_command_ends_quietly_when_the_reader_is_gone(
    env: dict[str, str], run: Run, args: tuple[str, ...]
) -> None:
    run("sessions", "register", "s1")
    run("inbox", "enqueue", "c1", "--session", "s1", "--payload", "{}")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails
    try:
        done = subprocess.run(
            [str(SCRIPT), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.returncode in (0, 1)
