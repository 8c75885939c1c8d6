"""``ccr-registry hook EVENT``: the Claude Code hooks, in a process that must start fast.

:func:`registry._entry.main` (the console script) hands a hook invocation to :func:`main` before it
imports ``registry.cli`` or argparse.
This module parses its own small grammar (``[--data-dir D] [--config F] [--backend B] hook EVENT
[--notify | --no-notify]``), reads the hook JSON on stdin, finds the agent process, and writes the
session. On an existing sqlite database with no config file (the usual install) it takes a fast
path that imports neither argparse, typing, attrs, psutil, the config module nor the models
(``tests/cli/test_hook.py`` checks which modules a real hook process imported); any other case
goes through :func:`registry.factory.open_store`, but for postgres, whose hook store is one plain
connection without a pool (:func:`registry.backends.postgres._open_hook_store`, SPEC 4).

A hook never fails the agent: whatever happens, including a usage error, it exits 0 with nothing
on stdout (Claude Code adds a SessionStart hook's stdout to the model's context and reads exit
code 2 as "block this action"), and says what went wrong in one line on stderr, or nowhere when
stderr is closed.
"""

from __future__ import annotations

import os
import sys

from registry import _json, defaults
from registry.validation import is_utf8, to_utf8

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from registry.config import StoreConfig
    from registry.protocols import Store

PROG: Final = "ccr-registry"
# The command line's choices for EVENT (registry.cli offers these).
EVENTS: Final = ("session-start", "session-end", "heartbeat")
# Options of the top-level parser that take a value, and the one flag a hook accepts and ignores.
VALUE_OPTIONS: Final = ("--data-dir", "--config", "--backend")
FLAG_OPTIONS: Final = ("--json",)

# A hook must never stall the agent: a short lock timeout of its own, and a hard deadline.
HOOK_LOCK_TIMEOUT_S: Final = 2.0
HOOK_DEADLINE_S: Final = 5.0
HOOK_STDIN_LIMIT: Final = 1 << 20

# Shells that Claude Code (or a user's hook command line) runs the hook through. When one is a
# command shell (started with -c) that stayed alive as the hook's parent (a pipeline, a
# redirection, a shell that does not exec its last command), the agent is further up.
COMMAND_SHELLS: Final = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})
MAX_SHELL_DEPTH: Final = 16


class HookUsage(Exception):
    """The command line is not a valid hook invocation."""


class HookTimeout(Exception):
    pass


class Options:
    __slots__ = ("backend", "config", "data_dir", "event", "notify")

    def __init__(self) -> None:
        self.data_dir: str | None = None
        self.config: str | None = None
        self.backend: str | None = None
        self.event: str | None = None
        self.notify: bool | None = None


# --------------------------------------------------------------------------- command line


def is_hook_invocation(argv: list[str], commands: tuple[str, ...]) -> bool:
    """True if the command word of ``argv`` is ``hook`` and no help is asked for.

    The command word is the first word that names one of ``commands``, values of the global
    options skipped: a mistyped option before ``hook`` still reaches the hook, which reports
    it and exits 0 (argparse would exit 2, which Claude Code reads as "block this action").
    With no command word at all, a ``hook`` taken as an option's value still makes it a hook
    invocation: ``--data-dir $UNSET hook session-start`` is a hook with a missing value.
    """
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in ("-h", "--help", "--version"):
            return False
        if word in VALUE_OPTIONS:
            index += 2
            continue
        if word in commands:
            return word == "hook" and not any(w in ("-h", "--help") for w in argv[index + 1 :])
        index += 1
    return "hook" in argv


