"""The json backend: the legacy daemon's two files, made safe across processes (SPEC 4).

The command inbox (SPEC 3.4) lives in a third file of this backend's own format,
``ccr-inbox.json``, under the same lock and in the same write units, so ``atomic()`` is
all-or-nothing across all three files (the legacy daemon kept its inbox in SQLite and never
reads this file).

``claude-sessions.json`` and ``claude-tokens.json`` in ``data_dir`` keep the legacy daemon's
format, so the old daemon can read what this writes. Every read and every write unit holds a
``filelock`` on a sidecar lock file (never a data file: ``os.replace`` swaps those) with a
timeout; inside the process a re-entrant mutex keeps threads apart.

A write unit loads both files once, applies its changes in memory and writes at the end, and
only the files whose content changed. One changed file is replaced atomically: temp file in
the same directory, flush, fsync, ``os.replace``, fsync of the directory. When both change, a
roll-forward journal makes the pair all-or-nothing even if the process dies between the two
renames: both temp files are written and synced, then the journal naming them is committed,
then both are renamed. Whoever takes the lock next finishes a committed journal; temp files
without a committed journal are the litter of a writer that died before committing, and the
next writer deletes them.

The legacy daemon writes these files too, so nothing in them is ever dropped by a rewrite here.
Every record keeps the JSON value it was read as, and a record no unit changed is written back
as that same value. A record that cannot be understood (see :mod:`registry.models`, legacy
section) and a token whose session is missing are hidden from every read and kept verbatim on
every rewrite; ``unreadable_records`` counts the former for ``doctor``. Only a file that is not a
JSON object at all is refused (:class:`StoreCorrupted`, the file untouched).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import filelock

from registry import defaults
from registry.backends._base import BaseStore, Clock
from registry.backends._inbox import InboxSettings
from registry.errors import RegistryError, StoreBusy, StoreCorrupted, ValidationError
from registry.models import (
    Command,
    Session,
    Token,
    changed_command,
    parse_json_object,
    session_from_legacy,
    session_to_legacy,
    shown_legacy_key,
    token_from_legacy,
    token_hint_legacy,
    token_to_legacy,
    unwrap_sessions_document,
)
from registry.models import from_ms as _from_ms
from registry.models import to_ms as _to_ms
from registry.paths import FILE_MODE, ensure_private_dir, fsync_dir

SESSIONS_FILE: Final = "claude-sessions.json"
TOKENS_FILE: Final = "claude-tokens.json"
INBOX_FILE: Final = "ccr-inbox.json"
# The inbox file's format version: a file of a newer one is refused, untouched.
INBOX_FORMAT: Final = 1
LOCK_FILE: Final = ".ccr-registry.lock"
JOURNAL_FILE: Final = ".ccr-registry.journal"
TEMP_PREFIX: Final = ".ccr-tmp-"
# A file that does not parse is read again while it keeps changing (a writer that does not take
# the lock, rewriting it in place), for at most this long, before it is refused as damaged.
TORN_READ_WAIT_S: Final = 1.0
TORN_READ_POLL_S: Final = 0.02

R = TypeVar("R")


def _seq(command: Command) -> int:
    return command.seq


_FileKey = tuple[int, int, int]


class _Raw:
    """One record as its file holds it: the JSON value, the model read from it, its text.

    ``model`` is None for a record that cannot be understood. ``text`` is the record's line in
    the file (``  "key": value``), rendered on first use and reused while the record is
    unchanged: ``json.dumps`` with ``indent`` runs the pure-Python encoder, and re-serialising
    every record on every write took 34 of 43 ms per register at 1,000 sessions.
    """

    __slots__ = ("_text", "key", "model", "value")

    def __init__(self, key: str, value: object, model: Any) -> None:
        self.key = key
        self.value = value
        self.model = model
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            value = _dumps(self.value, indent=2).replace("\n", "\n  ")
            self._text = f"  {_dumps(self.key)}: {value}"
        return self._text


def _dumps(value: object, *, indent: int | None = None) -> str:
    """JSON text as the legacy daemon writes it (raw UTF-8), escaped only where it must be.

    A string that is not valid Unicode (a lone surrogate, read from a ``\\udcff`` escape) has no
    UTF-8 form: such a value is written with ASCII escapes, which is the same JSON value.
    """
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value, indent=indent, ensure_ascii=True)
    return text


class _Document:
    """One parsed file: its records in file order, and which of them are readable."""

    __slots__ = ("next_seq", "raw", "records", "unreadable")

    def __init__(
        self,
        raw: dict[str, _Raw],
        records: dict[str, Any],
        unreadable: dict[str, str],
        next_seq: int = 1,
    ) -> None:
        self.raw = raw  # every record, in file order
        self.records = records  # key -> model, for the records that could be read
        self.unreadable = unreadable  # key -> why it cannot be read
        self.next_seq = next_seq  # the inbox file only: the next seq to give


# Every key the legacy codecs read (both shapes); anything else in a record is someone else's.
_KNOWN_KEYS: Final = frozenset(
    (
        *("session_id", "ppid", "pid", "start_time", "cwd", "label", "notify", "transport"),
        *("state", "created_at", "updated_at", "last_seen", "expires_at", "host"),
        *("token", "chat_id", "scopes", "context"),
    )
)


def render(
    raw: dict[str, _Raw], models: dict[str, Any], hidden: set[str], to_legacy: Any
) -> tuple[bytes, dict[str, _Raw]]:
    """The file holding ``models`` and the ``hidden`` records of ``raw``, and its new records.

    File order is kept: the records already in the file first, then new ones. A model that is
    the very object read from the file is written back as the value it was read as.
    """
    out: dict[str, _Raw] = {}
    for key, entry in raw.items():
        model = models.get(key)
        if model is None:
            if key in hidden:
                out[key] = entry
        elif entry.model is model:
            out[key] = entry
        else:
            value = to_legacy(model)
            if isinstance(entry.value, dict):
                # Keys the data model does not know (another program's) ride along unchanged.
                value.update((k, v) for k, v in entry.value.items() if k not in _KNOWN_KEYS)
            out[key] = _Raw(key, value, model)
    for key, model in models.items():
        if key not in out:
            out[key] = _Raw(key, to_legacy(model), model)
    if not out:
        return b"{}\n", out
    body = ",\n".join(entry.text for entry in out.values())
    return ("{\n" + body + "\n}\n").encode("utf-8"), out


def command_to_json(command: Command) -> dict[str, Any]:
    """A command as the inbox file holds it: the model's fields, timestamps in epoch ms."""
    lease_until = command.lease_until
    return {
        "command_id": command.command_id,
        "session_id": command.session_id,
        "seq": command.seq,
        "payload": command.payload.to_dict(),
        "chat_id": command.chat_id,
        "state": command.state,
        "attempts": command.attempts,
        "available_at": _to_ms(command.available_at),
        "lease_owner": command.lease_owner,
        "lease_until": None if lease_until is None else _to_ms(lease_until),
        "last_error": command.last_error,
        "created_at": _to_ms(command.created_at),
        "updated_at": _to_ms(command.updated_at),
        "host": command.host,
    }


