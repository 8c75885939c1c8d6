"""``ccr-registry``: the command line for Claude Code hooks and for operators (SPEC 8).

Argument parsing and printing only; every command calls the library. Imports are lazy: a hook
imports the config, the one backend it opens and the models, nothing else.

Exit codes: 0 ok, 1 not found or differences, 2 usage (argparse's own code), 3 store error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final

    from registry.config import StoreConfig
    from registry.models import Session, Token
    from registry.protocols import Store

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_STORE: Final = 3

# A hook must never stall the agent: a short lock timeout of its own, and a hard deadline.
HOOK_LOCK_TIMEOUT_S: Final = 2.0
HOOK_DEADLINE_S: Final = 5.0
HOOK_STDIN_LIMIT: Final = 1 << 20

PROG: Final = "ccr-registry"
# URL-safe base64 may begin with "-", which argparse would read as an option.
TOKEN_HELP: Final = 'the token value; put "--" before it if it starts with "-"'


class CommandError(Exception):
    """A one-line failure with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- config


def load_config(args: argparse.Namespace, **overrides: Any) -> StoreConfig:
    """The config SPEC 5 resolves, with ``--data-dir`` and ``--backend`` over it.

    ``--data-dir D`` acts like ``CCR_DATA_DIR=D``: without ``--config`` or
    ``$CCR_REGISTRY_CONFIG``, ``D/ccr-registry.toml`` is read if it exists.
    """
    from registry.config import CONFIG_FILE_NAME, ENV_CONFIG, StoreConfig

    config_path = args.config
    data_dir = Path(args.data_dir).expanduser().absolute() if args.data_dir else None
    if config_path is None and data_dir is not None and not os.environ.get(ENV_CONFIG):
        candidate = data_dir / CONFIG_FILE_NAME
        config_path = candidate if candidate.is_file() else None
        config = StoreConfig.from_toml(config_path) if config_path else StoreConfig()
    else:
        config = StoreConfig.resolve(config_path)
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if args.backend:
        overrides["backend"] = args.backend
    return config.replace(**overrides) if overrides else config


def open_configured(args: argparse.Namespace, **overrides: Any) -> Store:
    from registry.factory import open_store

    return open_store(load_config(args, **overrides))


# --------------------------------------------------------------------------- output


def emit(args: argparse.Namespace, document: Any, human: Callable[[], str]) -> None:
    """One JSON document with ``--json``, else the human form."""
    if args.json:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        text = human()
        if text:
            print(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def short_time(iso_text: str) -> str:
    return iso_text.replace("T", " ")[:19]


def sessions_table(sessions: Sequence[Session]) -> str:
    from registry.models import iso

    if not sessions:
        return "no sessions"
    rows = [
        (
            s.session_id,
            s.state,
            "yes" if s.notify else "no",
            s.ppid,
            s.transport.kind,
            short_time(iso(s.last_seen)),
            short_time(iso(s.expires_at)),
            s.cwd,
        )
        for s in sessions
    ]
    headers = ("SESSION", "STATE", "NOTIFY", "PPID", "TRANSPORT", "LAST SEEN", "EXPIRES", "CWD")
    return table(headers, rows)


def session_detail(session: Session) -> str:
    from registry.models import session_to_json

    data = session_to_json(session)
    transport = data.pop("transport")
    rows = [(key, "" if value is None else value) for key, value in data.items()]
    rows.append(("transport", transport["kind"]))
    rows.extend((f"  {k}", v) for k, v in transport["details"].items())
    return table(("FIELD", "VALUE"), rows)


def tokens_table(tokens: Sequence[Token], *, reveal: bool) -> str:
    from registry.models import token_to_json

    if not tokens:
        return "no tokens"
    rows = []
    for token in tokens:
        data = token_to_json(token, reveal=reveal)
        rows.append(
            (
                data["token"],
                data["chat_id"],
                ",".join(data["scopes"]),
                short_time(data["created_at"]),
                short_time(data["expires_at"]),
            )
        )
    return table(("TOKEN", "CHAT", "SCOPES", "CREATED", "EXPIRES"), rows)


def progress_reporter(
    label: str, *, clock: Callable[[], float] | None = None
) -> Callable[[int, int], None] | None:
    """A ``(done, total)`` callback that redraws one line on stderr, or None off a terminal.

    Standard library only, no ``rich``: it is one line of output, and ``rich`` would be one
    more runtime dependency and tens of milliseconds of import for every command. Off a
    terminal (a pipe, a log file, a closed stderr) it returns None so that scripts and logs
    get no carriage returns. ``clock`` (seconds, monotonic) is for tests.
    """
    import time

    now_s = clock or time.monotonic
    try:
        if not sys.stderr.isatty():
            return None
    except (AttributeError, ValueError, OSError):  # closed or replaced stderr
        return None
    interval_s = 0.2
    last = -interval_s

    def report(done: int, total: int) -> None:
        nonlocal last
        now = now_s()
        finished = done >= total
        if not finished and now - last < interval_s:
            return
        last = now
        percent = f" {100 * done // total:3d}%" if total > 0 else ""
        try:
            sys.stderr.write(f"\r{label}: {done}/{total}{percent}" + ("\n" if finished else ""))
            sys.stderr.flush()
        except (OSError, ValueError):  # the terminal went away: progress is optional
            pass

    return report


# --------------------------------------------------------------------------- argument helpers


def duration(text: str) -> Any:
    """``90``, ``90s``, ``30m``, ``24h`` or ``7d`` as a timedelta."""
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 30m, 24h)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return timedelta(seconds=value * units[unit])


