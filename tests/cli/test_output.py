"""The operator commands as people use them: pipes, typos, broken files, one JSON shape.

Every test runs the real console script in a subprocess, through a real shell where the
behaviour depends on one (command substitution, `| head`).
"""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from registry import open_store
from registry.cli import build_parser
from tests.cli.conftest import SCRIPT, Run
from tests.conftest import EPOCH_START, FakeClock

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def sh(env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )


def cli() -> str:
    return shlex.quote(str(SCRIPT))


def store(tmp_path: Path, backend: str = "sqlite", **config: object) -> object:
    return open_store({"backend": backend, "data_dir": str(tmp_path / "data"), **config})


# --------------------------------------------------------------------------- tokens mint


def test_mint_prints_the_token_alone_so_a_shell_can_capture_it(
    env: dict[str, str], run: Run
) -> None:
    run("sessions", "register", "s1")
    done = sh(
        env,
        f'T=$({cli()} tokens mint s1 -100) && {cli()} --json tokens validate -- "$T" -100',
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["valid"] is True
    minted = run("tokens", "mint", "s1", "7")
    assert len(minted.stdout.splitlines()) == 1 and len(minted.stdout.strip()) == 22
    assert "session s1" in minted.stderr and "chat 7" in minted.stderr


# --------------------------------------------------------------------------- pipes


def many_sessions(tmp_path: Path, count: int) -> None:
    with store(tmp_path) as s, s.atomic():  # type: ignore[attr-defined]
        for n in range(count):
            s.sessions.register(f"session-{n:05d}", ppid=1000 + n, cwd=f"/w/{n}", label="x" * 40)


def test_sessions_list_into_head_ends_quietly(env: dict[str, str], tmp_path: Path) -> None:
    many_sessions(tmp_path, 2000)  # more than a pipe buffer of output
    done = sh(env, f"{cli()} sessions list | head -1; {cli()} --json sessions list | head -1")
    assert done.stdout.splitlines() == [done.stdout.splitlines()[0], "["]
    assert done.stdout.startswith("SESSION")
    assert done.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ("sessions", "list"),
        ("--json", "sessions", "list"),
        ("sessions", "show", "s1"),
        ("tokens", "list", "s1"),
        ("tokens", "mint", "s1", "5"),
        ("cleanup",),
        ("doctor",),
        ("config", "show"),
        ("--help",),
        ("--version",),
        ("sessions", "show", "missing"),
    ],
)
def test_every_command_ends_quietly_when_the_reader_is_gone(
    env: dict[str, str], run: Run, args: tuple[str, ...]
) -> None:
    run("sessions", "register", "s1")
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


# --------------------------------------------------------------------------- doctor


def damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif how == "truncated":
        path.write_bytes(raw[:1500])
    elif how == "header":
        path.write_bytes(b"\0" * 100 + raw[100:])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["garbage", "truncated", "header", "empty"])
def test_doctor_reports_a_damaged_database_without_a_traceback(
    run: Run, tmp_path: Path, how: str
) -> None:
    run("sessions", "register", "s1")
    with store(tmp_path) as s, s.atomic():  # type: ignore[attr-defined]
        for n in range(300):
            s.sessions.register(f"bulk-{n}", cwd="/w" * 100)
    db = tmp_path / "data" / "ccr.db"
    damage(db, how)
    for sidecar in ("ccr.db-wal", "ccr.db-shm"):
        (tmp_path / "data" / sidecar).unlink(missing_ok=True)
    done = run("--json", "doctor")
    assert "Traceback" not in done.stderr, done.stderr
    checks = json.loads(done.stdout)
    if how == "empty":  # an empty file is an empty SQLite database: not damage
        return
    assert done.returncode == 1
    assert any(c["status"] == "fail" for c in checks), checks
    human = run("doctor")
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert "fail" in human.stdout


