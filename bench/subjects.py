"""The stores the benchmark compares, behind one small interface.

- ``raw``: the physical floor of this design: the same schema and pragmas as the sqlite backend,
  hand-written SQL, ``isolation_level=None``, ``BEGIN IMMEDIATE``, tuples instead of models.
- ``sqlite``, ``json``, ``dual``: ccr-registry's backends through ``open_store``.
- ``diskcache``: ``diskcache.Cache``, the SQLite-backed store Python users pick; records are dicts,
  with index entries for the two queries (``ppid:<n>``, ``notify``) kept in the same transaction.
- ``sqlitedict``: ``SqliteDict`` with autocommit, the same index entries, and a ``filelock`` around
  every read-modify-write (it has no transaction of its own that spans a read and a write).
- ``tinydb``: a TinyDB JSON document store with a ``filelock`` around every operation.
- ``legacy``: the old daemon's way, with a cross-process lock added: the whole JSON file read and
  parsed for every operation and rewritten in place (no temp file, no fsync) for every change.

Every subject keeps the same records: sessions with the model's fields (times as epoch ms) and
tokens bound to a session.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import filelock

from registry import defaults, open_store
from registry.backends.sqlite_sql import MIGRATIONS, SESSION_COLUMNS
from registry.models import Transport

DAY_MS = 86_400_000
# The host the library's store stamps on its sessions (host_id's default); the floor writes it
# and looks ppids up by it, as the library does on schema version 3.
HOST = defaults.host_id()
# The single-process workloads of bench/run.py, in report order.
OPS = [
    "get",
    "register_new",
    "register_existing",
    "update",
    "get_by_ppid",
    "notify_list",
    "mint",
    "validate",
    "cleanup",
    "open_get_close",
]
Record = dict[str, Any]


def session_record(sid: str, ppid: int, now: int, *, notify: bool = False) -> Record:
    return {
        "session_id": sid,
        "ppid": ppid,
        "pid": ppid + 1,
        "start_time": now // 1000,
        "cwd": f"/home/dev/{sid}",
        "label": sid,
        "notify": notify,
        "transport_kind": "tmux",
        "transport_details": {"pane_id": "%1"},
        "state": "running",
        "created_at": now,
        "updated_at": now,
        "last_seen": now,
        "expires_at": now + DAY_MS,
    }


def token_record(token: str, sid: str, chat: int, now: int) -> Record:
    return {
        "token": token,
        "session_id": sid,
        "chat_id": chat,
        "created_at": now,
        "expires_at": now + DAY_MS,
    }


class Subject:
    name = ""
    kind = "peer"  # "ours", "floor" or "peer"

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, sessions: list[Record], tokens: list[Record]) -> None:
        raise NotImplementedError

    def open(self) -> None: ...

    def close(self) -> None: ...

    def get(self, sid: str) -> Any:
        raise NotImplementedError

    def register(self, sid: str, ppid: int, now: int) -> None:
        raise NotImplementedError

    def update(self, sid: str, label: str, now: int) -> Any:
        raise NotImplementedError

    def get_by_ppid(self, ppid: int, now: int) -> Any:
        raise NotImplementedError

    def notify_list(self, now: int) -> list[Any]:
        raise NotImplementedError

    def mint(self, sid: str, chat: int, now: int) -> str:
        raise NotImplementedError

    def validate(self, token: str, chat: int, now: int) -> bool:
        raise NotImplementedError

    def cleanup(self, now: int) -> int:
        raise NotImplementedError

    def increment(self, sid: str, now: int) -> None:
        """Read a session's counter (its label) and write it back plus one, as one unit."""
        raise NotImplementedError


# --------------------------------------------------------------------------- the floor


