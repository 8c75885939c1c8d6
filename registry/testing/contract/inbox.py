"""CommandInbox contract (SPEC 3.4, registry/protocols.py), tested once against every backend.

Each test names the guarantee it checks; times are moved with the fake clock only, and every
boundary is checked on both sides (one millisecond before, and exactly at).
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from registry import (
    Command,
    CommandNotFound,
    LeaseLost,
    SessionNotFound,
    Store,
    ValidationError,
)
from registry.protocols import CommandInbox
from registry.testing.backend import OpenStore
from registry.testing.clock import FakeClock, data_files
from registry.testing.values import BEYOND_INT64, INVALID_UNICODE, NOT_INTS, NOT_STRINGS, ODD_TEXT

MS = timedelta(milliseconds=1)
SECOND = timedelta(seconds=1)
# The configured defaults (SPEC 5): inbox_lease_s = 60, inbox_max_attempts = 10.
DEFAULT_LEASE = timedelta(seconds=60)
MAX_PAYLOAD_BYTES = 65_536
MAX_DEPTH = 100
SESSION_REMOVED = "session removed"


class Boom(Exception):
    """Raised inside an atomic() block to make it roll back."""


# --------------------------------------------------------------------------- building blocks


def _claimed(store: Store, command_id: str = "c1", owner: str = "w1", **enqueue: Any) -> Command:
    """Enqueue ``command_id`` and claim it; the inbox must hold nothing else claimable first."""
    store.inbox.enqueue(command_id, {"text": command_id}, **enqueue)
    claimed = store.inbox.claim(owner)
    assert claimed is not None and claimed.command_id == command_id
    return claimed


def _in_state(store: Store, state: str, command_id: str = "c1", **enqueue: Any) -> Command:
    """A command in ``state`` (``leased`` and the finished ones went through owner ``w1``)."""
    if state == "ready":
        store.inbox.enqueue(command_id, {"text": command_id}, **enqueue)
    else:
        _claimed(store, command_id, "w1", **enqueue)
        if state == "done":
            store.inbox.complete(command_id, "w1")
        elif state == "dead":
            store.inbox.fail(command_id, "w1", "boom", final=True)
    command = store.inbox.get(command_id)
    assert command is not None and command.state == state
    return command


def _sized(size: int, fill: str = "x") -> dict[str, str]:
    """A payload whose compact UTF-8 JSON is exactly ``size`` bytes: ``{"k":"..."}``."""
    room = size - len(b'{"k":""}')
    text = fill * (room // len(fill.encode()))
    text += "x" * (room - len(text.encode()))
    payload = {"k": text}
    assert len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()) == size
    return payload


def _nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """An object ``depth`` levels deep (a flat object is depth 1), built without recursion."""
    value: Any = leaf
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[no-any-return]


def _nested_lists(depth: int) -> dict[str, Any]:
    """An object holding lists, ``depth`` levels deep in all."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"k": value}


def _typed(value: Any) -> Any:
    """``value`` with each scalar paired with its type name: ``True`` is not ``1``, nor ``1.0``."""
    if isinstance(value, Mapping):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)


# --------------------------------------------------------------------------- enqueue


