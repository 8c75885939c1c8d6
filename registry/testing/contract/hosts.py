"""Sessions and commands know their machine (SPEC 2, 4, 5), on every backend.

Two stores on the same data with different ``host_id`` stand for two machines sharing one
store: the ppid lookup, the dead-session cleanup and claim of each stay on its own host, the
list filters select by host, and a register moves a session to the registering host.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from registry import Store, ValidationError
from registry.testing.backend import OpenStore
from registry.testing.clock import FakeClock

HOST_A = "host-a"
HOST_B = "host-b"


@pytest.fixture
def two(open_: OpenStore) -> tuple[Store, Store]:
    """A store of host A and one of host B on the same data."""
    return open_(host_id=HOST_A), open_(host_id=HOST_B)


def test_register_stamps_the_store_host(two: tuple[Store, Store]) -> None:
    a, b = two
    assert a.sessions.register("s-a").host == HOST_A
    assert b.sessions.register("s-b").host == HOST_B
    for store in (a, b):
        found_a, found_b = store.sessions.get("s-a"), store.sessions.get("s-b")
        assert found_a is not None and found_a.host == HOST_A
        assert found_b is not None and found_b.host == HOST_B


def test_a_register_from_another_host_moves_the_session(
    two: tuple[Store, Store], clock: FakeClock
) -> None:
    a, b = two
    a.sessions.register("s1", ppid=300, label="here")
    token = a.tokens.mint_token("s1", 5)
    clock.advance(seconds=1)
    moved = b.sessions.register("s1", ppid=300)
    assert moved.host == HOST_B and moved.label == "here"  # the other fields merge as ever
    assert a.sessions.get_by_ppid(300) is None
    assert b.sessions.get_by_ppid(300) == moved
    assert [t.token for t in b.tokens.tokens_for_session("s1")] == [token.token]
    # touch and update keep the host; only register stamps it.
    clock.advance(seconds=1)
    assert a.sessions.touch("s1").host == HOST_B
    assert a.sessions.update("s1", label="there").host == HOST_B


def test_get_by_ppid_sees_only_this_hosts_sessions(
    two: tuple[Store, Store], clock: FakeClock
) -> None:
    a, b = two
    mine = a.sessions.register("s-a", ppid=100)
    clock.advance(seconds=1)
    theirs = b.sessions.register("s-b", ppid=100)  # newer, same ppid, another machine
    b.sessions.register("s-only-b", ppid=200)
    assert a.sessions.get_by_ppid(100) == mine
    assert b.sessions.get_by_ppid(100) == theirs
    assert a.sessions.get_by_ppid(200) is None
    assert b.sessions.get_by_ppid(200) is not None


def test_cleanup_dead_sessions_probes_and_removes_only_this_hosts_sessions(
    two: tuple[Store, Store],
) -> None:
    a, b = two
    a.sessions.register("a1", ppid=11, start_time=1)
    a.sessions.register("a2", ppid=12)
    b.sessions.register("b1", ppid=21, start_time=2)
    b.inbox.enqueue("cmd-b", {"n": 1}, session_id="b1")
    probed: list[int] = []

    def dead(pid: int, start_time: int | None) -> bool:
        probed.append(pid)
        return False

    assert a.sessions.cleanup_dead_sessions(dead) == ["a1", "a2"]
    assert sorted(probed) == [11, 12]
    assert b.sessions.get("b1") is not None
    command = b.inbox.get("cmd-b")
    assert command is not None and command.state == "ready"
    probed.clear()
    assert b.sessions.cleanup_dead_sessions(dead) == ["b1"]
    assert probed == [21]


def test_list_sessions_filters_by_host(two: tuple[Store, Store], clock: FakeClock) -> None:
    a, b = two
    a.sessions.register("a1", notify=True)
    clock.advance(seconds=1)
    b.sessions.register("b1", notify=True)
    clock.advance(seconds=1)
    a.sessions.register("a2")
    ids = [s.session_id for s in a.sessions.list_sessions()]
    assert ids == ["a2", "b1", "a1"]  # no filter: every host, in list order
    assert [s.session_id for s in b.sessions.list_sessions(host=HOST_A)] == ["a2", "a1"]
    assert [s.session_id for s in a.sessions.list_sessions(host=HOST_B)] == ["b1"]
    notify_a = a.sessions.list_sessions(notify_only=True, host=HOST_A)
    assert [s.session_id for s in notify_a] == ["a1"]
    assert a.sessions.list_sessions(host="host-c") == []
    with pytest.raises(ValidationError):
        a.sessions.list_sessions(host="")


def test_a_command_takes_its_sessions_host_or_the_enqueuing_stores(
    two: tuple[Store, Store],
) -> None:
    a, b = two
    a.sessions.register("s-a")
    on_a, _ = b.inbox.enqueue("for-a", {"n": 1}, session_id="s-a")  # enqueued on B
    assert on_a.host == HOST_A
    free_b, _ = b.inbox.enqueue("free-b", {"n": 2})
    free_a, _ = a.inbox.enqueue("free-a", {"n": 3})
    assert (free_b.host, free_a.host) == (HOST_B, HOST_A)
    stored = a.inbox.get("free-b")
    assert stored is not None and stored.host == HOST_B


def test_claim_only_takes_this_hosts_commands(two: tuple[Store, Store], clock: FakeClock) -> None:
    a, b = two
    a.sessions.register("s-a")
    b.sessions.register("s-b")
    b.inbox.enqueue("b-1", {"n": 1}, session_id="s-b")
    b.inbox.enqueue("b-free", {"n": 2})
    a.inbox.enqueue("a-1", {"n": 3}, session_id="s-a")
    a.inbox.enqueue("a-free", {"n": 4})
    claimed_a = [a.inbox.claim("daemon-a") for _ in range(3)]
    assert [c.command_id if c else None for c in claimed_a] == ["a-1", "a-free", None]
    # B's session-less command is not held back by A's: each host's commands are its own.
    claimed_b = [b.inbox.claim("daemon-b") for _ in range(3)]
    assert [c.command_id if c else None for c in claimed_b] == ["b-1", "b-free", None]
    # A lease run out is claimable again, by its own host only.
    clock.advance(minutes=10)
    assert a.inbox.claim("daemon-a", lease=timedelta(seconds=5)) is not None
    again = b.inbox.claim("daemon-b")
    assert again is not None and again.host == HOST_B


def test_list_commands_filters_by_host(two: tuple[Store, Store]) -> None:
    a, b = two
    a.sessions.register("s-a")
    b.sessions.register("s-b")
    a.inbox.enqueue("c1", {}, session_id="s-a")
    b.inbox.enqueue("c2", {}, session_id="s-b")
    a.inbox.enqueue("c3", {})
    assert [c.command_id for c in b.inbox.list_commands()] == ["c1", "c2", "c3"]
    assert [c.command_id for c in b.inbox.list_commands(host=HOST_A)] == ["c1", "c3"]
    assert [c.command_id for c in a.inbox.list_commands(host=HOST_B)] == ["c2"]
    by_state = a.inbox.list_commands(host=HOST_A, state="ready", session_id="s-a")
    assert [c.command_id for c in by_state] == ["c1"]
    with pytest.raises(ValidationError):
        a.inbox.list_commands(host="bad\nhost")


def test_a_store_opened_again_keeps_the_hosts(open_: OpenStore) -> None:
    a = open_(host_id=HOST_A)
    a.sessions.register("s-a", ppid=42)
    a.inbox.enqueue("c", {})
    a.close()
    b = open_(host_id=HOST_B)
    found = b.sessions.get("s-a")
    command = b.inbox.get("c")
    assert found is not None and found.host == HOST_A
    assert command is not None and command.host == HOST_A
    assert b.sessions.get_by_ppid(42) is None
    assert b.inbox.claim("daemon-b") is None