def test_doctor_on_a_data_dir_named_with_a_hash(env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data#1"
    env = {**env, "CCR_DATA_DIR": str(data)}
    subprocess.run([str(SCRIPT), "sessions", "register", "s1"], env=env, check=True, timeout=60)
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        [str(SCRIPT), "--json", "doctor"], capture_output=True, text=True, env=env, timeout=60
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray "data" file
    checks = {c["check"]: c["status"] for c in json.loads(done.stdout)}
    assert checks["schema"] == checks["integrity"] == checks["database lock"] == "ok"
    assert done.returncode == 0, done.stdout


# --------------------------------------------------------------------------- reading creates none


@pytest.mark.parametrize(
    "args",
    [
        ("sessions", "list"),
        ("sessions", "show", "x"),
        ("tokens", "list", "x"),
        ("tokens", "validate", "--", "tok", "1"),
        ("verify",),
        ("--backend", "json", "sessions", "list"),
        ("--backend", "dual", "sessions", "list"),
    ],
)
def test_a_command_that_reads_a_missing_store_refuses_and_creates_nothing(
    run: Run, tmp_path: Path, args: tuple[str, ...]
) -> None:
    typo = tmp_path / "typo"
    done = run("--data-dir", str(typo), *args)
    assert done.returncode == 3
    assert len(done.stderr.splitlines()) == 1 and str(typo) in done.stderr
    assert not typo.exists()


def test_reading_does_not_start_the_legacy_import(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "claude-sessions.json").write_text('{"sessions": {}}')
    assert run("sessions", "list").returncode == 3
    assert sorted(p.name for p in data.iterdir()) == ["claude-sessions.json"]


def test_hooks_and_writing_commands_still_create_the_store(run: Run, tmp_path: Path) -> None:
    done = run("--data-dir", str(tmp_path / "a"), "sessions", "register", "s1")
    assert done.returncode == 0 and (tmp_path / "a" / "ccr.db").is_file()
    hook = run(
        "--data-dir", str(tmp_path / "b"), "hook", "session-start", stdin='{"session_id": "h"}'
    )
    assert hook.returncode == 0 and (tmp_path / "b" / "ccr.db").is_file()


# --------------------------------------------------------------------------- broken config


def test_config_show_and_doctor_run_with_a_broken_config(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = data / "ccr-registry.toml"
    config.write_text('[store]\nsession_ttl_hours = "soon"\n')
    shown = run("--json", "config", "show")
    assert shown.returncode == 1
    document = json.loads(shown.stdout)
    assert document["error"]["source"] == str(config)
    assert "session_ttl_hours" in document["error"]["value"]
    assert document["backend"] == {"value": "sqlite", "source": "default"}
    human = run("config", "show")
    assert human.stdout.splitlines()[1].split()[0] == "error"
    doctor = run("--json", "doctor")
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr
    first = json.loads(doctor.stdout)[0]
    assert (first["check"], first["status"]) == ("config", "fail")
    assert "session_ttl_hours" in first["detail"]


# --------------------------------------------------------------------------- help and typos


def test_version(run: Run) -> None:
    done = run("--version")
    assert done.returncode == 0 and re.fullmatch(r"ccr-registry \d+\.\d+\.\d+\S*\n", done.stdout)


def test_every_option_and_argument_has_help() -> None:
    import argparse

    missing = []
    parsers = [("ccr-registry", build_parser())]
    while parsers:
        name, parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend((f"{name} {sub}", p) for sub, p in action.choices.items())
                continue
            if not action.help:
                missing.append(f"{name}: {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("sesions", "list"), "did you mean 'sessions'?"),
        (("sessions", "lst"), "did you mean 'list'?"),
        (("tokens", "mnt", "s", "1"), "did you mean 'mint'?"),
        (("doctr",), "did you mean 'doctor'?"),
    ],
)
def test_a_mistyped_command_gets_a_suggestion(run: Run, args: tuple[str, ...], hint: str) -> None:
    done = run(*args)
    assert done.returncode == 2 and hint in done.stderr and done.stdout == ""


def test_help_describes_the_hook_events_and_options(run: Run) -> None:
    hook = run("hook", "--help")
    assert hook.returncode == 0
    for word in ("session-start", "heartbeat", "session-end", "--notify"):
        assert word in hook.stdout
    register = run("sessions", "register", "--help").stdout
    assert "epoch seconds" in register and "agent process" in register
    assert "permission" in run("tokens", "mint", "--help").stdout


# --------------------------------------------------------------------------- one JSON shape


def test_verify_prints_timestamps_as_iso_z(run: Run, tmp_path: Path) -> None:
    run("sessions", "register", "s1")
    assert run("export", "--out", str(tmp_path / "data")).returncode == 0
    run("--backend", "json", "sessions", "register", "s1")  # json side only: a later updated_at
    done = run("--json", "verify")
    assert done.returncode == 1
    changed = {d["field"]: d for d in json.loads(done.stdout)["differences"]}
    assert ISO_Z.match(changed["updated_at"]["a"]) and ISO_Z.match(changed["updated_at"]["b"])
    human = run("verify").stdout
    assert "datetime" not in human and "updated_at differs" in human
    assert re.search(r"updated_at differs: a \"[-0-9T:.]+Z\", b \"[-0-9T:.]+Z\"", human)


def test_a_session_is_the_same_object_in_show_and_list(run: Run) -> None:
    run("sessions", "register", "s1", "--cwd", "/w")
    run("tokens", "mint", "s1", "5")
    (listed,) = json.loads(run("--json", "sessions", "list").stdout)
    shown = json.loads(run("--json", "sessions", "show", "s1").stdout)
    assert shown == listed
    assert "tokens      1" in run("sessions", "show", "s1").stdout


def test_cleanup_json_has_the_same_keys_whatever_the_flags(run: Run) -> None:
    run("sessions", "register", "s1")
    shapes = {
        flags: json.loads(run("--json", "cleanup", *flags).stdout)
        for flags in [(), ("--dead",), ("--expired",), ("--inbox",), ("--dead", "--expired")]
    }
    assert {tuple(sorted(d)) for d in shapes.values()} == {
        ("dead_sessions", "expired_sessions", "expired_tokens", "inbox_commands")
    }
    assert shapes[("--dead",)]["expired_tokens"] is None
    assert shapes[("--expired",)]["dead_sessions"] is None


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("sessions", "show", "missing"), 1),
        (("tokens", "list", "missing"), 1),
        (("sessions", "update", "x"), 2),
        (("tokens", "mint", "s1", "1", "--ttl", "soon"), 2),
        (("sessions", "remove", "missing"), 1),
    ],
)
def test_with_json_an_error_is_a_json_object_too(
    run: Run, args: tuple[str, ...], code: int
) -> None:
    run("sessions", "register", "s1")
    done = run("--json", *args)
    assert done.returncode == code
    error = json.loads(done.stdout)
    assert error["code"] == code and error["error"]
    assert "error" in done.stderr