_INBOX_RECORD_KEYS: Final = frozenset(
    (
        *("command_id", "session_id", "seq", "payload", "chat_id", "state", "attempts"),
        *("available_at", "lease_owner", "lease_until", "last_error", "created_at", "updated_at"),
        "host",
    )
)


def command_from_json(key: str, value: object, *, host: str | None = None) -> Command:
    """A command of the inbox file, through the model's validators (ValidationError if bad).

    ``host`` is optional in the file (format 1 began without it): a record without it takes
    ``host`` (default: this machine's host_id, SPEC 2).
    """
    if not isinstance(value, dict):
        raise ValidationError(f"command {key!r} is not an object")
    if "host" not in value:
        value = {**value, "host": defaults.host_id() if host is None else host}
    if set(value) != _INBOX_RECORD_KEYS:
        raise ValidationError(f"command {key!r} does not have the fields of a command")
    if value["command_id"] != key:
        raise ValidationError(f"command {key!r} holds the id {value['command_id']!r}")
    times: dict[str, datetime | None] = {}
    for name in ("available_at", "lease_until", "created_at", "updated_at"):
        ms = value[name]
        if ms is None and name == "lease_until":
            times[name] = None
        elif isinstance(ms, int) and not isinstance(ms, bool):
            times[name] = _from_ms(ms)
        else:
            raise ValidationError(f"command {key!r}: {name} is not epoch milliseconds")
    command = Command(**{**value, **times})
    # What no inbox call writes: a seq below 1 (seqs are given from 1), or a lease on a command
    # that is not leased, or a leased one without its owner and time (never claimable again,
    # it would hold back its session's later commands for ever).
    if command.seq < 1:
        raise ValidationError(f"command {key!r}: seq {command.seq} is not positive")
    leased = command.state == "leased"
    if (command.lease_owner is not None, command.lease_until is not None) != (leased, leased):
        raise ValidationError(f"command {key!r}: a {command.state} command with that lease")
    return command


def render_inbox(commands: dict[str, Command], next_seq: int) -> bytes:
    """The inbox file: its format version, the next seq, and the commands in seq order."""
    ordered = sorted(commands.values(), key=lambda c: c.seq)
    document = {
        "format": INBOX_FORMAT,
        "next_seq": next_seq,
        "commands": {c.command_id: command_to_json(c) for c in ordered},
    }
    return (_dumps(document, indent=2) + "\n").encode("utf-8")


