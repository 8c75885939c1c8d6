"""Bad input raises ValidationError before anything reaches the disk, on every backend.

One table attacks every public method of the three protocols with arguments of the wrong kind
and values no record may hold (the hostile values of ``registry.testing.values``); another
checks that a string no record can hold is simply not found by a lookup.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import (
    RegistryError,
    SessionNotFound,
    Store,
    TokenNotFound,
    Transport,
    ValidationError,
    open_store,
)
from registry.protocols import SessionRegistry, TokenStore
from registry.protocols import Store as StoreProtocol
from registry.testing.backend import OpenStore
from registry.testing.clock import data_files
from registry.testing.values import (
    BEYOND_INT64,
    INVALID_UNICODE,
    LEGACY_SUMMARY,
    NOT_INTS,
    NOT_STRINGS,
    ODD_TEXT,
    UNPRINTABLE_INT,
)
from registry.validation import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_DEPTH,
    MAX_DETAIL_KEYS,
    MAX_SCOPES,
    is_utf8,
    to_utf8,
)

BAD_IDS: list[Any] = ["", "x" * 257, "line\nbreak", "tab\there", "nul\x00", "del\x7f", 5, None]
BIG_INTS: list[Any] = [*BEYOND_INT64, UNPRINTABLE_INT]
BAD_PIDS: list[Any] = [0, -1, True, "5", 2**63, 1.5, *BIG_INTS]
BAD_TEXT: list[Any] = ["x" * 4097, 5, b"bytes", *INVALID_UNICODE]
# Strings of the right type that no record can hold: a lookup finds nothing.
UNSTORABLE_KEYS: list[str] = [*INVALID_UNICODE, "", "x" * 257, "line\nbreak"]


def _nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """A context ``depth`` levels deep (a flat object is depth 1), built without recursion."""
    value: Any = leaf
    for _ in range(depth):
        value = {"k": value}
    return value  # type: ignore[no-any-return]


def _cases() -> list[tuple[str, str, Callable[[Store], object]]]:
    """(method attacked, case id, call) for every bad argument of every public method."""
    cases: list[tuple[str, str, Callable[[Store], object]]] = []

    # The calls pass what the signatures refuse, on purpose: to the type checker each one is a
    # callable of any arguments, so that a bad argument is written as a caller would write it.
    def add(method: str, name: str, call: Callable[..., object]) -> None:
        cases.append((method, f"{method}-{name}", call))

    # ------------------------------------------------------------- SessionRegistry
    for i, bad in enumerate(BAD_IDS + INVALID_UNICODE + NOT_STRINGS):
        add("register", f"id-{i}", lambda s, b=bad: s.sessions.register(b))
    for field in ("ppid", "pid"):
        for i, bad in enumerate(BAD_PIDS):
            add(
                "register",
                f"{field}-{i}",
                lambda s, f=field, b=bad: s.sessions.register("n", **{f: b}),
            )
            add(
                "update",
                f"{field}-{i}",
                lambda s, f=field, b=bad: s.sessions.update("s1", **{f: b}),
            )
    for i, bad in enumerate([-1, *BIG_INTS, *[v for v in NOT_INTS if v is not None]]):
        add("register", f"start-time-{i}", lambda s, b=bad: s.sessions.register("n", start_time=b))
        add("update", f"start-time-{i}", lambda s, b=bad: s.sessions.update("s1", start_time=b))
    for field in ("cwd", "label"):
        for i, bad in enumerate(BAD_TEXT):
            add(
                "register",
                f"{field}-{i}",
                lambda s, f=field, b=bad: s.sessions.register("n", **{f: b}),
            )
            add(
                "update",
                f"{field}-{i}",
                lambda s, f=field, b=bad: s.sessions.update("s1", **{f: b}),
            )
    add("register", "notify-int", lambda s: s.sessions.register("n", notify=1))
    add("register", "notify-str", lambda s: s.sessions.register("n", notify="yes"))
    add("register", "state-active", lambda s: s.sessions.register("n", state="active"))
    add("register", "state-unknown", lambda s: s.sessions.register("n", state="paused"))
    add("register", "state-huge-int", lambda s: s.sessions.register("n", state=UNPRINTABLE_INT))
    add("register", "state-huge-str", lambda s: s.sessions.register("n", state="x" * 10**6))
    add(
        "register", "transport-dict", lambda s: s.sessions.register("n", transport={"kind": "nvim"})
    )
    add("update", "notify-none", lambda s: s.sessions.update("s1", notify=None))
    add("update", "state", lambda s: s.sessions.update("s1", state="gone"))
    add("update", "unknown-field", lambda s: s.sessions.update("s1", created_at=None))
    add("update", "transport-str", lambda s: s.sessions.update("s1", transport="tmux"))
    for i, bad in enumerate(NOT_STRINGS):
        add("get", f"{i}", lambda s, b=bad: s.sessions.get(b))
        add("update", f"id-{i}", lambda s, b=bad: s.sessions.update(b, label="x"))
        add("touch", f"{i}", lambda s, b=bad: s.sessions.touch(b))
        add("remove", f"{i}", lambda s, b=bad: s.sessions.remove(b))
    for i, bad in enumerate([0, -1, *BIG_INTS, *NOT_INTS]):
        add("get_by_ppid", f"{i}", lambda s, b=bad: s.sessions.get_by_ppid(b))
    for i, bad in enumerate(["yes", 1, None]):
        add(
            "list_sessions", f"active-{i}", lambda s, b=bad: s.sessions.list_sessions(active_only=b)
        )
        add(
            "list_sessions", f"notify-{i}", lambda s, b=bad: s.sessions.list_sessions(notify_only=b)
        )
    for i, bad in enumerate([5, "probe", [print]]):
        add("cleanup_dead_sessions", f"{i}", lambda s, b=bad: s.sessions.cleanup_dead_sessions(b))

    # ------------------------------------------------------------- TokenStore
    for i, bad in enumerate(BAD_IDS + INVALID_UNICODE + NOT_STRINGS):
        add("store_token", f"token-{i}", lambda s, b=bad: s.tokens.store_token(b, "s1", 1))
    for i, bad in enumerate(NOT_STRINGS + INVALID_UNICODE):
        add("mint_token", f"session-{i}", lambda s, b=bad: s.tokens.mint_token(b, 1))
        add("store_token", f"session-{i}", lambda s, b=bad: s.tokens.store_token("t", b, 1))
    for i, bad in enumerate(BIG_INTS + NOT_INTS):
        add("mint_token", f"chat-{i}", lambda s, b=bad: s.tokens.mint_token("s1", b))
        add("store_token", f"chat-{i}", lambda s, b=bad: s.tokens.store_token("t", "s1", b))
        add("validate_token", f"chat-{i}", lambda s, b=bad: s.tokens.validate_token("t", b))
    bad_ttls: list[Any] = [timedelta(seconds=-1), timedelta.max, 60, 1.5, True, "1h"]
    for i, bad in enumerate(bad_ttls):
        add("mint_token", f"ttl-{i}", lambda s, b=bad: s.tokens.mint_token("s1", 1, ttl=b))
        add("store_token", f"ttl-{i}", lambda s, b=bad: s.tokens.store_token("t", "s1", 1, ttl=b))
    bad_scopes: list[Any] = [
        "send_cmd",
        {"send_cmd"},
        [""],
        [5],
        ["line\nbreak"],
        *[[bad] for bad in INVALID_UNICODE],
        ["s"] * (MAX_SCOPES + 1),
    ]
    for i, bad in enumerate(bad_scopes):
        add("mint_token", f"scopes-{i}", lambda s, b=bad: s.tokens.mint_token("s1", 1, scopes=b))
    bad_contexts: list[Any] = [
        ["a"],
        "a",
        {1: "x"},
        {"a": object()},
        {"a": float("nan")},
        {"a": (1, 2)},
        {"a": 10**5000},
        {"a": "é" * (MAX_CONTEXT_BYTES // 2)},  # half a million characters, 1 MiB + 7 bytes
        _nested(MAX_CONTEXT_DEPTH + 1),
        _nested(3000),
        *[{"summary": bad} for bad in INVALID_UNICODE],
        *[{bad: "value"} for bad in INVALID_UNICODE],
        _nested(50, ["deep", {"x": INVALID_UNICODE[0]}]),
        _nested(50, {INVALID_UNICODE[2]: 1}),
    ]
    for i, bad in enumerate(bad_contexts):
        add("mint_token", f"context-{i}", lambda s, b=bad: s.tokens.mint_token("s1", 1, context=b))
        add(
            "store_token",
            f"context-{i}",
            lambda s, b=bad: s.tokens.store_token("t", "s1", 1, context=b),
        )
    for i, bad in enumerate(NOT_STRINGS):
        add("get_session_by_token", f"{i}", lambda s, b=bad: s.tokens.get_session_by_token(b))
        add("validate_token", f"token-{i}", lambda s, b=bad: s.tokens.validate_token(b, 1))
        add("revoke_token", f"{i}", lambda s, b=bad: s.tokens.revoke_token(b))
        add("tokens_for_session", f"{i}", lambda s, b=bad: s.tokens.tokens_for_session(b))
    return cases


CASES = _cases()


@pytest.mark.parametrize("call", [c for _, _, c in CASES], ids=[n for _, n, _ in CASES])
def test_invalid_input_is_rejected_and_nothing_is_written(
    store: Store, data_dir: Path, call: Callable[[Store], object]
) -> None:
    store.sessions.register("s1", ppid=10, label="original")
    token = store.tokens.mint_token("s1", 1)
    sessions_before = store.sessions.list_sessions()
    files_before = data_files(data_dir)
    with pytest.raises(ValidationError):
        call(store)
    assert data_files(data_dir) == files_before
    assert store.sessions.list_sessions() == sessions_before
    assert store.tokens.tokens_for_session("s1") == [token]


def test_the_table_attacks_every_public_method_that_takes_arguments() -> None:
    taking_arguments = {
        name
        for protocol in (SessionRegistry, TokenStore, StoreProtocol)
        for name, member in vars(protocol).items()
        if not name.startswith("_")
        and inspect.isfunction(member)
        and len(inspect.signature(member).parameters) > 1
    }
    attacked = {method for method, _, _ in CASES}
    assert taking_arguments - attacked == set()
    # Store's own methods (atomic, close) take no argument: nothing there to attack.
    assert "register" in taking_arguments and "validate_token" in taking_arguments


# Arguments of every kind, valid ones included, for the random attack below.
ANYTHING = st.one_of(
    st.sampled_from(
        [
            *NOT_STRINGS,
            *NOT_INTS,
            *INVALID_UNICODE,
            *ODD_TEXT,
            *BEYOND_INT64,
            "s1",
            "t1",
            0,
            -1,
            float("nan"),
            float("inf"),
            timedelta.max,
            timedelta(seconds=-1),
            timedelta(0),
            Transport(),
            [""],
            {"k": INVALID_UNICODE[0]},
            print,
            object(),
        ]
    ),
    st.text(max_size=5),
    st.integers(),
    st.floats(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
# Each public method with the names of its parameters.
SIGNATURES: dict[str, tuple[str, ...]] = {
    name: tuple(list(inspect.signature(member).parameters)[1:])
    for protocol in (SessionRegistry, TokenStore)
    for name, member in vars(protocol).items()
    if not name.startswith("_") and inspect.isfunction(member)
}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(sorted(SIGNATURES)), data=st.data())
def test_any_argument_of_any_kind_gives_a_result_or_a_registry_error(
    store: Store, method: str, data: st.DataObject
) -> None:
    if store.sessions.get("s1") is None:
        store.sessions.register("s1")
    arguments = {name: data.draw(ANYTHING, label=name) for name in SIGNATURES[method]}
    if method == "update":
        arguments = {"session_id": arguments.get("session_id"), "label": arguments["changes"]}
    part = store.tokens if "token" in method else store.sessions
    # A result or a RegistryError; any other exception escapes and fails the test.
    with contextlib.suppress(RegistryError):
        getattr(part, method)(**arguments)


@pytest.mark.parametrize("clock", [5, "now"], ids=["int", "str"])
def test_open_store_refuses_a_clock_that_is_not_callable(
    store_config: dict[str, Any], data_dir: Path, clock: Any
) -> None:
    with pytest.raises(ValidationError, match="clock must be callable"):
        open_store(store_config, clock=clock)
    assert not data_dir.exists() or data_files(data_dir) == {}


@pytest.mark.parametrize("key", UNSTORABLE_KEYS, ids=range(len(UNSTORABLE_KEYS)))
def test_a_string_no_record_can_hold_is_not_found(store: Store, data_dir: Path, key: str) -> None:
    store.sessions.register("s1")
    store.tokens.store_token("t1", "s1", 1)
    files_before = data_files(data_dir)
    assert store.sessions.get(key) is None
    assert store.sessions.remove(key) is False
    with pytest.raises(SessionNotFound):
        store.sessions.touch(key)
    with pytest.raises(SessionNotFound):
        store.sessions.update(key, label="x")
    assert store.tokens.tokens_for_session(key) == []
    assert store.tokens.get_session_by_token(key) is None
    with pytest.raises(TokenNotFound):
        store.tokens.validate_token(key, 1)
    assert store.tokens.revoke_token(key) is False
    assert data_files(data_dir) == files_before


@pytest.mark.parametrize("text", ODD_TEXT, ids=range(len(ODD_TEXT)))
def test_odd_but_valid_text_is_kept_exactly(open_: OpenStore, text: str) -> None:
    store = open_()
    transport = Transport(kind="tmux", details={"pane_id": text})
    session = store.sessions.register("s1", cwd=text, label=text, transport=transport)
    token = store.tokens.mint_token("s1", 1, context={text: [text, {"k": text}]})
    store.close()
    reopened = open_()
    assert reopened.sessions.get("s1") == session
    assert reopened.tokens.validate_token(token.token, 1) == token


def test_a_legacy_sized_summary_is_accepted_and_survives_reopen(open_: OpenStore) -> None:
    store = open_()
    store.sessions.register("s1")
    minted = store.tokens.mint_token("s1", 1, context={"summary": LEGACY_SUMMARY})
    stored = store.tokens.store_token("t1", "s1", 2, context={"summary": LEGACY_SUMMARY, "n": 1})
    store.close()
    reopened = open_()
    assert reopened.tokens.validate_token(minted.token, 1).context["summary"] == LEGACY_SUMMARY
    assert reopened.tokens.validate_token("t1", 2) == stored


def test_context_size_is_measured_in_utf8_bytes_of_compact_json(open_: OpenStore) -> None:
    store = open_()
    store.sessions.register("s1")
    # '{"s":"' + n two-byte characters + '"}' is 8 + 2n bytes.
    at_limit = {"s": "é" * ((MAX_CONTEXT_BYTES - 8) // 2)}
    token = store.tokens.mint_token("s1", 1, context=at_limit)
    assert token.context == at_limit
    with pytest.raises(ValidationError, match="bytes"):
        store.tokens.mint_token("s1", 1, context={"s": at_limit["s"] + "x"})


def test_context_depth_limit(store: Store) -> None:
    store.sessions.register("s1")
    deepest = _nested(MAX_CONTEXT_DEPTH)
    assert store.tokens.mint_token("s1", 1, context=deepest).context == deepest
    deepest_list: dict[str, Any] = _nested(MAX_CONTEXT_DEPTH - 1, [1])
    assert store.tokens.mint_token("s1", 1, context=deepest_list).context == deepest_list
    with pytest.raises(ValidationError, match="deeper"):
        store.tokens.mint_token("s1", 1, context=_nested(MAX_CONTEXT_DEPTH - 1, [[1]]))


def test_scopes_and_detail_keys_up_to_their_limits_are_kept(open_: OpenStore) -> None:
    store = open_()
    details = {f"k{i}": i for i in range(MAX_DETAIL_KEYS)}
    session = store.sessions.register("s1", transport=Transport(kind="tmux", details=details))
    scopes = [f"scope{i}" for i in range(MAX_SCOPES)]
    token = store.tokens.mint_token("s1", 1, scopes=scopes)
    store.close()
    reopened = open_()
    assert reopened.sessions.get("s1") == session
    assert reopened.tokens.validate_token(token.token, 1).scopes == tuple(scopes)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Transport(kind="vim"),
        lambda: Transport(kind="nvim", details={"kind": "tmux"}),
        lambda: Transport(kind="nvim", details={"k": [1]}),
        lambda: Transport(kind="nvim", details={"k": float("inf")}),
        lambda: Transport(kind="nvim", details={"": 1}),
        lambda: Transport(kind="nvim", details=["k"]),
        lambda: Transport(kind="tmux", details={"pane_id": INVALID_UNICODE[0]}),
        lambda: Transport(kind="tmux", details={INVALID_UNICODE[1]: "%1"}),
        lambda: Transport(kind="tmux", details={"pane_id": 2**64}),
        lambda: Transport(kind="tmux", details={"pane_id": UNPRINTABLE_INT}),
        lambda: Transport(kind="tmux", details={f"k{i}": i for i in range(MAX_DETAIL_KEYS + 1)}),
        lambda: Transport(kind=INVALID_UNICODE[0]),
        lambda: Transport(kind="tmux", details=_frozen({"pane_id": INVALID_UNICODE[0]})),
    ],
    ids=[
        "kind",
        "reserved-key",
        "list-value",
        "inf",
        "empty-key",
        "not-mapping",
        "surrogate-value",
        "surrogate-key",
        "beyond-int64",
        "unprintable-int",
        "too-many-keys",
        "surrogate-kind",
        "frozen-map-is-checked-too",
    ],
)
def test_invalid_transport_cannot_be_built(build: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        build()


def _frozen(data: dict[str, Any]) -> Any:
    from registry.models import FrozenMap

    return FrozenMap(data)


@pytest.mark.parametrize(
    "bad", [UNPRINTABLE_INT, "x" * 10**6, [0] * 10**5], ids=["int", "str", "list"]
)
def test_an_error_message_shows_a_huge_argument_briefly(store: Store, bad: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        store.sessions.register("n", state=bad)
    assert len(str(caught.value)) < 200


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("plain", "plain"),
        ("ümlaut ☕ 🦜", "ümlaut ☕ 🦜"),
        ("pane-\udcff", "pane-\ufffd"),  # os.fsdecode(b"pane-\xff")
        ("\udcc3\udca9", "é"),  # the two bytes of "é", each escaped: recovered whole
        ("\ud800x", "\ufffd\ufffd\ufffdx"),  # a surrogate surrogateescape never makes
    ],
)
def test_to_utf8_makes_any_string_storable(given: str, expected: str) -> None:
    assert to_utf8(given) == expected
    assert is_utf8(expected)
    assert is_utf8(given) == (given == expected)
