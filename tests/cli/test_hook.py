"""``ccr-registry hook``: what it imports, how it fails, which process it records.

Every test runs the real console script in a subprocess, through a real ``sh -c`` where the
behaviour depends on the shell (closed stderr, a wrapper shell).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from registry import open_store
from registry.hook import is_command_shell
from registry.liveness import is_process_alive
from tests.cli.conftest import SCRIPT, Run
from tests.cli.test_cli import hook_input, show

# --------------------------------------------------------------------------- imports


def imported_modules(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                names.add(name)
    return names


@pytest.mark.parametrize("event", ["session-start", "heartbeat", "session-end"])
def test_the_fast_path_imports_no_argparse_typing_attrs_psutil_config_or_models(
    env: dict[str, str], run: Run, event: str
) -> None:
    assert run("hook", "session-start", stdin=hook_input("s1")).returncode == 0  # the database
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "hook", event, "--notify"],
        input=hook_input("s1"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout == ""
    modules = imported_modules(done.stderr)
    assert "registry.hook" in modules  # the script really ran and was measured
    forbidden = {
        "argparse",
        "typing",
        "attrs",
        "attr",
        "psutil",
        "registry.config",
        "registry.models",
        "registry.factory",
        "registry.cli",  # the console script's entry module dispatches before importing it
    }
    assert modules & forbidden == set()
    if event == "session-end":
        assert run("sessions", "show", "s1").returncode == 1
    else:  # heartbeat touches a known session and leaves its fields alone
        assert show(run, "s1")["notify"] is (event == "session-start")


@pytest.mark.parametrize("event", ["session-start", "session-end"])
def test_the_fast_path_itself_imports_no_json_re_or_enum(
    env: dict[str, str], run: Run, event: str
) -> None:
    """What the hook adds to what the interpreter loaded at start-up (an editable install's
    import hook loads re there; a clean install does not): json, re and enum are about half a
    bare interpreter's start-up, and the script, registry._json and _signal avoid them."""
    assert run("hook", "session-start", stdin=hook_input("s1")).returncode == 0  # the database
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from registry._entry import main\n"
        f"code = main(['hook', {event!r}])\n"
        "sys.stdout.write(str(code) + ' ' + ' '.join(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        input=hook_input("s1"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.stderr == ""
    code, *added = done.stdout.split()
    assert code == "0"
    assert "registry.hook" in added and "sqlite3" in added  # it really ran the fast path
    assert set(added) & {"json", "re", "enum", "signal", "argparse", "typing"} == set()
    assert (run("sessions", "show", "s1").returncode == 1) is (event == "session-end")


def test_the_installed_command_is_the_plain_script() -> None:
    """pip's generated entry-point wrapper imports re; the installed command must not."""
    text = SCRIPT.read_text()
    assert "from registry._entry import main" in text
    assert "import re" not in [line.strip() for line in text.splitlines()]


def test_defaults_are_the_config_defaults() -> None:
    """The hook reads registry.defaults; StoreConfig must not disagree with it."""
    from registry import defaults
    from registry.config import StoreConfig

    config = StoreConfig()
    assert config.backend == defaults.BACKEND
    assert config.session_ttl_hours == defaults.SESSION_TTL_HOURS
    assert config.token_ttl_hours == defaults.TOKEN_TTL_HOURS
    assert config.lock_timeout_s == defaults.LOCK_TIMEOUT_S
    assert config.migrate_from_json is defaults.MIGRATE_FROM_JSON
    assert config.db_path.name == defaults.DB_FILE_NAME
    assert config.host_id == defaults.host_id()