def parse_inbox(path: Path, raw: bytes, *, host: str | None = None) -> _Document:
    """The inbox file's commands; a file or record that cannot be read is refused whole.

    This file is this backend's own (no other program writes it), so a record it cannot
    read means damage: refusing the file keeps every command in it, where skipping one would
    lose it on the next rewrite.
    :raises StoreCorrupted: for anything but a well-formed inbox of a known format.
    """
    try:
        document = parse_json_object(raw)
        version = document.get("format")
        if isinstance(version, int) and version > INBOX_FORMAT:
            raise StoreCorrupted(
                f"{path}: inbox format {version} is newer than this code supports "
                f"({INBOX_FORMAT}); upgrade ccr-registry. Left unmodified."
            )
        if set(document) != {"format", "next_seq", "commands"} or version != INBOX_FORMAT:
            raise ValidationError("not a ccr-registry inbox file")
        next_seq, records = document["next_seq"], document["commands"]
        if not isinstance(next_seq, int) or isinstance(next_seq, bool) or next_seq < 1:
            raise ValidationError(f"next_seq {next_seq!r} is not a positive int")
        if not isinstance(records, dict):
            raise ValidationError("commands is not an object")
        commands = {key: command_from_json(key, value, host=host) for key, value in records.items()}
        if len({c.seq for c in commands.values()}) != len(commands):
            raise ValidationError("two commands share a seq")
    except ValidationError as exc:
        raise StoreCorrupted(f"{path}: cannot be read: {exc}") from exc
    top = max((c.seq for c in commands.values()), default=0)
    return _Document({}, commands, {}, max(next_seq, top + 1))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: temp file beside it, fsync, rename, fsync dir."""
    temp = write_temp(path.parent, path.name, data)
    os.replace(temp, path)
    fsync_dir(path.parent)


def write_temp(directory: Path, label: str, data: bytes) -> Path:
    """Write and fsync a new private temp file in ``directory``; return its path.

    ``O_EXCL | O_NOFOLLOW`` with a random name: a planted file or symlink is never written
    through.
    """
    temp = directory / f"{TEMP_PREFIX}{label}-{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temp


class _State:
    """Both files' records; the copy a write unit works on tracks what it changed.

    ``sessions`` and ``tokens`` are what reads see. ``raw`` holds each file's records as read,
    and ``hidden`` the keys of those kept on a rewrite although no read shows them (records that
    cannot be understood, tokens whose session is missing).
    """

    __slots__ = (
        *("commands", "commands_changed", "hidden", "next_seq", "raw", "sessions"),
        *("sessions_changed", "tokens", "tokens_changed"),
    )

    def __init__(
        self,
        sessions: dict[str, Session],
        tokens: dict[str, Token],
        raw: dict[str, dict[str, _Raw]] | None = None,
        hidden: dict[str, set[str]] | None = None,
        commands: dict[str, Command] | None = None,
        next_seq: int = 1,
    ) -> None:
        self.sessions = sessions
        self.tokens = tokens
        self.raw = raw if raw is not None else {SESSIONS_FILE: {}, TOKENS_FILE: {}}
        self.hidden = hidden if hidden is not None else {SESSIONS_FILE: set(), TOKENS_FILE: set()}
        self.commands = commands if commands is not None else {}
        self.next_seq = next_seq
        self.sessions_changed = False
        self.tokens_changed = False
        self.commands_changed = False

    def copy(self) -> _State:
        hidden = {name: set(keys) for name, keys in self.hidden.items()}
        state = _State(
            dict(self.sessions), dict(self.tokens), self.raw, hidden, dict(self.commands)
        )
        state.next_seq = self.next_seq
        state.sessions_changed = self.sessions_changed
        state.tokens_changed = self.tokens_changed
        state.commands_changed = self.commands_changed
        return state

    def restore(self, saved: _State) -> None:
        """Take back ``saved``'s records and flags (a savepoint rolled back)."""
        self.sessions, self.tokens, self.hidden = saved.sessions, saved.tokens, saved.hidden
        self.commands, self.next_seq = saved.commands, saved.next_seq
        self.sessions_changed = saved.sessions_changed
        self.tokens_changed = saved.tokens_changed
        self.commands_changed = saved.commands_changed


_TEMP_NAME = re.compile(
    re.escape(TEMP_PREFIX)
    + r"(claude-sessions\.json|claude-tokens\.json|ccr-inbox\.json)-[0-9a-f]{16}"
)


