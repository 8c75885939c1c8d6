"""The json backend: the legacy daemon's two files, made safe across processes (SPEC 4).

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
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import filelock

from registry.backends._base import BaseStore, Clock
from registry.errors import RegistryError, StoreBusy, StoreCorrupted, ValidationError
from registry.models import (
    Session,
    Token,
    parse_json_object,
    session_from_legacy,
    session_to_legacy,
    token_from_legacy,
    token_to_legacy,
    unwrap_sessions_document,
)
from registry.paths import FILE_MODE, ensure_private_dir, fsync_dir

SESSIONS_FILE: Final = "claude-sessions.json"
TOKENS_FILE: Final = "claude-tokens.json"
LOCK_FILE: Final = ".ccr-registry.lock"
JOURNAL_FILE: Final = ".ccr-registry.journal"
TEMP_PREFIX: Final = ".ccr-tmp-"

R = TypeVar("R")
_FileKey = tuple[int, int, int]


def dumps_legacy(fragments: list[tuple[str, str]]) -> bytes:
    """The file ``json.dumps(document, indent=2, ensure_ascii=False)`` writes, plus a newline.

    Built from each record's own serialised text (see :class:`_Fragments`): the same bytes as
    the legacy daemon's two-space indented, raw UTF-8 output.
    """
    if not fragments:
        return b"{}\n"
    body = ",\n".join(f"  {json.dumps(key, ensure_ascii=False)}: {text}" for key, text in fragments)
    return ("{\n" + body + "\n}\n").encode("utf-8")


class _Fragments:
    """Each record's serialised text, reused while the record object is the same.

    ``json.dumps`` with ``indent`` runs the pure-Python encoder: re-serialising every record on
    every write took 34 of 43 ms per register at 1,000 sessions. Records are immutable, so an
    unchanged record (the same object) keeps its text.
    """

    def __init__(self) -> None:
        self._texts: dict[str, tuple[object, str]] = {}

    def render(self, records: dict[str, Any], to_legacy: Any) -> bytes:
        texts: dict[str, tuple[object, str]] = {}
        for key, record in records.items():
            hit = self._texts.get(key)
            if hit is None or hit[0] is not record:
                text = json.dumps(to_legacy(record), indent=2, ensure_ascii=False)
                hit = (record, text.replace("\n", "\n  "))
            texts[key] = hit
        self._texts = texts
        return dumps_legacy([(key, text) for key, (_, text) in texts.items()])


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
    """Both files' records; the copy a write unit works on tracks what it changed."""

    __slots__ = ("sessions", "sessions_changed", "tokens", "tokens_changed")

    def __init__(self, sessions: dict[str, Session], tokens: dict[str, Token]) -> None:
        self.sessions = sessions
        self.tokens = tokens
        self.sessions_changed = False
        self.tokens_changed = False

    def copy(self) -> _State:
        state = _State(dict(self.sessions), dict(self.tokens))
        state.sessions_changed = self.sessions_changed
        state.tokens_changed = self.tokens_changed
        return state


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
    ) -> None:
        super().__init__(clock=clock, session_ttl=session_ttl, token_ttl=token_ttl)
        self.data_dir = Path(data_dir)
        self.sessions_path = self.data_dir / SESSIONS_FILE
        self.tokens_path = self.data_dir / TOKENS_FILE
        self._timeout = lock_timeout_s
        # Parsed files keyed by (inode, size, mtime_ns): an unchanged file is not parsed again.
        self._cache: dict[str, tuple[_FileKey, int, dict[str, Any]]] = {}
        self._loaded: tuple[tuple[_FileKey | None, _FileKey | None], _State] | None = None
        self._fragments = {SESSIONS_FILE: _Fragments(), TOKENS_FILE: _Fragments()}
        self._reset_for_process()
        self._guard(lambda: ensure_private_dir(self.data_dir))
        with self._reading():  # refuse a corrupt file at open, not at first use
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

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        """Hold the mutex and the file lock; finish an interrupted commit; load both files."""
        if os.getpid() != self._pid:
            self._reset_for_process()
        self._check_open()
        with self._mutex:
            try:
                self._file_lock.acquire()
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
                self._file_lock.release()

    def _recover(self) -> None:
        """Roll a committed journal forward (the lock is held)."""
        journal = self.data_dir / JOURNAL_FILE
        try:
            raw = journal.read_bytes()
        except FileNotFoundError:
            return
        try:
            moves = json.loads(raw)
            pairs = [(str(m["temp"]), str(m["target"])) for m in moves]
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreCorrupted(f"{journal}: unreadable commit journal: {exc}") from exc
        for temp, target in pairs:
            if os.path.basename(temp) != temp or target not in (SESSIONS_FILE, TOKENS_FILE):
                raise StoreCorrupted(f"{journal}: journal names a file outside the store")
            if (self.data_dir / temp).exists():
                os.replace(self.data_dir / temp, self.data_dir / target)
        fsync_dir(self.data_dir)
        journal.unlink()
        fsync_dir(self.data_dir)

    def _remove_litter(self) -> None:
        """Delete temp files of writers that died before committing (the lock is held)."""
        for entry in os.scandir(self.data_dir):
            if entry.name.startswith(TEMP_PREFIX):
                os.unlink(entry.path)

    def _load(self) -> _State:
        sessions_key, sessions = self._read_document(SESSIONS_FILE)
        tokens_key, tokens = self._read_document(TOKENS_FILE)
        keys = (sessions_key, tokens_key)
        if self._loaded is not None and self._loaded[0] == keys:
            return self._loaded[1]
        # A token whose session is gone (the legacy daemon did not always cascade) cannot be
        # used: it is not shown, and the next write of the tokens file drops it.
        state = _State(sessions, {k: t for k, t in tokens.items() if t.session_id in sessions})
        self._loaded = (keys, state)
        return state

    def _read_document(self, name: str) -> tuple[_FileKey | None, dict[str, Any]]:
        """The parsed records of one file, from the cache while the file is unchanged."""
        path = self.data_dir / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._forget(name)
            return None, {}
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
        except BaseException:
            os.close(fd)
            raise
        self._remember(name, key, fd, parsed)
        return key, parsed

    def _remember(self, name: str, key: _FileKey, fd: int, parsed: dict[str, Any]) -> None:
        # The cached file stays open so that its inode cannot be freed and reused by a later
        # file: a matching (inode, size, mtime_ns) then really is the same file, even when
        # several writes land within one tick of the filesystem clock.
        self._forget(name)
        self._cache[name] = (key, fd, parsed)

    def _forget(self, name: str) -> None:
        cached = self._cache.pop(name, None)
        if cached is not None:
            os.close(cached[1])

    def _parse_document(self, path: Path, raw: bytes) -> dict[str, Any]:
        try:
            document = parse_json_object(raw)
            if path.name == SESSIONS_FILE:
                return {
                    key: session_from_legacy(key, record, session_ttl=self._session_ttl)
                    for key, record in unwrap_sessions_document(document).items()
                }
            return {
                key: token_from_legacy(key, record, token_ttl=self._token_ttl)
                for key, record in document.items()
            }
        except ValidationError as exc:
            raise StoreCorrupted(f"{path}: cannot be read: {exc}") from exc

    def _commit(self, state: _State) -> None:
        """Write the files ``state`` changed (the lock is held)."""
        writes: list[tuple[str, bytes, dict[str, Any]]] = []
        if state.sessions_changed:
            data = self._fragments[SESSIONS_FILE].render(state.sessions, session_to_legacy)
            writes.append((SESSIONS_FILE, data, state.sessions))
        if state.tokens_changed:
            data = self._fragments[TOKENS_FILE].render(state.tokens, token_to_legacy)
            writes.append((TOKENS_FILE, data, state.tokens))
        if writes:  # a change that changes nothing writes nothing
            self._guard(lambda: self._write_files(writes))

    def _write_files(self, writes: list[tuple[str, bytes, dict[str, Any]]]) -> None:
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
        for name, _, records in writes:
            # What was just written needs no parsing on the next read.
            fd = os.open(self.data_dir / name, os.O_RDONLY)
            st = os.fstat(fd)
            self._remember(name, (st.st_ino, st.st_size, st.st_mtime_ns), fd, records)

    # ----------------------------------------------------------------- scopes

    @contextmanager
    def _reading(self) -> Iterator[None]:
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
    def _writing(self, *, savepoint: bool) -> Iterator[None]:
        unit = self._unit
        if unit is not None and self._unit_thread == threading.get_ident():
            if not savepoint:
                yield
                return
            saved = unit.copy()
            try:
                yield
            except BaseException:
                unit.sessions, unit.tokens = saved.sessions, saved.tokens
                unit.sessions_changed = saved.sessions_changed
                unit.tokens_changed = saved.tokens_changed
                raise
            return
        with self._locked() as loaded:
            unit = loaded.copy()
            self._unit, self._unit_thread = unit, threading.get_ident()
            try:
                yield
                self._commit(unit)
            finally:
                self._unit, self._unit_thread = None, 0

    def _state(self) -> _State:
        state = self._unit if self._unit is not None else self._view
        if state is None:
            raise RuntimeError("json store primitive used outside a read or write scope")
        return state

    def _close(self) -> None:
        with self._mutex:
            for name in list(self._cache):
                self._forget(name)
            self._loaded = None

    # ----------------------------------------------------------------- whole-store operations

    def replace_contents(self, sessions: list[Session], tokens: list[Token]) -> None:
        """Make both files hold exactly these records, as one all-or-nothing unit (the export)."""
        with self._writing(savepoint=False):
            # Both files are written even when unchanged: an export must leave both behind.
            state = self._state()
            state.sessions = {s.session_id: s for s in sessions}
            state.tokens = {t.token: t for t in tokens}
            state.sessions_changed = state.tokens_changed = True

    # ----------------------------------------------------------------- primitives

    def _get(self, session_id: str) -> Session | None:
        return self._state().sessions.get(session_id)

    def _put(self, session: Session) -> None:
        state = self._state()
        if state.sessions.get(session.session_id) != session:
            state.sessions[session.session_id] = session
            state.sessions_changed = True

    def _delete_sessions(self, session_ids: list[str]) -> None:
        state = self._state()
        doomed = set(session_ids)
        for session_id in doomed:
            if state.sessions.pop(session_id, None) is not None:
                state.sessions_changed = True
        kept = {k: t for k, t in state.tokens.items() if t.session_id not in doomed}
        if len(kept) != len(state.tokens):
            state.tokens = kept
            state.tokens_changed = True

    def _select(
        self,
        now: datetime,
        *,
        active_only: bool,
        notify_only: bool,
        ppid: int | None = None,
        limit: int | None = None,
    ) -> list[Session]:
        found = [
            s
            for s in self._state().sessions.values()
            if (ppid is None or s.ppid == ppid)
            and (not notify_only or s.notify)
            and (not active_only or s.is_active(now))
        ]
        found.sort(key=lambda s: s.session_id)
        found.sort(key=lambda s: s.last_seen, reverse=True)
        return found if limit is None else found[:limit]

    def _expired_ids(self, now: datetime) -> list[str]:
        return [sid for sid, s in self._state().sessions.items() if not s.is_live(now)]

    def _get_token(self, token: str) -> Token | None:
        return self._state().tokens.get(token)

    def _put_token(self, token: Token) -> None:
        state = self._state()
        if state.tokens.get(token.token) != token:
            state.tokens[token.token] = token
            state.tokens_changed = True

    def _delete_token(self, token: str) -> bool:
        state = self._state()
        if state.tokens.pop(token, None) is None:
            return False
        state.tokens_changed = True
        return True

    def _tokens_of(self, session_id: str) -> list[Token]:
        found = [t for t in self._state().tokens.values() if t.session_id == session_id]
        found.sort(key=lambda t: (t.created_at, t.token))
        return found

    def _delete_expired_tokens(self, now: datetime) -> int:
        state = self._state()
        kept = {k: t for k, t in state.tokens.items() if t.is_live(now)}
        removed = len(state.tokens) - len(kept)
        if removed:
            state.tokens = kept
            state.tokens_changed = True
        return removed
