"""``ccr-registry``: the command line for Claude Code hooks and for operators (SPEC 8).

Argument parsing and printing only; every command calls the library. :func:`main` hands a hook
invocation to :mod:`registry.hook` before it imports argparse: a hook is a process of its own
every time the agent starts, stops or ends, so its start-up is the cost that counts.

Exit codes: 0 ok, 1 not found, differences or failed checks, 2 usage, 3 store error. Results go to
stdout (one JSON document with ``--json``), errors and progress to stderr; with ``--json`` an error
is also a JSON object ``{"error": ..., "code": ...}`` on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# The command words (the parser below defines each one); the console script's entry module
# holds them for its early hook dispatch.
from registry._entry import COMMANDS

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from datetime import datetime
    from typing import Any, Final

    from registry.config import StoreConfig
    from registry.models import Command, Session, Token
    from registry.protocols import Store

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_STORE: Final = 3

PROG: Final = "ccr-registry"
# URL-safe base64 may begin with "-", which argparse would read as an option.
TOKEN_HELP: Final = 'the token value; put "--" before it if it starts with "-"'
# A --ttl beyond this is a typing mistake, not a lifetime (and 1e300 s overflows timedelta).
MAX_TTL_S: Final = 100 * 365 * 86400


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
    :raises ConfigError: also for a backend name the factory does not have, so that doctor and
        ``config show`` report it as the commands that open the store do.
    """
    from registry.factory import check_backends
    from registry.hook import load_config as resolve

    config = resolve(args.config, args.data_dir, args.backend, **overrides)
    check_backends(config)
    return config


def fallback_config(args: argparse.Namespace) -> StoreConfig:
    """The defaults with ``--data-dir`` and ``--backend``: what doctor and ``config show``
    inspect when the config file cannot be used."""
    from registry.config import StoreConfig
    from registry.hook import data_dir_of

    values: dict[str, Any] = {"data_dir": Path(data_dir_of(args.data_dir))}
    if args.backend:
        values["backend"] = args.backend
    return StoreConfig(**values)


def open_configured(args: argparse.Namespace, *, create: bool = True) -> Store:
    """The configured store. Without ``create`` (commands that only read), a store that does
    not exist yet is refused (exit 3) instead of created, legacy import included."""
    from registry.factory import open_store, store_exists

    config = load_config(args)
    if not create and not store_exists(config):
        if config.backend == "json" or not config.data_dir.is_dir():
            where = f"no data directory {config.data_dir}"
        else:
            where = f"no database {config.db_path}"
        raise CommandError(
            f"{where}: nothing to read (a hook or a command that writes creates the store)",
            EXIT_STORE,
        )
    return open_store(config)


# --------------------------------------------------------------------------- output


def emit(args: argparse.Namespace, document: Any, human: Callable[[], str]) -> None:
    """One JSON document with ``--json``, else the human form."""
    if args.json:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        text = human()
        if text:
            print(text)


def to_stderr(text: str) -> None:
    """One line on stderr, or nothing when stderr is closed.

    With ``2>&-`` Python sets ``sys.stderr`` to None and ``print(file=None)`` writes to stdout;
    and fd 2 may by now be a file this process opened, so it is checked before writing.
    """
    if sys.stderr is None:
        return
    try:
        os.fstat(sys.stderr.fileno())
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# Control characters (C0, DEL, C1), line and paragraph separators and bidirectional overrides:
# stored text (a directory name, a label) must not retitle, recolour or reorder a terminal.
_ESCAPED: Final = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))},
    **{code: f"\\u{code:04x}" for code in (0x2028, 0x2029, *range(0x202A, 0x202F))},
    **{code: f"\\u{code:04x}" for code in range(0x2066, 0x206A)},
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
}