class Raw(Subject):
    name, kind = "raw", "floor"

    def open(self) -> None:
        self.conn = sqlite3.connect(self.root / "raw.db", isolation_level=None, timeout=600)
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self.conn.close()

    def load(self, sessions: list[Record], tokens: list[Record]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.open()
        if self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise RuntimeError("no WAL")
        # The library's whole schema (every version step), so the floor's indexes are its own.
        for step in MIGRATIONS:
            for statement in step.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES "
            "(:session_id, :ppid, :pid, :start_time, :cwd, :label, :notify, :transport_kind, "
            ":details, :state, :created_at, :updated_at, :last_seen, :expires_at, :host)",
            [{**s, "details": json.dumps(s["transport_details"]), "host": HOST} for s in sessions],
        )
        self.conn.executemany(
            "INSERT INTO tokens (token, session_id, chat_id, created_at, expires_at) "
            "VALUES (:token, :session_id, :chat_id, :created_at, :expires_at)",
            tokens,
        )
        self.conn.execute("COMMIT")
        self.close()

    def get(self, sid: str) -> Any:
        return self.conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (sid,)
        ).fetchone()

    def register(self, sid: str, ppid: int, now: int) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "INSERT INTO sessions"
            " (session_id, ppid, created_at, updated_at, last_seen, expires_at, host)"
            " VALUES (?1, ?2, ?3, ?3, ?3, ?4, ?5) ON CONFLICT (session_id) DO UPDATE SET"
            " ppid = COALESCE(?2, ppid), updated_at = ?3, last_seen = ?3, expires_at = ?4,"
            " host = ?5",
            (sid, ppid, now, now + DAY_MS, HOST),
        )
        self.conn.execute("COMMIT")

    def update(self, sid: str, label: str, now: int) -> Any:
        # Reads the row back in the same transaction, as SessionRegistry.update returns the
        # updated session: the floor does what the operation promises, in tuples.
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "UPDATE sessions SET label = ?, updated_at = ? WHERE session_id = ?", (label, now, sid)
        )
        row = self.conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (sid,)
        ).fetchone()
        self.conn.execute("COMMIT")
        return row

    def get_by_ppid(self, ppid: int, now: int) -> Any:
        return self.conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE host = ? AND ppid = ? "
            "AND state = 'running' AND expires_at > ? ORDER BY last_seen DESC, session_id LIMIT 1",
            (HOST, ppid, now),
        ).fetchone()

    def notify_list(self, now: int) -> list[Any]:
        return self.conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE notify = 1 AND state = 'running' "
            "AND expires_at > ? ORDER BY last_seen DESC, session_id",
            (now,),
        ).fetchall()

    def mint(self, sid: str, chat: int, now: int) -> str:
        token = secrets.token_urlsafe(16)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "INSERT INTO tokens (token, session_id, chat_id, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (token, sid, chat, now, now + DAY_MS),
        )
        self.conn.execute("COMMIT")
        return token

    def validate(self, token: str, chat: int, now: int) -> bool:
        row = self.conn.execute(
            "SELECT chat_id, expires_at FROM tokens WHERE token = ?", (token,)
        ).fetchone()
        return row is not None and row[1] > now and row[0] == chat

    def cleanup(self, now: int) -> int:
        self.conn.execute("BEGIN IMMEDIATE")
        removed = self.conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount
        self.conn.execute("DELETE FROM tokens WHERE expires_at <= ?", (now,))
        self.conn.execute("COMMIT")
        return int(removed)

    def increment(self, sid: str, now: int) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        (label,) = self.conn.execute(
            "SELECT label FROM sessions WHERE session_id = ?", (sid,)
        ).fetchone()
        self.conn.execute(
            "UPDATE sessions SET label = ?, updated_at = ? WHERE session_id = ?",
            (str(int(label) + 1), now, sid),
        )
        self.conn.execute("COMMIT")


# --------------------------------------------------------------------------- ours