def test_tokens_list_of_an_unknown_session_exits_1(run: Run) -> None:
    run("sessions", "register", "s1")
    done = run("tokens", "list", "missing")
    assert done.returncode == 1 and "missing" in done.stderr and done.stdout == ""


# --------------------------------------------------------------------------- tables


def test_tables_show_expiry_as_it_is_and_say_utc(run: Run, tmp_path: Path) -> None:
    with open_store(
        {"backend": "sqlite", "data_dir": str(tmp_path / "data")}, clock=FakeClock()
    ) as s:
        s.sessions.register("old", cwd="/w")  # expired a day after EPOCH_START, long ago
        s.tokens.mint_token("old", 5, ttl=timedelta(days=365 * 50))
    assert EPOCH_START.year < 2027
    table = run("sessions", "list").stdout.splitlines()
    assert "LAST SEEN (UTC)" in table[0] and "EXPIRES (UTC)" in table[0]
    assert table[1].split()[:2] == ["old", "expired"]
    assert "running (expired at" in run("sessions", "show", "old").stdout
    assert "CREATED (UTC)" in run("tokens", "list", "old").stdout
    assert json.loads(run("--json", "sessions", "show", "old").stdout)["state"] == "running"


def test_control_characters_are_escaped_in_tables_not_in_json(run: Run) -> None:
    evil = "\x1b]0;pwned\x07\x1b[31m"
    run("sessions", "register", "s1", "--cwd", f"/w/{evil}", "--label", evil, "--detail", "k=\x9b")
    for args in (("sessions", "list"), ("sessions", "show", "s1")):
        out = run(*args).stdout
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
        assert "\\x1b]0;pwned\\x07" in out
    shown = json.loads(run("--json", "sessions", "show", "s1").stdout)
    assert shown["label"] == evil and shown["transport"]["details"] == {"k": "\x9b"}


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("ttl", ["1e300", "inf", "nan", "-5m", "1e300d", "200000d"])
def test_an_absurd_ttl_is_a_usage_error(run: Run, ttl: str) -> None:
    run("sessions", "register", "s1")
    done = run("tokens", "mint", "s1", "5", "--ttl", ttl)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--ttl" in done.stderr