def read_journal(data_dir: Path) -> list[tuple[str, str]] | None:
    """The (temp file, data file) renames of a committed journal in ``data_dir``, checked.

    None when there is no journal. Only the names this backend writes are accepted: a temp file
    of our own naming (its random part included) moved onto the data file it was written for,
    each data file at most once.
    :raises StoreCorrupted: for a journal that is not one this backend wrote.
    """
    journal = data_dir / JOURNAL_FILE
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return None
    try:
        moves = json.loads(raw)
        pairs = [(m["temp"], m["target"]) for m in moves]
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreCorrupted(f"{journal}: unreadable commit journal: {exc}") from exc
    targets = [target for _, target in pairs]
    for temp, target in pairs:
        match = _TEMP_NAME.fullmatch(temp) if isinstance(temp, str) else None
        if match is None or match.group(1) != target or targets.count(target) != 1:
            raise StoreCorrupted(f"{journal}: journal names files this store does not write")
    return pairs


def recover_journal(data_dir: Path) -> None:
    """Roll a committed journal in ``data_dir`` forward (the lock is held).

    Only the names this backend writes are accepted: a temp file of our own naming (its random
    part included) moved onto the data file it was written for, each data file at most once.
    Anything else is refused before a single file is renamed, so a tampered journal cannot
    move one data file over the other.
    """
    journal = data_dir / JOURNAL_FILE
    pairs = read_journal(data_dir)
    if pairs is None:
        return
    for temp, target in pairs:
        if (data_dir / temp).exists():
            os.replace(data_dir / temp, data_dir / target)
    fsync_dir(data_dir)
    journal.unlink()
    fsync_dir(data_dir)


def parse_file(
    path: Path,
    raw: bytes,
    *,
    session_ttl: timedelta,
    token_ttl: timedelta,
    host: str | None = None,
) -> _Document:
    """Every record of one of the two files, readable or not.

    :raises StoreCorrupted: only for a file that is not a JSON object at all.
    """
    try:
        document = parse_json_object(raw)
        records = document
        if path.name == SESSIONS_FILE:
            records = unwrap_sessions_document(document)
    except ValidationError as exc:
        raise StoreCorrupted(f"{path}: cannot be read: {exc}") from exc
    # The plan's wrapper shape is rewritten in the legacy daemon's flat shape, each record
    # converted (the wrapper itself cannot be kept); otherwise records keep their values.
    convert = records is not document
    entries: dict[str, _Raw] = {}
    parsed: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    for key, value in records.items():
        try:
            if path.name == SESSIONS_FILE:
                model: Any = session_from_legacy(key, value, session_ttl=session_ttl, host=host)
            else:
                model = token_from_legacy(key, value, token_ttl=token_ttl)
        except ValidationError as exc:
            unreadable[key] = str(exc)
            entries[key] = _Raw(key, value, None)
            continue
        parsed[key] = model
        if not convert:
            entries[key] = _Raw(key, value, model)
    return _Document(entries, parsed, unreadable)


def inspect_files(data_dir: Path) -> dict[str, int]:
    """What ``doctor`` shows of the two files: ``unreadable`` records and ``orphan_tokens``.

    Read without the lock and without creating anything (a moment's view is enough for
    counts). Absent files count as empty.
    :raises StoreCorrupted: for a file that is not a JSON object at all.
    :raises RegistryError: for a file that cannot be read.
    """
    ttl = timedelta(hours=24)
    documents: dict[str, _Document] = {}
    for name in (SESSIONS_FILE, TOKENS_FILE):
        path = Path(data_dir) / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            documents[name] = _Document({}, {}, {})
            continue
        except OSError as exc:
            raise RegistryError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        documents[name] = parse_file(path, raw, session_ttl=ttl, token_ttl=ttl)
    sessions = documents[SESSIONS_FILE].records
    tokens = documents[TOKENS_FILE].records
    return {
        "unreadable": sum(len(d.unreadable) for d in documents.values()),
        "orphan_tokens": sum(1 for t in tokens.values() if t.session_id not in sessions),
    }