def chat_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a chat id: {text!r}") from None


def detail(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a bare string
    if isinstance(value, dict | list):
        value = raw
    return key, value


# --------------------------------------------------------------------------- sessions


SESSION_FIELDS: Final = ("ppid", "pid", "start_time", "cwd", "label", "notify", "state")


def session_changes(args: argparse.Namespace) -> dict[str, Any]:
    from registry.models import Transport

    changes = {name: getattr(args, name) for name in SESSION_FIELDS}
    changes = {name: value for name, value in changes.items() if value is not None}
    if args.transport is not None or args.detail:
        changes["transport"] = Transport(
            kind=args.transport or "unknown", details=dict(args.detail)
        )
    return changes


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from registry.models import session_to_json

    with open_configured(args) as store:
        found = store.sessions.list_sessions(active_only=args.active, notify_only=args.notify)
    emit(args, [session_to_json(s) for s in found], lambda: sessions_table(found))
    return EXIT_OK


def cmd_sessions_show(args: argparse.Namespace) -> int:
    from registry.models import session_to_json

    with open_configured(args) as store:
        session = store.sessions.get(args.session_id)
        if session is None:
            raise CommandError(f"no session {args.session_id!r}", EXIT_NOT_FOUND)
        tokens = store.tokens.tokens_for_session(args.session_id)
    document = {**session_to_json(session), "tokens": len(tokens)}
    emit(args, document, lambda: session_detail(session) + f"\ntokens     {len(tokens)}")
    return EXIT_OK


def cmd_sessions_register(args: argparse.Namespace) -> int:
    from registry.models import session_to_json

    with open_configured(args) as store:
        session = store.sessions.register(args.session_id, **session_changes(args))
    emit(args, session_to_json(session), lambda: session_detail(session))
    return EXIT_OK


def cmd_sessions_update(args: argparse.Namespace) -> int:
    from registry.models import session_to_json

    changes = session_changes(args)
    for name in args.clear:
        changes[name] = None
    if not changes:
        raise CommandError("nothing to update: give at least one field or --clear", EXIT_USAGE)
    with open_configured(args) as store:
        session = store.sessions.update(args.session_id, **changes)
    emit(args, session_to_json(session), lambda: session_detail(session))
    return EXIT_OK


def cmd_sessions_remove(args: argparse.Namespace) -> int:
    with open_configured(args) as store:
        removed = store.sessions.remove(args.session_id)
    if not removed:
        raise CommandError(f"no session {args.session_id!r}", EXIT_NOT_FOUND)
    emit(args, {"removed": args.session_id}, lambda: f"removed {args.session_id}")
    return EXIT_OK


# --------------------------------------------------------------------------- tokens


def cmd_tokens_mint(args: argparse.Namespace) -> int:
    from registry.models import iso, token_to_json

    with open_configured(args) as store:
        token = store.tokens.mint_token(
            args.session_id, args.chat_id, ttl=args.ttl, scopes=args.scope or None
        )
    # The one command that prints a token's value: it is what the caller asked for.
    emit(
        args,
        token_to_json(token, reveal=True),
        lambda: (
            f"{token.token}\nsession {token.session_id}  chat {token.chat_id}  "
            f"expires {iso(token.expires_at)}"
        ),
    )
    return EXIT_OK


def cmd_tokens_validate(args: argparse.Namespace) -> int:
    from registry.errors import ChatMismatch, TokenExpired, TokenInvalid
    from registry.models import token_to_json

    with open_configured(args) as store:
        try:
            token = store.tokens.validate_token(args.token, args.chat_id)
        except TokenInvalid as exc:
            reason = {TokenExpired: "expired", ChatMismatch: "chat mismatch"}.get(
                type(exc), "not found"
            )
            emit(args, {"valid": False, "reason": reason}, lambda: f"invalid: {reason}")
            return EXIT_NOT_FOUND
    emit(
        args,
        {"valid": True, **token_to_json(token)},
        lambda: f"valid: session {token.session_id}",
    )
    return EXIT_OK


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from registry.models import token_hint

    with open_configured(args) as store:
        revoked = store.tokens.revoke_token(args.token)
    if not revoked:
        raise CommandError("no such token", EXIT_NOT_FOUND)
    hint = token_hint(args.token)
    emit(args, {"revoked": hint}, lambda: f"revoked {hint}")
    return EXIT_OK


def cmd_tokens_list(args: argparse.Namespace) -> int:
    from registry.models import token_to_json

    with open_configured(args) as store:
        tokens = store.tokens.tokens_for_session(args.session_id)
    emit(
        args,
        [token_to_json(t, reveal=args.show_tokens) for t in tokens],
        lambda: tokens_table(tokens, reveal=args.show_tokens),
    )
    return EXIT_OK


# --------------------------------------------------------------------------- maintenance


def cmd_cleanup(args: argparse.Namespace) -> int:
    both = not args.dead and not args.expired
    result: dict[str, Any] = {}
    with open_configured(args) as store:
        if args.dead or both:
            result["dead_sessions"] = store.sessions.cleanup_dead_sessions()
        if args.expired or both:
            result["expired_sessions"] = store.sessions.cleanup_expired_sessions()
            result["expired_tokens"] = store.tokens.cleanup_expired_tokens()

    def human() -> str:
        lines = []
        for key, value in result.items():
            shown = value if isinstance(value, int) else len(value)
            names = f": {', '.join(value)}" if isinstance(value, list) and value else ""
            lines.append(f"{key.replace('_', ' ')}: {shown}{names}")
        return "\n".join(lines)

    emit(args, result, human)
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Import the legacy files; on an existing database, say what its import did instead.

    Any first command on sqlite imports the legacy files by itself (SPEC 6), so the database
    often exists already: then the stored report is shown, exit 0 while the files are the ones
    it was imported from (same checksums), exit 1 when they changed. ``--reimport`` imports
    them again, keeping the old database as a backup.
    """
    from registry.migrate import import_json, import_status, reimport_json

    config = load_config(args)
    options: dict[str, Any] = {
        "session_ttl": config.session_ttl,
        "token_ttl": config.token_ttl,
        "lock_timeout_s": max(config.lock_timeout_s, 60),
        "progress": progress_reporter("import"),
    }
    if args.reimport and config.db_path.exists():
        report = reimport_json(config.data_dir, config.db_path, **options)
        status = "reimported"
    elif not config.db_path.exists():
        report = import_json(config.data_dir, config.db_path, **options)
        status = "imported"
    else:
        found = import_status(config.data_dir, config.db_path, lock_timeout_s=60)
        if found.report is None:
            raise CommandError(
                f"{config.db_path} exists and was not built by an import (it has no import "
                "report); `migrate --reimport` replaces it with an import of the legacy files, "
                "keeping it as a backup",
                EXIT_NOT_FOUND,
            )
        report = found.report
        if not found.unchanged:
            changes = "; ".join(
                f"{name}: {_checksum(report.sources.get(name))} then, "
                f"{_checksum(found.current.get(name))} now"
                for name in found.changed
            )
            raise CommandError(
                f"{config.db_path} was imported at {report.imported_at}, and the legacy files "
                f"changed since ({changes}); run `migrate --reimport` to import them again "
                "(the current database is kept as a backup)",
                EXIT_NOT_FOUND,
            )
        status = "unchanged"

    def human() -> str:
        if status == "unchanged":
            lines = [
                f"{report.db_path} was imported at {report.imported_at}: "
                f"{report.sessions_imported} sessions and {report.tokens_imported} tokens; "
                "the legacy files are unchanged since (same checksums)",
            ]
        else:
            lines = [
                f"{status} {report.sessions_imported} sessions and {report.tokens_imported} "
                f"tokens into {report.db_path}",
            ]
        if report.backup:
            lines.append(f"the database it replaced is kept as {report.backup}")
        for name, source in report.sources.items():
            lines.append(f"  {name}: {source['bytes']} bytes, sha256 {source['sha256'][:16]}…")
        lines.append(f"skipped {len(report.skipped)}")
        lines.extend(f"  {s.kind} {s.key!r}: {s.reason}" for s in report.skipped)
        return "\n".join(lines)

    emit(args, {**report.to_dict(), "status": status}, human)
    return EXIT_OK


def _checksum(source: dict[str, Any] | None) -> str:
    return "absent" if source is None else f"sha256 {source['sha256'][:12]}…"


def cmd_export(args: argparse.Namespace) -> int:
    from registry.migrate import export_json

    config = load_config(args)
    out = Path(args.out).expanduser()
    export_json(config.db_path, out, progress=progress_reporter("export"))
    emit(
        args,
        {"database": str(config.db_path), "out": str(out)},
        lambda: f"exported {config.db_path} to {out}",
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from registry.factory import open_store
    from registry.migrate import diff_stores

    config = load_config(args)
    if args.against:
        a, b = open_store(config), open_store(args.against)
        names = (f"{config.backend} ({config.source})", f"{b.backend} ({args.against})")
    else:
        # The two sides of a cutover: the JSON files and the database of this data directory.
        if not config.db_path.exists():
            raise CommandError(f"{config.db_path}: no database to compare; run migrate", 3)
        a = open_store(_side(config, "json"))
        b = open_store(_side(config, "sqlite"))
        names = (f"json ({config.data_dir})", f"sqlite ({config.db_path})")
    with a, b:
        differences = diff_stores(a, b)
    document = {
        "a": names[0],
        "b": names[1],
        "differences": [
            {"kind": d.kind, "key": d.key, "field": d.field, "a": str(d.a), "b": str(d.b)}
            for d in differences
        ],
    }

    def human() -> str:
        if not differences:
            return f"no differences between {names[0]} and {names[1]}"
        lines = [f"{len(differences)} difference(s): a = {names[0]}, b = {names[1]}"]
        lines.extend(f"  {d}" for d in differences)
        return "\n".join(lines)

    emit(args, document, human)
    return EXIT_NOT_FOUND if differences else EXIT_OK


def _side(config: StoreConfig, backend: str) -> StoreConfig:
    return config.replace(backend=backend, migrate_from_json=False)


def cmd_doctor(args: argparse.Namespace) -> int:
    from registry.doctor import run_checks

    config = load_config(args)
    checks = run_checks(config)
    emit(
        args,
        [{"check": c.name, "status": c.status, "detail": c.detail} for c in checks],
        lambda: table(
            ("CHECK", "STATUS", "DETAIL"), [(c.name, c.status, c.detail) for c in checks]
        ),
    )
    return EXIT_NOT_FOUND if any(c.status == "fail" for c in checks) else EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    from registry.config import DUAL_KEYS, ENV_DATA_DIR, STORE_KEYS

    config = load_config(args)
    rows: list[tuple[str, Any, str]] = []
    for key in STORE_KEYS:
        if key == "dual":
            continue
        value = getattr(config, key)
        if key == "data_dir" and args.data_dir:
            source = "--data-dir"
        elif key == "backend" and args.backend:
            source = "--backend"
        elif key in config.explicit:
            source = config.source
        elif key == "data_dir" and os.environ.get(ENV_DATA_DIR):
            source = f"${ENV_DATA_DIR}"
        else:
            source = "default"
        if key == "sqlite_path" and value is None:
            value, source = config.db_path, f"{source} (data_dir/ccr.db)"
        rows.append((key, value, source))
    for key in DUAL_KEYS:
        explicit = f"dual.{key}" in config.explicit
        rows.append(
            (f"dual.{key}", getattr(config.dual, key), config.source if explicit else "default")
        )
    emit(
        args,
        {
            key: {"value": str(value) if isinstance(value, Path) else value, "source": source}
            for key, value, source in rows
        },
        lambda: table(("KEY", "VALUE", "SOURCE"), rows),
    )
    return EXIT_OK


# --------------------------------------------------------------------------- hooks


def caller() -> tuple[int, int | None, str | None]:
    """The hook's parent (the agent): pid, start time in epoch seconds, and its stdin's tty."""
    ppid = os.getppid()
    if sys.platform.startswith("linux"):
        return ppid, _linux_start_time(ppid), _linux_tty(ppid)
    import psutil

    try:
        parent = psutil.Process(ppid)
        return ppid, int(parent.create_time()), parent.terminal()
    except psutil.Error:
        return ppid, None, None


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


def _linux_tty(pid: int) -> str | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/0")
    except OSError:
        return None
    return target if target.startswith(("/dev/pts/", "/dev/tty")) else None


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
    return name if done.returncode == 0 and name else None


def transport_from_env(tty: str | None) -> tuple[str, dict[str, Any]]:
    """Transport kind and details: nvim from ``$NVIM``, tmux from ``$TMUX``/``$TMUX_PANE``,
    else the caller's pty, else unknown."""
    pane = os.environ.get("TMUX_PANE")
    in_tmux = bool(os.environ.get("TMUX") or pane)
    details: dict[str, Any] = {}
    if os.environ.get("NVIM"):
        details["nvim_socket"] = os.environ["NVIM"]
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


class HookTimeout(Exception):
    pass


def read_hook_input() -> dict[str, Any]:
    raw = sys.stdin.read(HOOK_STDIN_LIMIT + 1)
    if len(raw) > HOOK_STDIN_LIMIT:
        raise ValueError("hook input is larger than 1 MiB")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError("hook input is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
        raise ValueError("hook input has no session_id")
    return data


def run_hook(args: argparse.Namespace) -> int:
    """Register or remove the calling session; never fails the agent (always exit 0)."""
    import signal

    def deadline(_signum: int, _frame: object) -> None:
        raise HookTimeout(f"gave up after {HOOK_DEADLINE_S:g} s")

    previous = signal.signal(signal.SIGALRM, deadline)
    signal.setitimer(signal.ITIMER_REAL, HOOK_DEADLINE_S)
    try:
        data = read_hook_input()
        config = load_config(args)
        if config.lock_timeout_s > HOOK_LOCK_TIMEOUT_S:
            config = config.replace(lock_timeout_s=HOOK_LOCK_TIMEOUT_S)
        if not fast_hook(config, args.event, data, notify=args.notify):
            from registry.factory import open_store

            with open_store(config) as store:
                apply_hook(store, args.event, data, notify=args.notify)
    except BaseException as exc:  # anything at all: a hook must not break the agent
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG} hook {args.event}: warning: {message[:300]}", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return EXIT_OK


def hook_session(data: dict[str, Any], notify: bool | None) -> dict[str, Any]:
    """What a hook registers about its caller, validated (transport as kind and details)."""
    from registry.validation import check_details, check_kind, check_text

    ppid, start_time, tty = caller()
    given = data.get("cwd")
    cwd = check_text("cwd", given if isinstance(given, str) and given else os.getcwd())
    assert cwd is not None
    kind, details = transport_from_env(tty)
    return {
        "ppid": ppid,
        # The hook process itself, as the legacy hooks recorded it ($$ of the hook script).
        "pid": os.getpid(),
        "start_time": start_time,
        "cwd": cwd,
        "label": check_text("label", os.path.basename(cwd.rstrip("/")) or cwd),
        "notify": notify,
        "transport": (check_kind(kind), check_details(details)),
        "state": "running",
    }


def apply_hook(store: Store, event: str, data: dict[str, Any], *, notify: bool | None) -> None:
    """The hook through the store: any backend, and the first start of a new database."""
    from registry.models import Transport

    session_id = data["session_id"]
    if event == "session-end":
        store.sessions.remove(session_id)
        return
    if event == "heartbeat" and store.sessions.get(session_id) is not None:
        store.sessions.touch(session_id)
        return
    values = hook_session(data, notify)
    kind, details = values.pop("transport")
    store.sessions.register(session_id, **values, transport=Transport(kind=kind, details=details))


def fast_hook(
    config: StoreConfig, event: str, data: dict[str, Any], *, notify: bool | None
) -> bool:
    """The hook on an existing sqlite database, without importing the models (and attrs).

    It runs the statements ``SqliteStore.register``, ``touch`` and ``remove`` run
    (:mod:`registry.backends.sqlite_sql`), after the same validation. Returns False, having
    done nothing, where it does not apply: another backend, no database yet (the first start
    imports the legacy files), or a schema version this code must upgrade or refuse.
    """
    if config.backend != "sqlite" or not config.db_path.is_file():
        return False
    import time
    from datetime import timedelta

    from registry.backends import sqlite_sql as sql
    from registry.validation import check_key, check_notify

    session_id = check_key("session_id", data["session_id"])
    path = config.db_path
    with sql.translated(path):
        conn = sql.connect(path, config.lock_timeout_s)
    try:
        with sql.translated(path):
            if sql.schema_version(conn) != sql.SCHEMA_VERSION:
                return False
        now = time.time_ns() // 1_000_000
        expires_at = now + config.session_ttl // timedelta(milliseconds=1)
        if event == "session-end":
            with sql.transaction(conn, path):
                sql.remove_row(conn, session_id)
            return True
        if event == "heartbeat":
            with sql.transaction(conn, path):
                if sql.touch_row(conn, session_id, now, expires_at) is not None:
                    return True
        values = hook_session(data, notify)
        kind, details = values.pop("transport")
        if values["notify"] is not None:
            values["notify"] = int(check_notify(values["notify"]))
        with sql.transaction(conn, path):
            sql.register_row(
                conn,
                session_id=session_id,
                **values,
                transport_kind=kind,
                transport_details=json.dumps(details, separators=(",", ":")),
                now=now,
                expires_at=expires_at,
            )
        return True
    finally:
        conn.close()


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Session registry and token store of the CCR daemon."
    )
    parser.add_argument("--config", metavar="PATH", help="a TOML file with a [store] table")
    parser.add_argument("--data-dir", metavar="DIR", help="the data directory (as $CCR_DATA_DIR)")
    parser.add_argument(
        "--backend", choices=("json", "sqlite", "dual"), help="override the configured backend"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hook = commands.add_parser("hook", help="Claude Code hooks: read the hook JSON on stdin")
    hook.add_argument("event", choices=("session-start", "session-end", "heartbeat"))
    hook.add_argument(
        "--notify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mark the session for Telegram notifications (session-start, heartbeat)",
    )
    hook.set_defaults(func=run_hook)

    sessions = commands.add_parser("sessions", help="list, show and edit sessions")
    sub = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", parents=[output], help="list sessions")
    listing.add_argument("--active", action="store_true", help="running and not expired only")
    listing.add_argument("--notify", action="store_true", help="notify sessions only")
    listing.set_defaults(func=cmd_sessions_list)
    show = sub.add_parser("show", parents=[output], help="show one session")
    show.add_argument("session_id")
    show.set_defaults(func=cmd_sessions_show)
    for name, func, text in (
        ("register", cmd_sessions_register, "insert or update a session"),
        ("update", cmd_sessions_update, "change fields of a session"),
    ):
        edit = sub.add_parser(name, parents=[output], help=text)
        edit.add_argument("session_id")
        edit.add_argument("--ppid", type=int)
        edit.add_argument("--pid", type=int)
        edit.add_argument("--start-time", type=int, dest="start_time")
        edit.add_argument("--cwd")
        edit.add_argument("--label")
        edit.add_argument("--notify", action=argparse.BooleanOptionalAction, default=None)
        edit.add_argument("--state", choices=("running", "stopped"))
        edit.add_argument("--transport", choices=("nvim", "tmux", "pty", "unknown"))
        edit.add_argument("--detail", type=detail, action="append", default=[], metavar="KEY=VALUE")
        if name == "update":
            edit.add_argument(
                "--clear",
                action="append",
                default=[],
                choices=("ppid", "pid", "start_time", "cwd", "label"),
                help="set a field to none",
            )
        edit.set_defaults(func=func)
    remove = sub.add_parser("remove", parents=[output], help="remove a session and its tokens")
    remove.add_argument("session_id")
    remove.set_defaults(func=cmd_sessions_remove)

    tokens = commands.add_parser("tokens", help="mint, validate, revoke and list tokens")
    sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    mint = sub.add_parser("mint", parents=[output], help="mint a token (prints its value)")
    mint.add_argument("session_id")
    mint.add_argument("chat_id", type=chat_id)
    mint.add_argument("--ttl", type=duration, help="lifetime: 90s, 30m, 24h, 7d")
    mint.add_argument("--scope", action="append", default=[])
    mint.set_defaults(func=cmd_tokens_mint)
    validate = sub.add_parser("validate", parents=[output], help="check a token for a chat")
    validate.add_argument("token", help=TOKEN_HELP)
    validate.add_argument("chat_id", type=chat_id)
    validate.set_defaults(func=cmd_tokens_validate)
    revoke = sub.add_parser("revoke", parents=[output], help="delete a token")
    revoke.add_argument("token", help=TOKEN_HELP)
    revoke.set_defaults(func=cmd_tokens_revoke)
    tlist = sub.add_parser("list", parents=[output], help="tokens of a session (values hidden)")
    tlist.add_argument("session_id")
    tlist.add_argument("--show-tokens", action="store_true", help="print the values too")
    tlist.set_defaults(func=cmd_tokens_list)

    cleanup = commands.add_parser("cleanup", parents=[output], help="remove dead/expired")
    cleanup.add_argument("--dead", action="store_true", help="sessions whose process is gone")
    cleanup.add_argument("--expired", action="store_true", help="expired sessions and tokens")
    cleanup.set_defaults(func=cmd_cleanup)

    migrate = commands.add_parser("migrate", parents=[output], help="import the legacy JSON")
    migrate.add_argument(
        "--reimport",
        action="store_true",
        help="import again over an existing database, keeping it as a timestamped backup",
    )
    migrate.set_defaults(func=cmd_migrate)
    export = commands.add_parser("export", parents=[output], help="write the legacy JSON files")
    export.add_argument("--out", required=True, metavar="DIR")
    export.set_defaults(func=cmd_export)
    verify = commands.add_parser("verify", parents=[output], help="diff the cutover's two sides")
    verify.add_argument("--against", metavar="CONFIG", help="diff against another config file")
    verify.set_defaults(func=cmd_verify)
    doctor = commands.add_parser("doctor", parents=[output], help="check the store's health")
    doctor.set_defaults(func=cmd_doctor)
    config = commands.add_parser("config", help="the resolved configuration")
    sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_show = sub.add_parser("show", parents=[output], help="values and where they came from")
    config_show.set_defaults(func=cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if func is run_hook:
        return run_hook(args)
    from registry.errors import (
        ConfigError,
        RegistryError,
        SessionNotFound,
        TokenInvalid,
        ValidationError,
    )

    try:
        return func(args)
    except CommandError as exc:
        return fail(str(exc), exc.code)
    except (SessionNotFound, TokenInvalid) as exc:
        return fail(str(exc), EXIT_NOT_FOUND)
    except (ValidationError, ConfigError) as exc:
        return fail(str(exc), EXIT_USAGE)
    except RegistryError as exc:
        return fail(str(exc), EXIT_STORE)
    except KeyboardInterrupt:
        return fail("interrupted", 130)


def fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code