def test_the_hook_stamps_the_host_id_on_both_paths(
    env: dict[str, str], run: Run, tmp_path: Path
) -> None:
    """$CCR_HOST_ID, else the hostname (SPEC 5), on the first start (the store) and on the
    fast path (sqlite_sql.register_row); a re-register from another host moves the session."""
    import socket

    first = {"CCR_HOST_ID": "m-1"}
    assert run("hook", "session-start", stdin=hook_input("s1"), extra_env=first).returncode == 0
    fast = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "hook", "session-start"],
        input=hook_input("s2"),
        capture_output=True,
        text=True,
        env={**env, "CCR_HOST_ID": "m-2"},
        timeout=60,
    )
    assert fast.returncode == 0
    # The fast path, and the hostname without the socket module (2 to 4 ms of imports).
    assert imported_modules(fast.stderr) & {"registry.models", "socket"} == set()
    assert run("hook", "session-start", stdin=hook_input("s3")).returncode == 0
    moved = {"CCR_HOST_ID": "m-3"}
    assert run("hook", "session-start", stdin=hook_input("s1"), extra_env=moved).returncode == 0
    with open_store({"data_dir": str(tmp_path / "data"), "host_id": "reader"}) as store:
        hosts = {s.session_id: s.host for s in store.sessions.list_sessions()}
    assert hosts == {"s1": "m-3", "s2": "m-2", "s3": socket.gethostname()}


def test_a_bad_host_id_is_refused_with_a_warning_and_writes_nothing(
    run: Run, tmp_path: Path
) -> None:
    assert run("hook", "session-start", stdin=hook_input("s1")).returncode == 0
    bad = {"CCR_HOST_ID": "x" * 300}
    done = run("hook", "session-start", stdin=hook_input("s2"), extra_env=bad)
    assert (done.returncode, done.stdout) == (0, "")
    assert "host_id" in done.stderr
    with open_store({"data_dir": str(tmp_path / "data"), "host_id": "reader"}) as store:
        assert store.sessions.get("s2") is None


# --------------------------------------------------------------------------- never fail the agent


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("hook", "session-stat"), "did you mean 'session-start'"),
        (("hook", "session-start", "--bogus"), "unknown option '--bogus'"),
        (("hook",), "no event given"),
        (("hook", "session-start", "extra"), "unexpected argument 'extra'"),
        (("--data-dri", "x", "hook", "session-start"), "unknown option '--data-dri'"),
        (("--backend", "mongodb", "hook", "session-start"), "store.backend = 'mongodb' is not"),
        (("--backend", "postgres", "hook", "session-start"), "store.postgres.dsn is required"),
        # An unset variable in the hook's command line: `--data-dir $UNSET hook session-start`.
        (("--data-dir", "hook", "session-start"), "--data-dir needs a value"),
        (("--config", "hook", "session-end"), "--config needs a value"),
    ],
)
def test_a_hook_usage_error_exits_0_with_one_warning(
    run: Run, args: tuple[str, ...], said: str
) -> None:
    done = run(*args, stdin=hook_input("s1"))
    assert (done.returncode, done.stdout) == (0, "")
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and said in lines[0], done.stderr