def parse(argv: list[str]) -> Options:
    """The hook's command line; :class:`HookUsage` says what is wrong with it."""
    options = Options()
    words = iter(argv)
    for word in words:
        if word == "hook":
            break
        name, sep, value = word.partition("=")
        if name in VALUE_OPTIONS:
            if not sep:
                value = next(words, "")
                # `--data-dir $UNSET hook ...`: the command word taken as the value.
                if not value or (value == "hook" and argv.count("hook") == 1):
                    raise HookUsage(f"{name} needs a value")
            setattr(options, name[2:].replace("-", "_"), value)
        elif word not in FLAG_OPTIONS:
            raise HookUsage(f"unknown option {word!r}")
    # --backend is any name: the factory refuses an unknown one, naming the built-in and
    # installed backends (a plug-in's name is not known here).
    for word in words:
        if word in ("--notify", "--no-notify"):
            options.notify = word == "--notify"
        elif word.startswith("-"):
            raise HookUsage(f"unknown option {word!r}")
        elif options.event is None:
            if word not in EVENTS:
                raise HookUsage(f"unknown event {word!r}{_did_you_mean(word, EVENTS)}")
            options.event = word
        else:
            raise HookUsage(f"unexpected argument {word!r}")
    if options.event is None:
        raise HookUsage(f"no event given; choose one of {', '.join(EVENTS)}")
    return options


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    import difflib  # only on this error path

    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; choose one of {', '.join(choices)}"


# --------------------------------------------------------------------------- entry point


def main(argv: list[str]) -> int:
    """Run one hook; always 0 (see the module docstring)."""
    stderr_open = _guard_standard_fds()
    if TYPE_CHECKING:
        import signal
    else:  # the signal module wraps these very functions in enums: importing enum cost ~1 ms
        import _signal as signal

    event = "hook"
    warnings: list[str] = []

    def deadline(_signum: int, _frame: object) -> None:
        raise HookTimeout(f"gave up after {HOOK_DEADLINE_S:g} s")

    previous = signal.signal(signal.SIGALRM, deadline)
    signal.setitimer(signal.ITIMER_REAL, HOOK_DEADLINE_S)
    try:
        options = parse(argv)
        event = f"hook {options.event}"
        run(options, read_hook_input(), warnings)
    except BaseException as exc:  # anything at all: a hook must not break the agent
        warnings.append(" ".join(str(exc).split()) or type(exc).__name__)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if warnings and stderr_open:
        line = f"{PROG} {event}: warning: {'; '.join(warnings)}"[:400] + "\n"
        try:
            os.write(2, line.encode("utf-8", "backslashreplace"))
        except OSError:  # stderr went away meanwhile: there is nowhere left to say it
            return 0
    return 0


def _guard_standard_fds() -> bool:
    """Put /dev/null on a closed fd 0, 1 or 2; True if stderr was open.

    With ``2>&-`` the next file opened (the database) would become fd 2 and a warning would be
    written into it; Python also sets ``sys.stderr`` to None then, and ``print(file=None)``
    writes to stdout. So fd 2 is checked once, here, before anything is opened.
    """
    open_fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            open_fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    return 2 in open_fds