class JsonStore(BaseStore):
    """Sessions and tokens in the legacy JSON files; see the module docstring."""

    backend = "json"

    def __init__(
        self,
        data_dir: Path,
        *,
        clock: Clock,
        session_ttl: timedelta,
        token_ttl: timedelta,
        lock_timeout_s: float,
        inbox: InboxSettings | None = None,
        host_id: str | None = None,
    ) -> None:
        super().__init__(
            clock=clock,
            session_ttl=session_ttl,
            token_ttl=token_ttl,
            inbox=inbox,
            host_id=host_id,
        )
        self.data_dir = Path(data_dir)
        # The host a session record without a "host" key belongs to (SPEC 4): it reads as this
        # store's host_id, and this store leaves the key out only for its own sessions and only
        # when its host_id is the machine's default ($CCR_HOST_ID, else the hostname). So a
        # file of default-host sessions stays the legacy daemon's format byte for byte, and a
        # store with a host_id of its own marks every record, which another store on the same
        # files (with another host_id) then reads right.
        self._implicit_host = self.host_id if self.host_id == defaults.host_id() else None
        self.sessions_path = self.data_dir / SESSIONS_FILE
        self.tokens_path = self.data_dir / TOKENS_FILE
        self._timeout = lock_timeout_s
        # Parsed files keyed by (inode, size, mtime_ns): an unchanged file is not parsed again.
        self._cache: dict[str, tuple[_FileKey, int, _Document]] = {}
        self.inbox_path = self.data_dir / INBOX_FILE
        self._loaded: tuple[tuple[_FileKey | None, ...], _State] | None = None
        self._unreadable: dict[str, dict[str, str]] = {SESSIONS_FILE: {}, TOKENS_FILE: {}}
        self._reset_for_process()
        self._guard(lambda: ensure_private_dir(self.data_dir))
        with self.reading():  # refuse a corrupt file at open, not at first use
            pass

    def _reset_for_process(self) -> None:
        # After fork() the child gets fresh locks: a copied mutex may be held by a thread
        # that does not exist in the child.
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._file_lock = filelock.FileLock(
            self.data_dir / LOCK_FILE, timeout=self._timeout, mode=FILE_MODE, thread_local=False
        )
        self._view: _State | None = None  # what the current read scope sees
        self._unit: _State | None = None  # the open write unit, if any
        self._unit_thread = 0  # the thread that owns it
        self._loaded = None
        for name in list(self._cache):
            self._forget(name)

    # ----------------------------------------------------------------- locking and files

    def _guard(self, action: Callable[[], R]) -> R:
        """Run ``action``, translating OS errors of the data files."""
        try:
            return action()
        except OSError as exc:
            raise RegistryError(f"{self.data_dir}: {exc.strerror or exc}") from exc

    def _check_process(self) -> None:
        # A child forked inside a unit (or a read scope) must not believe it is inside its
        # parent's: it would write without the lock, and the parent's commit would overwrite
        # its change. It starts from nothing and takes the lock like any other process.
        if os.getpid() != self._pid:
            self._reset_for_process()

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        """Hold the mutex and the file lock; finish an interrupted commit; load both files."""
        self._check_process()
        self._check_open()
        with self._mutex:
            lock, pid = self._file_lock, self._pid
            try:
                lock.acquire()
            except filelock.Timeout as exc:
                raise StoreBusy(
                    f"{self.data_dir}: lock {LOCK_FILE} still held after {self._timeout} s"
                ) from exc
            except OSError as exc:
                raise RegistryError(f"{self.data_dir}: cannot lock: {exc}") from exc
            try:
                self._guard(self._recover)
                yield self._load()
            finally:
                if os.getpid() == pid:  # a forked child never releases its parent's lock
                    lock.release()

    def _recover(self) -> None:
        recover_journal(self.data_dir)

    def _remove_litter(self) -> None:
        """Delete temp files of writers that died before committing (the lock is held)."""
        for entry in os.scandir(self.data_dir):
            if entry.name.startswith(TEMP_PREFIX):
                os.unlink(entry.path)

    def _load(self) -> _State:
        sessions_key, sessions = self._read_document(SESSIONS_FILE)
        tokens_key, tokens = self._read_document(TOKENS_FILE)
        inbox_key, inbox = self._read_document(INBOX_FILE)
        keys = (sessions_key, tokens_key, inbox_key)
        if self._loaded is not None and self._loaded[0] == keys:
            return self._loaded[1]
        # A token whose session is gone (the legacy daemon's mintToken does not check that the
        # session exists) cannot be used: it is not shown, as the legacy daemon answers
        # "Session not found" for it too, but it stays in the file.
        visible = {k: t for k, t in tokens.records.items() if t.session_id in sessions.records}
        state = _State(
            dict(sessions.records),
            visible,
            {SESSIONS_FILE: sessions.raw, TOKENS_FILE: tokens.raw},
            {
                SESSIONS_FILE: set(sessions.raw).difference(sessions.records),
                TOKENS_FILE: set(tokens.raw).difference(visible),
            },
            dict(inbox.records),
            inbox.next_seq,
        )
        self._unreadable = {SESSIONS_FILE: sessions.unreadable, TOKENS_FILE: tokens.unreadable}
        self._loaded = (keys, state)
        return state

    def _read_document(self, name: str) -> tuple[_FileKey | None, _Document]:
        """The parsed records of one file, from the cache while the file is unchanged."""
        path = self.data_dir / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._forget(name)
            return None, _Document({}, {}, {})
        except OSError as exc:
            raise RegistryError(f"{path}: cannot open: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._cache.get(name)
            if cached is not None and cached[0] == key:
                os.close(fd)
                return key, cached[2]
            raw = b""
            while chunk := os.read(fd, max(st.st_size - len(raw), 0) + 65536):
                raw += chunk
        except OSError as exc:
            os.close(fd)
            raise RegistryError(f"{path}: cannot read: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        try:
            parsed = self._parse_document(path, raw)
        except StoreCorrupted:
            os.close(fd)
            return self._read_torn_document(name, raw)
        except BaseException:
            os.close(fd)
            raise
        self._remember(name, key, fd, parsed)
        return key, parsed

    def _read_torn_document(self, name: str, raw: bytes) -> tuple[_FileKey | None, _Document]:
        """Read a file that did not parse again, until it parses or stops changing.

        The legacy daemon does not take this project's lock and rewrites its files in place
        (truncate, then write), so a read can catch one half-written. Such a file parses once
        the writer is done; a file that nobody modified across a pause and still does not parse
        (or that is still changing after TORN_READ_WAIT_S) is refused (StoreCorrupted), never
        taken as empty.
        """
        path = self.data_dir / name
        deadline = time.monotonic() + TORN_READ_WAIT_S
        seen: tuple[bytes, int | None] = (raw, None)
        while True:
            time.sleep(TORN_READ_POLL_S)
            try:
                modified = path.stat().st_mtime_ns
                raw = path.read_bytes()
            except FileNotFoundError:
                self._forget(name)
                return None, _Document({}, {}, {})
            except OSError as exc:
                raise RegistryError(f"{path}: cannot read: {exc.strerror}") from exc
            if (raw, modified) == seen or time.monotonic() > deadline:
                # Nobody wrote it meanwhile (or it still changes at the deadline): parse it
                # once more for the error to raise.
                self._parse_document(path, raw)
            seen = (raw, modified)
            try:
                self._parse_document(path, raw)
            except StoreCorrupted:
                continue
            # It parses now: read it through the cache path, which keys it by inode and size.
            return self._read_document(name)

    def _remember(self, name: str, key: _FileKey, fd: int, parsed: _Document) -> None:
        # The cached file stays open so that its inode cannot be freed and reused by a later
        # file: a matching (inode, size, mtime_ns) then really is the same file, even when
        # several writes land within one tick of the filesystem clock.
        self._forget(name)
        self._cache[name] = (key, fd, parsed)

    def _forget(self, name: str) -> None:
        cached = self._cache.pop(name, None)
        if cached is not None:
            os.close(cached[1])

    def _parse_document(self, path: Path, raw: bytes) -> _Document:
        """Every record of one file; only a file that is not a JSON object is refused."""
        if path.name == INBOX_FILE:
            return parse_inbox(path, raw, host=self.host_id)
        return parse_file(
            path,
            raw,
            session_ttl=self._session_ttl,
            token_ttl=self._token_ttl,
            host=self.host_id,
        )

    def _commit(self, state: _State) -> None:
        """Write the files ``state`` changed (the lock is held)."""
        writes: list[tuple[str, bytes, _Document]] = []
        if state.sessions_changed:
            implicit = self._implicit_host
            writes.append(
                self._render(
                    SESSIONS_FILE,
                    state,
                    state.sessions,
                    lambda session: session_to_legacy(session, implicit_host=implicit),
                )
            )
        if state.tokens_changed:
            writes.append(self._render(TOKENS_FILE, state, state.tokens, token_to_legacy))
        if state.commands_changed:
            data = render_inbox(state.commands, state.next_seq)
            document = _Document({}, dict(state.commands), {}, state.next_seq)
            writes.append((INBOX_FILE, data, document))
        if writes:  # a change that changes nothing writes nothing
            self._guard(lambda: self._write_files(writes))

    def _render(
        self, name: str, state: _State, models: dict[str, Any], to_legacy: Any
    ) -> tuple[str, bytes, _Document]:
        data, entries = render(state.raw[name], models, state.hidden[name], to_legacy)
        unreadable = self._unreadable[name]
        document = _Document(
            entries,
            {key: entry.model for key, entry in entries.items() if entry.model is not None},
            {key: why for key, why in unreadable.items() if key in entries and key not in models},
        )
        return name, data, document

    def _write_files(self, writes: list[tuple[str, bytes, _Document]]) -> None:
        self._remove_litter()
        if len(writes) == 1:
            name, data, _ = writes[0]
            write_atomically(self.data_dir / name, data)
        else:
            temps = [(write_temp(self.data_dir, name, data), name) for name, data, _ in writes]
            journal = [{"temp": temp.name, "target": name} for temp, name in temps]
            # The commit point: once the journal exists, the unit will be completed by someone.
            write_atomically(self.data_dir / JOURNAL_FILE, json.dumps(journal).encode())
            self._recover()
        for name, _, document in writes:
            # What was just written needs no parsing on the next read.
            fd = os.open(self.data_dir / name, os.O_RDONLY)
            st = os.fstat(fd)
            self._remember(name, (st.st_ino, st.st_size, st.st_mtime_ns), fd, document)

    # ----------------------------------------------------------------- scopes

    @contextmanager
    def reading(self) -> Iterator[None]:
        self._check_process()
        if self._unit is not None and self._unit_thread == threading.get_ident():
            yield  # inside this thread's write unit: read its working state
            return
        with self._locked() as state:
            self._view = state
            try:
                yield
            finally:
                self._view = None

    @contextmanager
    def writing(self, *, savepoint: bool) -> Iterator[None]:
        self._check_process()
        unit = self._unit
        if unit is not None and self._unit_thread == threading.get_ident():
            if not savepoint:
                yield
                return
            saved = unit.copy()
            try:
                yield
            except BaseException:
                unit.restore(saved)
                raise
            return
        with self._locked() as loaded:
            unit = loaded.copy()
            pid = self._pid
            self._unit, self._unit_thread = unit, threading.get_ident()
            try:
                yield
                if os.getpid() != pid:
                    # A child forked inside this unit reached its end: the unit and its lock
                    # belong to the parent, which commits it.
                    raise RegistryError("a unit opened before fork() cannot end in the child")
                self._commit(unit)
            finally:
                if os.getpid() == pid:
                    self._unit, self._unit_thread = None, 0

    def _state(self) -> _State:
        state = self._unit if self._unit is not None else self._view
        if state is None:
            raise RuntimeError("json store primitive used outside a read or write scope")
        return state

    def data_version(self) -> object:
        # Both files' (inode, size, mtime_ns) as the open scope loaded them: a committed change
        # replaces a file (a new inode), and the cached old file is kept open, so its inode
        # number cannot be handed to the new one.
        return None if self._loaded is None else self._loaded[0]

    def _close(self) -> None:
        with self._mutex:
            for name in list(self._cache):
                self._forget(name)
            self._loaded = None

    # ----------------------------------------------------------------- whole-store operations

    def snapshot(self) -> tuple[list[Session], list[Token]]:
        """Every session and token a read shows, read under the lock as one unit.

        Records come in file order (the order the legacy files keep them, as the sqlite
        snapshot keeps insertion order); tokens whose session is gone and records that cannot
        be understood are left out, as every read leaves them out.
        """
        with self.reading():
            state = self._state()
            return list(state.sessions.values()), list(state.tokens.values())

    def replace_contents(
        self,
        sessions: list[Session],
        tokens: list[Token],
        *,
        commands: list[Command] | None = None,
        next_seq: int = 1,
    ) -> None:
        """Make both files show exactly these records, as one all-or-nothing unit (the export).

        What the files hold that no read shows stays: records that cannot be understood, and
        orphan tokens unless the export brings their session back (they would then show up,
        though the export's source, which is authoritative, does not hold them). With
        ``commands``, the inbox file holds exactly those, with ``next_seq`` as its next seq (at
        least one past the largest ``seq``), in the same unit; without, it is left as it is.
        """
        with self.writing(savepoint=False):
            if commands is not None:
                state = self._state()
                state.commands = {c.command_id: c for c in commands}
                top = max((c.seq for c in commands), default=0)
                state.next_seq = max(next_seq, top + 1)
                state.commands_changed = True
            # Both files are written even when unchanged: an export must leave both behind.
            state = self._state()
            state.sessions = {s.session_id: s for s in sessions}
            state.tokens = {t.token: t for t in tokens}
            state.hidden[SESSIONS_FILE] -= state.sessions.keys()
            state.hidden[TOKENS_FILE] = {
                key
                for key in state.hidden[TOKENS_FILE] - state.tokens.keys()
                if key in self._unreadable[TOKENS_FILE]
                or state.raw[TOKENS_FILE][key].model.session_id not in state.sessions
            }
            state.sessions_changed = state.tokens_changed = True

    @property
    def unreadable_records(self) -> int:
        """How many records in the two files cannot be understood (kept, never shown)."""
        return len(self.unreadable())

    def unreadable(self) -> list[tuple[str, str, str]]:
        """``(file name, key, reason)`` of every record that cannot be understood.

        Keys of the tokens file are tokens: shown as a short hash, never the value.
        """
        with self.reading():
            found = [
                (SESSIONS_FILE, shown_legacy_key(key), why)
                for key, why in self._unreadable[SESSIONS_FILE].items()
            ]
            found.extend(
                (TOKENS_FILE, token_hint_legacy(key), why)
                for key, why in self._unreadable[TOKENS_FILE].items()
            )
        return found

    @property
    def orphan_tokens(self) -> int:
        """How many readable tokens are hidden because their session is missing (kept)."""
        with self.reading():
            state = self._state()
            return len(state.hidden[TOKENS_FILE]) - len(self._unreadable[TOKENS_FILE])

    # ----------------------------------------------------------------- primitives

    def load_session(self, session_id: str) -> Session | None:
        return self._state().sessions.get(session_id)

    def save_session(self, session: Session) -> None:
        state = self._state()
        if state.sessions.get(session.session_id) != session:
            state.sessions[session.session_id] = session
            state.hidden[SESSIONS_FILE].discard(session.session_id)  # a write replaces it
            state.sessions_changed = True

    def delete_sessions(self, session_ids: list[str]) -> None:
        state = self._state()
        doomed = set(session_ids)
        for session_id in doomed:
            if state.sessions.pop(session_id, None) is not None:
                state.sessions_changed = True
        kept = {k: t for k, t in state.tokens.items() if t.session_id not in doomed}
        if len(kept) != len(state.tokens):
            state.tokens = kept
            state.tokens_changed = True

    def select_sessions(
        self,
        now: datetime,
        *,
        active_only: bool,
        notify_only: bool,
        ppid: int | None = None,
        limit: int | None = None,
        host: str | None = None,
    ) -> list[Session]:
        found = [
            s
            for s in self._state().sessions.values()
            if (ppid is None or s.ppid == ppid)
            and (host is None or s.host == host)
            and (not notify_only or s.notify)
            and (not active_only or s.is_active(now))
        ]
        found.sort(key=lambda s: s.session_id)
        found.sort(key=lambda s: s.last_seen, reverse=True)
        return found if limit is None else found[:limit]

    def expired_session_ids(self, now: datetime) -> list[str]:
        return [sid for sid, s in self._state().sessions.items() if not s.is_live(now)]

    def load_token(self, token: str) -> Token | None:
        return self._state().tokens.get(token)

    def save_token(self, token: Token) -> None:
        state = self._state()
        if state.tokens.get(token.token) != token:
            state.tokens[token.token] = token
            state.hidden[TOKENS_FILE].discard(token.token)  # a write replaces it
            state.tokens_changed = True

    def delete_token(self, token: str) -> bool:
        state = self._state()
        if state.tokens.pop(token, None) is None:
            return False
        state.tokens_changed = True
        return True

    def tokens_of(self, session_id: str) -> list[Token]:
        found = [t for t in self._state().tokens.values() if t.session_id == session_id]
        found.sort(key=lambda t: (t.created_at, t.token))
        return found

    # ----------------------------------------------------------------- inbox primitives

    def load_command(self, command_id: str) -> Command | None:
        return self._state().commands.get(command_id)

    def save_command(self, command: Command) -> None:
        state = self._state()
        stored = state.commands.get(command.command_id)
        if stored != command:
            if (
                stored is None
                and command.seq < state.next_seq
                and any(c.seq == command.seq for c in state.commands.values())
            ):
                # A seq given before, to another command (a dual store's secondary that
                # drifted): refused as sqlite's primary key refuses it, rather than written
                # into a file that then cannot be read (two commands with one seq).
                raise RegistryError(f"seq {command.seq} already belongs to another command")
            state.commands[command.command_id] = command
            state.next_seq = max(state.next_seq, command.seq + 1)
            state.commands_changed = True

    def next_command_seq(self) -> int:
        return self._state().next_seq

    def reserve_command_seq(self, next_seq: int) -> None:
        state = self._state()
        if next_seq > state.next_seq:
            state.next_seq = next_seq
            state.commands_changed = True

    def select_commands(
        self, *, session_id: str | None, state: str | None, host: str | None = None
    ) -> list[Command]:
        found = [
            c
            for c in self._state().commands.values()
            if (session_id is None or c.session_id == session_id)
            and (host is None or c.host == host)
            and (state is None or c.state == state)
        ]
        found.sort(key=lambda c: c.seq)
        return found

    def next_claimable(self, now: datetime, host: str) -> Command | None:
        pending = sorted(
            (c for c in self._state().commands.values() if c.pending and c.host == host), key=_seq
        )
        heads: set[str | None] = set()  # groups whose head has been passed
        for command in pending:
            group = command.session_id
            if group in heads:
                continue
            heads.add(group)
            if command.is_claimable(now):
                return command
        return None

    def end_commands_of(self, session_ids: list[str], now: datetime, error: str) -> None:
        state = self._state()
        doomed = set(session_ids)
        for command in list(state.commands.values()):
            if command.session_id in doomed and command.pending:
                self.save_command(
                    changed_command(
                        command,
                        state="dead",
                        last_error=error,
                        lease_owner=None,
                        lease_until=None,
                        updated_at=now,
                    )
                )

    def finished_command_ids(self, cutoff: datetime) -> list[str]:
        return [
            c.command_id
            for c in self._state().commands.values()
            if c.state in ("done", "dead") and c.updated_at <= cutoff
        ]

    def delete_commands(self, command_ids: list[str]) -> None:
        state = self._state()
        for command_id in command_ids:
            if state.commands.pop(command_id, None) is not None:
                state.commands_changed = True

    def delete_expired_tokens(self, now: datetime) -> int:
        state = self._state()
        kept = {k: t for k, t in state.tokens.items() if t.is_live(now)}
        removed = len(state.tokens) - len(kept)
        if removed:
            state.tokens = kept
            state.tokens_changed = True
        return removed
