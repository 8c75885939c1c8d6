"""Store contract: atomic() units, lifecycle, persistence across reopen, hostile data, files."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry import RegistryError, Store, StoreCorrupted, Transport
from registry.testing.backend import OpenStore
from registry.testing.clock import FakeClock, data_files


class Boom(Exception):
    pass


# --------------------------------------------------------------------------- atomic()


def test_atomic_commits_everything_together(open_: OpenStore) -> None:
    store = open_()
    with store.atomic():
        store.sessions.register("s1")
        token = store.tokens.mint_token("s1", 5)
        # Inside the unit, its own changes are visible.
        assert store.tokens.validate_token(token.token, 5) == token
    reopened = open_()
    assert reopened.sessions.get("s1") is not None
    assert reopened.tokens.tokens_for_session("s1") == [token]


def test_atomic_rolls_back_everything_on_exception(open_: OpenStore) -> None:
    store = open_()
    store.sessions.register("kept", label="before")
    with pytest.raises(Boom), store.atomic():
        store.sessions.update("kept", label="during")
        store.sessions.register("s1")
        store.tokens.mint_token("s1", 5)
        store.sessions.remove("kept")
        raise Boom
    for view in (store, open_()):
        assert [s.session_id for s in view.sessions.list_sessions()] == ["kept"]
        kept = view.sessions.get("kept")
        assert kept is not None and kept.label == "before"
        assert view.tokens.tokens_for_session("s1") == []


def test_nested_atomic_failure_undoes_only_the_inner_block(open_: OpenStore) -> None:
    store = open_()
    with store.atomic():
        store.sessions.register("outer")
        with pytest.raises(Boom), store.atomic():
            store.sessions.register("inner")
            store.tokens.mint_token("outer", 1)
            raise Boom
        assert store.sessions.get("inner") is None
        store.sessions.register("after")
    for view in (store, open_()):
        assert {s.session_id for s in view.sessions.list_sessions()} == {"outer", "after"}
        assert view.tokens.tokens_for_session("outer") == []


def test_nested_atomic_success_is_undone_by_an_outer_failure(open_: OpenStore) -> None:
    store = open_()
    with pytest.raises(Boom), store.atomic():
        with store.atomic():
            store.sessions.register("inner")
        with store.atomic(), store.atomic():
            store.sessions.register("deeper")
        raise Boom
    assert open_().sessions.list_sessions() == []


def test_atomic_lets_the_exception_through_unchanged(store: Store) -> None:
    error = Boom("mine")
    with pytest.raises(Boom) as caught, store.atomic():
        raise error
    assert caught.value is error


def test_store_is_usable_after_a_failed_unit(store: Store) -> None:
    with pytest.raises(Boom), store.atomic():
        store.sessions.register("s1")
        raise Boom
    store.sessions.register("s2")
    assert [s.session_id for s in store.sessions.list_sessions()] == ["s2"]


# --------------------------------------------------------------------------- lifecycle


def test_store_reports_its_backend_and_ttls(store: Store, store_config: dict[str, Any]) -> None:
    assert store.backend == store_config["backend"]
    assert store.session_ttl == timedelta(hours=24)
    assert store.token_ttl == timedelta(hours=24)
    assert store.sessions is not None and store.tokens is not None


def test_ttls_come_from_config(open_: OpenStore, clock: FakeClock) -> None:
    store = open_(session_ttl_hours=2, token_ttl_hours=0.5)
    session = store.sessions.register("s1")
    assert session.expires_at == clock.now + timedelta(hours=2)
    assert store.tokens.mint_token("s1", 1).expires_at == clock.now + timedelta(minutes=30)


def test_close_is_idempotent_and_closed_store_refuses_work(open_: OpenStore) -> None:
    store = open_()
    store.close()
    store.close()
    with pytest.raises(RegistryError, match="closed"):
        store.sessions.get("s1")
    with open_() as again:
        again.sessions.register("s1")
    with pytest.raises(RegistryError):
        again.sessions.register("s2")


# --------------------------------------------------------------------------- persistence


HOSTILE_STRINGS = [
    "'; DROP TABLE sessions; --",
    'quote " and \\ backslash',
    "100% _under_score_ %%",
    "emoji 🦜🔥 and ☕ été — ü",
    "ümlaut\u200bzero-width",
    "a" * 256,
]


@pytest.mark.parametrize("text", HOSTILE_STRINGS, ids=range(len(HOSTILE_STRINGS)))
def test_hostile_strings_survive_close_and_reopen(open_: OpenStore, text: str) -> None:
    store = open_()
    label = (text * 50)[:4096]
    transport = Transport(kind="tmux", details={"pane_id": text, text[:200]: text})
    session = store.sessions.register(text, cwd=text, label=label, transport=transport)
    token = store.tokens.store_token(text, text, -(2**63), context={text: [text]}, scopes=[text])
    other = store.sessions.register("plain")
    store.close()
    reopened = open_()
    assert reopened.sessions.get(text) == session
    assert reopened.tokens.validate_token(text, -(2**63)) == token
    assert sorted(s.session_id for s in reopened.sessions.list_sessions()) == sorted(
        [text, "plain"]
    )
    assert reopened.sessions.get("plain") == other
    # A LIKE-style wildcard in an id never matches another id.
    assert reopened.sessions.get("%") is None and reopened.sessions.get("_") is None


@pytest.mark.parametrize("chat_id", [0, 1, -1, 123456789, -1001234567890, 2**63 - 1, -(2**63)])
def test_chat_ids_round_trip(open_: OpenStore, chat_id: int) -> None:
    store = open_()
    store.sessions.register("s1")
    token = store.tokens.mint_token("s1", chat_id)
    store.close()
    assert open_().tokens.validate_token(token.token, chat_id) == token


def test_every_field_survives_reopen(open_: OpenStore, clock: FakeClock) -> None:
    store = open_()
    session = store.sessions.register(
        "s1",
        ppid=2**31,
        pid=1,
        start_time=0,
        cwd="/",
        label="",
        notify=True,
        transport=Transport(
            kind="nvim",
            details={"nvim_socket": "/s", "buffer": 7, "ratio": 0.5, "flag": False, "none": None},
        ),
        state="stopped",
    )
    clock.advance(microseconds=1234567)  # timestamps are kept to the millisecond
    touched = store.sessions.touch("s1")
    token = store.tokens.mint_token("s1", 5, scopes=(), context={"k": {"deep": [1, "x"]}})
    store.close()
    reopened = open_()
    assert reopened.sessions.get("s1") == touched
    assert touched.created_at == session.created_at
    assert touched.last_seen.microsecond % 1000 == 0
    assert reopened.tokens.tokens_for_session("s1") == [token]


# --------------------------------------------------------------------------- files


def _corrupt(path: Path) -> bytes:
    garbage = b"\x00\xffnot what it should be {[" * 40
    path.write_bytes(garbage)
    return garbage


@pytest.mark.ccr_file_backends
def test_corrupt_data_file_is_refused_and_left_untouched(
    open_: OpenStore, data_dir: Path, store_config: dict[str, Any]
) -> None:
    # strict: a dual store refuses a damaged secondary too (without it, it runs primary-only:
    # tests/dual/test_dual.py); the other backends ignore the [store.dual] table.
    strict = {"dual": {**store_config.get("dual", {}), "strict": True}}
    store = open_()
    store.sessions.register("s1")
    store.tokens.mint_token("s1", 1)
    store.close()
    names = sorted(data_files(data_dir))
    assert names, "the store wrote no data file"
    for name in names:
        before = data_files(data_dir)
        _corrupt(data_dir / name)
        damaged = data_files(data_dir)
        with pytest.raises(StoreCorrupted):
            reopened = open_(**strict)
            reopened.sessions.list_sessions()
            reopened.tokens.tokens_for_session("s1")
        assert data_files(data_dir) == damaged, f"{name} was modified after being refused"
        for restored, content in before.items():
            (data_dir / restored).write_bytes(content)


@pytest.mark.ccr_file_backends
def test_new_files_are_private(open_: OpenStore, data_dir: Path) -> None:
    store = open_()
    store.sessions.register("s1")
    store.tokens.mint_token("s1", 1)
    with store.atomic():
        store.sessions.register("s2")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = [p for p in data_dir.iterdir() if p.is_file()]
    assert files
    for path in files:  # while open: the database's -wal and -shm too
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_existing_data_dir_mode_is_left_alone(open_: OpenStore, data_dir: Path) -> None:
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    open_().sessions.register("s1")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755
