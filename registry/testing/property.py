"""Every backend and a plain-dict model, driven in lockstep by Hypothesis state machines.

Each rule applies the same operation to the model and to every backend and asserts that all
return the same result (or raise the same error type), naming the backend that disagrees. After
each step an invariant compares the whole visible state. Rules move the fake clock, close and
reopen every store, and run ``atomic()`` blocks that raise part-way.

``StoresAgree`` drives the session registry and the token store. ``InboxAgree`` drives the
command inbox (SPEC 3.4) with the same model: enqueues with duplicate ids from a small pool,
claims by three owners, extend/complete/fail/requeue, cleanup, the clock moved onto and past
leases and retry times, and session removal making pending commands ``dead``. SPEC 3.4 fixes
only the order of ``seq`` (strictly increasing, never reused), not its values, so the model
numbers its commands itself; each backend's ``seq`` is checked to grow at every enqueue and to
stay what that enqueue returned, and is substituted into the model's records when comparing.
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
    Command,
    CommandNotFound,
    LeaseLost,
    RegistryError,
    Session,
    SessionNotFound,
    Store,
    Token,
    TokenExpired,
    TokenNotFound,
    Transport,
    ValidationError,
)
from registry.testing.backend import Backend
from registry.testing.clock import FakeClock
from registry.testing.plugin import configured_backends
from registry.testing.values import BEYOND_INT64, INVALID_UNICODE, ODD_TEXT

SESSION_TTL = timedelta(hours=2)
TOKEN_TTL = timedelta(hours=1)

valid_session_ids = st.sampled_from(["s1", "s2", "s3", "héllo ☕", "'; --", "%_"])
valid_token_values = st.sampled_from(["t1", "t2", "t3", "tök%_"])
# Hostile values (registry.testing.values): every backend must refuse them as the model does, and a
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

# The inbox's configuration (SPEC 5), small enough for a 30-step run to reach every limit.
MS = timedelta(milliseconds=1)
SECOND = timedelta(seconds=1)
LEASE = timedelta(seconds=30)
MAX_ATTEMPTS = 3
RETENTION = timedelta(minutes=15)
BACKOFF_CAP = timedelta(minutes=5)
SESSION_REMOVED = "session removed"
COMMAND_STATES = ("ready", "leased", "done", "dead")
INBOX_SETTINGS = {
    "inbox_lease_s": LEASE / SECOND,
    "inbox_max_attempts": MAX_ATTEMPTS,
    "inbox_retention_hours": RETENTION / timedelta(hours=1),
}

COMMAND_POOL = ["c1", "c2", "c3", "c4", "c5"]
command_ids = st.sampled_from(COMMAND_POOL)
# A lookup of a value no command can hold ("" or a lone surrogate) simply finds nothing.
any_command_ids = st.sampled_from([*COMMAND_POOL, *COMMAND_POOL, "", "pane-\udcff"])
OWNERS = ["w1", "w2", "w3"]
owners = st.sampled_from(OWNERS)
leases = st.sampled_from([None, None, timedelta(0), SECOND, timedelta(seconds=90)])
# claim also meets, now and then, an owner or a lease it must refuse.
claim_args = st.sampled_from(
    [(owner, lease) for owner in OWNERS for lease in (None, None, timedelta(0), SECOND)] * 2
    + [("\ud800", None), ("w1", -MS)]
)
payloads = st.dictionaries(
    st.sampled_from(["text", "n", "keys"]),
    st.none()
    | st.integers(-3, 3)
    | st.sampled_from(["ls -la", *ODD_TEXT])
    | st.lists(st.integers(0, 3), max_size=2),
    max_size=2,
)
enqueue_args = st.fixed_dictionaries(
    {
        "command_id": command_ids,
        "payload": payloads,
        "session_id": st.sampled_from([None, "s1", "s2", "s3", "héllo ☕"]),
    },
    optional={
        "chat_id": st.sampled_from([None, 1, -1001234567890, 2**63 - 1]),
        "delay": st.sampled_from([None, timedelta(0), SECOND, timedelta(seconds=90)]),
    },
)
# Now and then one argument enqueue must refuse, even for a command id it already knows.
SPOILERS: list[tuple[str, Any] | None] = [
    ("command_id", ""),
    ("command_id", "\ud800"),
    ("command_id", "x" * 257),
    ("session_id", "pane-\udcff"),
    ("session_id", ""),
    ("payload", {"text": "pane-\udcff"}),
    ("payload", ["not", "an object"]),
    ("payload", {1: "a key that is not text"}),
    ("chat_id", 2**63),
    ("delay", -MS),
]
spoilers = st.sampled_from([*[None] * 3 * len(SPOILERS), *SPOILERS])
errors = st.sampled_from(["boom", "", *ODD_TEXT])
# What a consumer does with a command it holds: (what, lease or retry_in, error). Each way
# of failing is a choice of its own, so that each is drawn as often as complete().
actions = st.tuples(
    st.sampled_from(["fail-backoff", "complete", "fail-retry", "extend", "fail-final", "keep"]),
    st.sampled_from([None, timedelta(0), SECOND, timedelta(seconds=90)]),
    errors,
)
# Lease and retry arithmetic: a millisecond, the first backoffs, the lease, a long pause.
inbox_steps = st.sampled_from(
    [MS, SECOND, 4 * SECOND, LEASE, timedelta(minutes=20), timedelta(hours=2)]
)


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """The contract of registry/protocols.py over two dicts, written independently."""

    clock: FakeClock
    sessions: dict[str, Session] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    # The model's own numbering: only the order of seq is specified.
    next_seq: int = 1

    def copy(self) -> Model:
        return Model(
            self.clock, dict(self.sessions), dict(self.tokens), dict(self.commands), self.next_seq
        )

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
        stamps: dict[str, Any] = {
            "updated_at": now,
            "last_seen": now,
            "expires_at": now + SESSION_TTL,
        }
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
        for cid, command in self.commands.items():
            if command.session_id in ids and command.state in ("ready", "leased"):
                self.commands[cid] = self._released(command, "dead", last_error=SESSION_REMOVED)

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

    # ------------------------------------------------------------- the inbox (SPEC 3.4)

    def _released(self, command: Command, state: str, **changes: Any) -> Command:
        """``done``, ``dead`` and ``ready`` clear the lease; every change sets updated_at."""
        return attrs.evolve(
            command,
            state=state,
            lease_owner=None,
            lease_until=None,
            updated_at=self.now,
            **changes,
        )

    def _leased_by(self, command_id: str, owner: str) -> Command:
        command = self.commands.get(command_id)
        if command is None:
            raise CommandNotFound(command_id)
        if command.state != "leased" or command.lease_owner != owner:
            raise LeaseLost(command_id)
        return command

    @staticmethod
    def _duration(value: timedelta | None, default: timedelta) -> timedelta:
        if value is None:
            return default
        if value < timedelta(0):
            raise ValidationError("negative duration")
        return value

    def inbox_enqueue(
        self,
        command_id: str,
        payload: dict[str, Any],
        *,
        session_id: str | None = None,
        chat_id: int | None = None,
        delay: timedelta | None = None,
    ) -> tuple[Command, bool]:
        available_at = self.now + self._duration(delay, timedelta(0))
        new = Command(  # every argument validated first, known id or not
            command_id=command_id,
            session_id=session_id,
            seq=self.next_seq,
            payload=payload,
            chat_id=chat_id,
            available_at=available_at,
            created_at=self.now,
            updated_at=self.now,
        )
        if command_id in self.commands:
            return self.commands[command_id], False
        if session_id is not None and session_id not in self.sessions:
            raise SessionNotFound(session_id)
        self.next_seq += 1
        self.commands[command_id] = new
        return new, True

    def claimable(self, command: Command) -> bool:
        if command.state == "ready":
            return command.available_at <= self.now
        lease_until = command.lease_until
        return command.state == "leased" and lease_until is not None and lease_until <= self.now

    def heads(self) -> list[Command]:
        """The pending command with the smallest seq of each group (None is one group)."""
        first: dict[str | None, Command] = {}
        for command in sorted(self.commands.values(), key=lambda c: c.seq):
            if command.state in ("ready", "leased"):
                first.setdefault(command.session_id, command)
        return sorted(first.values(), key=lambda c: c.seq)

    def inbox_claim(self, owner: str, *, lease: timedelta | None = None) -> Command | None:
        # owner follows the rules of session_id, as a command's lease_owner does
        Command(
            command_id="probe",
            seq=1,
            lease_owner=owner,
            available_at=self.now,
            created_at=self.now,
            updated_at=self.now,
        )
        length = self._duration(lease, LEASE)
        while True:
            ready = [c for c in self.heads() if self.claimable(c)]
            if not ready:
                return None
            chosen = ready[0]
            if chosen.attempts >= MAX_ATTEMPTS:
                error = f"gave up after {chosen.attempts} attempts"
                self.commands[chosen.command_id] = self._released(chosen, "dead", last_error=error)
                continue
            claimed = attrs.evolve(
                chosen,
                state="leased",
                attempts=chosen.attempts + 1,
                lease_owner=owner,
                lease_until=self.now + length,
                updated_at=self.now,
            )
            self.commands[chosen.command_id] = claimed
            return claimed

    def inbox_extend(
        self, command_id: str, owner: str, *, lease: timedelta | None = None
    ) -> Command:
        length = self._duration(lease, LEASE)
        command = attrs.evolve(
            self._leased_by(command_id, owner),
            lease_until=self.now + length,
            updated_at=self.now,
        )
        self.commands[command_id] = command
        return command

    def inbox_complete(self, command_id: str, owner: str) -> Command:
        command = self._released(self._leased_by(command_id, owner), "done")
        self.commands[command_id] = command
        return command

    def inbox_fail(
        self,
        command_id: str,
        owner: str,
        error: str,
        *,
        retry_in: timedelta | None = None,
        final: bool = False,
    ) -> Command:
        found = self._leased_by(command_id, owner)
        if final or found.attempts >= MAX_ATTEMPTS:
            command = self._released(found, "dead", last_error=error)
        else:
            backoff = min(SECOND * 2 ** (found.attempts - 1), BACKOFF_CAP)
            pause = backoff if retry_in is None else retry_in
            command = self._released(
                found, "ready", last_error=error, available_at=self.now + pause
            )
        self.commands[command_id] = command
        return command

    def inbox_requeue(self, command_id: str) -> Command:
        found = self.commands.get(command_id)
        if found is None:
            raise CommandNotFound(command_id)
        if found.state in ("ready", "leased"):
            return found
        command = self._released(found, "ready", attempts=0, available_at=self.now)
        self.commands[command_id] = command
        return command

    def inbox_get(self, command_id: str) -> Command | None:
        return self.commands.get(command_id)

    def inbox_list_commands(
        self, *, session_id: str | None = None, state: str | None = None
    ) -> list[Command]:
        return sorted(
            (
                c
                for c in self.commands.values()
                if (session_id is None or c.session_id == session_id)
                and (state is None or c.state == state)
            ),
            key=lambda c: c.seq,
        )

    def inbox_cleanup_inbox(self) -> list[str]:
        old = sorted(
            cid
            for cid, c in self.commands.items()
            if c.state in ("done", "dead") and c.updated_at + RETENTION <= self.now
        )
        for cid in old:
            del self.commands[cid]
        return old

    def next_deadline(self) -> datetime | None:
        """The earliest moment after now at which a command becomes claimable (a retry time,
        the end of a lease) or old enough for cleanup_inbox (retention)."""
        times = [
            {"ready": c.available_at, "leased": c.lease_until}.get(
                c.state, c.updated_at + RETENTION
            )
            for c in self.commands.values()
        ]
        later = [t for t in times if t is not None and t > self.now]
        return min(later) if later else None


def probe(pid: int, start_time: int | None) -> bool:
    """A deterministic liveness verdict: ppid 101 is always dead."""
    return pid != 101


class Abort(Exception):
    pass


# --------------------------------------------------------------------------- the machine


class Lockstep(RuleBasedStateMachine):
    """Stores of every backend and the model, one fake clock; no rules of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="ccr-prop-"))
        self.clock = FakeClock()
        self.model = Model(self.clock)
        self.stores: dict[str, Store] = {}
        # The backends of the pytest_ccr_backends hook that can run here.
        self.backends: dict[str, Backend] = {
            name: backend
            for name, backend in configured_backends().items()
            if backend.unavailable is None
        }
        self.configs: dict[str, dict[str, Any]] = {
            name: backend.store_config(self.root / name) for name, backend in self.backends.items()
        }
        # Per backend: the seq each enqueue gave a command id, and the greatest seq given yet.
        self.seqs: dict[str, dict[str, int]] = {name: {} for name in self.backends}
        self.top_seq: dict[str, int] = dict.fromkeys(self.backends, 0)
        self.checks = 0

    def open_all(self) -> None:
        for name in self.backends:
            self.stores[name] = self._open(name)

    def _open(self, name: str) -> Store:
        config = {
            **self.configs[name],
            "session_ttl_hours": SESSION_TTL / timedelta(hours=1),
            "token_ttl_hours": TOKEN_TTL / timedelta(hours=1),
            **INBOX_SETTINGS,
        }
        return self.backends[name].open(config, self.clock)

    def teardown(self) -> None:
        for store in self.stores.values():
            store.close()
        for name, backend in self.backends.items():
            backend.cleanup(self.configs[name])
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

    def in_backend(self, name: str, value: Any) -> Any:
        """A model result with each command's seq replaced by the one ``name`` gave it."""
        if isinstance(value, Command):
            seq = self.seqs[name].get(value.command_id)
            assert seq is not None, f"{name} never enqueued {value.command_id!r}"
            return attrs.evolve(value, seq=seq)
        if isinstance(value, list | tuple):
            return type(value)(self.in_backend(name, item) for item in value)
        return value

    def apply_inbox(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``op`` on the model's inbox and on every store's; all must agree."""
        expected: Any
        try:
            expected = getattr(self.model, f"inbox_{op}")(*args, **kwargs)
        except RegistryError as exc:
            expected = type(exc)
        for name, store in self.stores.items():
            try:
                got: Any = getattr(store.inbox, op)(*args, **kwargs)
            except RegistryError as exc:
                got = type(exc)
            if op == "enqueue" and isinstance(got, tuple) and got[1]:
                # A new command: its seq is greater than every seq this store gave before.
                command = got[0]
                assert command.seq > self.top_seq[name], (
                    f"{name} gave seq {command.seq} after {self.top_seq[name]}"
                )
                self.top_seq[name] = command.seq
                self.seqs[name][command.command_id] = command.seq
            want = self.in_backend(name, expected)
            assert got == want, f"{name} disagrees on inbox.{op}{args}{kwargs}: {got!r} != {want!r}"
        return expected

    def aimed(self, command_id: str, owner: str, aim: bool) -> tuple[str, str]:
        """With ``aim``, a leased command and its holder (so that most calls are legitimate)."""
        leased = self.model.inbox_list_commands(state="leased")
        if not aim or not leased:
            return command_id, owner
        index = COMMAND_POOL.index(command_id) if command_id in COMMAND_POOL else 0
        chosen = leased[index % len(leased)]
        assert chosen.lease_owner is not None
        return chosen.command_id, chosen.lease_owner


class StoresAgree(Lockstep):
    """The session registry and the token store."""

    @initialize()
    def start(self) -> None:
        self.open_all()

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


class InboxAgree(Lockstep):
    """The command inbox, with what decides whether a command may be enqueued or must die
    (register, remove, both session cleanups), reopening and the clock.

    A machine of its own, with few and dense rules: among the registry's and tokens' rules an
    inbox rule was drawn so rarely that 40 examples of 30 steps hardly ever claimed a command
    twice. The initial queue, the batches and the consumer turns are there for the same reason.
    """

    @initialize(batch=st.lists(st.tuples(enqueue_args, spoilers), max_size=5))
    def start(self, batch: list[tuple[dict[str, Any], tuple[str, Any] | None]]) -> None:
        self.open_all()
        self.apply("register", "s1")
        self.apply("register", "s2", ppid=101)  # probe() says ppid 101 is dead
        self.enqueue(batch)

    # ----------------------------------------------------------------- sessions

    @rule(sid=st.sampled_from(["s1", "s2", "s3", "héllo ☕"]), ppid=st.sampled_from([100, 101]))
    def register(self, sid: str, ppid: int) -> None:
        self.apply("register", sid, ppid=ppid)

    @rule(
        how=st.sampled_from(["remove", "remove", "expired", "dead"]),
        sid=st.sampled_from(["s1", "s2", "s3", "héllo ☕"]),
        aim=st.booleans(),
    )
    def remove_sessions(self, how: str, sid: str, aim: bool) -> None:
        """remove() (with ``aim`` a session with pending commands, if any has) or a cleanup."""
        if how == "expired":
            self.apply("cleanup_expired_sessions")
        elif how == "dead":
            self.apply("cleanup_dead_sessions", probe)
        else:
            pending = [
                c.session_id
                for c in self.model.inbox_list_commands()
                if c.state in ("ready", "leased") and c.session_id is not None
            ]
            self.apply("remove", pending[-1] if aim and pending else sid)

    @rule()
    def reopen(self) -> None:
        for name, store in self.stores.items():
            store.close()
            self.stores[name] = self._open(name)

    @rule(step=inbox_steps)
    def advance_clock(self, step: timedelta) -> None:
        self.clock.advance(step)

    @precondition(lambda self: self.model.next_deadline() is not None)
    @rule(offset=st.sampled_from([-MS, timedelta(0), MS]))
    def advance_to_deadline(self, offset: timedelta) -> None:
        """Onto the next retry time, lease end or retention end: a millisecond before, exactly
        at, or a millisecond after."""
        deadline = self.model.next_deadline()
        assert deadline is not None
        target = deadline + offset
        if target > self.clock.now:
            self.clock.advance(target - self.clock.now)

    # ----------------------------------------------------------------- inbox rules

    @rule(batch=st.lists(st.tuples(enqueue_args, spoilers), min_size=1, max_size=4))
    def enqueue(self, batch: list[tuple[dict[str, Any], tuple[str, Any] | None]]) -> None:
        for args, spoiled in batch:
            if spoiled is not None:
                args = {**args, spoiled[0]: spoiled[1]}
            self.apply_inbox("enqueue", **args)

    def settle(self, cid: str, owner: str, action: tuple[Any, ...]) -> None:
        """What a consumer does with a command it holds (or thinks it holds)."""
        what, duration, error = action
        if what == "extend":
            self.apply_inbox("extend", cid, owner, lease=duration)
        elif what == "complete":
            self.apply_inbox("complete", cid, owner)
        elif what == "fail-backoff":  # ready again after min(1 s * 2**(attempts-1), 5 min)
            self.apply_inbox("fail", cid, owner, error)
        elif what == "fail-retry":  # retry_in=None here is the backoff too
            self.apply_inbox("fail", cid, owner, error, retry_in=duration)
        elif what == "fail-final":
            self.apply_inbox("fail", cid, owner, error, retry_in=duration, final=True)

    @rule(turns=st.lists(st.tuples(claim_args, actions), min_size=1, max_size=3))
    def consume(self, turns: list[tuple[tuple[str, timedelta | None], tuple[Any, ...]]]) -> None:
        """Consumers take turns: each claims, then keeps the lease, extends it, completes or
        fails the command."""
        for (owner, lease), action in turns:
            claimed = self.apply_inbox("claim", owner, lease=lease)
            if isinstance(claimed, Command):
                self.settle(claimed.command_id, owner, action)

    @rule(dying=st.lists(owners, min_size=1, max_size=MAX_ATTEMPTS + 1))
    def crash_loop(self, dying: list[str]) -> None:
        """Consumers that die on what they claim: each claims with a one-second lease and is
        never heard of again; the lease runs out. Past inbox_max_attempts claims, the command
        is given up on at the next claim."""
        for owner in dying:
            self.apply_inbox("claim", owner, lease=SECOND)
            self.clock.advance(SECOND)

    @precondition(lambda self: bool(self.model.inbox_list_commands(state="leased")))
    @rule(
        cid=any_command_ids, owner=owners, aim=st.sampled_from([True, True, False]), action=actions
    )
    def act(self, cid: str, owner: str, aim: bool, action: tuple[Any, ...]) -> None:
        """extend, complete or fail later: mostly a leased command by its holder (its lease may
        have run out), else any id by any owner (LeaseLost, CommandNotFound)."""
        cid, owner = self.aimed(cid, owner, aim)
        self.settle(cid, owner, action)

    @rule(cid=any_command_ids, aim=st.booleans())
    def requeue(self, cid: str, aim: bool) -> None:
        """requeue(); with ``aim`` a done or dead command, if there is one."""
        finished = [c for c in self.model.inbox_list_commands() if c.state in ("done", "dead")]
        if aim and finished:
            index = COMMAND_POOL.index(cid) if cid in COMMAND_POOL else 0
            cid = finished[index % len(finished)].command_id
        self.apply_inbox("requeue", cid)

    @rule()
    def cleanup_inbox(self) -> None:
        self.apply_inbox("cleanup_inbox")

    @rule(
        cid=any_command_ids,
        owner=owners,
        aim=st.booleans(),
        sid=st.sampled_from(["s1", "s2"]),
        inner_fails=st.booleans(),
        outer_fails=st.booleans(),
    )
    def complete_in_unit(
        self, cid: str, owner: str, aim: bool, sid: str, inner_fails: bool, outer_fails: bool
    ) -> None:
        """complete() and the store effect it stands for (a label on s3) commit together, or
        neither does; a nested unit removing a session (its pending commands die) may fail
        alone. A LeaseLost or CommandNotFound from complete() leaves the unit and undoes it."""
        cid, owner = self.aimed(cid, owner, aim)
        before = self.model
        model = before.copy()
        expected: Any = None
        try:
            model.inbox_complete(cid, owner)
            model.register("s3", label=f"typed {cid}")
            inner = model.copy()
            inner.remove(sid)
            if not inner_fails:
                model = inner
        except RegistryError as exc:
            expected = type(exc)
        for name, store in self.stores.items():
            got: Any = None
            try:
                with store.atomic():
                    store.inbox.complete(cid, owner)
                    store.sessions.register("s3", label=f"typed {cid}")
                    try:
                        with store.atomic():
                            store.sessions.remove(sid)
                            if inner_fails:
                                raise Abort
                    except Abort:
                        pass
                    if outer_fails:
                        raise Abort
            except Abort:
                pass
            except RegistryError as exc:
                got = type(exc)
            assert got == expected, f"{name}: complete({cid!r}, {owner!r}) in a unit: {got!r}"
        self.model = before if outer_fails or expected is not None else model

    # ----------------------------------------------------------------- invariants

    @precondition(lambda self: bool(self.stores))
    @invariant()
    def all_agree(self) -> None:
        model = self.model
        self.checks += 1
        # One filter of each kind and one get() per step, in turn (each read takes the json
        # lock); the id pool includes ids no command can have.
        filters = {
            "state": (None, *COMMAND_STATES)[self.checks % 5],
            "session_id": (None, "s1", "s2", "héllo ☕")[self.checks % 4],
        }
        cid = (*COMMAND_POOL, "pane-\udcff")[self.checks % 6]
        for name, store in self.stores.items():
            assert store.sessions.list_sessions() == model.list_sessions(), name
            want = self.in_backend(name, model.inbox_list_commands())
            assert store.inbox.list_commands() == want, f"{name}: list_commands()"
            want = self.in_backend(name, model.inbox_list_commands(**filters))
            assert store.inbox.list_commands(**filters) == want, f"{name}: {filters}"
            want = self.in_backend(name, model.inbox_get(cid))
            assert store.inbox.get(cid) == want, f"{name}: get({cid!r})"


TestStoresAgree = StoresAgree.TestCase
TestInboxAgree = InboxAgree.TestCase