def read_hook_input() -> dict[str, Any]:
    if sys.stdin is None:
        raise ValueError("no hook input: stdin is closed")
    raw = sys.stdin.buffer.read(HOOK_STDIN_LIMIT + 1)
    if len(raw) > HOOK_STDIN_LIMIT:
        raise ValueError("hook input is larger than 1 MiB")
    try:
        # UTF-8, as Claude Code and OpenCode write it; a BOM is skipped by hand (the utf-8-sig
        # codec is a module to import). A UnicodeDecodeError is a ValueError too.
        text = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
        data = _json.loads(text.decode("utf-8", "surrogatepass"))
    except ValueError:
        raise ValueError("hook input is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
        raise ValueError("hook input has no session_id")
    return data


# --------------------------------------------------------------------------- configuration


class Target:
    """What the fast path needs to know about the configured store."""

    __slots__ = ("db_path", "host_id", "lock_timeout_s", "session_ttl_ms")

    def __init__(
        self, db_path: str, session_ttl_ms: int, lock_timeout_s: float, host_id: str
    ) -> None:
        self.db_path = db_path
        self.session_ttl_ms = session_ttl_ms
        self.lock_timeout_s = lock_timeout_s
        self.host_id = host_id


def data_dir_of(given: str | None) -> str:
    """``--data-dir``, else ``$CCR_DATA_DIR``, else ``~/.ccr``; absolute."""
    chosen = given or os.environ.get(defaults.ENV_DATA_DIR) or defaults.DATA_DIR
    return os.path.abspath(os.path.expanduser(chosen))


def config_file_of(config: str | None, data_dir: str | None) -> str | None:
    """The config file a command reads (SPEC 5), or None for the defaults.

    ``--config``, else ``$CCR_REGISTRY_CONFIG``, else ``ccr-registry.toml`` in the data
    directory (``--data-dir`` acts like ``$CCR_DATA_DIR``) if it exists.
    """
    if config:
        return config
    if os.environ.get(defaults.ENV_CONFIG):
        return os.environ[defaults.ENV_CONFIG]
    candidate = os.path.join(data_dir_of(data_dir), defaults.CONFIG_FILE_NAME)
    return candidate if os.path.isfile(candidate) else None


def load_config(
    config: str | None, data_dir: str | None, backend: str | None, **overrides: Any
) -> StoreConfig:
    """The config SPEC 5 resolves, with ``--data-dir`` and ``--backend`` over it."""
    from pathlib import Path

    from registry.config import StoreConfig

    path = config_file_of(config, data_dir)
    resolved = StoreConfig.from_toml(path) if path else StoreConfig()
    if data_dir:
        overrides["data_dir"] = Path(data_dir_of(data_dir))
    if backend:
        overrides["backend"] = backend
    return resolved.replace(**overrides) if overrides else resolved


def fast_target(options: Options) -> Target | None:
    """The sqlite database to write directly, or None where the fast path does not apply.

    It applies with no config file (the defaults of :mod:`registry.defaults`), the sqlite
    backend and an existing database. Anything else goes through :func:`slow_path`.
    """
    if (options.backend or defaults.BACKEND) != "sqlite":
        return None
    if config_file_of(options.config, options.data_dir) is not None:
        return None
    db_path = os.path.join(data_dir_of(options.data_dir), defaults.DB_FILE_NAME)
    if not os.path.isfile(db_path):
        return None  # the first start creates it, and may import the legacy files
    return Target(
        db_path,
        session_ttl_ms=int(defaults.SESSION_TTL_HOURS * 3_600_000),
        lock_timeout_s=min(defaults.LOCK_TIMEOUT_S, HOOK_LOCK_TIMEOUT_S),
        host_id=defaults.host_id(),
    )


# --------------------------------------------------------------------------- the hook


def run(options: Options, data: dict[str, Any], warnings: list[str]) -> None:
    assert options.event is not None
    target = fast_target(options)
    if target is not None and fast_path(target, options.event, data, options.notify, warnings):
        return
    slow_path(options, data, warnings)


def slow_path(options: Options, data: dict[str, Any], warnings: list[str]) -> None:
    """The hook through the store: any backend, a config file, the first start of a database."""
    from registry.factory import open_store

    config = load_config(options.config, options.data_dir, options.backend)
    if config.lock_timeout_s > HOOK_LOCK_TIMEOUT_S:
        config = config.replace(lock_timeout_s=HOOK_LOCK_TIMEOUT_S)
    if config.backend == "sqlite" and config.db_path.is_file():
        target = Target(
            str(config.db_path),
            session_ttl_ms=int(config.session_ttl.total_seconds() * 1000),
            lock_timeout_s=config.lock_timeout_s,
            host_id=config.host_id,
        )
        assert options.event is not None
        if fast_path(target, options.event, data, options.notify, warnings):
            return
    # json and dual write the files the legacy daemon reads (dual always has a json side).
    legacy = config.backend != "sqlite"
    if config.backend == "postgres":
        # One plain connection, no pool (SPEC 4): a hook writes one event and exits.
        from registry.backends.postgres import _open_hook_store
        from registry.factory import system_clock

        store: Store = _open_hook_store(config, system_clock)
    else:
        store = open_store(config)
    with store:
        apply_hook(store, options.event, data, options.notify, legacy, warnings)


def apply_hook(
    store: Store,
    event: str | None,
    data: dict[str, Any],
    notify: bool | None,
    legacy: bool,
    warnings: list[str],
) -> None:
    from registry.models import Transport

    session_id = data["session_id"]
    if event == "session-end":
        store.sessions.remove(session_id)
        return
    if event == "heartbeat" and store.sessions.get(session_id) is not None:
        store.sessions.touch(session_id)
        return
    values = hook_session(data, notify, legacy=legacy, warnings=warnings)
    kind, details = values.pop("transport")
    store.sessions.register(session_id, **values, transport=Transport(kind=kind, details=details))


def fast_path(
    target: Target,
    event: str,
    data: dict[str, Any],
    notify: bool | None,
    warnings: list[str],
) -> bool:
    """The hook on an existing sqlite database, without the models (and attrs).

    It runs the statements ``SqliteStore.register``, ``touch`` and ``remove`` run
    (:mod:`registry.backends.sqlite_sql`), after the same validation. Returns False, having
    done nothing, for a schema version this code must upgrade or refuse.
    """
    import time

    from registry.backends import sqlite_sql as sql
    from registry.validation import check_key

    session_id = check_key("session_id", data["session_id"])
    host = check_key("host_id", target.host_id)  # $CCR_HOST_ID may hold anything
    path = target.db_path  # a str: this process never imports pathlib (see sqlite_sql)
    with sql.translated(path):
        conn = sql.connect(path, target.lock_timeout_s)
    try:
        with sql.translated(path):
            if sql.schema_version(conn) != sql.SCHEMA_VERSION:
                return False
        now = time.time_ns() // 1_000_000
        expires_at = now + target.session_ttl_ms
        if event == "session-end":
            with sql.transaction(conn, path):
                sql.remove_row(conn, session_id, now)
            return True
        if event == "heartbeat":
            with sql.transaction(conn, path):
                if sql.touch_row(conn, session_id, now, expires_at) is not None:
                    return True
        # The codec's encoder, as SqliteStore.register uses it: validated, notify as 0/1,
        # details as compact JSON.
        columns = sql.encode_given(hook_session(data, notify, legacy=False, warnings=warnings))
        with sql.transaction(conn, path):
            sql.register_row(conn, session_id, columns, now, expires_at, host)
        return True
    finally:
        conn.close()


def hook_session(
    data: dict[str, Any], notify: bool | None, *, legacy: bool, warnings: list[str]
) -> dict[str, Any]:
    """What a hook registers about its caller, validated (transport as kind and details).

    ``legacy``: record as ``start_time`` what the legacy daemon's dead-session check compares
    (see :func:`agent_start_time`).
    """
    from registry.validation import check_details, check_kind, check_text

    agent = find_agent()
    given = data.get("cwd")
    cwd: str | None = given if isinstance(given, str) and given else _getcwd()
    if cwd is not None and not is_utf8(cwd):
        warnings.append("cwd is not valid UTF-8; stored with U+FFFD in place of the bad bytes")
        cwd = to_utf8(cwd)
    cwd = check_text("cwd", cwd)
    kind, details = transport_from_env(agent_tty(agent), warnings)
    return {
        "ppid": agent,
        # The hook process itself, as the legacy hooks recorded it ($$ of the hook script).
        "pid": os.getpid(),
        "start_time": agent_start_time(agent, legacy=legacy),
        "cwd": cwd,
        "label": None if cwd is None else check_text("label", _label(cwd)),
        "notify": notify,
        "transport": (check_kind(kind), check_details(details)),
        "state": "running",
    }


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under the agent
        return None


def _label(cwd: str) -> str:
    return os.path.basename(cwd.rstrip("/")) or cwd


def _environ(name: str, warnings: list[str]) -> str | None:
    """An environment variable usable as stored text, else None (with a warning)."""
    value = os.environ.get(name)
    if value and not is_utf8(value):
        # A socket path or pane id with a replaced byte would name something else: drop it.
        warnings.append(f"${name} is not valid UTF-8; not recorded")
        return None
    return value or None


# --------------------------------------------------------------------------- the agent process


def find_agent(start: int | None = None) -> int:
    """The pid of the agent: the hook's parent, or above it past command shells.

    A shell started with ``-c`` (and without ``-i``) that is still alive as the hook's parent
    is a wrapper of the hook's command line, not the agent: the dead-session janitor would
    remove the session as soon as that shell exits. Interactive shells are not skipped: a
    person running the hook by hand is its own agent. The walk stops below pid 1, so an
    orphaned wrapper is kept rather than recording init.
    """
    pid = os.getppid() if start is None else start
    for _ in range(MAX_SHELL_DEPTH):
        info = process_info(pid)
        if info is None or not is_command_shell(info[0], info[1]):
            break
        parent = info[2]
        if parent <= 1:
            break
        pid = parent
    return pid


def is_command_shell(name: str, argv: list[str]) -> bool:
    """True for ``sh -c ...`` and the like: a known shell run with ``-c`` and without ``-i``."""
    names = {name.lstrip("-")}
    if argv:
        names.add(os.path.basename(argv[0]).lstrip("-"))
    if not names & COMMAND_SHELLS:
        return False
    command = False
    for arg in argv[1:]:
        if arg == "--" or arg == "-" or not arg.startswith("-"):
            break
        if arg.startswith("--"):
            continue  # --norc, --login, ...
        letters = arg[1:]
        if "i" in letters:
            return False
        command = command or "c" in letters
    return command


def process_info(pid: int) -> tuple[str, list[str], int] | None:
    """``(name, argv, ppid)`` of a process, or None if it cannot be read."""
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            return None
        head, _, tail = stat.rpartition(b")")
        name = head.partition(b"(")[2].decode("utf-8", "replace")
        argv = [os.fsdecode(arg) for arg in cmdline.split(b"\0")[:-1]]
        try:
            return name, argv, int(tail.split()[1])
        except (IndexError, ValueError):
            return None
    import psutil

    try:
        process = psutil.Process(pid)
        return process.name(), process.cmdline(), process.ppid()
    except psutil.Error:
        return None


def agent_start_time(pid: int, *, legacy: bool) -> int | None:
    """The agent's start time in epoch seconds, as the configured backend's readers expect it.

    With ``legacy`` (the backend writes the files the legacy daemon reads), the change time of
    ``/proc/<pid>`` in whole seconds: the legacy daemon's dead-session check compares that with
    ``start_time`` within 2 s, and /proc/<pid> gets its timestamp when the kernel first builds
    its inode, which can be long after the process started (a real start time there makes the
    legacy daemon remove a live session). :func:`registry.liveness.is_process_alive` accepts
    either. Otherwise (and off Linux) the process's real start time.
    """
    if legacy and sys.platform.startswith("linux"):
        try:
            return int(os.stat(f"/proc/{pid}").st_ctime)
        except OSError:
            return None
    if sys.platform.startswith("linux"):
        return _linux_start_time(pid)
    import psutil

    try:
        return int(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _linux_start_time(pid: int) -> int | None:
    # What psutil computes, without importing it: boot time + start ticks / clock ticks.
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime"))
        return int(boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def agent_tty(pid: int) -> str | None:
    """The terminal on the agent's stdin, if it is one."""
    if not sys.platform.startswith("linux"):
        import psutil

        try:
            return psutil.Process(pid).terminal()
        except psutil.Error:
            return None
    try:
        target = os.readlink(f"/proc/{pid}/fd/0")
    except OSError:
        return None
    return target if target.startswith(("/dev/pts/", "/dev/tty")) else None


# --------------------------------------------------------------------------- transport


def _tmux_session(pane: str) -> str | None:
    """``session:window.pane`` of a tmux pane, if a tmux server answers in time."""
    import subprocess

    try:
        done = subprocess.run(
            ["tmux", "display-message", "-p", "-t", pane, "#S:#I.#P"],
            capture_output=True,
            text=True,
            timeout=0.5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = done.stdout.strip()
    return name if done.returncode == 0 and name and is_utf8(name) else None


def transport_from_env(tty: str | None, warnings: list[str]) -> tuple[str, dict[str, Any]]:
    """Transport kind and details: nvim from ``$NVIM``, tmux from ``$TMUX``/``$TMUX_PANE``,
    else the caller's pty, else unknown. A value that is not valid UTF-8 is left out."""
    pane = _environ("TMUX_PANE", warnings)
    in_tmux = bool(os.environ.get("TMUX") or os.environ.get("TMUX_PANE"))
    if tty is not None and not is_utf8(tty):
        tty = None
    details: dict[str, Any] = {}
    nvim = _environ("NVIM", warnings)
    if nvim:
        details["nvim_socket"] = nvim
        if tty:
            details["instance_name"] = tty
        if in_tmux and pane:
            details["tmux_pane_id"] = pane
            if session := _tmux_session(pane):
                details["tmux_session"] = session
        return "nvim", details
    if in_tmux:
        if pane:
            details["pane_id"] = pane
            if session := _tmux_session(pane):
                details["session_name"] = session
        return "tmux", details
    if tty:
        return "pty", {"pty_path": tty}
    return "unknown", {}
