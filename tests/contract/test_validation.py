"""Bad input raises ValidationError before anything reaches the disk, on every backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry import Store, Transport, ValidationError
from tests.conftest import data_files

BAD_IDS: list[Any] = ["", "x" * 257, "line\nbreak", "tab\there", "nul\x00", "del\x7f", 5, None]
BAD_PIDS: list[Any] = [0, -1, True, "5", 2**63, 1.5]
BAD_TEXT: list[Any] = ["x" * 4097, 5, b"bytes"]


def _cases() -> list[tuple[str, Callable[[Store], object]]]:
    cases: list[tuple[str, Callable[[Store], object]]] = []

    def add(name: str, call: Callable[[Store], object]) -> None:
        cases.append((name, call))

    for i, bad in enumerate(BAD_IDS):
        add(f"register-id-{i}", lambda s, bad=bad: s.sessions.register(bad))
        add(f"store-token-{i}", lambda s, bad=bad: s.tokens.store_token(bad, "s1", 1))
    for field in ("ppid", "pid"):
        for i, bad in enumerate(BAD_PIDS):
            add(
                f"register-{field}-{i}",
                lambda s, f=field, b=bad: s.sessions.register("n", **{f: b}),
            )
            add(f"update-{field}-{i}", lambda s, f=field, b=bad: s.sessions.update("s1", **{f: b}))
    for field in ("cwd", "label"):
        for i, bad in enumerate(BAD_TEXT):
            add(
                f"register-{field}-{i}",
                lambda s, f=field, b=bad: s.sessions.register("n", **{f: b}),
            )
    add("start-time-negative", lambda s: s.sessions.register("n", start_time=-1))
    add("start-time-float", lambda s: s.sessions.register("n", start_time=1.5))
    add("notify-int", lambda s: s.sessions.register("n", notify=1))
    add("notify-str", lambda s: s.sessions.register("n", notify="yes"))
    add("update-notify-none", lambda s: s.sessions.update("s1", notify=None))
    add("state-active", lambda s: s.sessions.register("n", state="active"))
    add("state-unknown", lambda s: s.sessions.register("n", state="paused"))
    add("update-state", lambda s: s.sessions.update("s1", state="gone"))
    add("transport-dict", lambda s: s.sessions.register("n", transport={"kind": "nvim"}))
    add("update-unknown-field", lambda s: s.sessions.update("s1", created_at=None))
    add("chat-id-too-big", lambda s: s.tokens.mint_token("s1", 2**63))
    add("chat-id-too-small", lambda s: s.tokens.mint_token("s1", -(2**63) - 1))
    add("chat-id-bool", lambda s: s.tokens.mint_token("s1", True))
    add("chat-id-str", lambda s: s.tokens.mint_token("s1", "123"))
    add("ttl-negative", lambda s: s.tokens.mint_token("s1", 1, ttl=timedelta(seconds=-1)))
    add("ttl-not-timedelta", lambda s: s.tokens.mint_token("s1", 1, ttl=60))
    add("ttl-overflow", lambda s: s.tokens.mint_token("s1", 1, ttl=timedelta.max))
    add("scopes-str", lambda s: s.tokens.mint_token("s1", 1, scopes="send_cmd"))
    add("scopes-empty-item", lambda s: s.tokens.mint_token("s1", 1, scopes=[""]))
    add("context-object", lambda s: s.tokens.mint_token("s1", 1, context={"a": object()}))
    add("context-int-key", lambda s: s.tokens.mint_token("s1", 1, context={1: "x"}))
    add("context-nan", lambda s: s.tokens.mint_token("s1", 1, context={"a": float("nan")}))
    add("context-huge", lambda s: s.tokens.mint_token("s1", 1, context={"a": "x" * 70000}))
    add("context-list", lambda s: s.tokens.mint_token("s1", 1, context=["a"]))
    return cases


CASES = _cases()


@pytest.mark.parametrize("call", [c for _, c in CASES], ids=[n for n, _ in CASES])
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


@pytest.mark.parametrize(
    "build",
    [
        lambda: Transport(kind="vim"),
        lambda: Transport(kind="nvim", details={"kind": "tmux"}),
        lambda: Transport(kind="nvim", details={"k": [1]}),
        lambda: Transport(kind="nvim", details={"k": float("inf")}),
        lambda: Transport(kind="nvim", details={"": 1}),
        lambda: Transport(kind="nvim", details=["k"]),
    ],
    ids=["kind", "reserved-key", "list-value", "inf", "empty-key", "not-mapping"],
)
def test_invalid_transport_cannot_be_built(build: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        build()


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)
