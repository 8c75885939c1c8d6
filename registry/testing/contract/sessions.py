"""SessionRegistry contract (registry/protocols.py), tested once against every backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from registry import SessionNotFound, Store, Transport, ValidationError
from registry.testing.backend import OpenStore
from registry.testing.clock import FakeClock

MS = timedelta(milliseconds=1)


# --------------------------------------------------------------------------- register


def test_register_new_session_takes_the_defaults(store: Store, clock: FakeClock) -> None:
    session = store.sessions.register("s1")
    assert session.session_id == "s1"
    assert (session.ppid, session.pid, session.start_time, session.cwd, session.label) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert session.notify is False
    assert session.transport == Transport(kind="unknown", details={})
    assert session.state == "running"
    assert session.created_at == session.updated_at == session.last_seen == clock.now
    assert session.expires_at == clock.now + store.session_ttl
    assert store.sessions.get("s1") == session


def test_register_stores_every_given_field(store: Store) -> None:
    transport = Transport(kind="nvim", details={"nvim_socket": "/tmp/nvim.0", "buffer": 7})
    session = store.sessions.register(
        "s1",
        ppid=41234,
        pid=41301,
        start_time=1770599990,
        cwd="/home/dev/p",
        label="p",
        notify=True,
        transport=transport,
        state="stopped",
    )
    assert store.sessions.get("s1") == session
    assert (session.ppid, session.pid, session.start_time) == (41234, 41301, 1770599990)
    assert (session.cwd, session.label, session.notify) == ("/home/dev/p", "p", True)
    assert (session.transport, session.state) == (transport, "stopped")


def test_reregister_merges_none_keeps_stored_values(store: Store, clock: FakeClock) -> None:
    first = store.sessions.register(
        "s1", ppid=10, cwd="/a", label="a", notify=True, transport=Transport(kind="pty")
    )
    clock.advance(seconds=5)
    second = store.sessions.register("s1", cwd="/b")
    assert second.cwd == "/b"
    assert (second.ppid, second.label, second.notify) == (10, "a", True)
    assert second.transport == Transport(kind="pty")
    assert second.created_at == first.created_at
    assert second.updated_at == second.last_seen == clock.now
    assert second.expires_at == clock.now + store.session_ttl
    assert store.sessions.get("s1") == second


def test_reregister_keeps_the_sessions_tokens(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1", ppid=10)
    token = store.tokens.mint_token("s1", 42)
    clock.advance(minutes=1)
    store.sessions.register("s1", ppid=11, notify=True)
    assert store.tokens.tokens_for_session("s1") == [token]
    assert store.tokens.validate_token(token.token, 42) == token


def test_register_can_set_notify_false_and_state_running_explicitly(store: Store) -> None:
    store.sessions.register("s1", notify=True, state="stopped")
    session = store.sessions.register("s1", notify=False, state="running")
    assert (session.notify, session.state) == (False, "running")


# --------------------------------------------------------------------------- get and lists


def test_get_unknown_session_is_none(store: Store) -> None:
    assert store.sessions.get("nope") is None


def test_get_returns_expired_sessions_until_cleaned(store: Store, clock: FakeClock) -> None:
    session = store.sessions.register("s1")
    clock.advance(store.session_ttl + timedelta(hours=1))
    assert store.sessions.get("s1") == session
    assert store.sessions.list_sessions() == [session]


def test_lists_are_ordered_by_last_seen_desc_then_id(store: Store, clock: FakeClock) -> None:
    store.sessions.register("b")
    store.sessions.register("a")  # same instant as b: the smaller id comes first
    clock.advance(seconds=1)
    store.sessions.register("c")
    clock.advance(seconds=1)
    store.sessions.register("d", notify=True)
    store.sessions.register("e", notify=True)
    listed = [s.session_id for s in store.sessions.list_sessions()]
    assert listed == ["d", "e", "c", "a", "b"]
    assert [s.session_id for s in store.sessions.get_notify_sessions()] == ["d", "e"]


def test_list_filters_active_and_notify(store: Store, clock: FakeClock) -> None:
    store.sessions.register("running-notify", notify=True)
    store.sessions.register("running-quiet")
    store.sessions.register("stopped-notify", notify=True, state="stopped")
    clock.advance(store.session_ttl - timedelta(hours=1))
    store.sessions.register("fresh-notify", notify=True)
    clock.advance(hours=1)  # the first three are now past their expiry
    active = {s.session_id for s in store.sessions.list_sessions(active_only=True)}
    assert active == {"fresh-notify"}
    notify = {s.session_id for s in store.sessions.list_sessions(notify_only=True)}
    assert notify == {"running-notify", "stopped-notify", "fresh-notify"}
    both = [s.session_id for s in store.sessions.list_sessions(active_only=True, notify_only=True)]
    assert both == ["fresh-notify"]
    assert [s.session_id for s in store.sessions.get_notify_sessions()] == ["fresh-notify"]
    assert len(store.sessions.list_sessions()) == 4


def test_notify_sessions_exclude_stopped(store: Store) -> None:
    store.sessions.register("on", notify=True)
    store.sessions.register("off", notify=True, state="stopped")
    assert [s.session_id for s in store.sessions.get_notify_sessions()] == ["on"]


def test_get_by_ppid_picks_the_latest_active_session(store: Store, clock: FakeClock) -> None:
    store.sessions.register("old", ppid=7)
    clock.advance(seconds=1)
    store.sessions.register("new", ppid=7)
    store.sessions.register("other", ppid=8)
    found = store.sessions.get_by_ppid(7)
    assert found is not None and found.session_id == "new"
    store.sessions.update("new", state="stopped")
    found = store.sessions.get_by_ppid(7)
    assert found is not None and found.session_id == "old"
    assert store.sessions.get_by_ppid(9) is None


def test_get_by_ppid_breaks_ties_by_smallest_id(store: Store) -> None:
    store.sessions.register("zeta", ppid=7)
    store.sessions.register("alpha", ppid=7)
    found = store.sessions.get_by_ppid(7)
    assert found is not None and found.session_id == "alpha"


# --------------------------------------------------------------------------- expiry boundary


def test_session_is_live_until_one_ms_before_expiry(store: Store, clock: FakeClock) -> None:
    session = store.sessions.register("s1", ppid=7, notify=True)
    clock.now = session.expires_at - MS
    assert store.sessions.get_by_ppid(7) == session
    assert store.sessions.get_notify_sessions() == [session]
    assert store.sessions.list_sessions(active_only=True) == [session]
    assert store.sessions.cleanup_expired_sessions() == []
    clock.now = session.expires_at
    assert store.sessions.get_by_ppid(7) is None
    assert store.sessions.get_notify_sessions() == []
    assert store.sessions.list_sessions(active_only=True) == []
    assert store.sessions.cleanup_expired_sessions() == ["s1"]
    assert store.sessions.get("s1") is None


# --------------------------------------------------------------------------- update and touch


def test_update_sets_exactly_the_given_fields(store: Store, clock: FakeClock) -> None:
    before = store.sessions.register("s1", ppid=10, cwd="/a", label="a")
    clock.advance(seconds=30)
    after = store.sessions.update("s1", label="b", notify=True)
    assert (after.label, after.notify) == ("b", True)
    assert (after.ppid, after.cwd) == (10, "/a")
    assert after.updated_at == clock.now
    assert after.last_seen == before.last_seen
    assert after.expires_at == before.expires_at
    assert after.created_at == before.created_at
    assert store.sessions.get("s1") == after


def test_update_with_none_clears_a_nullable_field(store: Store) -> None:
    store.sessions.register("s1", ppid=10, label="a")
    assert store.sessions.update("s1", ppid=None, label=None).ppid is None
    session = store.sessions.get("s1")
    assert session is not None and (session.ppid, session.label) == (None, None)


def test_update_unknown_field_is_a_validation_error(store: Store) -> None:
    store.sessions.register("s1")
    with pytest.raises(ValidationError, match="expires_at"):
        store.sessions.update("s1", expires_at=None)
    with pytest.raises(ValidationError, match="colour"):
        store.sessions.update("s1", colour="red")


def test_update_unknown_session_raises(store: Store) -> None:
    with pytest.raises(SessionNotFound):
        store.sessions.update("nope", label="x")


def test_touch_moves_last_seen_and_expiry_only(store: Store, clock: FakeClock) -> None:
    before = store.sessions.register("s1", label="a")
    clock.advance(hours=2)
    after = store.sessions.touch("s1")
    assert after.last_seen == clock.now
    assert after.expires_at == clock.now + store.session_ttl
    assert after.updated_at == before.updated_at
    assert after.label == "a"
    assert store.sessions.get("s1") == after
    with pytest.raises(SessionNotFound):
        store.sessions.touch("nope")


def test_touch_revives_an_expired_session(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1", ppid=3)
    clock.advance(store.session_ttl)
    assert store.sessions.get_by_ppid(3) is None
    store.sessions.touch("s1")
    found = store.sessions.get_by_ppid(3)
    assert found is not None and found.session_id == "s1"


# --------------------------------------------------------------------------- removal paths


def test_remove_deletes_the_session_and_its_tokens(store: Store) -> None:
    store.sessions.register("s1")
    store.sessions.register("s2")
    token = store.tokens.mint_token("s1", 1)
    kept = store.tokens.mint_token("s2", 1)
    assert store.sessions.remove("s1") is True
    assert store.sessions.get("s1") is None
    assert store.tokens.tokens_for_session("s1") == []
    assert store.tokens.get_session_by_token(token.token) is None
    assert store.tokens.tokens_for_session("s2") == [kept]
    assert store.sessions.remove("s1") is False


def test_cleanup_expired_sessions_removes_any_state_with_tokens(
    store: Store, clock: FakeClock
) -> None:
    store.sessions.register("b-running")
    store.sessions.register("a-stopped", state="stopped")
    token = store.tokens.mint_token("a-stopped", 5, ttl=timedelta(days=7))
    clock.advance(hours=1)
    store.sessions.register("fresh")
    clock.advance(store.session_ttl - timedelta(hours=1))
    assert store.sessions.cleanup_expired_sessions() == ["a-stopped", "b-running"]
    assert [s.session_id for s in store.sessions.list_sessions()] == ["fresh"]
    assert store.tokens.tokens_for_session("a-stopped") == []
    assert store.tokens.get_session_by_token(token.token) is None
    assert store.sessions.cleanup_expired_sessions() == []


# --------------------------------------------------------------------------- dead sessions


def test_cleanup_dead_probes_only_running_sessions_with_a_ppid(store: Store) -> None:
    store.sessions.register("dead", ppid=100, start_time=1000)
    store.sessions.register("alive", ppid=200, start_time=2000)
    store.sessions.register("no-ppid")
    store.sessions.register("stopped", ppid=300, state="stopped")
    token = store.tokens.mint_token("dead", 9)
    probed: list[tuple[int, int | None]] = []

    def is_alive(pid: int, start_time: int | None) -> bool:
        probed.append((pid, start_time))
        return pid != 100

    assert store.sessions.cleanup_dead_sessions(is_alive) == ["dead"]
    assert sorted(probed) == [(100, 1000), (200, 2000)]
    assert {s.session_id for s in store.sessions.list_sessions()} == {"alive", "no-ppid", "stopped"}
    assert store.tokens.tokens_for_session("dead") == []
    assert store.tokens.get_session_by_token(token.token) is None


def test_cleanup_dead_returns_removed_ids_sorted(store: Store) -> None:
    for sid in ("c", "a", "b"):
        store.sessions.register(sid, ppid=1)
    assert store.sessions.cleanup_dead_sessions(lambda pid, start: False) == ["a", "b", "c"]


def test_cleanup_dead_keeps_a_session_reregistered_during_the_probe(
    open_: OpenStore, clock: FakeClock
) -> None:
    store, other = open_(), open_()
    store.sessions.register("racing", ppid=100, start_time=1)
    store.sessions.register("dead", ppid=101, start_time=1)
    # Written before the pass begins: a session last written in the very millisecond of the
    # pass is kept one more pass whenever anything changed during the probes.
    clock.advance(milliseconds=1)

    def is_alive(pid: int, start_time: int | None) -> bool:
        if pid == 100:
            # The hook of a new process re-registers the session while it is being probed,
            # through another store object on the same data; no lock is held, so no deadlock.
            other.sessions.register("racing", ppid=555, start_time=2)
        return False

    assert store.sessions.cleanup_dead_sessions(is_alive) == ["dead"]
    kept = store.sessions.get("racing")
    assert kept is not None and kept.ppid == 555


@pytest.mark.parametrize("action", ["touch", "update", "register"])
def test_cleanup_dead_keeps_a_session_changed_during_the_probe(
    open_: OpenStore, clock: FakeClock, action: str
) -> None:
    store, other = open_(), open_()
    store.sessions.register("s1", ppid=100, start_time=1)

    def is_alive(pid: int, start_time: int | None) -> bool:
        clock.advance(milliseconds=1)
        if action == "touch":
            other.sessions.touch("s1")
        elif action == "update":
            other.sessions.update("s1", label="changed")
        else:
            other.sessions.register("s1")
        return False

    assert store.sessions.cleanup_dead_sessions(is_alive) == []
    assert store.sessions.get("s1") is not None


@pytest.mark.parametrize("through", ["same-store", "other-store"])
@pytest.mark.parametrize("action", ["touch", "update", "register", "register-same"])
def test_cleanup_dead_keeps_a_session_changed_in_the_same_millisecond(
    open_: OpenStore, action: str, through: str
) -> None:
    """The clock does not move: a change during the probe may leave the record identical."""
    store = open_()
    writer = store if through == "same-store" else open_()
    store.sessions.register("s1", ppid=100, start_time=1, label="x")

    def is_alive(pid: int, start_time: int | None) -> bool:
        if action == "touch":
            writer.sessions.touch("s1")
        elif action == "update":
            writer.sessions.update("s1", label="x")
        elif action == "register":
            writer.sessions.register("s1")
        else:
            writer.sessions.register("s1", ppid=100, start_time=1, label="x")
        return False

    assert store.sessions.cleanup_dead_sessions(is_alive) == []
    assert store.sessions.get("s1") is not None
    # Nothing changes during the next pass: the verdict then stands.
    assert store.sessions.cleanup_dead_sessions(lambda pid, start: False) == ["s1"]


def test_cleanup_dead_with_nothing_to_remove(store: Store) -> None:
    store.sessions.register("s1", ppid=1)
    assert store.sessions.cleanup_dead_sessions(lambda pid, start: True) == []
    assert store.sessions.get("s1") is not None