class Ours(Subject):
    kind = "ours"
    config: ClassVar[dict[str, Any]] = {}

    def store_config(self) -> dict[str, Any]:
        # A long lock timeout: contention runs measure throughput, not how soon a waiter gives up.
        return {
            **self.config,
            "data_dir": str(self.root),
            "migrate_from_json": False,
            "lock_timeout_s": 600,
        }

    def open(self) -> None:
        self.store = open_store(self.store_config())

    def close(self) -> None:
        self.store.close()

    def load(self, sessions: list[Record], tokens: list[Record]) -> None:
        self.open()
        with self.store.atomic():
            for s in sessions:
                self.store.sessions.register(
                    s["session_id"],
                    ppid=s["ppid"],
                    pid=s["pid"],
                    start_time=s["start_time"],
                    cwd=s["cwd"],
                    label=s["label"],
                    notify=s["notify"],
                    transport=Transport(kind=s["transport_kind"], details=s["transport_details"]),
                )
            for t in tokens:
                self.store.tokens.store_token(t["token"], t["session_id"], t["chat_id"])
        self.close()

    def get(self, sid: str) -> Any:
        return self.store.sessions.get(sid)

    def register(self, sid: str, ppid: int, now: int) -> None:
        self.store.sessions.register(sid, ppid=ppid)

    def update(self, sid: str, label: str, now: int) -> Any:
        return self.store.sessions.update(sid, label=label)

    def get_by_ppid(self, ppid: int, now: int) -> Any:
        return self.store.sessions.get_by_ppid(ppid)

    def notify_list(self, now: int) -> list[Any]:
        return self.store.sessions.get_notify_sessions()

    def mint(self, sid: str, chat: int, now: int) -> str:
        return self.store.tokens.mint_token(sid, chat).token

    def validate(self, token: str, chat: int, now: int) -> bool:
        return self.store.tokens.validate_token(token, chat) is not None

    def cleanup(self, now: int) -> int:
        removed = len(self.store.sessions.cleanup_expired_sessions())
        self.store.tokens.cleanup_expired_tokens()
        return removed

    def increment(self, sid: str, now: int) -> None:
        with self.store.atomic():
            session = self.store.sessions.get(sid)
            assert session is not None and session.label is not None
            self.store.sessions.update(sid, label=str(int(session.label) + 1))


class OursSqlite(Ours):
    name, config = "sqlite", {"backend": "sqlite"}


class OursJson(Ours):
    name, config = "json", {"backend": "json"}


class OursDual(Ours):
    name = "dual"
    config: ClassVar[dict[str, Any]] = {
        "backend": "dual",
        "dual": {"primary": "json", "secondary": "sqlite"},
    }


# --------------------------------------------------------------------------- key-value peers


