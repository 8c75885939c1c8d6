"""TokenStore contract (registry/protocols.py), tested once against every backend."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from registry import (
    ChatMismatch,
    SessionNotFound,
    Store,
    TokenExpired,
    TokenInvalid,
    TokenNotFound,
)
from registry.testing.clock import FakeClock

MS = timedelta(milliseconds=1)


def test_mint_token_is_random_url_safe_and_stored(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 123456789)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", token.token)  # 16 random bytes, base64url
    assert token.session_id == "s1" and token.chat_id == 123456789
    assert token.scopes == ("send_cmd",)
    assert dict(token.context) == {}
    assert token.created_at == clock.now
    assert token.expires_at == clock.now + store.token_ttl
    assert store.tokens.validate_token(token.token, 123456789) == token
    values = {store.tokens.mint_token("s1", 1).token for _ in range(50)}
    assert len(values) == 50


def test_mint_token_takes_ttl_scopes_and_context(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    token = store.tokens.mint_token(
        "s1",
        -1001234567890,
        ttl=timedelta(minutes=30),
        scopes=["send_cmd", "read"],
        context={"event": "Stop", "nested": {"n": [1, 2.5, None, True]}},
    )
    assert token.expires_at == clock.now + timedelta(minutes=30)
    assert token.scopes == ("send_cmd", "read")
    assert token.context == {"event": "Stop", "nested": {"n": [1, 2.5, None, True]}}
    assert store.tokens.tokens_for_session("s1") == [token]


def test_token_repr_never_shows_the_value(store: Store) -> None:
    store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 1)
    assert token.token not in repr(token)


@pytest.mark.parametrize("call", ["mint", "store"])
def test_token_for_unknown_session_raises(store: Store, call: str) -> None:
    with pytest.raises(SessionNotFound):
        if call == "mint":
            store.tokens.mint_token("nope", 1)
        else:
            store.tokens.store_token("tok", "nope", 1)
    assert store.tokens.tokens_for_session("nope") == []


def test_store_token_upserts_by_value(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    store.sessions.register("s2")
    first = store.tokens.store_token("given-token", "s1", 1)
    clock.advance(minutes=5)
    second = store.tokens.store_token("given-token", "s2", 2, ttl=timedelta(hours=1))
    assert second.created_at == clock.now and second.expires_at == clock.now + timedelta(hours=1)
    assert first != second
    assert store.tokens.tokens_for_session("s1") == []
    assert store.tokens.tokens_for_session("s2") == [second]
    assert store.tokens.validate_token("given-token", 2) == second


def test_validate_token_errors_are_typed_and_ordered(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 10, ttl=timedelta(minutes=1))
    with pytest.raises(TokenNotFound):
        store.tokens.validate_token("unknown", 10)
    with pytest.raises(ChatMismatch):
        store.tokens.validate_token(token.token, 11)
    clock.advance(minutes=1)
    # Expired is checked before the chat: a wrong chat on an expired token says expired.
    with pytest.raises(TokenExpired):
        store.tokens.validate_token(token.token, 11)
    with pytest.raises(TokenExpired):
        store.tokens.validate_token(token.token, 10)
    for error in (TokenNotFound, TokenExpired, ChatMismatch):
        assert issubclass(error, TokenInvalid)


def test_reads_never_delete_an_expired_token(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 10, ttl=timedelta(minutes=1))
    clock.advance(minutes=2)
    for _ in range(2):
        with pytest.raises(TokenExpired):
            store.tokens.validate_token(token.token, 10)
        assert store.tokens.get_session_by_token(token.token) is None
    assert store.tokens.tokens_for_session("s1") == [token]


def test_token_is_live_until_one_ms_before_expiry(store: Store, clock: FakeClock) -> None:
    session = store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 10)
    clock.now = token.expires_at - MS
    assert store.tokens.validate_token(token.token, 10) == token
    assert store.tokens.get_session_by_token(token.token) == session
    assert store.tokens.cleanup_expired_tokens() == 0
    clock.now = token.expires_at
    with pytest.raises(TokenExpired):
        store.tokens.validate_token(token.token, 10)
    assert store.tokens.get_session_by_token(token.token) is None
    assert store.tokens.cleanup_expired_tokens() == 1
    with pytest.raises(TokenNotFound):
        store.tokens.validate_token(token.token, 10)


def test_zero_ttl_token_is_born_expired(store: Store) -> None:
    store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 10, ttl=timedelta(0))
    with pytest.raises(TokenExpired):
        store.tokens.validate_token(token.token, 10)


def test_get_session_by_token_needs_only_the_token_live(store: Store, clock: FakeClock) -> None:
    session = store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 10, ttl=store.session_ttl + timedelta(hours=5))
    clock.advance(store.session_ttl + timedelta(hours=1))  # the session is past its expiry
    assert store.tokens.get_session_by_token(token.token) == session
    assert store.tokens.get_session_by_token("unknown") is None


def test_revoke_token(store: Store) -> None:
    store.sessions.register("s1")
    token = store.tokens.mint_token("s1", 10)
    assert store.tokens.revoke_token(token.token) is True
    assert store.tokens.revoke_token(token.token) is False
    with pytest.raises(TokenNotFound):
        store.tokens.validate_token(token.token, 10)
    assert store.sessions.get("s1") is not None


def test_tokens_for_session_ordered_by_created_then_value(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    late = store.tokens.store_token("a-late", "s1", 1)
    clock.advance(seconds=-10)  # tokens stored with an earlier clock sort first
    early_b = store.tokens.store_token("b", "s1", 1)
    early_a = store.tokens.store_token("a", "s1", 1)
    assert store.tokens.tokens_for_session("s1") == [early_a, early_b, late]


def test_cleanup_expired_tokens_counts_and_keeps_live_ones(store: Store, clock: FakeClock) -> None:
    store.sessions.register("s1")
    short = [store.tokens.mint_token("s1", 1, ttl=timedelta(minutes=1)) for _ in range(3)]
    keep = store.tokens.mint_token("s1", 1, ttl=timedelta(hours=1))
    clock.advance(minutes=1)
    assert store.tokens.cleanup_expired_tokens() == 3
    assert store.tokens.tokens_for_session("s1") == [keep]
    assert all(store.tokens.get_session_by_token(t.token) is None for t in short)
    assert store.tokens.cleanup_expired_tokens() == 0