# --------------------------------------------------------------------------- verify progress


def test_verify_shows_progress_on_a_terminal_only(
    env: dict[str, str], run: Run, tmp_path: Path
) -> None:
    run("sessions", "register", "s1")
    assert run("export", "--out", str(tmp_path / "data")).returncode == 0
    master, slave = pty.openpty()
    try:
        done = subprocess.run(
            [str(SCRIPT), "verify"],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            env=env,
            timeout=60,
        )
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert done.returncode == 0 and done.stdout.startswith("no differences")
    assert b"verify: 2/2 100%" in seen
    piped = run("verify")
    assert piped.stderr == ""


def test_python_dash_m_dispatches_hooks_too(env: dict[str, str], run: Run) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "registry", "hook", "session-stat"],
        input="{}",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "") and "did you mean" in done.stderr


def test_the_database_is_not_created_by_doctor(run: Run, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert run("doctor").returncode == 0
    assert not (tmp_path / "data" / "ccr.db").exists()


def test_doctor_counts_legacy_records_it_cannot_show(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "claude-sessions.json").write_text('{"sessions": {"not-a-record": 5}}')
    (data / "claude-sessions.json").chmod(0o600)
    before = sorted(p.name for p in data.iterdir())
    checks = {c["check"]: c for c in json.loads(run("--json", "doctor").stdout)}
    assert checks["legacy records"]["status"] == "warn"
    assert checks["legacy records"]["detail"].startswith("1 unreadable")
    assert sorted(p.name for p in data.iterdir()) == before


def test_doctor_shows_a_dual_secondary_that_cannot_be_opened(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ccr-registry.toml").write_text(
        '[store]\nbackend = "dual"\n[store.dual]\nprimary = "sqlite"\nsecondary = "json"\n'
    )
    assert run("sessions", "register", "s1").returncode == 0
    checks = {c["check"]: c for c in json.loads(run("--json", "doctor").stdout)}
    assert checks["dual secondary"]["status"] == "ok"
    (data / "claude-sessions.json").write_bytes(b"\x00 not json")
    done = run("--json", "doctor")
    checks = {c["check"]: c for c in json.loads(done.stdout)}
    assert done.returncode == 1 and checks["dual secondary"]["status"] == "fail"
    assert "json cannot be opened" in checks["dual secondary"]["detail"]


def test_verify_says_when_a_dual_side_runs_on_its_primary_only(run: Run, tmp_path: Path) -> None:
    dual = tmp_path / "dual"
    dual.mkdir()
    config = tmp_path / "dual.toml"
    config.write_text(
        f'[store]\nbackend = "dual"\ndata_dir = "{dual}"\n'
        '[store.dual]\nprimary = "sqlite"\nsecondary = "json"\n'
    )
    assert run("--config", str(config), "sessions", "register", "s1").returncode == 0
    assert run("sessions", "register", "s1").returncode == 0
    (dual / "claude-sessions.json").write_bytes(b"\x00 not json")
    done = run("--json", "verify", "--against", str(config))
    (warning,) = json.loads(done.stdout)["warnings"]
    assert warning.startswith("b: the dual secondary is not open")
    assert "warning: b: the dual secondary" in run("verify", "--against", str(config)).stdout