@pytest.mark.parametrize("args", ["hook session-stat", "hook session-start", "hook heartbeat -x"])
def test_a_hook_with_stderr_closed_writes_nothing_at_all(
    env: dict[str, str], tmp_path: Path, args: str
) -> None:
    # Garbage stdin: every one of these has a warning to give, and nowhere to give it.
    done = subprocess.run(
        ["sh", "-c", f"{shlex.quote(str(SCRIPT))} {args} 2>&-"],
        input="not json",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (tmp_path / "data").exists()


def test_a_hook_with_stderr_closed_still_registers(
    env: dict[str, str], run: Run, tmp_path: Path
) -> None:
    assert run("hook", "session-start", stdin=hook_input("s0")).returncode == 0
    done = subprocess.run(
        ["sh", "-c", f"{shlex.quote(str(SCRIPT))} hook session-start 2>&-"],
        input=hook_input("s1"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert show(run, "s1")["state"] == "running"
    assert run("doctor").returncode == 0  # nothing was written into the database through fd 2


# --------------------------------------------------------------------------- the agent process

# A stand-in for the agent: runs the hook's command line through a shell that stays alive as
# the hook's parent (the pipeline keeps `sh` waiting), then prints its own pid.
AGENT = """
import subprocess, sys
subprocess.run(["sh", "-c", sys.argv[1]], input=sys.argv[2], text=True, check=True)
print(__import__("os").getpid())
"""


def run_agent(env: dict[str, str], command: str, stdin: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", AGENT, command, stdin],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@contextmanager
def live_agent(env: dict[str, str], command: str, stdin: str) -> Iterator[int]:
    """An agent that runs ``command`` through ``sh -c`` and stays alive until the block ends."""
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT + "\nsys.stdin.read()\n", command, stdin],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert agent.stdout is not None
        pid = int(agent.stdout.readline())
        assert pid == agent.pid
        yield pid
    finally:
        assert agent.stdin is not None
        agent.stdin.close()
        agent.wait(timeout=30)


@pytest.mark.parametrize(
    "wrapper",
    [
        "{hook} | cat",  # a pipeline: sh waits for both
        "{hook}; true",  # not the last command: sh cannot exec it
        "sh -c '{hook} | cat' | cat",  # two wrapper shells
    ],
)
def test_the_hook_records_the_agent_not_a_wrapper_shell(
    env: dict[str, str], run: Run, wrapper: str
) -> None:
    hook = f"{shlex.quote(str(SCRIPT))} hook session-start"
    agent = run_agent(env, wrapper.format(hook=hook), hook_input("wrapped"))
    session = show(run, "wrapped")
    assert session["ppid"] == agent


def test_the_agent_is_alive_and_its_start_time_is_its_own(env: dict[str, str], run: Run) -> None:
    """A live agent whose hook ran through `sh -c ... | cat`: ppid and start_time are its own."""
    hook = f"{shlex.quote(str(SCRIPT))} hook session-start | cat"
    with live_agent(env, hook, hook_input("live")) as pid:
        session = show(run, "live")
        assert session["ppid"] == pid
        assert abs(session["start_time"] - psutil.Process(pid).create_time()) <= 1
        assert is_process_alive(session["ppid"], session["start_time"])


@pytest.mark.parametrize(
    ("name", "argv", "skipped"),
    [
        ("sh", ["sh", "-c", "x"], True),
        ("dash", ["/bin/sh", "-c", "x"], True),
        ("bash", ["bash", "--norc", "-ec", "x"], True),
        ("zsh", ["zsh", "-c", "x"], True),
        ("fish", ["fish", "-c", "x"], True),
        ("bash", ["-bash"], False),  # a login shell
        ("bash", ["bash"], False),  # a person's shell
        ("bash", ["bash", "-i", "-c", "x"], False),  # interactive, even with -c
        ("bash", ["bash", "script.sh", "-c"], False),  # -c after the script is its argument
        ("python3", ["python3", "-c", "x"], False),
        ("node", ["node", "claude"], False),
    ],
)
def test_which_processes_are_command_shells(name: str, argv: list[str], skipped: bool) -> None:
    assert is_command_shell(name, argv) is skipped


def test_an_interactive_shell_is_the_agent(env: dict[str, str], run: Run, tmp_path: Path) -> None:
    """`bash -i -c` is a person's shell, even with -c: the walk stops there."""
    pid_file = tmp_path / "bash.pid"
    hook = f"{shlex.quote(str(SCRIPT))} hook session-start"
    command = f"bash --norc -i -c {shlex.quote(f'echo $$ > {pid_file}; {hook} | cat')}"
    run_agent(env, command, hook_input("by-hand"))
    assert show(run, "by-hand")["ppid"] == int(pid_file.read_text())


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_environment_values_that_are_not_utf8_are_dropped_with_a_warning(
    env: dict[str, str], run: Run, backend: str
) -> None:
    assert run("--backend", backend, "sessions", "register", "other").returncode == 0
    # subprocess encodes "\udcff" back to the byte 0xff: the child sees what a real
    # non-UTF-8 environment gives it.
    extra = {"TMUX": "/tmp/tmux-1000/default,1,0", "TMUX_PANE": "%1\udcff", "NVIM": "/tmp/n\udcff"}
    done = subprocess.run(
        [str(SCRIPT), "--backend", backend, "hook", "session-start"],
        input=hook_input("env"),
        capture_output=True,
        text=True,
        env={**env, **extra},
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "")
    assert len(done.stderr.splitlines()) == 1
    assert "$TMUX_PANE" in done.stderr and "$NVIM" in done.stderr
    listed = json.loads(run("--backend", backend, "--json", "sessions", "show", "env").stdout)
    assert listed["transport"] == {"kind": "tmux", "details": {}}


def test_a_cwd_that_is_not_utf8_is_stored_with_replacement_characters(run: Run) -> None:
    stdin = json.dumps({"session_id": "cwd", "cwd": "/home/dev/caf\udce9"})
    done = run("hook", "session-start", stdin=stdin)
    assert (done.returncode, done.stdout) == (0, "")
    assert "cwd is not valid UTF-8" in done.stderr
    session = show(run, "cwd")
    assert (session["cwd"], session["label"]) == ("/home/dev/caf\ufffd", "caf\ufffd")


# --------------------------------------------------------------------------- the legacy daemon


def legacy_is_alive(pid: int, start_time: int) -> bool:
    """The legacy daemon's dead-session rule: the process exists and the change time of
    /proc/<pid> is within 2 s of the recorded start_time."""
    try:
        return abs(os.stat(f"/proc/{pid}").st_ctime - start_time) <= 2
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the legacy rule reads /proc")
@pytest.mark.parametrize(
    ("backend", "legacy"),
    [("json", True), ("dual-json-sqlite", True), ("dual-sqlite-json", True), ("sqlite", False)],
)
def test_the_start_time_is_what_the_backends_readers_expect(
    env: dict[str, str], tmp_path: Path, backend: str, legacy: bool
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name, _, primary = backend.partition("-")
    table = f'[store]\nbackend = "{name}"\ndata_dir = "{data}"\n'
    if primary:
        first, second = primary.split("-")
        table += f'[store.dual]\nprimary = "{first}"\nsecondary = "{second}"\n'
    (data / "ccr-registry.toml").write_text(table)
    hook = f"{shlex.quote(str(SCRIPT))} hook session-start | cat"
    with live_agent(env, hook, hook_input("legacy")) as pid:
        with open_store(data / "ccr-registry.toml") as store:
            session = store.sessions.get("legacy")
        assert session is not None and session.ppid == pid
        assert session.start_time is not None
        proc_ctime = int(os.stat(f"/proc/{pid}").st_ctime)
        real_start = int(psutil.Process(pid).create_time())
        assert session.start_time == (proc_ctime if legacy else real_start)
        assert is_process_alive(pid, session.start_time)
        if legacy:
            assert legacy_is_alive(pid, session.start_time)
    assert not is_process_alive(pid, session.start_time)


def test_the_hook_repairs_text_by_the_one_utf8_rule() -> None:
    """The hook keeps no copy of the UTF-8 rule: registry.validation's is the one."""
    from registry import hook, validation

    assert hook.is_utf8 is validation.is_utf8
    assert hook.to_utf8 is validation.to_utf8
    assert not hasattr(hook, "_is_utf8") and not hasattr(hook, "_to_utf8")


@pytest.mark.parametrize(
    ("raw", "session_id"),
    [
        (b'{"session_id": "s1"}', "s1"),
        (b'\xef\xbb\xbf{"session_id": "s1"}', "s1"),  # a UTF-8 BOM is skipped
        ('{"session_id": "caf\u00e9"}'.encode(), "caf\u00e9"),
        (b' \n{"session_id": "s\\u00e9"}\n', "s\u00e9"),
    ],
)
def test_hook_input_is_utf8_json(
    monkeypatch: pytest.MonkeyPatch, raw: bytes, session_id: str
) -> None:
    from registry.hook import read_hook_input

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert read_hook_input()["session_id"] == session_id


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b'{"session_id": "\xff"}', "not JSON"),  # not UTF-8
        (b'\xef\xbb\xbf\xef\xbb\xbf{"session_id": "s1"}', "not JSON"),  # one BOM only
        (b'{"session_id": "s1"} {}', "not JSON"),
        (b"[]", "no session_id"),
        (b'{"session_id": 5}', "no session_id"),
    ],
)
def test_hook_input_that_is_not_a_hook_event_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: bytes, said: str
) -> None:
    from registry.hook import read_hook_input

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    with pytest.raises(ValueError, match=said):
        read_hook_input()
