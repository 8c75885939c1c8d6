"""The ccr-registry command, run as real subprocesses of the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cli.conftest import SCRIPT, Run
from tests.conftest import LEGACY_SAMPLES


def hook_input(session_id: str, cwd: str = "/home/dev/projects/pigeon") -> str:
    return json.dumps(
        {
            "session_id": session_id,
            "cwd": cwd,
            "transcript_path": "/home/dev/.claude/projects/x.jsonl",
            "hook_event_name": "SessionStart",
        }
    )


def show(run: Run, session_id: str) -> dict[str, Any]:
    done = run("--json", "sessions", "show", session_id)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- hooks


def test_hook_start_registers_the_calling_process(run: Run) -> None:
    done = run("hook", "session-start", stdin=hook_input("s1"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # stdout reaches the model
    session = show(run, "s1")
    me = psutil.Process(os.getpid())
    assert session["ppid"] == os.getpid()  # the hook's parent: this test process
    assert abs(session["start_time"] - me.create_time()) <= 1
    assert session["cwd"] == "/home/dev/projects/pigeon"
    assert session["label"] == "pigeon"
    assert session["state"] == "running"
    assert session["created_at"].endswith("Z")


def test_hook_transport_from_nvim(run: Run) -> None:
    nvim = {"NVIM": "/tmp/nvim.dev/0"}
    assert run("hook", "session-start", stdin=hook_input("n"), extra_env=nvim).returncode == 0
    transport = show(run, "n")["transport"]
    assert transport["kind"] == "nvim"
    assert transport["details"]["nvim_socket"] == "/tmp/nvim.dev/0"


def test_hook_transport_from_tmux_without_a_server(run: Run) -> None:
    tmux = {"TMUX": "/nonexistent/tmux-0/default,4242,0", "TMUX_PANE": "%12"}
    started = time.monotonic()
    done = run("hook", "session-start", stdin=hook_input("t"), extra_env=tmux)
    assert done.returncode == 0 and done.stderr == ""
    assert time.monotonic() - started < 10
    transport = show(run, "t")["transport"]
    assert transport == {"kind": "tmux", "details": {"pane_id": "%12"}}


def test_hook_end_removes_the_session_and_heartbeat_touches(run: Run) -> None:
    run("hook", "session-start", stdin=hook_input("s1"))
    before = show(run, "s1")
    assert run("hook", "heartbeat", "--notify", stdin=hook_input("s1")).returncode == 0
    after = show(run, "s1")
    assert after["last_seen"] >= before["last_seen"]
    assert after["created_at"] == before["created_at"]
    assert run("hook", "session-end", stdin=hook_input("s1")).returncode == 0
    assert run("sessions", "show", "s1").returncode == 1


def test_heartbeat_registers_an_unknown_session(run: Run) -> None:
    assert run("hook", "heartbeat", "--notify", stdin=hook_input("late")).returncode == 0
    assert show(run, "late")["notify"] is True


@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_24_hooks_started_at_once_all_land(env: dict[str, str], run: Run, backend: str) -> None:
    procs = [
        subprocess.Popen(
            [str(SCRIPT), "--backend", backend, "hook", "session-start"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(24)
    ]
    # Each hook waits for the end of its stdin: closing them back to back releases them together.
    for n, proc in enumerate(procs):
        assert proc.stdin is not None
        proc.stdin.write(hook_input(f"burst-{n}"))
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        proc.wait(timeout=60)
        assert proc.stderr is not None
        assert proc.returncode == 0 and proc.stderr.read() == ""
    listed = json.loads(run("--backend", backend, "--json", "sessions", "list").stdout)
    assert sorted(s["session_id"] for s in listed) == sorted(f"burst-{n}" for n in range(24))


@pytest.mark.parametrize(
    "stdin", ["", "not json", "[1, 2]", '{"cwd": "/x"}', '{"session_id": ""}', "\x00\xff"]
)
def test_hook_with_garbage_stdin_warns_once_and_exits_0(run: Run, stdin: str) -> None:
    started = time.monotonic()
    done = run("hook", "session-start", stdin=stdin)
    assert time.monotonic() - started < 10
    assert done.returncode == 0 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "warning" in lines[0], done.stderr


def test_hook_with_an_unusable_data_dir_warns_and_exits_0(run: Run, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = run("--data-dir", str(blocker / "sub"), "hook", "session-start", stdin=hook_input("x"))
    assert done.returncode == 0 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "warning" in done.stderr


def test_hook_on_a_busy_store_gives_up_quickly(run: Run, tmp_path: Path) -> None:
    assert run("hook", "session-start", stdin=hook_input("first")).returncode == 0
    holder = sqlite3.connect(tmp_path / "data" / "ccr.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer that never finishes
    try:
        started = time.monotonic()
        done = run("hook", "session-start", stdin=hook_input("second"))
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert done.returncode == 0 and len(done.stderr.splitlines()) == 1
    assert "busy" in done.stderr
    assert elapsed < 8  # the hook's own 2 s lock timeout, plus start-up


def test_python_dash_m_is_the_same_command(env: dict[str, str], run: Run) -> None:
    run("sessions", "register", "s1")
    done = subprocess.run(
        [sys.executable, "-m", "registry", "--json", "sessions", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 and [s["session_id"] for s in json.loads(done.stdout)] == ["s1"]


# --------------------------------------------------------------------------- operators


def test_operator_session_commands(run: Run) -> None:
    done = run(
        "--json",
        "sessions",
        "register",
        "op",
        "--ppid",
        "42",
        "--cwd",
        "/srv/x",
        "--notify",
        "--transport",
        "tmux",
        "--detail",
        "pane_id=%3",
        "--detail",
        "buffer=7",
    )
    assert done.returncode == 0, done.stderr
    session = json.loads(done.stdout)
    assert session["transport"] == {"kind": "tmux", "details": {"pane_id": "%3", "buffer": 7}}
    assert session["notify"] is True and session["ppid"] == 42
    updated = json.loads(
        run("--json", "sessions", "update", "op", "--label", "x", "--clear", "ppid").stdout
    )
    assert (updated["label"], updated["ppid"]) == ("x", None)
    table = run("sessions", "list", "--active", "--notify").stdout
    assert table.splitlines()[0].split()[:3] == ["SESSION", "STATE", "NOTIFY"]
    assert "op" in table and "/srv/x" in table
    assert run("sessions", "remove", "op").returncode == 0
    assert run("sessions", "remove", "op").returncode == 1


def test_tokens_are_printed_only_by_mint(run: Run) -> None:
    run("sessions", "register", "s1")
    minted = json.loads(run("--json", "tokens", "mint", "s1", "-100", "--ttl", "30m").stdout)
    value = minted["token"]
    assert len(value) == 22 and minted["chat_id"] == -100
    listed = run("tokens", "list", "s1")
    assert value not in listed.stdout and "sha256:" in listed.stdout
    assert value not in run("--json", "tokens", "list", "s1").stdout
    assert value in run("tokens", "list", "s1", "--show-tokens").stdout
    valid = run("--json", "tokens", "validate", "--", value, "-100")
    assert valid.returncode == 0 and json.loads(valid.stdout)["valid"] is True
    assert value not in valid.stdout
    wrong = run("--json", "tokens", "validate", "--", value, "5")
    assert wrong.returncode == 1 and json.loads(wrong.stdout) == {
        "valid": False,
        "reason": "chat mismatch",
    }
    assert run("tokens", "revoke", "--", value).returncode == 0
    assert run("tokens", "revoke", "--", value).returncode == 1
    assert json.loads(run("--json", "tokens", "validate", "--", value, "-100").stdout)[
        "reason"
    ] == ("not found")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("sessions", "remove", "missing"), 1),
        (("sessions", "update", "missing", "--label", "x"), 1),
        (("tokens", "mint", "missing", "1"), 1),
        (("bogus",), 2),
        (("tokens", "mint", "s", "not-a-chat"), 2),
        (("tokens", "mint", "s", "1", "--ttl", "soon"), 2),
        (("sessions", "register", "bad", "--ppid", "0"), 2),
        (("sessions", "update", "x"), 2),
        (("--backend", "postgres", "sessions", "list"), 2),
    ],
)
def test_exit_codes_and_one_line_errors(run: Run, args: tuple[str, ...], code: int) -> None:
    done = run(*args)
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    if code == 1:
        assert len(done.stderr.splitlines()) == 1


def test_store_error_exit_code_3(run: Run, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ccr.db").write_bytes(b"garbage" * 1000)
    done = run("sessions", "list")
    assert done.returncode == 3
    assert len(done.stderr.splitlines()) == 1 and "ccr.db" in done.stderr


def test_cutover_commands(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(LEGACY_SAMPLES / "real", data)
    report = json.loads(run("--json", "migrate").stdout)
    assert (report["sessions_imported"], report["tokens_imported"]) == (4, 3)
    assert run("migrate").returncode == 0  # already imported, sources unchanged: says so
    assert run("verify").returncode == 0
    run(
        "--backend",
        "sqlite",
        "sessions",
        "update",
        "f00dbabe-0000-4000-8000-000000000004",
        "--label",
        "x",
    )
    drift = run("--json", "verify")
    assert drift.returncode == 1
    differences = json.loads(drift.stdout)["differences"]
    assert [(d["key"], d["field"]) for d in differences] == [
        ("f00dbabe-0000-4000-8000-000000000004", "label"),
        ("f00dbabe-0000-4000-8000-000000000004", "updated_at"),
    ]
    assert run("export", "--out", str(data)).returncode == 0
    assert run("verify").returncode == 0


def test_verify_against_another_config(run: Run, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(f'[store]\nbackend = "json"\ndata_dir = "{tmp_path / "other"}"\n')
    for config in ([], ["--config", str(other)]):  # create both stores: verify only reads
        run(*config, "sessions", "register", "gone")
        run(*config, "sessions", "remove", "gone")
    assert run("--json", "verify", "--against", str(other)).returncode == 0
    run("sessions", "register", "only-here")
    done = run("--json", "verify", "--against", str(other))
    assert done.returncode == 1
    assert json.loads(done.stdout)["differences"][0]["key"] == "only-here"


def test_cleanup_doctor_and_config_show(run: Run, tmp_path: Path) -> None:
    run("sessions", "register", "dead", "--ppid", str(2**22 + 7))
    cleaned = json.loads(run("--json", "cleanup", "--dead").stdout)
    assert cleaned == {
        "dead_sessions": ["dead"],
        "expired_sessions": None,
        "expired_tokens": None,
        "inbox_commands": None,
    }
    every = json.loads(run("--json", "cleanup").stdout)
    assert every == {
        "dead_sessions": [],
        "expired_sessions": [],
        "expired_tokens": 0,
        "inbox_commands": [],
    }
    checks = json.loads(run("--json", "doctor").stdout)
    status = {c["check"]: c["status"] for c in checks}
    assert status["schema"] == status["integrity"] == status["data dir"] == "ok"
    assert "filesystem" in status and "json lock" in status
    (tmp_path / "data" / "ccr.db").chmod(0o644)
    modes = {c["check"]: c for c in json.loads(run("--json", "doctor").stdout)}
    assert modes["database mode"]["status"] == "warn"
    shown = json.loads(run("--json", "--backend", "json", "config", "show").stdout)
    assert shown["backend"] == {"value": "json", "source": "--backend"}
    assert shown["data_dir"]["source"] == "$CCR_DATA_DIR"
    assert shown["lock_timeout_s"] == {"value": 10.0, "source": "default"}


def test_config_file_in_the_data_dir_is_used(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ccr-registry.toml").write_text('[store]\nbackend = "json"\nlock_timeout_s = 3\n')
    shown = json.loads(run("--json", "config", "show").stdout)
    assert shown["backend"] == {"value": "json", "source": str(data / "ccr-registry.toml")}
    run("sessions", "register", "s1")
    assert (data / "claude-sessions.json").exists()
    assert not (data / "ccr.db").exists()


def test_a_token_starting_with_a_dash_is_passed_after_double_dash(run: Run, tmp_path: Path) -> None:
    """URL-safe base64 tokens start with "-" one time in 64; "--" ends the options."""
    run("sessions", "register", "s1")
    from registry import open_store

    with open_store({"backend": "sqlite", "data_dir": str(tmp_path / "data")}) as store:
        store.tokens.store_token("-dash-first-token", "s1", 5)
    assert run("tokens", "validate", "-dash-first-token", "5").returncode == 2  # read as an option
    done = run("--json", "tokens", "validate", "--", "-dash-first-token", "5")
    assert done.returncode == 0 and json.loads(done.stdout)["valid"] is True
    assert run("tokens", "revoke", "--", "-dash-first-token").returncode == 0


# --------------------------------------------------------------------------- one spelling


def test_the_choices_are_the_librarys_names(run: Run) -> None:
    """Backends, events, states, transport kinds and clearable fields come from the library."""
    from registry.defaults import BACKEND_NAMES
    from registry.hook import EVENTS
    from registry.models import UPDATABLE_FIELDS
    from registry.validation import STATES, TRANSPORT_KINDS

    def choices(*args: str) -> str:
        done = run(*args, "--help")
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())

    top = choices()
    assert "--backend NAME" in top
    assert all(name in top for name in BACKEND_NAMES)
    hook = choices("hook")
    assert all(event in hook for event in EVENTS)
    update = choices("sessions", "update")
    assert "--state {" + ",".join(STATES) + "}" in update
    assert "--transport {" + ",".join(TRANSPORT_KINDS) + "}" in update
    clearable = [f for f in UPDATABLE_FIELDS if f not in ("notify", "transport", "state")]
    assert "--clear {" + ",".join(clearable) + "}" in update


def test_backend_option_takes_any_name_the_factory_knows(run: Run, tmp_path: Path) -> None:
    """--backend is checked by the factory (postgres and plug-ins have no argparse choice)."""
    data = tmp_path / "d"
    unknown = run("--data-dir", str(data), "--backend", "mongodb", "sessions", "register", "s1")
    assert unknown.returncode == 2
    refused = "store.backend = 'mongodb' is not valid; choose one of: json, sqlite, dual, postgres"
    assert refused in unknown.stderr
    # postgres passes the option and reaches the backend's own check of its settings.
    postgres = run("--data-dir", str(data), "--backend", "postgres", "sessions", "register", "s1")
    assert postgres.returncode == 2
    assert "store.postgres.dsn is required for backend 'postgres'" in postgres.stderr
    assert not data.exists()


def test_an_unknown_backend_in_a_config_file_is_refused_naming_the_file(
    run: Run, tmp_path: Path
) -> None:
    config = tmp_path / "odd.toml"
    config.write_text(f'[store]\nbackend = "mongodb"\ndata_dir = "{tmp_path / "d"}"\n')
    for args in (("sessions", "list"), ("sessions", "register", "s1")):
        done = run("--config", str(config), *args)
        assert done.returncode == 2
        assert f"{config}: store.backend = 'mongodb' is not valid" in done.stderr
        assert "choose one of: json, sqlite, dual" in done.stderr
    # The commands that inspect a config report it too, as a failed check or an error row.
    for args in (("doctor",), ("config", "show")):
        done = run("--config", str(config), "--json", *args)
        assert done.returncode == 1
        assert f"{config}: store.backend = 'mongodb' is not valid" in done.stdout
    assert not (tmp_path / "d").exists()