def printable(value: object) -> str:
    """``value`` as text safe to print on a terminal (control characters escaped)."""
    return ("" if value is None else str(value)).translate(_ESCAPED)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table, control characters escaped; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [[printable(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def short_time(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC (the table headers say so)."""
    from registry.models import iso

    return iso(moment).replace("T", " ")[:19]


def utc_now() -> datetime:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def shown_state(session: Session, now: datetime) -> str:
    """The state as it is true now: a session past its expiry is ``expired``, whatever it says."""
    return "expired" if session.expires_at <= now else session.state


def sessions_table(sessions: Sequence[Session]) -> str:
    if not sessions:
        return "no sessions"
    now = utc_now()
    rows = [
        (
            s.session_id,
            shown_state(s, now),
            "yes" if s.notify else "no",
            s.ppid,
            s.transport.kind,
            short_time(s.last_seen),
            short_time(s.expires_at),
            s.cwd,
        )
        for s in sessions
    ]
    headers = (
        "SESSION",
        "STATE",
        "NOTIFY",
        "PPID",
        "TRANSPORT",
        "LAST SEEN (UTC)",
        "EXPIRES (UTC)",
        "CWD",
    )
    return table(headers, rows)


def session_to_json(session: Session) -> dict[str, Any]:
    """A session as ``--json`` prints it: model field names, ISO-8601 timestamps."""
    from registry.models import iso

    return {
        "session_id": session.session_id,
        "ppid": session.ppid,
        "pid": session.pid,
        "start_time": session.start_time,
        "cwd": session.cwd,
        "label": session.label,
        "notify": session.notify,
        "transport": {
            "kind": session.transport.kind,
            "details": session.transport.details.to_dict(),
        },
        "state": session.state,
        "created_at": iso(session.created_at),
        "updated_at": iso(session.updated_at),
        "last_seen": iso(session.last_seen),
        "expires_at": iso(session.expires_at),
        "host": session.host,
    }


def token_to_json(token: Token, *, reveal: bool = False) -> dict[str, Any]:
    """A token as the CLI prints it; the value itself only when ``reveal``, else a short hash."""
    from registry.models import iso, token_hint

    return {
        "token": token.token if reveal else token_hint(token.token),
        "session_id": token.session_id,
        "chat_id": token.chat_id,
        "scopes": list(token.scopes),
        "context": token.context.to_dict(),
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
    }


def session_detail(session: Session, *, tokens: int | None = None) -> str:
    data = session_to_json(session)
    transport = data.pop("transport")
    state = shown_state(session, utc_now())
    if state != session.state:
        data["state"] = f"{session.state} (expired at {data['expires_at']})"
    rows: list[tuple[str, object]] = [(key, value) for key, value in data.items()]
    rows.append(("transport", transport["kind"]))
    rows.extend((f"  {k}", v) for k, v in transport["details"].items())
    if tokens is not None:
        rows.append(("tokens", tokens))
    return table(("FIELD", "VALUE"), rows)


def tokens_table(tokens: Sequence[Token], *, reveal: bool) -> str:
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
                short_time(token.created_at),
                short_time(token.expires_at),
            )
        )
    return table(("TOKEN", "CHAT", "SCOPES", "CREATED (UTC)", "EXPIRES (UTC)"), rows)


def command_to_json(command: Command) -> dict[str, Any]:
    """A command as ``--json`` prints it: model field names, the payload as an object,
    ISO-8601 timestamps (as :func:`session_to_json`)."""
    from registry.models import iso

    return {
        "command_id": command.command_id,
        "session_id": command.session_id,
        "seq": command.seq,
        "payload": command.payload.to_dict(),
        "chat_id": command.chat_id,
        "state": command.state,
        "attempts": command.attempts,
        "available_at": iso(command.available_at),
        "lease_owner": command.lease_owner,
        "lease_until": None if command.lease_until is None else iso(command.lease_until),
        "last_error": command.last_error,
        "created_at": iso(command.created_at),
        "updated_at": iso(command.updated_at),
        "host": command.host,
    }


def commands_table(commands: Sequence[Command]) -> str:
    if not commands:
        return "no commands"
    rows = [
        (
            c.seq,
            c.command_id,
            c.session_id or "-",
            c.state,
            c.attempts,
            short_time(c.available_at),
            short_time(c.updated_at),
            c.last_error,
        )
        for c in commands
    ]
    headers = (
        "SEQ",
        "COMMAND",
        "SESSION",
        "STATE",
        "ATTEMPTS",
        "AVAILABLE (UTC)",
        "UPDATED (UTC)",
        "LAST ERROR",
    )
    return table(headers, rows)


def command_detail(command: Command) -> str:
    data = command_to_json(command)
    data["payload"] = json.dumps(data["payload"], ensure_ascii=False, separators=(",", ":"))
    return table(("FIELD", "VALUE"), list(data.items()))


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
    """``90``, ``90s``, ``30m``, ``24h`` or ``7d`` as a timedelta (at most 100 years)."""
    import argparse
    import math
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 30m, 24h)") from None
    seconds = value * units[unit]
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TTL_S:
        raise argparse.ArgumentTypeError(
            f"not a usable duration: {text!r} (from 0 to {MAX_TTL_S // 86400}d)"
        )
    return timedelta(seconds=seconds)


def chat_id(text: str) -> int:
    import argparse

    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a chat id: {text!r}") from None


JSON_TYPE_NAMES: Final = {
    "list": "an array",
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "null",
}


def json_object(text: str) -> dict[str, Any]:
    """``--payload``: a JSON object (NaN and Infinity are refused: they are not JSON)."""
    import argparse

    def not_json(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=not_json)
    except RecursionError:
        raise argparse.ArgumentTypeError("not usable: nested too deeply") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        kind = JSON_TYPE_NAMES.get(type(value).__name__, type(value).__name__)
        raise argparse.ArgumentTypeError(
            f'must be a JSON object such as \'{{"text": "ls"}}\', got {kind}'
        )
    return value


def detail(text: str) -> tuple[str, Any]:
    import argparse

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


# What SessionRegistry.update may set (registry.models.UPDATABLE_FIELDS) has an option each;
# the transport is built from --transport and --detail, and these three always hold a value.
NOT_CLEARABLE: Final = ("notify", "transport", "state")


def session_fields() -> tuple[str, ...]:
    """The updatable fields with an option of their own (all but the transport)."""
    from registry.models import UPDATABLE_FIELDS

    return tuple(name for name in UPDATABLE_FIELDS if name != "transport")


def clearable_fields() -> tuple[str, ...]:
    """The updatable fields ``--clear`` may set to None."""
    from registry.models import UPDATABLE_FIELDS

    return tuple(name for name in UPDATABLE_FIELDS if name not in NOT_CLEARABLE)


def session_changes(args: argparse.Namespace) -> dict[str, Any]:
    from registry.models import Transport

    changes = {name: getattr(args, name) for name in session_fields()}
    changes = {name: value for name, value in changes.items() if value is not None}
    if args.transport is not None or args.detail:
        changes["transport"] = Transport(
            kind=args.transport or "unknown", details=dict(args.detail)
        )
    return changes


def cmd_sessions_list(args: argparse.Namespace) -> int:
    with open_configured(args, create=False) as store:
        found = store.sessions.list_sessions(active_only=args.active, notify_only=args.notify)
    emit(args, [session_to_json(s) for s in found], lambda: sessions_table(found))
    return EXIT_OK


def cmd_sessions_show(args: argparse.Namespace) -> int:
    with open_configured(args, create=False) as store:
        session = store.sessions.get(args.session_id)
        if session is None:
            raise CommandError(f"no session {args.session_id!r}", EXIT_NOT_FOUND)
        tokens = len(store.tokens.tokens_for_session(args.session_id))
    # The same object as one element of `sessions list --json`; `tokens list` has the tokens.
    emit(args, session_to_json(session), lambda: session_detail(session, tokens=tokens))
    return EXIT_OK


def cmd_sessions_register(args: argparse.Namespace) -> int:
    with open_configured(args) as store:
        session = store.sessions.register(args.session_id, **session_changes(args))
    emit(args, session_to_json(session), lambda: session_detail(session))
    return EXIT_OK


def cmd_sessions_update(args: argparse.Namespace) -> int:
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
    emit(args, {"removed": args.session_id}, lambda: f"removed {printable(args.session_id)}")
    return EXIT_OK


# --------------------------------------------------------------------------- tokens


def cmd_tokens_mint(args: argparse.Namespace) -> int:
    from registry.models import iso

    with open_configured(args) as store:
        token = store.tokens.mint_token(
            args.session_id, args.chat_id, ttl=args.ttl, scopes=args.scope or None
        )
    # The one command that prints a token's value, alone on stdout so that
    # T=$(ccr-registry tokens mint S C) captures exactly the token; the details go to stderr.
    if args.json:
        emit(args, token_to_json(token, reveal=True), str)
    else:
        print(token.token)
        to_stderr(
            f"minted for session {printable(token.session_id)}, chat {token.chat_id}, "
            f"expires {iso(token.expires_at)}"
        )
    return EXIT_OK


def cmd_tokens_validate(args: argparse.Namespace) -> int:
    from registry.errors import ChatMismatch, TokenExpired, TokenInvalid

    with open_configured(args, create=False) as store:
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
        lambda: f"valid: session {printable(token.session_id)}",
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
    with open_configured(args, create=False) as store:
        if store.sessions.get(args.session_id) is None:
            raise CommandError(f"no session {args.session_id!r}", EXIT_NOT_FOUND)
        tokens = store.tokens.tokens_for_session(args.session_id)
    emit(
        args,
        [token_to_json(t, reveal=args.show_tokens) for t in tokens],
        lambda: tokens_table(tokens, reveal=args.show_tokens),
    )
    return EXIT_OK


# --------------------------------------------------------------------------- inbox


def cmd_inbox_list(args: argparse.Namespace) -> int:
    # No check that --session names a live session: commands outlive their session.
    with open_configured(args, create=False) as store:
        found = store.inbox.list_commands(session_id=args.session, state=args.state)
    emit(args, [command_to_json(c) for c in found], lambda: commands_table(found))
    return EXIT_OK


def cmd_inbox_show(args: argparse.Namespace) -> int:
    with open_configured(args, create=False) as store:
        command = store.inbox.get(args.command_id)
    if command is None:
        raise CommandError(f"no command {args.command_id!r}", EXIT_NOT_FOUND)
    # The same object as one element of `inbox list --json`.
    emit(args, command_to_json(command), lambda: command_detail(command))
    return EXIT_OK


def cmd_inbox_enqueue(args: argparse.Namespace) -> int:
    with open_configured(args) as store:
        command, created = store.inbox.enqueue(
            args.command_id,
            args.payload,
            session_id=args.session,
            chat_id=args.chat_id,
            delay=args.delay,
        )

    def human() -> str:
        name = printable(command.command_id)
        if created:
            head = f"enqueued {name}"
        else:
            head = f"{name} was already there: nothing written (its payload is not compared)"
        return f"{head}\n{command_detail(command)}"

    # A known id is no error (enqueue is idempotent): exit 0 either way, "created" says which.
    emit(args, {"created": created, "command": command_to_json(command)}, human)
    return EXIT_OK


def cmd_inbox_requeue(args: argparse.Namespace) -> int:
    with open_configured(args) as store, store.atomic():
        before = store.inbox.get(args.command_id)
        command = store.inbox.requeue(args.command_id)
    requeued = before is not None and before.state in ("done", "dead")

    def human() -> str:
        name = printable(command.command_id)
        if requeued:
            head = f"requeued {name}: ready, attempts 0"
        else:
            head = f"{name} is {command.state}: unchanged (only done and dead commands move)"
        return f"{head}\n{command_detail(command)}"

    emit(args, {"requeued": requeued, "command": command_to_json(command)}, human)
    return EXIT_OK


# --------------------------------------------------------------------------- maintenance


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Without a flag every cleanup runs, as the janitor runs them (SPEC 7)."""
    every = not (args.dead or args.expired or args.inbox)
    # The same keys whatever the flags: a cleanup that was not asked for is null.
    result: dict[str, Any] = {
        "dead_sessions": None,
        "expired_sessions": None,
        "expired_tokens": None,
        "inbox_commands": None,
    }
    with open_configured(args) as store:
        if args.dead or every:
            result["dead_sessions"] = store.sessions.cleanup_dead_sessions()
        if args.expired or every:
            result["expired_sessions"] = store.sessions.cleanup_expired_sessions()
            result["expired_tokens"] = store.tokens.cleanup_expired_tokens()
        if args.inbox or every:
            result["inbox_commands"] = store.inbox.cleanup_inbox()

    def human() -> str:
        lines = []
        for key, value in result.items():
            if value is None:
                continue
            shown = value if isinstance(value, int) else len(value)
            names = (
                f": {', '.join(map(printable, value))}" if isinstance(value, list) and value else ""
            )
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
        "inbox_dir": config.inbox_dir,
        "host_id": config.host_id,
    }
    if args.reimport and config.db_path.exists():
        report = reimport_json(config.data_dir, config.db_path, **options)
        status = "reimported"
    elif not config.db_path.exists():
        report = import_json(config.data_dir, config.db_path, **options)
        status = "imported"
    else:
        found = import_status(
            config.data_dir,
            config.db_path,
            lock_timeout_s=60,
            inbox_dir=config.inbox_dir,
            host_id=config.host_id,
        )
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
                f"{report.sessions_imported} sessions, {report.tokens_imported} tokens and "
                f"{report.commands_imported} commands; "
                "the legacy files are unchanged since (same checksums)",
            ]
        else:
            lines = [
                f"{status} {report.sessions_imported} sessions, {report.tokens_imported} "
                f"tokens and {report.commands_imported} commands into {report.db_path}",
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
    export_json(
        config.db_path,
        out,
        progress=progress_reporter("export"),
        inbox=args.inbox,
        host_id=config.host_id,
    )
    written = " (with ccr-inbox.json)" if args.inbox else ""
    emit(
        args,
        {"database": str(config.db_path), "out": str(out), "inbox": args.inbox},
        lambda: f"exported {config.db_path} to {out}{written}",
    )
    return EXIT_OK


def cmd_copy(args: argparse.Namespace) -> int:
    """Copy the configured store into the store of ``--to`` (SPEC 6), which must be empty."""
    from registry.config import StoreConfig
    from registry.factory import open_store, store_exists
    from registry.migrate import copy_store

    config = load_config(args)
    target = StoreConfig.resolve(args.to)
    if not store_exists(config):
        raise CommandError(f"{config.source}: no store at {config.data_dir}", EXIT_STORE)
    src = open_store(config)
    try:
        dst = open_store(target)
    except BaseException:
        src.close()
        raise
    names = (f"{config.backend} ({config.source})", f"{dst.backend} ({args.to})")
    with src, dst:
        report = copy_store(src, dst, progress=progress_reporter("copy"))
    document = {"from": names[0], "to": names[1], **report.to_dict()}

    def human() -> str:
        lines = [
            f"copied {report.sessions} session(s), {report.tokens} token(s) and "
            f"{report.commands} command(s) from {names[0]} to {names[1]}; "
            f"next seq {report.next_seq}"
        ]
        if report.differences:
            lines.append(f"{len(report.differences)} difference(s) after the copy:")
            lines.extend(f"  {printable(d)}" for d in report.differences)
        else:
            lines.append("no differences after the copy")
        return "\n".join(lines)

    emit(args, document, human)
    return EXIT_NOT_FOUND if report.differences else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from registry.config import StoreConfig
    from registry.factory import open_store, store_exists
    from registry.migrate import diff_stores

    config = load_config(args)
    if args.against:
        other = StoreConfig.resolve(args.against)
        for side in (config, other):
            if not store_exists(side):
                raise CommandError(f"{side.source}: no store at {side.data_dir}", EXIT_STORE)
        a = open_store(config)
        try:
            b = open_store(other)
        except BaseException:
            a.close()
            raise
        names = (f"{config.backend} ({config.source})", f"{b.backend} ({args.against})")
    else:
        # The two sides of a cutover: the JSON files and the database of this data directory.
        if not config.db_path.exists():
            raise CommandError(f"{config.db_path}: no database to compare; run migrate", EXIT_STORE)
        a = open_store(_side(config, "json"))
        try:
            b = open_store(_side(config, "sqlite"))
        except BaseException:
            a.close()
            raise
        names = (f"json ({config.data_dir})", f"sqlite ({config.db_path})")
    with a, b:
        differences = diff_stores(a, b, progress=progress_reporter("verify"))
    # A dual side whose secondary could not be opened compares its primary only: say so.
    warnings = [
        f"{side}: the dual secondary is not open, compared the primary only: {error}"
        for side, store in zip(("a", "b"), (a, b), strict=True)
        if (error := getattr(store, "secondary_error", None))
    ]
    document = {
        "a": names[0],
        "b": names[1],
        "differences": [d.to_json() for d in differences],
        "warnings": warnings,
    }

    def human() -> str:
        lines = [f"warning: {printable(w)}" for w in warnings]
        if not differences:
            return "\n".join([*lines, f"no differences between {names[0]} and {names[1]}"])
        lines.append(f"{len(differences)} difference(s): a = {names[0]}, b = {names[1]}")
        lines.extend(f"  {printable(d)}" for d in differences)
        return "\n".join(lines)

    emit(args, document, human)
    return EXIT_NOT_FOUND if differences else EXIT_OK


def _side(config: StoreConfig, backend: str) -> StoreConfig:
    return config.replace(backend=backend, migrate_from_json=False)


def cmd_doctor(args: argparse.Namespace) -> int:
    from registry.doctor import run_checks
    from registry.errors import ConfigError

    try:
        config, problem = load_config(args), None
    except ConfigError as exc:
        # doctor is what a person runs when something is wrong: show the error, check the rest.
        config, problem = fallback_config(args), str(exc)
    checks = run_checks(config, config_error=problem)
    emit(
        args,
        [{"check": c.name, "status": c.status, "detail": c.detail} for c in checks],
        lambda: table(
            ("CHECK", "STATUS", "DETAIL"), [(c.name, c.status, c.detail) for c in checks]
        ),
    )
    return EXIT_NOT_FOUND if any(c.status == "fail" for c in checks) else EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    from registry.config import DUAL_KEYS, ENV_DATA_DIR, POSTGRES_KEYS, STORE_KEYS
    from registry.errors import ConfigError
    from registry.hook import config_file_of

    rows: list[tuple[str, Any, str]] = []
    try:
        config = load_config(args)
    except ConfigError as exc:
        # Shown as a row, with the defaults below it: this is the command a person reaches for
        # when the config is broken.
        rows.append(("error", str(exc), config_file_of(args.config, args.data_dir) or "defaults"))
        config = fallback_config(args)
    for key in STORE_KEYS:
        if key in ("dual", "postgres"):
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
        if key == "legacy_inbox_dir" and value is None:
            # What the import reads (StoreConfig.inbox_dir): $CCR_DATA_DIR, else ~/.ccr.
            fallback = f"${ENV_DATA_DIR}" if os.environ.get(ENV_DATA_DIR) else "~/.ccr"
            value, source = config.inbox_dir, f"{source} ({fallback})"
        rows.append((key, value, source))
    for key in DUAL_KEYS:
        explicit = f"dual.{key}" in config.explicit
        rows.append(
            (f"dual.{key}", getattr(config.dual, key), config.source if explicit else "default")
        )
    for key in POSTGRES_KEYS:
        explicit = f"postgres.{key}" in config.explicit
        value = getattr(config.postgres, key)
        if key == "dsn" and value is not None:
            value = "(set, not shown)"  # a DSN may hold a password
        rows.append((f"postgres.{key}", value, config.source if explicit else "default"))
    for name, settings in sorted(config.plugin_settings.items()):
        # A plug-in's values are its own and may hold a secret: their keys are shown, not them.
        rows.extend((f"{name}.{key}", "(set, not shown)", config.source) for key in settings)
    emit(
        args,
        {
            key: {"value": str(value) if isinstance(value, Path) else value, "source": source}
            for key, value, source in rows
        },
        lambda: table(("KEY", "VALUE", "SOURCE"), rows),
    )
    return EXIT_NOT_FOUND if rows[0][0] == "error" else EXIT_OK


# --------------------------------------------------------------------------- parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ccr-registry")
    except PackageNotFoundError:
        return "unknown"


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    import argparse

    from registry.defaults import BACKEND_NAMES
    from registry.hook import EVENTS
    from registry.validation import COMMAND_STATES, STATES, TRANSPORT_KINDS

    class Parser(argparse.ArgumentParser):
        """argparse with "did you mean ...?" for a mistyped choice, and JSON errors."""

        def _check_value(self, action: argparse.Action, value: Any) -> None:
            choices = action.choices
            if choices is not None and value not in choices:
                import difflib

                names = [str(c) for c in choices]
                close = difflib.get_close_matches(str(value), names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(names)}"
                raise argparse.ArgumentError(action, f"invalid choice: {value!r} ({hint})")
            super()._check_value(action, value)

        def error(self, message: str) -> Any:
            if json_errors:
                print(json.dumps({"error": message, "code": EXIT_USAGE}))
            if sys.stderr is not None:
                self.print_usage(sys.stderr)
            to_stderr(f"{self.prog}: error: {message}")
            raise SystemExit(EXIT_USAGE)

    parser = Parser(
        prog=PROG,
        description="Session registry and token store of the CCR daemon.",
        epilog="Exit codes: 0 ok, 1 not found or differences, 2 usage, 3 store error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--config", metavar="PATH", help="a TOML file with a [store] table")
    parser.add_argument("--data-dir", metavar="DIR", help="the data directory (as $CCR_DATA_DIR)")
    # No argparse choices: a plug-in backend's name is known only to the factory, which refuses
    # an unknown one with the built-in and installed names (exit 2, as any config error).
    parser.add_argument(
        "--backend",
        metavar="NAME",
        help=f"override the configured backend ({', '.join(BACKEND_NAMES)}, postgres or a plug-in)",
    )
    json_help = 'print one JSON document (errors too: {"error": ..., "code": ...})'
    parser.add_argument("--json", action="store_true", help=json_help)
    output = Parser(add_help=False)
    output.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hook = commands.add_parser(
        "hook",
        help="Claude Code hooks: read the hook JSON on stdin (always exit 0, nothing on stdout)",
        description="Register or remove the calling agent's session. Always exits 0 with "
        "nothing on stdout; a problem is one warning line on stderr. See docs/hooks.md.",
    )
    hook.add_argument(
        "event",
        choices=EVENTS,
        metavar="EVENT",
        help="session-start: register the session (again); heartbeat: touch it, or register "
        "it if unknown; session-end: remove it and its tokens",
    )
    hook.add_argument(
        "--notify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mark the session for Telegram notifications (session-start, heartbeat)",
    )

    sessions = commands.add_parser("sessions", help="list, show and edit sessions")
    sub = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", parents=[output], help="list sessions")
    listing.add_argument("--active", action="store_true", help="running and not expired only")
    listing.add_argument("--notify", action="store_true", help="notify sessions only")
    listing.set_defaults(func=cmd_sessions_list)
    show = sub.add_parser("show", parents=[output], help="show one session")
    show.add_argument("session_id", help="the session id")
    show.set_defaults(func=cmd_sessions_show)
    for name, func, text in (
        ("register", cmd_sessions_register, "insert or update a session"),
        ("update", cmd_sessions_update, "change fields of a session"),
    ):
        edit = sub.add_parser(name, parents=[output], help=text)
        edit.add_argument("session_id", help="the session id")
        edit.add_argument("--ppid", type=int, help="pid of the agent process")
        edit.add_argument("--pid", type=int, help="pid of the process that registered it")
        edit.add_argument(
            "--start-time",
            type=int,
            dest="start_time",
            metavar="EPOCH_S",
            help="start time of the --ppid process, in epoch seconds (tells a reused pid apart)",
        )
        edit.add_argument("--cwd", help="the agent's working directory")
        edit.add_argument("--label", help="a short name to show (default: none)")
        edit.add_argument(
            "--notify",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="send Telegram notifications for this session",
        )
        edit.add_argument("--state", choices=STATES, help="the session's state")
        edit.add_argument(
            "--transport",
            choices=TRANSPORT_KINDS,
            help="how to reach the agent's terminal",
        )
        edit.add_argument(
            "--detail",
            type=detail,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a transport detail (repeatable); VALUE is JSON or a bare string",
        )
        if name == "update":
            edit.add_argument(
                "--clear",
                action="append",
                default=[],
                choices=clearable_fields(),
                help="set a field to none (repeatable)",
            )
        edit.set_defaults(func=func)
    remove = sub.add_parser("remove", parents=[output], help="remove a session and its tokens")
    remove.add_argument("session_id", help="the session id")
    remove.set_defaults(func=cmd_sessions_remove)

    tokens = commands.add_parser("tokens", help="mint, validate, revoke and list tokens")
    sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    mint = sub.add_parser(
        "mint",
        parents=[output],
        help="mint a token: its value alone on stdout, the details on stderr",
    )
    mint.add_argument("session_id", help="the session the token acts for")
    mint.add_argument("chat_id", type=chat_id, help="the Telegram chat id allowed to use it")
    mint.add_argument("--ttl", type=duration, help="lifetime: 90s, 30m, 24h, 7d (default: config)")
    mint.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a permission of the token (repeatable; default: send_cmd)",
    )
    mint.set_defaults(func=cmd_tokens_mint)
    validate = sub.add_parser("validate", parents=[output], help="check a token for a chat")
    validate.add_argument("token", help=TOKEN_HELP)
    validate.add_argument("chat_id", type=chat_id, help="the chat that presents the token")
    validate.set_defaults(func=cmd_tokens_validate)
    revoke = sub.add_parser("revoke", parents=[output], help="delete a token")
    revoke.add_argument("token", help=TOKEN_HELP)
    revoke.set_defaults(func=cmd_tokens_revoke)
    tlist = sub.add_parser("list", parents=[output], help="tokens of a session (values hidden)")
    tlist.add_argument("session_id", help="the session id")
    tlist.add_argument("--show-tokens", action="store_true", help="print the values too")
    tlist.set_defaults(func=cmd_tokens_list)

    inbox = commands.add_parser("inbox", help="list, show, enqueue and requeue inbox commands")
    sub = inbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    ilist = sub.add_parser(
        "list", parents=[output], help="list commands, oldest (lowest seq) first"
    )
    ilist.add_argument("--state", choices=COMMAND_STATES, help="only commands in this state")
    ilist.add_argument(
        "--session", metavar="ID", help="only commands of this session (removed ones too)"
    )
    ilist.set_defaults(func=cmd_inbox_list)
    ishow = sub.add_parser("show", parents=[output], help="show one command")
    ishow.add_argument("command_id", help="the command id")
    ishow.set_defaults(func=cmd_inbox_show)
    enqueue = sub.add_parser(
        "enqueue",
        parents=[output],
        help="add a ready command (idempotent: a known id writes nothing)",
        description="Store a new ready command, or show the one already stored under that id "
        "(nothing is written then, and its payload is not compared). Exit 0 either way.",
    )
    enqueue.add_argument("command_id", help="the command id (a known one writes nothing)")
    enqueue.add_argument(
        "--session",
        required=True,
        metavar="ID",
        help="the session whose terminal it is typed into (must exist)",
    )
    enqueue.add_argument(
        "--payload",
        required=True,
        type=json_object,
        metavar="JSON",
        help='the command, a JSON object such as \'{"text": "ls"}\'',
    )
    enqueue.add_argument(
        "--chat-id", type=chat_id, metavar="N", help="the Telegram chat it came from"
    )
    enqueue.add_argument(
        "--delay",
        type=duration,
        metavar="SECONDS",
        help="how long before it may be claimed: seconds, or 30s, 5m, 1h (default: 0)",
    )
    enqueue.set_defaults(func=cmd_inbox_enqueue)
    requeue = sub.add_parser(
        "requeue",
        parents=[output],
        help="make a done or dead command ready again, attempts 0 (its last error is kept)",
    )
    requeue.add_argument("command_id", help="the command id")
    requeue.set_defaults(func=cmd_inbox_requeue)

    cleanup = commands.add_parser(
        "cleanup",
        parents=[output],
        help="remove dead/expired sessions, expired tokens, old inbox commands",
        description="Without a flag, every cleanup runs, as the janitor runs them: dead "
        "sessions, expired sessions and tokens, and inbox commands done or dead for longer "
        "than inbox_retention_hours. A flag runs only the cleanups it names.",
    )
    cleanup.add_argument("--dead", action="store_true", help="sessions whose process is gone")
    cleanup.add_argument("--expired", action="store_true", help="expired sessions and tokens")
    cleanup.add_argument(
        "--inbox",
        action="store_true",
        help="inbox commands done or dead for longer than inbox_retention_hours",
    )
    cleanup.set_defaults(func=cmd_cleanup)

    migrate = commands.add_parser("migrate", parents=[output], help="import the legacy JSON")
    migrate.add_argument(
        "--reimport",
        action="store_true",
        help="import again over an existing database, keeping it as a timestamped backup",
    )
    migrate.set_defaults(func=cmd_migrate)
    export = commands.add_parser("export", parents=[output], help="write the legacy JSON files")
    export.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
    export.add_argument(
        "--inbox",
        action="store_true",
        help="also write the database's commands to ccr-inbox.json, for a rollback to a json "
        "primary (dual phase 2 or json); without it an existing ccr-inbox.json is left as it "
        "is, since the legacy daemon never reads that file",
    )
    export.set_defaults(func=cmd_export)
    copy = commands.add_parser(
        "copy",
        parents=[output],
        help="copy the whole store into another, empty one",
        description="Copy every session, token and command of the configured store, from one "
        "consistent snapshot, into the store that CONFIG's [store] table names (any backend), "
        "then compare the two. The destination must be empty: one holding a session or a "
        "command is refused and left untouched (exit 3). Exit 1 if the copy differs.",
    )
    copy.add_argument(
        "--to", required=True, metavar="CONFIG", help="a TOML file naming the destination"
    )
    copy.set_defaults(func=cmd_copy)
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
    arguments = list(sys.argv[1:] if argv is None else argv)
    from registry.hook import is_hook_invocation

    if is_hook_invocation(arguments, COMMANDS):
        from registry.hook import main as hook_main

        return hook_main(arguments)
    try:
        code = run_command(arguments)
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): end quietly. Python's own recipe: point stdout at
        # /dev/null so that the flush at exit cannot raise again, and exit 1 as Python does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return code


def run_command(arguments: list[str]) -> int:
    args = build_parser(json_errors="--json" in arguments).parse_args(arguments)
    if args.command == "hook":  # only reached with --help, which exits above
        from registry.hook import main as hook_main

        return hook_main(arguments)
    func: Callable[[argparse.Namespace], int] = args.func
    from registry.errors import (
        CommandNotFound,
        ConfigError,
        RegistryError,
        SessionNotFound,
        TokenInvalid,
        ValidationError,
    )

    try:
        return func(args)
    except CommandError as exc:
        return fail(args, str(exc), exc.code)
    except (SessionNotFound, TokenInvalid, CommandNotFound) as exc:
        return fail(args, str(exc), EXIT_NOT_FOUND)
    except (ValidationError, ConfigError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    except RegistryError as exc:
        return fail(args, str(exc), EXIT_STORE)
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except OSError as exc:
        # A path the command itself looks at (a data directory this user cannot search, a name
        # too long): the library translates its own, this is the last line before a traceback.
        reason = exc.strerror or str(exc)
        return fail(args, f"{exc.filename}: {reason}" if exc.filename else reason, EXIT_STORE)
    except KeyboardInterrupt:
        return fail(args, "interrupted", 130)


def fail(args: argparse.Namespace, message: str, code: int) -> int:
    """The error: one line on stderr, and with ``--json`` also a JSON object on stdout."""
    text = " ".join(message.split())
    if args.json:
        print(json.dumps({"error": text, "code": code}, ensure_ascii=False))
    to_stderr(f"{PROG}: error: {printable(text)}")
    return code