def test_enqueue_stores_a_ready_command(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    command, created = store.inbox.enqueue(
        "c1", {"text": "ls -la", "n": 3}, session_id="s1", chat_id=-1001234567890
    )
    assert created is True
    assert isinstance(command.seq, int)
    assert (command.command_id, command.session_id, command.chat_id) == ("c1", "s1", -1001234567890)
    assert command.payload == {"text": "ls -la", "n": 3}
    assert (command.state, command.attempts) == ("ready", 0)
    assert command.available_at == command.created_at == command.updated_at == clock.now
    assert (command.lease_owner, command.lease_until, command.last_error) == (None, None, None)
    assert store.inbox.get("c1") == command
    assert store.inbox.list_commands() == [command]


def test_enqueue_without_session_or_chat(store: Store) -> None:
    command, created = store.inbox.enqueue("c1", {})
    assert created is True
    assert (command.session_id, command.chat_id) == (None, None)
    assert command.payload == {}
    assert store.inbox.get("c1") == command


def test_enqueue_with_a_delay_is_available_later(store: Store, clock: FakeClock) -> None:
    delayed, _ = store.inbox.enqueue("c1", {}, delay=timedelta(minutes=5))
    assert delayed.available_at == clock.now + timedelta(minutes=5)
    assert delayed.created_at == delayed.updated_at == clock.now
    now, _ = store.inbox.enqueue("c2", {}, delay=timedelta(0))
    assert now.available_at == clock.now


@pytest.mark.parametrize("state", ["ready", "leased", "done", "dead"])
def test_enqueue_of_a_known_id_returns_the_stored_command_and_writes_nothing(
    store: Store, clock: FakeClock, data_dir: Path, state: str
) -> None:
    store.sessions.register("s1")
    store.sessions.register("s2")
    stored = _in_state(store, state, session_id="s1", chat_id=5)
    clock.advance(minutes=5)
    files_before = data_files(data_dir)
    # Everything differs but the id: the payload and the rest are not compared.
    again, created = store.inbox.enqueue(
        "c1", {"other": "payload"}, session_id="s2", chat_id=7, delay=timedelta(hours=1)
    )
    assert created is False
    assert again == stored
    assert again.updated_at == stored.updated_at < clock.now
    assert store.inbox.get("c1") == stored
    assert store.inbox.list_commands() == [stored]
    assert data_files(data_dir) == files_before


def test_enqueue_finds_a_known_id_before_checking_its_session(
    store: Store, clock: FakeClock, data_dir: Path
) -> None:
    store.sessions.register("s1")
    store.inbox.enqueue("c1", {"text": "ls"}, session_id="s1")
    assert store.sessions.remove("s1") is True
    stored = store.inbox.get("c1")
    assert stored is not None
    clock.advance(seconds=1)
    files_before = data_files(data_dir)
    # The session is gone: a retried enqueue of the same command still gets the stored one.
    assert store.inbox.enqueue("c1", {"text": "ls"}, session_id="s1") == (stored, False)
    assert store.inbox.enqueue("c1", {"text": "ls"}, session_id="never") == (stored, False)
    assert data_files(data_dir) == files_before


def test_enqueue_for_an_unknown_session_raises_and_stores_nothing(
    store: Store, data_dir: Path
) -> None:
    store.sessions.register("s1")
    files_before = data_files(data_dir)
    with pytest.raises(SessionNotFound):
        store.inbox.enqueue("c1", {"text": "ls"}, session_id="nope")
    assert data_files(data_dir) == files_before
    assert store.inbox.get("c1") is None
    assert store.inbox.list_commands() == []


def test_enqueue_for_an_expired_but_not_cleaned_session_is_accepted(
    store: Store, clock: FakeClock
) -> None:
    store.sessions.register("s1")
    clock.advance(store.session_ttl + timedelta(hours=1))
    command, created = store.inbox.enqueue("c1", {}, session_id="s1")
    assert created is True and command.session_id == "s1"


def test_enqueue_validates_its_arguments_before_looking_up_the_id(
    store: Store, data_dir: Path
) -> None:
    stored, _ = store.inbox.enqueue("c1", {"text": "ls"})
    files_before = data_files(data_dir)
    bad_calls: list[Callable[[], object]] = [
        lambda: store.inbox.enqueue("c1", ["not", "a", "mapping"]),  # type: ignore[arg-type]
        lambda: store.inbox.enqueue("c1", {"n": float("nan")}),
        lambda: store.inbox.enqueue("c1", _sized(MAX_PAYLOAD_BYTES + 1)),
        lambda: store.inbox.enqueue("c1", {}, session_id=""),
        lambda: store.inbox.enqueue("c1", {}, chat_id=2**63),
        lambda: store.inbox.enqueue("c1", {}, delay=-SECOND),
    ]
    for call in bad_calls:
        with pytest.raises(ValidationError):
            call()
    assert store.inbox.list_commands() == [stored]
    assert data_files(data_dir) == files_before


@pytest.mark.parametrize(
    ("fill", "size", "accepted"),
    [
        ("x", MAX_PAYLOAD_BYTES, True),
        ("x", MAX_PAYLOAD_BYTES + 1, False),
        # The limit is in bytes of UTF-8, not characters: 2 and 4 bytes a character.
        ("é", MAX_PAYLOAD_BYTES, True),
        ("é", MAX_PAYLOAD_BYTES + 1, False),
        ("\U0001f99c", MAX_PAYLOAD_BYTES + 1, False),
    ],
    ids=["ascii-at-limit", "ascii-over", "2-byte-at-limit", "2-byte-over", "4-byte-over"],
)
def test_payload_size_limit_is_64_kib_of_compact_utf8_json(
    store: Store, fill: str, size: int, accepted: bool
) -> None:
    payload = _sized(size, fill)
    if accepted:
        command, created = store.inbox.enqueue("c1", payload)
        assert created is True
        assert store.inbox.get("c1") == command and command.payload == payload
    else:
        with pytest.raises(ValidationError):
            store.inbox.enqueue("c1", payload)
        assert store.inbox.list_commands() == []


@pytest.mark.parametrize(
    ("payload", "accepted"),
    [
        (_nested(MAX_DEPTH), True),
        (_nested(MAX_DEPTH + 1), False),
        (_nested_lists(MAX_DEPTH), True),
        (_nested_lists(MAX_DEPTH + 1), False),
    ],
    ids=["objects-100", "objects-101", "lists-100", "lists-101"],
)
def test_payload_nesting_limit_is_100_levels(
    store: Store, payload: dict[str, Any], accepted: bool
) -> None:
    if accepted:
        command, _ = store.inbox.enqueue("c1", payload)
        assert store.inbox.get("c1") == command and command.payload == payload
    else:
        with pytest.raises(ValidationError):
            store.inbox.enqueue("c1", payload)
        assert store.inbox.list_commands() == []


def test_seq_strictly_increases(store: Store) -> None:
    store.sessions.register("s1")
    seqs = [
        store.inbox.enqueue(f"c{i}", {}, session_id="s1" if i % 2 else None)[0].seq
        for i in range(5)
    ]
    assert all(earlier < later for earlier, later in itertools.pairwise(seqs))
    assert [c.seq for c in store.inbox.list_commands()] == seqs


def test_seq_is_never_reused_after_cleanup_or_reopen(open_: OpenStore, clock: FakeClock) -> None:
    store = open_(inbox_retention_hours=1)
    first = _claimed(store, "a")
    store.inbox.complete("a", "w1")
    clock.advance(hours=1)
    assert store.inbox.cleanup_inbox() == ["a"]  # the highest seq ever given is gone
    second = _claimed(store, "b")
    assert second.seq > first.seq
    store.inbox.complete("b", "w1")
    clock.advance(hours=1)
    assert store.inbox.cleanup_inbox() == ["b"]
    assert store.inbox.list_commands() == []
    store.close()
    reopened = open_(inbox_retention_hours=1)
    third, created = reopened.inbox.enqueue("c", {})
    assert created is True and third.seq > second.seq


# --------------------------------------------------------------------------- claim


def test_claim_on_an_empty_inbox_is_none(store: Store) -> None:
    assert store.inbox.claim("w1") is None
    assert store.inbox.list_commands() == []


def test_claim_leases_the_command_for_the_default_lease(store: Store, clock: FakeClock) -> None:
    enqueued, _ = store.inbox.enqueue("c1", {"text": "ls"}, chat_id=9)
    clock.advance(seconds=3)
    claimed = store.inbox.claim("w1")
    assert claimed is not None
    assert (claimed.state, claimed.attempts, claimed.lease_owner) == ("leased", 1, "w1")
    assert claimed.lease_until == clock.now + DEFAULT_LEASE
    assert claimed.updated_at == clock.now
    assert (
        attrs.evolve(
            claimed,
            state="ready",
            attempts=0,
            lease_owner=None,
            lease_until=None,
            updated_at=enqueued.updated_at,
        )
        == enqueued
    )
    assert store.inbox.get("c1") == claimed
    assert store.inbox.claim("w2") is None  # nothing else is claimable


def test_claim_lease_comes_from_the_config_or_the_argument(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_(inbox_lease_s=30)
    configured = _claimed(store, "c1")
    assert configured.lease_until == clock.now + timedelta(seconds=30)
    store.inbox.complete("c1", "w1")
    store.inbox.enqueue("c2", {})
    explicit = store.inbox.claim("w2", lease=timedelta(minutes=7))
    assert explicit is not None and explicit.command_id == "c2"
    assert explicit.lease_until == clock.now + timedelta(minutes=7)


def test_claim_takes_the_smallest_seq_first(store: Store) -> None:
    store.sessions.register("s1")
    store.sessions.register("s2")
    store.inbox.enqueue("z", {}, session_id="s1")
    store.inbox.enqueue("y", {}, session_id="s2")
    store.inbox.enqueue("x", {})
    claimed = [store.inbox.claim("w1") for _ in range(3)]
    assert [c.command_id for c in claimed if c is not None] == ["z", "y", "x"]
    assert store.inbox.claim("w1") is None


def test_a_sessions_next_command_waits_while_its_first_is_leased(store: Store) -> None:
    store.sessions.register("s1")
    store.sessions.register("s2")
    store.inbox.enqueue("first", {}, session_id="s1")
    store.inbox.enqueue("second", {}, session_id="s1")
    store.inbox.enqueue("other", {}, session_id="s2")
    assert _id(store.inbox.claim("w1")) == "first"
    assert _id(store.inbox.claim("w2")) == "other"  # another session is not held back
    assert store.inbox.claim("w2") is None  # "second" waits for "first"
    store.inbox.complete("first", "w1")
    assert _id(store.inbox.claim("w2")) == "second"


def test_a_sessions_next_command_waits_while_its_first_is_ready(
    store: Store, clock: FakeClock
) -> None:
    store.sessions.register("s1")
    store.inbox.enqueue("first", {}, session_id="s1", delay=timedelta(minutes=1))
    store.inbox.enqueue("second", {}, session_id="s1")
    assert store.inbox.claim("w1") is None  # "first" is not due, "second" does not head s1
    clock.advance(minutes=1)
    assert _id(store.inbox.claim("w1")) == "first"


def test_a_command_waiting_out_a_retry_holds_back_its_session(
    store: Store, clock: FakeClock
) -> None:
    store.sessions.register("s1")
    store.sessions.register("s2")
    store.inbox.enqueue("first", {}, session_id="s1")
    store.inbox.enqueue("second", {}, session_id="s1")
    assert _id(store.inbox.claim("w1")) == "first"
    failed = store.inbox.fail("first", "w1", "terminal busy")
    assert failed.state == "ready" and failed.available_at > clock.now
    assert store.inbox.claim("w1") is None  # never the successor
    store.inbox.enqueue("other", {}, session_id="s2")
    assert _id(store.inbox.claim("w1")) == "other"
    assert store.inbox.claim("w1") is None
    clock.now = failed.available_at
    retried = store.inbox.claim("w1")
    assert retried is not None and (retried.command_id, retried.attempts) == ("first", 2)


def test_commands_without_a_session_form_one_group(store: Store) -> None:
    store.sessions.register("s1")
    store.inbox.enqueue("loose-1", {})
    store.inbox.enqueue("loose-2", {})
    store.inbox.enqueue("bound", {}, session_id="s1")
    assert _id(store.inbox.claim("w1")) == "loose-1"
    assert _id(store.inbox.claim("w1")) == "bound"
    assert store.inbox.claim("w1") is None
    store.inbox.complete("loose-1", "w1")
    assert _id(store.inbox.claim("w1")) == "loose-2"


def test_a_finished_command_does_not_hold_back_its_session(store: Store) -> None:
    store.sessions.register("s1")
    for command_id, state in (("done", "done"), ("dead", "dead")):
        _in_state(store, state, command_id, session_id="s1")
    store.inbox.enqueue("next", {}, session_id="s1")
    assert _id(store.inbox.claim("w1")) == "next"


def test_a_delayed_command_is_claimable_at_exactly_available_at(
    store: Store, clock: FakeClock
) -> None:
    store.sessions.register("s1")
    delayed, _ = store.inbox.enqueue("later", {}, delay=timedelta(seconds=10))
    store.inbox.enqueue("now", {}, session_id="s1")
    # A due command with a larger seq is taken before one that is not yet due.
    assert _id(store.inbox.claim("w1")) == "now"
    clock.now = delayed.available_at - MS
    assert store.inbox.claim("w1") is None
    clock.now = delayed.available_at
    assert _id(store.inbox.claim("w1")) == "later"


def test_a_lease_that_ran_out_is_claimed_again_by_another_owner(
    store: Store, clock: FakeClock
) -> None:
    first = _claimed(store, "c1", "w1")
    assert first.lease_until is not None
    clock.now = first.lease_until - MS
    assert store.inbox.claim("w2") is None
    clock.now = first.lease_until
    second = store.inbox.claim("w2")
    assert second is not None and second.command_id == "c1"
    assert (second.state, second.attempts, second.lease_owner) == ("leased", 2, "w2")
    assert second.lease_until == clock.now + DEFAULT_LEASE
    assert second.updated_at == clock.now
    with pytest.raises(LeaseLost):
        store.inbox.complete("c1", "w1")
    with pytest.raises(LeaseLost):
        store.inbox.extend("c1", "w1")
    with pytest.raises(LeaseLost):
        store.inbox.fail("c1", "w1", "late")
    assert store.inbox.get("c1") == second


def test_a_zero_lease_is_claimable_again_at_once(store: Store, clock: FakeClock) -> None:
    store.inbox.enqueue("c1", {})
    first = store.inbox.claim("w1", lease=timedelta(0))
    assert first is not None and first.lease_until == clock.now
    second = store.inbox.claim("w2")
    assert second is not None and (second.lease_owner, second.attempts) == ("w2", 2)


def test_claim_gives_up_on_a_command_out_of_attempts_and_goes_on(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_(inbox_max_attempts=2)
    store.sessions.register("s1")
    store.inbox.enqueue("a", {}, session_id="s1")
    store.inbox.enqueue("b", {}, session_id="s1")
    for attempt in (1, 2):
        claimed = store.inbox.claim("w1")
        assert claimed is not None and (claimed.command_id, claimed.attempts) == ("a", attempt)
        assert claimed.lease_until is not None
        clock.now = claimed.lease_until  # the consumer died holding it
    following = store.inbox.claim("w2")
    # The next command of the same session now heads it, and is chosen by the same claim.
    assert following is not None and (following.command_id, following.attempts) == ("b", 1)
    dead = store.inbox.get("a")
    assert dead is not None
    assert (dead.state, dead.last_error, dead.attempts) == ("dead", "gave up after 2 attempts", 2)
    assert (dead.lease_owner, dead.lease_until) == (None, None)
    assert dead.updated_at == clock.now


def test_claim_that_gives_up_on_the_only_command_returns_none(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_(inbox_max_attempts=1)
    claimed = _claimed(store, "a")
    assert claimed.lease_until is not None
    clock.now = claimed.lease_until - MS
    assert store.inbox.claim("w2") is None
    assert store.inbox.get("a") == claimed  # not claimable yet: not given up either
    clock.now = claimed.lease_until
    assert store.inbox.claim("w2") is None
    dead = store.inbox.get("a")
    assert dead is not None and (dead.state, dead.last_error) == (
        "dead",
        "gave up after 1 attempts",
    )


def test_the_last_attempt_can_still_complete(open_: OpenStore, clock: FakeClock) -> None:
    store = open_(inbox_max_attempts=1)
    claimed = _claimed(store, "a")
    assert claimed.attempts == 1
    clock.advance(seconds=1)
    done = store.inbox.complete("a", "w1")
    assert done.state == "done" and done.last_error is None


def test_claim_gives_up_only_when_it_would_choose_the_command(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_(inbox_max_attempts=5)
    store.sessions.register("s1")
    store.inbox.enqueue("a", {}, session_id="s1")
    store.inbox.enqueue("b", {}, session_id="s1")
    for _ in range(2):
        assert _id(store.inbox.claim("w1")) == "a"
        waiting = store.inbox.fail("a", "w1", "boom")
        clock.now = waiting.available_at
    assert _id(store.inbox.claim("w1")) == "a"
    waiting = store.inbox.fail("a", "w1", "boom", retry_in=timedelta(minutes=1))
    assert (waiting.state, waiting.attempts) == ("ready", 3)
    store.close()
    # The limit is lowered under a ready command that already used 3 attempts.
    store = open_(inbox_max_attempts=3)
    clock.now = waiting.available_at - MS
    assert store.inbox.claim("w1") is None
    assert store.inbox.get("a") == waiting
    clock.now = waiting.available_at
    assert _id(store.inbox.claim("w1")) == "b"
    dead = store.inbox.get("a")
    assert dead is not None and (dead.state, dead.last_error) == (
        "dead",
        "gave up after 3 attempts",
    )


def _id(command: Command | None) -> str | None:
    return None if command is None else command.command_id


# --------------------------------------------------------------------------- extend, complete, fail


@pytest.mark.parametrize(
    "command_id", ["nope", "", "x" * 257, "line\nbreak", *INVALID_UNICODE[:2]], ids=range(6)
)
def test_unknown_command_raises_command_not_found(store: Store, command_id: str) -> None:
    _claimed(store, "c1", "w1")
    with pytest.raises(CommandNotFound):
        store.inbox.extend(command_id, "w1")
    with pytest.raises(CommandNotFound):
        store.inbox.complete(command_id, "w1")
    with pytest.raises(CommandNotFound):
        store.inbox.fail(command_id, "w1", "boom")
    with pytest.raises(CommandNotFound):
        store.inbox.requeue(command_id)
    assert issubclass(CommandNotFound, LookupError)


@pytest.mark.parametrize("situation", ["ready", "leased-by-other", "done", "dead", "released"])
def test_a_command_not_leased_by_the_caller_raises_lease_lost(
    store: Store, clock: FakeClock, situation: str
) -> None:
    if situation == "leased-by-other":
        _claimed(store, "c1", "w2")
    elif situation == "released":  # the caller failed it: ready again, nobody's lease
        _claimed(store, "c1", "w1")
        store.inbox.fail("c1", "w1", "boom", retry_in=timedelta(minutes=1))
    else:
        _in_state(store, situation)
    before = store.inbox.get("c1")
    clock.advance(seconds=1)
    with pytest.raises(LeaseLost):
        store.inbox.extend("c1", "w1")
    with pytest.raises(LeaseLost):
        store.inbox.complete("c1", "w1")
    with pytest.raises(LeaseLost):
        store.inbox.fail("c1", "w1", "boom")
    assert store.inbox.get("c1") == before


@pytest.mark.parametrize("method", ["extend", "complete", "fail"])
def test_a_lease_past_its_time_still_counts_until_someone_else_claims(
    store: Store, clock: FakeClock, method: str
) -> None:
    claimed = _claimed(store, "c1", "w1")
    assert claimed.lease_until is not None
    clock.now = claimed.lease_until + timedelta(hours=1)
    if method == "extend":
        result = store.inbox.extend("c1", "w1")
        assert (result.state, result.lease_until) == ("leased", clock.now + DEFAULT_LEASE)
    elif method == "complete":
        result = store.inbox.complete("c1", "w1")
        assert result.state == "done"
    else:
        result = store.inbox.fail("c1", "w1", "boom")
        assert result.state == "ready"
    assert result.updated_at == clock.now
    assert store.inbox.get("c1") == result


def test_an_owner_no_lease_can_have_never_completes(store: Store) -> None:
    claimed = _claimed(store, "c1", "w1")
    for owner in ("", "x" * 257, "w\n1", INVALID_UNICODE[0]):
        with pytest.raises((ValidationError, LeaseLost)):
            store.inbox.complete("c1", owner)
    assert store.inbox.get("c1") == claimed


def test_extend_sets_a_new_lease_from_now(store: Store, clock: FakeClock) -> None:
    claimed = _claimed(store, "c1", "w1")
    clock.advance(seconds=50)
    extended = store.inbox.extend("c1", "w1")
    assert extended.lease_until == clock.now + DEFAULT_LEASE
    assert extended.updated_at == clock.now
    assert (
        attrs.evolve(extended, lease_until=claimed.lease_until, updated_at=claimed.updated_at)
        == claimed
    )
    assert store.inbox.get("c1") == extended
    assert claimed.lease_until is not None
    clock.now = claimed.lease_until  # the first lease would have run out here
    assert store.inbox.claim("w2") is None
    clock.advance(seconds=1)
    shorter = store.inbox.extend("c1", "w1", lease=timedelta(seconds=5))
    assert shorter.lease_until == clock.now + timedelta(seconds=5)
    clock.now = shorter.lease_until - MS
    assert store.inbox.claim("w2") is None
    clock.now = shorter.lease_until
    assert _id(store.inbox.claim("w2")) == "c1"


def test_complete_makes_the_command_done_and_clears_its_lease(
    store: Store, clock: FakeClock
) -> None:
    claimed = _claimed(store, "c1", "w1")
    clock.advance(seconds=2)
    done = store.inbox.complete("c1", "w1")
    assert (done.state, done.lease_owner, done.lease_until) == ("done", None, None)
    assert done.updated_at == clock.now
    assert done.attempts == claimed.attempts == 1
    assert store.inbox.get("c1") == done
    clock.advance(hours=1)
    assert store.inbox.claim("w2") is None


def test_fail_with_retry_in_makes_it_ready_then(store: Store, clock: FakeClock) -> None:
    claimed = _claimed(store, "c1", "w1")
    clock.advance(seconds=2)
    failed = store.inbox.fail("c1", "w1", "pane gone", retry_in=timedelta(seconds=30))
    assert failed.state == "ready"
    assert failed.available_at == clock.now + timedelta(seconds=30)
    assert (failed.last_error, failed.lease_owner, failed.lease_until) == ("pane gone", None, None)
    assert failed.updated_at == clock.now
    assert failed.attempts == claimed.attempts == 1
    assert store.inbox.get("c1") == failed
    clock.now = failed.available_at - MS
    assert store.inbox.claim("w1") is None
    clock.now = failed.available_at
    assert _id(store.inbox.claim("w1")) == "c1"


def test_fail_with_a_zero_retry_in_is_due_at_once(store: Store, clock: FakeClock) -> None:
    _claimed(store, "c1", "w1")
    failed = store.inbox.fail("c1", "w1", "boom", retry_in=timedelta(0))
    assert failed.available_at == clock.now  # given, so no backoff
    assert _id(store.inbox.claim("w2")) == "c1"


def test_fail_backs_off_exponentially_up_to_five_minutes(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_(inbox_max_attempts=20)
    store.inbox.enqueue("c1", {})
    waits: list[timedelta] = []
    for attempt in range(1, 12):
        claimed = store.inbox.claim("w1")
        assert claimed is not None and claimed.attempts == attempt
        failed = store.inbox.fail("c1", "w1", f"boom {attempt}")
        assert (failed.state, failed.last_error) == ("ready", f"boom {attempt}")
        waits.append(failed.available_at - clock.now)
        clock.now = failed.available_at
    expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert waits == [timedelta(seconds=s) for s in expected]


def test_fail_final_makes_it_dead(store: Store, clock: FakeClock) -> None:
    _claimed(store, "c1", "w1")
    clock.advance(seconds=1)
    dead = store.inbox.fail("c1", "w1", "unknown command", retry_in=SECOND, final=True)
    assert (dead.state, dead.last_error, dead.attempts) == ("dead", "unknown command", 1)
    assert (dead.lease_owner, dead.lease_until) == (None, None)
    assert dead.updated_at == clock.now
    assert store.inbox.get("c1") == dead
    clock.advance(hours=1)
    assert store.inbox.claim("w1") is None


def test_fail_on_the_last_attempt_makes_it_dead(open_: OpenStore, clock: FakeClock) -> None:
    store = open_(inbox_max_attempts=2)
    _claimed(store, "c1", "w1")
    first = store.inbox.fail("c1", "w1", "first", retry_in=SECOND)
    assert first.state == "ready"
    clock.now = first.available_at
    assert _id(store.inbox.claim("w1")) == "c1"
    dead = store.inbox.fail("c1", "w1", "second", retry_in=SECOND)
    assert (dead.state, dead.last_error, dead.attempts) == ("dead", "second", 2)
    assert (dead.lease_owner, dead.lease_until) == (None, None)
    assert dead.updated_at == clock.now


def test_error_text_is_kept_exactly(store: Store) -> None:
    error = "".join(ODD_TEXT) + "x" * (4096 - len("".join(ODD_TEXT)))
    _claimed(store, "c1", "w1")
    failed = store.inbox.fail("c1", "w1", error, final=True)
    assert failed.last_error == error
    stored = store.inbox.get("c1")
    assert stored is not None and stored.last_error == error


# --------------------------------------------------------------------------- requeue


@pytest.mark.parametrize("state", ["dead", "done"])
def test_requeue_makes_a_finished_command_ready_again(
    store: Store, clock: FakeClock, state: str
) -> None:
    finished = _in_state(store, state)
    clock.advance(minutes=10)
    requeued = store.inbox.requeue("c1")
    assert (requeued.state, requeued.attempts) == ("ready", 0)
    assert requeued.available_at == requeued.updated_at == clock.now
    assert requeued.last_error == finished.last_error  # "boom" for dead, None for done
    assert (requeued.lease_owner, requeued.lease_until) == (None, None)
    assert (requeued.seq, requeued.created_at, requeued.payload) == (
        finished.seq,
        finished.created_at,
        finished.payload,
    )
    assert store.inbox.get("c1") == requeued
    again = store.inbox.claim("w2")
    assert again is not None and (again.command_id, again.attempts) == ("c1", 1)


def test_requeue_gives_a_command_that_ran_out_of_attempts_a_fresh_start(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_(inbox_max_attempts=1)
    claimed = _claimed(store, "c1", "w1")
    assert claimed.lease_until is not None
    clock.now = claimed.lease_until
    assert store.inbox.claim("w1") is None
    requeued = store.inbox.requeue("c1")
    assert (requeued.state, requeued.attempts) == ("ready", 0)
    assert requeued.last_error == "gave up after 1 attempts"
    again = store.inbox.claim("w2")
    assert again is not None and (again.state, again.attempts) == ("leased", 1)


@pytest.mark.parametrize("state", ["ready", "leased"])
def test_requeue_returns_a_pending_command_unchanged(
    store: Store, clock: FakeClock, data_dir: Path, state: str
) -> None:
    # A ready one not due yet: a requeue that made it due now would show.
    delay = timedelta(minutes=5) if state == "ready" else None
    pending = _in_state(store, state, delay=delay)
    clock.advance(seconds=1)
    files_before = data_files(data_dir)
    assert store.inbox.requeue("c1") == pending
    assert store.inbox.get("c1") == pending
    assert data_files(data_dir) == files_before


# --------------------------------------------------------------------------- get, list_commands


def test_get_unknown_is_none(store: Store) -> None:
    store.inbox.enqueue("c1", {})
    for command_id in ("nope", "", "x" * 257, "line\nbreak", *INVALID_UNICODE):
        assert store.inbox.get(command_id) is None


def test_list_commands_is_ordered_by_seq_and_filters(store: Store) -> None:
    store.sessions.register("s1")
    store.sessions.register("s2")
    # Ids sort the other way round from seq.
    for command_id, session_id in (("k9", "s1"), ("k8", "s2"), ("k7", None), ("k6", "s1")):
        store.inbox.enqueue(command_id, {}, session_id=session_id)
    store.inbox.enqueue("k5", {}, session_id="s2")
    assert [_id(store.inbox.claim("w1")) for _ in range(3)] == ["k9", "k8", "k7"]
    store.inbox.complete("k7", "w1")
    everything = store.inbox.list_commands()
    assert [c.command_id for c in everything] == ["k9", "k8", "k7", "k6", "k5"]
    assert everything == [store.inbox.get(c.command_id) for c in everything]

    def ids(**filters: Any) -> list[str]:
        return [c.command_id for c in store.inbox.list_commands(**filters)]

    assert ids(session_id="s1") == ["k9", "k6"]
    assert ids(state="ready") == ["k6", "k5"]
    assert ids(state="leased") == ["k9", "k8"]
    assert ids(state="done") == ["k7"]
    assert ids(state="dead") == []
    assert ids(session_id="s2", state="ready") == ["k5"]
    assert ids(session_id="s1", state="done") == []
    assert ids(session_id="nope") == []
    assert ids(session_id=INVALID_UNICODE[0]) == []


@pytest.mark.parametrize("state", ["paused", "", "READY", "running", 5, True], ids=range(6))
def test_list_commands_refuses_an_unknown_state(store: Store, state: Any) -> None:
    store.inbox.enqueue("c1", {})
    with pytest.raises(ValidationError):
        store.inbox.list_commands(state=state)


# --------------------------------------------------------------------------- cleanup_inbox


def test_cleanup_inbox_removes_finished_commands_after_retention(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_(inbox_retention_hours=1)
    start = clock.now
    # Ids sort the other way round from seq, so the sorted result cannot be seq order.
    store.inbox.enqueue("m-done", {})
    store.inbox.enqueue("b-dead", {})
    store.inbox.enqueue("z-leased", {})
    store.inbox.enqueue("a-ready", {})
    clock.advance(minutes=10)  # finished later than created: retention runs from updated_at
    assert _id(store.inbox.claim("w1")) == "m-done"
    store.inbox.complete("m-done", "w1")
    assert _id(store.inbox.claim("w1")) == "b-dead"
    store.inbox.fail("b-dead", "w1", "boom", final=True)
    assert _id(store.inbox.claim("w1")) == "z-leased"
    pending = [store.inbox.get("z-leased"), store.inbox.get("a-ready")]
    clock.now = start + timedelta(minutes=10, hours=1) - MS
    assert store.inbox.cleanup_inbox() == []
    assert len(store.inbox.list_commands()) == 4
    clock.now = start + timedelta(minutes=10, hours=1)
    assert store.inbox.cleanup_inbox() == ["b-dead", "m-done"]
    assert store.inbox.get("m-done") is None and store.inbox.get("b-dead") is None
    assert store.inbox.list_commands() == pending
    clock.advance(hours=1000)  # pending commands are kept however old
    assert store.inbox.cleanup_inbox() == []
    assert store.inbox.list_commands() == pending


def test_a_cleaned_up_id_can_be_enqueued_again_as_new(open_: OpenStore, clock: FakeClock) -> None:
    store = open_(inbox_retention_hours=1)
    old = _in_state(store, "done")
    store.inbox.enqueue("c2", {})
    clock.advance(hours=1)
    assert store.inbox.cleanup_inbox() == ["c1"]
    new, created = store.inbox.enqueue("c1", {"text": "again"})
    assert created is True
    assert new.seq > old.seq and new.seq > store.inbox.list_commands()[0].seq
    assert (new.state, new.attempts, new.last_error) == ("ready", 0, None)
    assert new.created_at == new.updated_at == clock.now
    assert new.payload == {"text": "again"}


# --------------------------------------------------------------------------- removing a session


REMOVALS: dict[str, Callable[[Store], object]] = {
    "remove": lambda store: store.sessions.remove("s1"),
    "cleanup_expired_sessions": lambda store: store.sessions.cleanup_expired_sessions(),
    "cleanup_dead_sessions": lambda store: store.sessions.cleanup_dead_sessions(
        lambda pid, start_time: False
    ),
}


@pytest.mark.parametrize("removal", sorted(REMOVALS))
def test_removing_a_session_ends_its_pending_commands(
    store: Store, clock: FakeClock, removal: str
) -> None:
    start = clock.now
    store.sessions.register("s1", ppid=4242)
    clock.advance(store.session_ttl / 2)
    store.sessions.register("s2")  # no ppid: never probed; registered later: still live
    _in_state(store, "done", "s1-done", session_id="s1")
    _claimed(store, "s1-leased", "w1", session_id="s1")
    store.inbox.enqueue("s1-ready", {}, session_id="s1")
    store.inbox.enqueue("s2-leased", {}, session_id="s2")
    store.inbox.enqueue("loose", {})
    assert _id(store.inbox.claim("w1")) == "s2-leased"
    store.inbox.enqueue("s2-ready", {}, session_id="s2")
    clock.now = start + store.session_ttl  # s1 has expired, s2 has not
    before = {c.command_id: c for c in store.inbox.list_commands()}
    REMOVALS[removal](store)
    assert store.sessions.get("s1") is None
    assert store.sessions.get("s2") is not None
    after = {c.command_id: c for c in store.inbox.list_commands()}
    assert list(after) == list(before)  # nothing deleted
    for command_id in ("s1-leased", "s1-ready"):
        assert after[command_id] == attrs.evolve(
            before[command_id],
            state="dead",
            last_error=SESSION_REMOVED,
            lease_owner=None,
            lease_until=None,
            updated_at=clock.now,
        )
    for command_id in ("s1-done", "s2-leased", "s2-ready", "loose"):
        assert after[command_id] == before[command_id]
    with pytest.raises(LeaseLost):
        store.inbox.complete("s1-leased", "w1")
    # s1's are not claimable any more; s2-leased's lease ran out hours ago, s2-ready waits for it.
    assert [_id(store.inbox.claim("w2")) for _ in range(3)] == ["s2-leased", "loose", None]


def test_removing_a_session_rolls_back_with_its_commands(open_: OpenStore) -> None:
    store = open_()
    store.sessions.register("s1")
    leased = _claimed(store, "c1", "w1", session_id="s1")
    with pytest.raises(Boom), store.atomic():
        store.sessions.remove("s1")
        ended = store.inbox.get("c1")
        assert ended is not None and ended.state == "dead"
        raise Boom
    for view in (store, open_()):
        assert view.sessions.get("s1") is not None
        assert view.inbox.get("c1") == leased


# --------------------------------------------------------------------------- atomic()


def test_complete_and_a_session_update_commit_together(open_: OpenStore, clock: FakeClock) -> None:
    store = open_()
    store.sessions.register("s1", label="before")
    _claimed(store, "c1", "w1", session_id="s1")
    clock.advance(seconds=1)
    with store.atomic():
        done = store.inbox.complete("c1", "w1")
        store.sessions.update("s1", label="typed")
    for view in (store, open_()):
        assert view.inbox.get("c1") == done
        session = view.sessions.get("s1")
        assert session is not None and session.label == "typed"


def test_complete_and_a_session_update_roll_back_together(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_()
    store.sessions.register("s1", label="before")
    leased = _claimed(store, "c1", "w1", session_id="s1")
    clock.advance(seconds=1)
    with pytest.raises(Boom), store.atomic():
        done = store.inbox.complete("c1", "w1")
        assert store.inbox.get("c1") == done  # visible inside the unit
        store.sessions.update("s1", label="typed")
        raise Boom
    for view in (store, open_()):
        assert view.inbox.get("c1") == leased
        session = view.sessions.get("s1")
        assert session is not None and session.label == "before"
    assert store.inbox.complete("c1", "w1").state == "done"  # the lease is still w1's


def test_a_nested_unit_that_fails_undoes_only_its_own_inbox_changes(
    open_: OpenStore, clock: FakeClock
) -> None:
    store = open_()
    leased = _claimed(store, "c1", "w1")
    clock.advance(seconds=1)
    with store.atomic():
        outer, _ = store.inbox.enqueue("outer", {})
        with pytest.raises(Boom), store.atomic():
            store.inbox.complete("c1", "w1")
            store.inbox.enqueue("inner", {})
            raise Boom
        assert store.inbox.get("c1") == leased
        assert store.inbox.get("inner") is None
    for view in (store, open_()):
        assert view.inbox.list_commands() == [leased, outer]


# --------------------------------------------------------------------------- hostile data


HOSTILE_PAYLOAD: dict[str, Any] = {
    **{f"odd-{i}": text for i, text in enumerate(ODD_TEXT)},
    **{text: i for i, text in enumerate(ODD_TEXT)},
    "": "an empty key",
    "ints": [0, -1, 2**63 - 1, -(2**63), 2**53 + 1],
    "floats": [0.1, -2.5, 1.0, 1e308, 5e-324, -0.0],
    "scalars": [True, False, None, "", "0"],
    "nested": [[[]], [{}], {"a": [1, [2, [3, {"b": "é☕🦜日本"}]]]}],
    "sql": "'); DROP TABLE commands; --",
    "like": "%_\\",
    "quotes": "\"'`",
    "unicode": "é☕🦜日本",
}


def test_hostile_payloads_survive_close_and_reopen(open_: OpenStore) -> None:
    store = open_()
    command, _ = store.inbox.enqueue("c1", HOSTILE_PAYLOAD, chat_id=-(2**63))
    assert _typed(command.payload) == _typed(HOSTILE_PAYLOAD)
    store.close()
    reopened = open_()
    stored = reopened.inbox.get("c1")
    assert stored == command
    assert stored is not None and _typed(stored.payload) == _typed(HOSTILE_PAYLOAD)
    assert stored.chat_id == -(2**63)


@pytest.mark.parametrize(
    "command_id",
    ["\ufeffbom", "\U0010ffff", "\u2028\u2029", "'; DROP TABLE commands; --", "a_c", "x" * 256],
    ids=range(6),
)
def test_odd_but_valid_command_ids_are_kept_exactly(open_: OpenStore, command_id: str) -> None:
    store = open_()
    store.inbox.enqueue("abc", {})  # what a LIKE pattern "a_c" would also match
    command, _ = store.inbox.enqueue(command_id, {"id": command_id})
    store.close()
    reopened = open_()
    assert reopened.inbox.get(command_id) == command
    assert reopened.inbox.enqueue(command_id, {}) == (command, False)
    assert [c.command_id for c in reopened.inbox.list_commands()] == ["abc", command_id]


# --------------------------------------------------------------------------- invalid arguments


BAD_IDS: list[Any] = ["", "x" * 257, "line\nbreak", "tab\there", "nul\x00", "del\x7f"]
BAD_DURATIONS: list[Any] = [-SECOND, -MS, timedelta.max, 60, 1.5, True, "1s"]
BAD_PAYLOADS: list[Any] = [
    None,
    [],
    ["a"],
    "text",
    b"{}",
    5,
    [("k", 1)],
    {1: "an int key"},
    {"set": {1, 2}},
    {"tuple": (1, 2)},
    {"nan": float("nan")},
    {"inf": float("inf")},
    {"object": object()},
    {"bytes": b"x"},
    {"huge": 10**5000},
    _sized(MAX_PAYLOAD_BYTES + 1),
    _nested(MAX_DEPTH + 1),
    _nested_lists(MAX_DEPTH + 1),
    *[{"text": bad} for bad in INVALID_UNICODE],
    *[{bad: "value"} for bad in INVALID_UNICODE],
    _nested(50, ["deep", {"x": INVALID_UNICODE[0]}]),
]


def _cases() -> list[tuple[str, str, Callable[[Store], object]]]:
    """(method attacked, case id, call) for every bad argument of every inbox method.

    The store holds session ``s1`` and command ``c0`` of ``s1``, leased by ``w1``, so that each
    call is valid but for the one argument attacked.
    """
    cases: list[tuple[str, str, Callable[[Store], object]]] = []

    # The calls pass what the signatures refuse, on purpose: to the type checker each one is a
    # callable of any arguments, so that a bad argument is written as a caller would write it.
    def add(method: str, name: str, call: Callable[..., object]) -> None:
        cases.append((method, f"{method}-{name}", call))

    for i, bad in enumerate(BAD_IDS + INVALID_UNICODE + NOT_STRINGS):
        add("enqueue", f"id-{i}", lambda s, b=bad: s.inbox.enqueue(b, {}))
        add("claim", f"owner-{i}", lambda s, b=bad: s.inbox.claim(b))
    for i, bad in enumerate(BAD_PAYLOADS):
        add("enqueue", f"payload-{i}", lambda s, b=bad: s.inbox.enqueue("c1", b))
    for i, bad in enumerate(["", "x" * 257, "line\nbreak", *INVALID_UNICODE, 5, b"s1", ["s1"]]):
        add("enqueue", f"session-{i}", lambda s, b=bad: s.inbox.enqueue("c1", {}, session_id=b))
    for i, bad in enumerate([*BEYOND_INT64, *[v for v in NOT_INTS if v is not None]]):
        add("enqueue", f"chat-{i}", lambda s, b=bad: s.inbox.enqueue("c1", {}, chat_id=b))
    for i, bad in enumerate(BAD_DURATIONS):
        add("enqueue", f"delay-{i}", lambda s, b=bad: s.inbox.enqueue("c1", {}, delay=b))
        add("claim", f"lease-{i}", lambda s, b=bad: s.inbox.claim("w2", lease=b))
        add("extend", f"lease-{i}", lambda s, b=bad: s.inbox.extend("c0", "w1", lease=b))
        add("fail", f"retry-in-{i}", lambda s, b=bad: s.inbox.fail("c0", "w1", "e", retry_in=b))
    for i, bad in enumerate(NOT_STRINGS):
        add("extend", f"id-{i}", lambda s, b=bad: s.inbox.extend(b, "w1"))
        add("complete", f"id-{i}", lambda s, b=bad: s.inbox.complete(b, "w1"))
        add("fail", f"id-{i}", lambda s, b=bad: s.inbox.fail(b, "w1", "e"))
        add("requeue", f"id-{i}", lambda s, b=bad: s.inbox.requeue(b))
        add("get", f"id-{i}", lambda s, b=bad: s.inbox.get(b))
        add("extend", f"owner-{i}", lambda s, b=bad: s.inbox.extend("c0", b))
        add("complete", f"owner-{i}", lambda s, b=bad: s.inbox.complete("c0", b))
        add("fail", f"owner-{i}", lambda s, b=bad: s.inbox.fail("c0", b, "e"))
        if bad is not None:  # None is "any session"
            add(
                "list_commands",
                f"session-{i}",
                lambda s, b=bad: s.inbox.list_commands(session_id=b),
            )
    for i, bad in enumerate(["x" * 4097, None, 5, b"error", *INVALID_UNICODE]):
        add("fail", f"error-{i}", lambda s, b=bad: s.inbox.fail("c0", "w1", b))
    for i, bad in enumerate(["paused", "READY", 5]):
        add("list_commands", f"state-{i}", lambda s, b=bad: s.inbox.list_commands(state=b))
    return cases


CASES = _cases()


@pytest.mark.parametrize("call", [c for _, _, c in CASES], ids=[n for _, n, _ in CASES])
def test_invalid_input_is_rejected_and_nothing_is_written(
    store: Store, data_dir: Path, call: Callable[[Store], object]
) -> None:
    store.sessions.register("s1")
    leased = _claimed(store, "c0", "w1", session_id="s1")
    files_before = data_files(data_dir)
    with pytest.raises(ValidationError):
        call(store)
    assert data_files(data_dir) == files_before
    assert store.inbox.list_commands() == [leased]


def test_the_table_attacks_every_inbox_method_that_takes_arguments() -> None:
    taking_arguments = {
        name
        for name, member in vars(CommandInbox).items()
        if not name.startswith("_")
        and inspect.isfunction(member)
        and len(inspect.signature(member).parameters) > 1
    }
    attacked = {method for method, _, _ in CASES}
    assert taking_arguments - attacked == set()
    assert "enqueue" in taking_arguments and "requeue" in taking_arguments