class KeyValue(Subject):
    """Records in a key-value store, with index entries maintained on every write."""

    def tx(self) -> Any:
        raise NotImplementedError

    def kv_get(self, key: str) -> Any:
        raise NotImplementedError

    def kv_set(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def kv_delete(self, key: str) -> None:
        raise NotImplementedError

    def kv_keys(self) -> list[str]:
        raise NotImplementedError

    def _index_add(self, key: str, sid: str) -> None:
        ids = self.kv_get(key) or []
        if sid not in ids:
            self.kv_set(key, [*ids, sid])

    def _write_session(self, record: Record, old: Record | None) -> None:
        self.kv_set("s:" + record["session_id"], record)
        if old is None or old["ppid"] != record["ppid"]:
            self._index_add(f"ppid:{record['ppid']}", record["session_id"])
        if record["notify"] and (old is None or not old["notify"]):
            self._index_add("notify", record["session_id"])

    def load(self, sessions: list[Record], tokens: list[Record]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.open()
        with self.tx():
            by_ppid: dict[str, list[str]] = {}
            notify = []
            for s in sessions:
                self.kv_set("s:" + s["session_id"], s)
                by_ppid.setdefault(f"ppid:{s['ppid']}", []).append(s["session_id"])
                if s["notify"]:
                    notify.append(s["session_id"])
            for key, ids in by_ppid.items():
                self.kv_set(key, ids)
            self.kv_set("notify", notify)
            for t in tokens:
                self.kv_set("t:" + t["token"], t)
        self.close()

    def get(self, sid: str) -> Any:
        return self.kv_get("s:" + sid)

    def register(self, sid: str, ppid: int, now: int) -> None:
        with self.tx():
            old = self.kv_get("s:" + sid)
            if old is None:
                record = session_record(sid, ppid, now)
            else:
                record = {**old, "ppid": ppid, "updated_at": now, "last_seen": now}
                record["expires_at"] = now + DAY_MS
            self._write_session(record, old)

    def update(self, sid: str, label: str, now: int) -> None:
        with self.tx():
            old = self.kv_get("s:" + sid)
            self._write_session({**old, "label": label, "updated_at": now}, old)

    def _live(self, ids: list[str], now: int) -> list[Record]:
        found = [self.kv_get("s:" + sid) for sid in ids]
        live = [s for s in found if s and s["state"] == "running" and s["expires_at"] > now]
        live.sort(key=lambda s: s["session_id"])
        live.sort(key=lambda s: s["last_seen"], reverse=True)
        return live

    def get_by_ppid(self, ppid: int, now: int) -> Any:
        live = [s for s in self._live(self.kv_get(f"ppid:{ppid}") or [], now) if s["ppid"] == ppid]
        return live[0] if live else None

    def notify_list(self, now: int) -> list[Any]:
        return [s for s in self._live(self.kv_get("notify") or [], now) if s["notify"]]

    def mint(self, sid: str, chat: int, now: int) -> str:
        token = secrets.token_urlsafe(16)
        with self.tx():
            if self.kv_get("s:" + sid) is None:
                raise LookupError(sid)
            self.kv_set(
                "t:" + token,
                token_record(token, sid, chat, now),
            )
        return token

    def validate(self, token: str, chat: int, now: int) -> bool:
        record = self.kv_get("t:" + token)
        return record is not None and record["expires_at"] > now and record["chat_id"] == chat

    def cleanup(self, now: int) -> int:
        # No expiry index: a key-value store finds expired records by scanning them all.
        with self.tx():
            removed = 0
            for key in self.kv_keys():
                if key.startswith(("s:", "t:")):
                    record = self.kv_get(key)
                    if record["expires_at"] <= now:
                        self.kv_delete(key)
                        removed += key.startswith("s:")
        return removed

    def increment(self, sid: str, now: int) -> None:
        with self.tx():
            old = self.kv_get("s:" + sid)
            self.kv_set("s:" + sid, {**old, "label": str(int(old["label"]) + 1), "updated_at": now})


class DiskCache(KeyValue):
    name = "diskcache"

    def open(self) -> None:
        import diskcache

        self.cache = diskcache.Cache(str(self.root / "cache"), timeout=600)

    def close(self) -> None:
        self.cache.close()

    def tx(self) -> Any:
        return self.cache.transact()

    def kv_get(self, key: str) -> Any:
        return self.cache.get(key)

    def kv_set(self, key: str, value: Any) -> None:
        self.cache.set(key, value)

    def kv_delete(self, key: str) -> None:
        self.cache.delete(key)

    def kv_keys(self) -> list[str]:
        return list(self.cache.iterkeys())


class SqliteDictSubject(KeyValue):
    name = "sqlitedict"

    def open(self) -> None:
        from sqlitedict import SqliteDict

        self.db = SqliteDict(str(self.root / "dict.sqlite"), autocommit=True, timeout=600)
        self.lock = filelock.FileLock(self.root / "dict.lock", timeout=600)

    def close(self) -> None:
        self.db.close()

    def tx(self) -> Any:
        return self.lock

    def kv_get(self, key: str) -> Any:
        return self.db.get(key)

    def kv_set(self, key: str, value: Any) -> None:
        self.db[key] = value

    def kv_delete(self, key: str) -> None:
        del self.db[key]

    def kv_keys(self) -> list[str]:
        return list(self.db.keys())

    def load(self, sessions: list[Record], tokens: list[Record]) -> None:
        from sqlitedict import SqliteDict

        self.root.mkdir(parents=True, exist_ok=True)
        with SqliteDict(str(self.root / "dict.sqlite"), autocommit=False) as db:
            by_ppid: dict[str, list[str]] = {}
            for s in sessions:
                db["s:" + s["session_id"]] = s
                by_ppid.setdefault(f"ppid:{s['ppid']}", []).append(s["session_id"])
            for key, ids in by_ppid.items():
                db[key] = ids
            db["notify"] = [s["session_id"] for s in sessions if s["notify"]]
            for t in tokens:
                db["t:" + t["token"]] = t
            db.commit()


# --------------------------------------------------------------------------- whole-file peers


class WholeFile(Subject):
    """A store that is one JSON document: read whole for every operation, under a lock."""

    def read(self) -> dict[str, Any]:
        raise NotImplementedError

    def write(self, document: dict[str, Any]) -> None:
        raise NotImplementedError

    def load(self, sessions: list[Record], tokens: list[Record]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.open()
        self.write(
            {
                "sessions": {s["session_id"]: s for s in sessions},
                "tokens": {t["token"]: t for t in tokens},
            }
        )
        self.close()

    def open(self) -> None:
        self.lock = filelock.FileLock(self.root / "whole.lock", timeout=600)

    def get(self, sid: str) -> Any:
        with self.lock:
            return self.read()["sessions"].get(sid)

    def _change(self, change: Any) -> Any:
        with self.lock:
            document = self.read()
            result = change(document)
            self.write(document)
            return result

    def register(self, sid: str, ppid: int, now: int) -> None:
        def change(doc: dict[str, Any]) -> None:
            old = doc["sessions"].get(sid)
            record = (
                session_record(sid, ppid, now)
                if old is None
                else {
                    **old,
                    "ppid": ppid,
                    "updated_at": now,
                    "last_seen": now,
                    "expires_at": now + DAY_MS,
                }
            )
            doc["sessions"][sid] = record

        self._change(change)

    def update(self, sid: str, label: str, now: int) -> None:
        self._change(lambda d: d["sessions"][sid].update(label=label, updated_at=now))

    def _live(self, sessions: list[Record], now: int) -> list[Record]:
        live = [s for s in sessions if s["state"] == "running" and s["expires_at"] > now]
        live.sort(key=lambda s: s["session_id"])
        live.sort(key=lambda s: s["last_seen"], reverse=True)
        return live

    def get_by_ppid(self, ppid: int, now: int) -> Any:
        with self.lock:
            sessions = self.read()["sessions"].values()
        live = self._live([s for s in sessions if s["ppid"] == ppid], now)
        return live[0] if live else None

    def notify_list(self, now: int) -> list[Any]:
        with self.lock:
            sessions = self.read()["sessions"].values()
        return self._live([s for s in sessions if s["notify"]], now)

    def mint(self, sid: str, chat: int, now: int) -> str:
        token = secrets.token_urlsafe(16)

        def change(doc: dict[str, Any]) -> None:
            if sid not in doc["sessions"]:
                raise LookupError(sid)
            doc["tokens"][token] = token_record(token, sid, chat, now)

        self._change(change)
        return token

    def validate(self, token: str, chat: int, now: int) -> bool:
        with self.lock:
            record = self.read()["tokens"].get(token)
        return record is not None and record["expires_at"] > now and record["chat_id"] == chat

    def cleanup(self, now: int) -> int:
        def change(doc: dict[str, Any]) -> int:
            gone = [k for k, s in doc["sessions"].items() if s["expires_at"] <= now]
            for key in gone:
                del doc["sessions"][key]
            doc["tokens"] = {k: t for k, t in doc["tokens"].items() if t["expires_at"] > now}
            return len(gone)

        return int(self._change(change))

    def increment(self, sid: str, now: int) -> None:
        def change(doc: dict[str, Any]) -> None:
            record = doc["sessions"][sid]
            record["label"] = str(int(record["label"]) + 1)

        self._change(change)


class Legacy(WholeFile):
    name = "legacy"

    def read(self) -> dict[str, Any]:
        return json.loads((self.root / "legacy.json").read_bytes())  # type: ignore[no-any-return]

    def write(self, document: dict[str, Any]) -> None:
        # As the old daemon did: rewritten in place, no temp file, no fsync.
        (self.root / "legacy.json").write_text(json.dumps(document, indent=2))


class TinyDbSubject(WholeFile):
    """TinyDB: a table per kind, one document per record; queries scan.

    TinyDB caches table state (the next document id, query results) in the process, so to be
    safe across processes at all it is opened afresh inside the lock for every operation.
    """

    name = "tinydb"

    @contextmanager
    def _db(self) -> Iterator[Any]:
        from tinydb import TinyDB

        with self.lock:
            db = TinyDB(self.root / "tiny.json")
            try:
                yield db
            finally:
                db.close()

    def read(self) -> dict[str, Any]:
        with self._db() as db:
            return {
                "sessions": {s["session_id"]: dict(s) for s in db.table("sessions").all()},
                "tokens": {t["token"]: dict(t) for t in db.table("tokens").all()},
            }

    def write(self, document: dict[str, Any]) -> None:
        with self._db() as db:
            for kind in ("sessions", "tokens"):
                table = db.table(kind)
                table.truncate()
                table.insert_multiple(list(document[kind].values()))

    def get(self, sid: str) -> Any:
        from tinydb import Query

        with self._db() as db:
            return db.table("sessions").get(Query().session_id == sid)

    def get_by_ppid(self, ppid: int, now: int) -> Any:
        from tinydb import Query

        with self._db() as db:
            found = db.table("sessions").search(Query().ppid == ppid)
        live = self._live(found, now)
        return live[0] if live else None

    def notify_list(self, now: int) -> list[Any]:
        from tinydb import Query

        with self._db() as db:
            found = db.table("sessions").search(Query().notify == True)  # noqa: E712
        return self._live(found, now)

    def validate(self, token: str, chat: int, now: int) -> bool:
        from tinydb import Query

        with self._db() as db:
            record = db.table("tokens").get(Query().token == token)
        return record is not None and record["expires_at"] > now and record["chat_id"] == chat

    def register(self, sid: str, ppid: int, now: int) -> None:
        from tinydb import Query

        with self._db() as db:
            table = db.table("sessions")
            if table.get(Query().session_id == sid) is None:
                table.insert(session_record(sid, ppid, now))
            else:
                changes = {"ppid": ppid, "updated_at": now, "last_seen": now}
                table.update({**changes, "expires_at": now + DAY_MS}, Query().session_id == sid)

    def update(self, sid: str, label: str, now: int) -> None:
        from tinydb import Query

        with self._db() as db:
            db.table("sessions").update(
                {"label": label, "updated_at": now}, Query().session_id == sid
            )

    def mint(self, sid: str, chat: int, now: int) -> str:
        token = secrets.token_urlsafe(16)
        with self._db() as db:
            db.table("tokens").insert(token_record(token, sid, chat, now))
        return token

    def cleanup(self, now: int) -> int:
        from tinydb import Query

        with self._db() as db:
            removed = db.table("sessions").remove(Query().expires_at <= now)
            db.table("tokens").remove(Query().expires_at <= now)
        return len(removed)

    def increment(self, sid: str, now: int) -> None:
        from tinydb import Query

        with self._db() as db:
            table = db.table("sessions")
            record = table.get(Query().session_id == sid)
            assert record is not None
            table.update({"label": str(int(record["label"]) + 1)}, Query().session_id == sid)


SUBJECTS: dict[str, type[Subject]] = {
    cls.name: cls
    for cls in (
        Raw,
        OursSqlite,
        OursJson,
        OursDual,
        DiskCache,
        SqliteDictSubject,
        TinyDbSubject,
        Legacy,
    )
}
