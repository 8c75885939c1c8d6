"""Every backend and a plain-dict model, driven in lockstep by one Hypothesis state machine.

Each rule applies the same operation to the model and to every backend and asserts that all
return the same result (or raise the same error type), naming the backend that disagrees. After
each step an invariant compares the whole visible state. Rules move the fake clock, close and
reopen every store, and run ``atomic()`` blocks that raise part-way.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from registry import (
    ChatMismatch,
    RegistryError,
    Session,
    SessionNotFound,
    Store,
    Token,
    TokenExpired,
    TokenNotFound,
    Transport,
    ValidationError,
    open_store,
)
from tests.conftest import (
    BACKENDS,
    BEYOND_INT64,
    INVALID_UNICODE,
    ODD_TEXT,
    FakeClock,
    backend_config,
)

SESSION_TTL = timedelta(hours=2)
TOKEN_TTL = timedelta(hours=1)

valid_session_ids = st.sampled_from(["s1", "s2", "s3", "héllo ☕", "'; --", "%_"])
valid_token_values = st.sampled_from(["t1", "t2", "t3", "tök%_"])
# Hostile values (tests/conftest.py): every backend must refuse them as the model does, and a
# lookup of one finds nothing.
session_ids = valid_session_ids | st.sampled_from(INVALID_UNICODE)
token_values = valid_token_values | st.sampled_from(INVALID_UNICODE)
hostile_text = st.sampled_from(INVALID_UNICODE)
ppids = st.sampled_from([100, 101, 102])
transports = st.builds(
    Transport,
    kind=st.sampled_from(["nvim", "tmux", "pty", "unknown"]),
    details=st.dictionaries(
        st.sampled_from(["pane_id", "nvim_socket", "buffer", "extra"]),
        st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
        max_size=2,
    ),
)
valid_field_values = {
    "ppid": st.none() | ppids,
    "pid": st.none() | st.integers(1, 2**40),
    "start_time": st.none() | st.integers(0, 2**33),
    "cwd": st.none() | st.text(max_size=8) | st.sampled_from(ODD_TEXT),
    "label": st.none() | st.text(max_size=8) | st.sampled_from(ODD_TEXT),
    "notify": st.none() | st.booleans(),
    "transport": st.none() | transports,
    "state": st.none() | st.sampled_from(["running", "stopped"]),
}
field_values = {
    **valid_field_values,
    "ppid": valid_field_values["ppid"] | st.sampled_from(BEYOND_INT64),
    "start_time": valid_field_values["start_time"] | st.sampled_from(BEYOND_INT64),
    "cwd": valid_field_values["cwd"] | hostile_text,
    "label": valid_field_values["label"] | hostile_text,
}
register_args = st.fixed_dictionaries({}, optional=field_values)
valid_register_args = st.fixed_dictionaries({}, optional=valid_field_values)
# update may also clear a nullable field with None and, rarely, name a bad field.
update_args = st.fixed_dictionaries(
    {},
    optional={
        **{k: v for k, v in field_values.items() if k not in ("notify", "state", "transport")},
        "notify": st.booleans(),
        "state": st.sampled_from(["running", "stopped", "bogus"]),
        "transport": transports,
        "expires_at": st.none(),
    },
)
ttls = st.none() | st.sampled_from([timedelta(0), timedelta(minutes=30), timedelta(hours=3)])
chat_ids = st.sampled_from([1, -1001234567890, 2**63 - 1])
stored_chat_ids = chat_ids | st.sampled_from(BEYOND_INT64)
steps = st.sampled_from(
    [timedelta(milliseconds=1), timedelta(minutes=20), timedelta(hours=1), timedelta(hours=2)]
)


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """The contract of registry/protocols.py over two dicts, written independently."""

    clock: FakeClock
    sessions: dict[str, Session] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)

    def copy(self) -> Model:
        return Model(self.clock, dict(self.sessions), dict(self.tokens))

    @property
    def now(self) -> datetime:
        return self.clock.now

    def ordered(self, sessions: list[Session]) -> list[Session]:
        by_id = sorted(sessions, key=lambda s: s.session_id)
        return sorted(by_id, key=lambda s: s.last_seen, reverse=True)

    def active(self, s: Session) -> bool:
        return s.state == "running" and self.now < s.expires_at

    def register(self, sid: str, **args: Any) -> Session:
        given = {k: v for k, v in args.items() if v is not None}
        now = self.now
        stamps = {"updated_at": now, "last_seen": now, "expires_at": now + SESSION_TTL}
        old = self.sessions.get(sid)
        if old is None:
            new = Session(session_id=sid, created_at=now, **given, **stamps)
        else:
            new = attrs.evolve(old, **given, **stamps)
        self.sessions[sid] = new
        return new

    def update(self, sid: str, **changes: Any) -> Session:
        allowed = {"ppid", "pid", "start_time", "cwd", "label", "notify", "transport", "state"}
        if set(changes) - allowed:
            raise ValidationError("unknown field")
        probe = Session(
            session_id="probe",
            created_at=self.now,
            updated_at=self.now,
            last_seen=self.now,
            expires_at=self.now,
        )
        attrs.evolve(probe, **changes)  # every value valid, before the session is looked up
        if sid not in self.sessions:
            raise SessionNotFound(sid)
        new = attrs.evolve(self.sessions[sid], **changes, updated_at=self.now)
        self.sessions[sid] = new
        return new

    def touch(self, sid: str) -> Session:
        if sid not in self.sessions:
            raise SessionNotFound(sid)
        new = attrs.evolve(
            self.sessions[sid], last_seen=self.now, expires_at=self.now + SESSION_TTL
        )
        self.sessions[sid] = new
        return new

    def _drop(self, ids: set[str]) -> None:
        for sid in ids:
            del self.sessions[sid]
        self.tokens = {k: t for k, t in self.tokens.items() if t.session_id not in ids}

    def remove(self, sid: str) -> bool:
        if sid not in self.sessions:
            return False
        self._drop({sid})
        return True

    def cleanup_expired_sessions(self) -> list[str]:
        ids = {sid for sid, s in self.sessions.items() if self.now >= s.expires_at}
        self._drop(ids)
        return sorted(ids)

    def cleanup_dead_sessions(self, is_alive: Any) -> list[str]:
        ids = {
            sid
            for sid, s in self.sessions.items()
            if s.state == "running" and s.ppid is not None and not is_alive(s.ppid, s.start_time)
        }
        self._drop(ids)
        return sorted(ids)

    def store_token(self, value: str, sid: str, chat_id: int, ttl: timedelta | None) -> Token:
        token = Token(
            token=value,
            session_id=sid,
            chat_id=chat_id,
            created_at=self.now,
            expires_at=self.now + (TOKEN_TTL if ttl is None else ttl),
        )
        if sid not in self.sessions:
            raise SessionNotFound(sid)
        self.tokens[value] = token
        return token

    def validate_token(self, value: str, chat_id: int) -> Token:
        token = self.tokens.get(value)
        if token is None:
            raise TokenNotFound(value)
        if self.now >= token.expires_at:
            raise TokenExpired(value)
        if token.chat_id != chat_id:
            raise ChatMismatch(value)
        return token

    def get_session_by_token(self, value: str) -> Session | None:
        token = self.tokens.get(value)
        if token is None or self.now >= token.expires_at:
            return None
        return self.sessions.get(token.session_id)

    def revoke_token(self, value: str) -> bool:
        return self.tokens.pop(value, None) is not None

    def cleanup_expired_tokens(self) -> int:
        before = len(self.tokens)
        self.tokens = {k: t for k, t in self.tokens.items() if self.now < t.expires_at}
        return before - len(self.tokens)

    def tokens_for_session(self, sid: str) -> list[Token]:
        found = [t for t in self.tokens.values() if t.session_id == sid]
        return sorted(found, key=lambda t: (t.created_at, t.token))

    def list_sessions(self, active_only: bool = False, notify_only: bool = False) -> list[Session]:
        return self.ordered(
            [
                s
                for s in self.sessions.values()
                if (not active_only or self.active(s)) and (not notify_only or s.notify)
            ]
        )

    def get_by_ppid(self, ppid: int) -> Session | None:
        found = self.ordered(
            [s for s in self.sessions.values() if s.ppid == ppid and self.active(s)]
        )
        return found[0] if found else None


def probe(pid: int, start_time: int | None) -> bool:
    """A deterministic liveness verdict: ppid 101 is always dead."""
    return pid != 101


class Abort(Exception):
    pass


# --------------------------------------------------------------------------- the machine


class StoresAgree(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="ccr-prop-"))
        self.clock = FakeClock()
        self.model = Model(self.clock)
        self.stores: dict[str, Store] = {}

    @initialize()
    def open_all(self) -> None:
        for name in BACKENDS:
            self.stores[name] = self._open(name)

    def _open(self, name: str) -> Store:
        config = {
            **backend_config(name, self.root / name),
            "session_ttl_hours": SESSION_TTL / timedelta(hours=1),
            "token_ttl_hours": TOKEN_TTL / timedelta(hours=1),
        }
        return open_store(config, clock=self.clock)

    def teardown(self) -> None:
        for store in self.stores.values():
            store.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def apply(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``op`` on the model and on every backend; all must agree."""
        expected: Any
        try:
            expected = getattr(self.model, op)(*args, **kwargs)
        except RegistryError as exc:
            expected = type(exc)
        for name, store in self.stores.items():
            part = store.tokens if "token" in op else store.sessions
            try:
                got: Any = getattr(part, op)(*args, **kwargs)
            except RegistryError as exc:
                got = type(exc)
            assert got == expected, (
                f"{name} disagrees on {op}{args}{kwargs}: {got!r} != {expected!r}"
            )
        return expected

    # ----------------------------------------------------------------- rules

    @rule(sid=session_ids, args=register_args)
    def register(self, sid: str, args: dict[str, Any]) -> None:
        self.apply("register", sid, **args)

    @rule(sid=session_ids, changes=update_args)
    def update(self, sid: str, changes: dict[str, Any]) -> None:
        self.apply("update", sid, **changes)

    @rule(sid=session_ids)
    def touch(self, sid: str) -> None:
        self.apply("touch", sid)

    @rule(sid=session_ids)
    def remove(self, sid: str) -> None:
        self.apply("remove", sid)

    @rule()
    def cleanup_expired_sessions(self) -> None:
        self.apply("cleanup_expired_sessions")

    @rule()
    def cleanup_dead_sessions(self) -> None:
        self.apply("cleanup_dead_sessions", probe)

    @rule(value=token_values, sid=session_ids, chat_id=stored_chat_ids, ttl=ttls)
    def store_token(self, value: str, sid: str, chat_id: int, ttl: timedelta | None) -> None:
        self.apply("store_token", value, sid, chat_id, ttl=ttl)

    @rule(value=token_values, chat_id=chat_ids)
    def validate_token(self, value: str, chat_id: int) -> None:
        self.apply("validate_token", value, chat_id)

    @rule(value=token_values)
    def get_session_by_token(self, value: str) -> None:
        self.apply("get_session_by_token", value)

    @rule(value=token_values)
    def revoke_token(self, value: str) -> None:
        self.apply("revoke_token", value)

    @rule()
    def cleanup_expired_tokens(self) -> None:
        self.apply("cleanup_expired_tokens")

    @rule(step=steps)
    def advance_clock(self, step: timedelta) -> None:
        self.clock.advance(step)

    @rule()
    def reopen(self) -> None:
        for name, store in self.stores.items():
            store.close()
            self.stores[name] = self._open(name)

    @rule(
        sid=valid_session_ids,
        value=valid_token_values,
        args=valid_register_args,
        inner_fails=st.booleans(),
        outer_fails=st.booleans(),
    )
    def atomic_block(
        self, sid: str, value: str, args: dict[str, Any], inner_fails: bool, outer_fails: bool
    ) -> None:
        """register + token in a unit, a nested unit that may fail, an outer unit that may fail."""
        expected_model = self.model.copy()
        expected_model.register(sid, **args)
        expected_model.store_token(value, sid, 7, None)
        if not inner_fails:
            expected_model.remove("s3")
        if outer_fails:
            expected_model = self.model
        for name, store in self.stores.items():
            try:
                with store.atomic():
                    store.sessions.register(sid, **args)
                    store.tokens.store_token(value, sid, 7)
                    try:
                        with store.atomic():
                            store.sessions.remove("s3")
                            if inner_fails:
                                raise Abort
                    except Abort:
                        pass
                    if outer_fails:
                        raise Abort
            except Abort:
                pass
            got = store.sessions.list_sessions()
            assert got == expected_model.list_sessions(), f"{name} disagrees after atomic()"
        self.model = expected_model

    # ----------------------------------------------------------------- invariants

    @precondition(lambda self: bool(self.stores))
    @invariant()
    def all_agree(self) -> None:
        model = self.model
        for name, store in self.stores.items():
            for active_only in (False, True):
                for notify_only in (False, True):
                    got = store.sessions.list_sessions(
                        active_only=active_only, notify_only=notify_only
                    )
                    want = model.list_sessions(active_only, notify_only)
                    assert got == want, f"{name}: list_sessions({active_only}, {notify_only})"
            assert store.sessions.get_notify_sessions() == model.list_sessions(True, True), name
            for ppid in (100, 101, 102):
                assert store.sessions.get_by_ppid(ppid) == model.get_by_ppid(ppid), name
            for sid in sorted(model.sessions):
                assert store.sessions.get(sid) == model.sessions[sid], f"{name}: get({sid!r})"
                got_tokens = store.tokens.tokens_for_session(sid)
                assert got_tokens == model.tokens_for_session(sid), f"{name}: tokens of {sid!r}"


TestStoresAgree = StoresAgree.TestCase
