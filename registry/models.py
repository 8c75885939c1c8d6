"""The data model (SPEC 2), its time helpers, and the legacy JSON format's codec.

The sqlite row codec lives in :mod:`registry.backends.sqlite_sql` (beside the statements it
feeds), the CLI's JSON shapes in :mod:`registry.cli`.

Models are frozen attrs classes that validate on construction, so a record that exists is a
valid record: bad input raises :class:`~registry.errors.ValidationError` before anything can
reach the disk. Their generated ``__eq__`` compares every field, so a round-trip assertion
catches a lost field.

Timestamps are aware UTC ``datetime`` objects truncated to whole milliseconds; on disk they are
integer epoch milliseconds. ``start_time`` stays integer epoch seconds (the legacy unit).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import attrs

from registry import defaults
from registry.errors import ValidationError
from registry.validation import (
    COMMAND_STATES,
    STATES,
    TRANSPORT_KINDS,
    check_chat_id,
    check_command_state,
    check_context,
    check_count,
    check_details,
    check_key,
    check_kind,
    check_notify,
    check_optional_chat_id,
    check_optional_key,
    check_payload,
    check_pid,
    check_scopes,
    check_start_time,
    check_state,
    check_text,
)

__all__ = [
    "COMMAND_STATES",
    "DEFAULT_SCOPES",
    "STATES",
    "TRANSPORT_KINDS",
    "Command",
    "FrozenMap",
    "Session",
    "Token",
    "Transport",
    "differing_fields",
    "from_ms",
    "iso",
    "parse_json_object",
    "session_from_legacy",
    "session_to_legacy",
    "to_ms",
    "token_from_legacy",
    "token_hint",
    "token_to_legacy",
    "unwrap_sessions_document",
]

DEFAULT_SCOPES: Final = ("send_cmd",)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_ZERO: Final = timedelta(0)

V = TypeVar("V")


class FrozenMap(Mapping[str, V]):
    """A read-only, hashable mapping (for transport details and token context).

    It compares equal to any mapping with the same items, plain ``dict`` included.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, V] | None = None) -> None:
        self._data: dict[str, V] = dict(data or {})

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(json.dumps(self._data, sort_keys=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def to_dict(self) -> dict[str, V]:
        """A plain, mutable copy."""
        return dict(self._data)


# --------------------------------------------------------------------------- time helpers


def to_ms(moment: datetime) -> int:
    """Integer epoch milliseconds of an aware datetime."""
    return (moment - EPOCH) // _ONE_MS


def from_ms(ms: int) -> datetime:
    """The aware UTC datetime of integer epoch milliseconds."""
    try:
        return EPOCH + timedelta(milliseconds=ms)
    except (OverflowError, ValueError) as exc:
        raise ValidationError(f"timestamp {ms!r} ms is out of range") from exc


def utc_ms(value: object) -> datetime:
    """Normalise an aware datetime to UTC, truncated to whole milliseconds."""
    if type(value) is datetime and value.tzinfo is UTC and not value.microsecond % 1000:
        # Already normalised: every timestamp the stores make themselves. Every model
        # construction runs this converter per timestamp; the full path cost about 1 us each.
        return value
    if not isinstance(value, datetime):
        raise ValidationError(f"timestamp must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError("timestamp must be timezone-aware")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def add_ttl(now: datetime, ttl: timedelta) -> datetime:
    """``now + ttl``, refusing a negative ttl or one that runs past the calendar."""
    if not isinstance(ttl, timedelta):
        raise ValidationError(f"ttl must be a timedelta, got {type(ttl).__name__}")
    if ttl < _ZERO:
        raise ValidationError(f"ttl must not be negative, got {ttl}")
    try:
        return utc_ms(now + ttl)
    except OverflowError as exc:
        raise ValidationError(f"ttl {ttl} runs past the largest representable time") from exc


# --------------------------------------------------------------------------- attrs glue


def _attrs_check(check: Any) -> Any:
    """Adapt a ``check(name, value)`` function to an attrs validator."""

    def validator(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check(attribute.name, value)

    return validator


def _details(value: object) -> FrozenMap[str | int | float | bool | None]:
    # A FrozenMap is checked too: anyone can build one, so it proves nothing about its content.
    return FrozenMap(check_details(value))


def _context(value: object) -> FrozenMap[Any]:
    return FrozenMap(check_context(value))


def _payload(value: object) -> FrozenMap[Any]:
    return FrozenMap(check_payload(value))


def _optional_utc_ms(value: object) -> datetime | None:
    return None if value is None else utc_ms(value)


def _scopes(value: object) -> tuple[str, ...]:
    return check_scopes(value)


# --------------------------------------------------------------------------- models


@attrs.frozen(kw_only=True)
class Transport:
    """How to reach a session's terminal: an nvim socket, a tmux pane or a pty."""

    kind: str = attrs.field(default="unknown")
    details: FrozenMap[str | int | float | bool | None] = attrs.field(
        factory=FrozenMap, converter=_details
    )

    @kind.validator
    def _kind(self, _attribute: object, value: object) -> None:
        check_kind(value)


@attrs.frozen(kw_only=True)
class Session:
    """One coding-agent session as the registry stores it."""

    session_id: str = attrs.field(validator=_attrs_check(check_key))
    ppid: int | None = attrs.field(default=None, validator=_attrs_check(check_pid))
    pid: int | None = attrs.field(default=None, validator=_attrs_check(check_pid))
    start_time: int | None = attrs.field(
        default=None, validator=lambda _i, _a, v: check_start_time(v)
    )
    cwd: str | None = attrs.field(default=None, validator=_attrs_check(check_text))
    label: str | None = attrs.field(default=None, validator=_attrs_check(check_text))
    notify: bool = attrs.field(default=False, validator=lambda _i, _a, v: check_notify(v))
    transport: Transport = attrs.field(factory=Transport)
    state: str = attrs.field(default="running", validator=lambda _i, _a, v: check_state(v))
    created_at: datetime = attrs.field(converter=utc_ms)
    updated_at: datetime = attrs.field(converter=utc_ms)
    last_seen: datetime = attrs.field(converter=utc_ms)
    expires_at: datetime = attrs.field(converter=utc_ms)
    # The host_id of the store that last registered it (SPEC 2, 5); default: this machine's.
    host: str = attrs.field(factory=defaults.host_id, validator=_attrs_check(check_key))

    @transport.validator
    def _transport(self, _attribute: object, value: object) -> None:
        if not isinstance(value, Transport):
            raise ValidationError(f"transport must be a Transport, got {type(value).__name__}")

    def is_live(self, now: datetime) -> bool:
        """True while ``now < expires_at``."""
        return now < self.expires_at

    def is_active(self, now: datetime) -> bool:
        """Running and live."""
        return self.state == "running" and now < self.expires_at


@attrs.frozen(kw_only=True)
class Token:
    """A short-lived token binding one Telegram chat to one session."""

    token: str = attrs.field(repr=False, validator=_attrs_check(check_key))
    session_id: str = attrs.field(validator=_attrs_check(check_key))
    chat_id: int = attrs.field(validator=lambda _i, _a, v: check_chat_id(v))
    scopes: tuple[str, ...] = attrs.field(default=DEFAULT_SCOPES, converter=_scopes)
    context: FrozenMap[Any] = attrs.field(factory=FrozenMap, converter=_context)
    created_at: datetime = attrs.field(converter=utc_ms)
    expires_at: datetime = attrs.field(converter=utc_ms)

    def is_live(self, now: datetime) -> bool:
        """True while ``now < expires_at``."""
        return now < self.expires_at


@attrs.frozen(kw_only=True)
class Command:
    """A command from Telegram waiting in the inbox to be typed into its session's terminal."""

    command_id: str = attrs.field(validator=_attrs_check(check_key))
    session_id: str | None = attrs.field(default=None, validator=_attrs_check(check_optional_key))
    seq: int = attrs.field(validator=_attrs_check(check_count))
    payload: FrozenMap[Any] = attrs.field(factory=FrozenMap, converter=_payload)
    chat_id: int | None = attrs.field(
        default=None, validator=lambda _i, _a, v: check_optional_chat_id(v)
    )
    state: str = attrs.field(default="ready", validator=lambda _i, _a, v: check_command_state(v))
    attempts: int = attrs.field(default=0, validator=_attrs_check(check_count))
    available_at: datetime = attrs.field(converter=utc_ms)
    lease_owner: str | None = attrs.field(default=None, validator=_attrs_check(check_optional_key))
    lease_until: datetime | None = attrs.field(default=None, converter=_optional_utc_ms)
    last_error: str | None = attrs.field(default=None, validator=_attrs_check(check_text))
    created_at: datetime = attrs.field(converter=utc_ms)
    updated_at: datetime = attrs.field(converter=utc_ms)
    # Its session's host, or the enqueuing store's host_id without a session (SPEC 2, 3.4).
    host: str = attrs.field(factory=defaults.host_id, validator=_attrs_check(check_key))

    def is_claimable(self, now: datetime) -> bool:
        """``ready`` and due, or ``leased`` with its lease run out (``lease_until <= now``)."""
        if self.state == "ready":
            return self.available_at <= now
        return self.state == "leased" and self.lease_until is not None and self.lease_until <= now

    @property
    def pending(self) -> bool:
        """``ready`` or ``leased``: it still holds back the later commands of its session."""
        return self.state in ("ready", "leased")


def token_hint(token: str) -> str:
    """A short, stable stand-in for a token in logs and reports (never the value itself)."""
    import hashlib  # lazily: only reports and logs need it

    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def differing_fields(a: Session | Token | Command, b: Session | Token | Command) -> list[str]:
    """Names of the fields in which two records of one kind differ, in model order."""
    return [f.name for f in attrs.fields(type(a)) if getattr(a, f.name) != getattr(b, f.name)]


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``, as the CLI prints timestamps."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_update(changes: Mapping[str, Any]) -> None:
    """Refuse an unknown field or an invalid value for ``SessionRegistry.update``."""
    # A superset test of a constant set: building two sets per call cost about 0.4 us of each
    # update (inside atomic() that is with the write lock held).
    if not _UPDATABLE.issuperset(changes):
        unknown = sorted(set(changes) - _UPDATABLE)
        settable = ", ".join(UPDATABLE_FIELDS)
        raise ValidationError(f"cannot update {', '.join(unknown)}; settable: {settable}")
    for name, value in changes.items():
        if name in ("ppid", "pid"):
            check_pid(name, value)
        elif name == "start_time":
            check_start_time(value)
        elif name in ("cwd", "label"):
            check_text(name, value)
        elif name == "notify":
            check_notify(value)
        elif name == "state":
            check_state(value)
        elif not isinstance(value, Transport):
            raise ValidationError(f"transport must be a Transport, got {type(value).__name__}")


# Fields ``SessionRegistry.update`` may set, in model order.
UPDATABLE_FIELDS: Final = (
    "ppid",
    "pid",
    "start_time",
    "cwd",
    "label",
    "notify",
    "transport",
    "state",
)
_UPDATABLE: Final = frozenset(UPDATABLE_FIELDS)

# --------------------------------------------------------------------------- trusted rows

_new = object.__new__
_set = object.__setattr__
_EMPTY: FrozenMap[Any] = FrozenMap()


def _trusted(cls: type[Any], values: dict[str, Any]) -> Any:
    record = _new(cls)
    for name, value in values.items():
        _set(record, name, value)
    return record


_SESSION_FIELDS: Final = tuple(field.name for field in attrs.fields(Session))
_COMMAND_FIELDS: Final = tuple(field.name for field in attrs.fields(Command))
_TIMESTAMPS: Final = frozenset({"created_at", "updated_at", "last_seen", "expires_at"})


def changed_session(session: Session, **changes: Any) -> Session:
    """``session`` with ``changes`` applied, checking only the changes.

    The caller has validated the changed values (``check_update``); timestamps are normalised
    here. The other fields are kept as they were read, without the API's limits: a record the
    legacy daemon wrote beyond one of them (a long label, many detail keys) stays writable by
    ``touch``, ``update`` and ``register``, as it is readable (``attrs.evolve`` would re-run
    every validator and refuse it).
    """
    values = {name: getattr(session, name) for name in _SESSION_FIELDS}
    for name, value in changes.items():
        values[name] = utc_ms(value) if name in _TIMESTAMPS else value
    return _trusted(Session, values)  # type: ignore[no-any-return]


def new_command(**values: Any) -> Command:
    """A Command from values the caller has validated (every field given, timestamps as stored).

    The inbox's enqueue checks its arguments first (the payload walk and its JSON round trip
    are the costly part); building through the validators would check the payload twice.
    """
    if values.keys() != set(_COMMAND_FIELDS):
        raise TypeError(f"new_command needs exactly the fields {', '.join(_COMMAND_FIELDS)}")
    return _trusted(Command, values)  # type: ignore[no-any-return]


def changed_command(command: Command, **changes: Any) -> Command:
    """``command`` with ``changes`` applied; the caller has validated them."""
    values = {name: getattr(command, name) for name in _COMMAND_FIELDS}
    values.update(changes)
    return _trusted(Command, values)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- legacy JSON format
#
# Another program (the legacy daemon) writes these files too, so reading them follows its rules,
# not our API's: a record it can write is read as it is, even one that breaks a size or count
# limit of ours (its Stop handler stores the untruncated last assistant message in a token's
# context.summary). Only what cannot be understood at all (wrong types, a state or transport
# kind outside SPEC 2, no usable timestamp, text that is not valid Unicode) raises
# ValidationError; the json backend then keeps that record verbatim and hidden, and the import
# skips and reports it. Records are therefore built without the attrs validators (which carry
# the API's limits), after the checks below.


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A legacy file's content: UTF-8 JSON holding an object; ValidationError says what is wrong."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ValidationError("not readable JSON (nested too deeply)") from exc
    if not isinstance(document, dict):
        raise ValidationError(f"holds JSON {type(document).__name__}, not an object")
    return document


def unwrap_sessions_document(document: object) -> dict[str, Any]:
    """The ``{session_id: record}`` object of a sessions file in either legacy shape.

    The legacy daemon writes a flat object; the consolidation plan documents a
    ``{"sessions": {...}}`` wrapper. A top-level ``"sessions"`` key whose value is not itself a
    session record (it has no ``session_id``) is taken as that wrapper.
    """
    if not isinstance(document, dict):
        raise ValidationError(f"sessions file must hold a JSON object, got {_json_type(document)}")
    inner = document.get("sessions")
    if len(document) == 1 and isinstance(inner, dict) and "session_id" not in inner:
        return inner
    return document


def _json_type(value: object) -> str:
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return names.get(type(value), "a scalar")


def shown_legacy_key(key: str) -> str:
    """A record's key as reports and logs show it: text that is not valid Unicode escaped."""
    if key.isascii():
        return key
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def token_hint_legacy(key: str) -> str:
    """:func:`token_hint` of a token key read from a legacy file, valid Unicode or not."""
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _legacy_unicode(name: str, value: str) -> str:
    # JSON's "\udcff" escape decodes to a lone surrogate: a str that UTF-8 cannot encode, so
    # neither SQLite nor our own rewrite of the file could store it.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(f"{name} holds text that is not valid Unicode") from exc
    return value


def _legacy_text(name: str, value: object) -> str | None:
    """Optional text of any length (SPEC 2's 4096 limit is for what our API accepts)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {_json_type(value)}")
    return _legacy_unicode(name, value)


def _legacy_id(name: str, value: object) -> str:
    """A non-empty identifier of any length."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{name} must be a non-empty string")
    return _legacy_unicode(name, value)


def _legacy_json(name: str, value: object) -> None:
    """Refuse what JSON proper cannot hold: NaN, infinities, invalid Unicode, absurd nesting."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{name} holds text that is not valid Unicode") from exc
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"{name} is not plain JSON ({exc})") from exc


def _legacy_time(name: str, value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{name} must be epoch milliseconds or ISO-8601, got a bool")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValidationError(f"{name} must be a finite number")
        return from_ms(math.floor(value))
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValidationError(f"{name} {value!r} is not ISO-8601") from exc
        # The plan writes "...Z"; a timestamp without an offset is read as UTC.
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            return utc_ms(parsed)
        except OverflowError as exc:
            raise ValidationError(f"{name} {value!r} is out of range") from exc
    raise ValidationError(f"{name} must be epoch milliseconds or ISO-8601")


def _first(*values: datetime | None) -> datetime | None:
    return next((value for value in values if value is not None), None)


def _legacy_scalar(name: str, value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            # Beyond 64 bits neither SQLite nor the legacy daemon's readers can hold it.
            raise ValidationError(f"{name} is beyond 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{name} must be a finite number")
        return value
    if isinstance(value, str):
        return _legacy_unicode(name, value)
    raise ValidationError(f"{name} must be a JSON scalar, got {_json_type(value)}")


def _legacy_transport(raw: object) -> Transport:
    if raw is None:
        return _trusted(Transport, {"kind": "unknown", "details": _EMPTY})  # type: ignore[no-any-return]
    if not isinstance(raw, dict):
        raise ValidationError("transport must be an object")
    kind = check_kind(raw.get("kind", "unknown"))
    if isinstance(raw.get("details"), dict):  # the plan's shape
        items = raw["details"].items()
    else:
        items = ((k, v) for k, v in raw.items() if k != "kind")
    details: dict[str, str | int | float | bool | None] = {}
    for key, value in items:
        _legacy_id("transport detail key", key)
        if key == "kind":
            raise ValidationError("transport detail key 'kind' is reserved")
        details[key] = _legacy_scalar(f"transport detail {key!r}", value)
    return _trusted(  # type: ignore[no-any-return]
        Transport, {"kind": kind, "details": FrozenMap(details) if details else _EMPTY}
    )


def session_from_legacy(
    key: str, raw: object, *, session_ttl: timedelta, host: str | None = None
) -> Session:
    """Read one session record of either legacy shape, normalised (SPEC 6).

    A missing ``last_seen`` is ``updated_at``; other missing timestamps fall back to the record's
    own timestamps (``expires_at`` to ``last_seen + session_ttl``), never to "now"; state
    ``active`` is ``running``; a ``null`` notify, state or transport is the default; a record
    without ``host`` (the legacy daemon writes none) takes ``host`` (default: this machine's
    host_id, SPEC 2). Text and
    details are read whatever their size (see the section comment). Raises
    :class:`ValidationError` with the reason when the record cannot be understood.
    """
    if not isinstance(raw, dict):
        raise ValidationError(f"record is {_json_type(raw)}, not an object")
    inner_id = raw.get("session_id", key)
    if inner_id != key:
        raise ValidationError(f"key {key!r} differs from its session_id {inner_id!r}")
    # An id our API cannot address (control characters, over 256 characters) would be listed
    # but never found: such a record is one this project cannot understand.
    check_key("session_id", key)
    created = _legacy_time("created_at", raw.get("created_at"))
    updated = _legacy_time("updated_at", raw.get("updated_at"))
    seen = _legacy_time("last_seen", raw.get("last_seen"))
    expires = _legacy_time("expires_at", raw.get("expires_at"))
    seen = _first(seen, updated, created)
    if seen is None:
        raise ValidationError("record has none of created_at, updated_at, last_seen")
    state = raw.get("state")
    notify = raw.get("notify")
    return _trusted(  # type: ignore[no-any-return]
        Session,
        {
            "session_id": key,
            "ppid": check_pid("ppid", raw.get("ppid")),
            "pid": check_pid("pid", raw.get("pid")),
            "start_time": check_start_time(raw.get("start_time")),
            "cwd": _legacy_text("cwd", raw.get("cwd")),
            "label": _legacy_text("label", raw.get("label")),
            "notify": False if notify is None else check_notify(notify),
            "transport": _legacy_transport(raw.get("transport")),
            "state": "running" if state in (None, "active") else check_state(state),
            "host": _legacy_host(raw.get("host"), host),
            "created_at": _first(created, updated, seen),
            "updated_at": _first(updated, seen, created),
            "last_seen": seen,
            "expires_at": expires if expires is not None else add_ttl(seen, session_ttl),
        },
    )


def _legacy_host(value: object, default: str | None) -> str:
    if value is None:
        return defaults.host_id() if default is None else default
    return check_key("host", value)


def session_to_legacy(session: Session, *, implicit_host: str | None = None) -> dict[str, Any]:
    """The record the legacy daemon writes: epoch-ms numbers, flat transport, no None keys.

    The session's ``host`` is written as an extra key (the daemon ignores unknown keys) unless
    it is ``implicit_host``: a file of such sessions stays byte for byte what the daemon writes.
    """
    record: dict[str, Any] = {"session_id": session.session_id}
    for name in ("ppid", "pid", "start_time", "cwd", "label"):
        value = getattr(session, name)
        if value is not None:
            record[name] = value
    record["notify"] = session.notify
    record["transport"] = {"kind": session.transport.kind, **session.transport.details}
    record["state"] = session.state
    record["created_at"] = to_ms(session.created_at)
    record["updated_at"] = to_ms(session.updated_at)
    record["last_seen"] = to_ms(session.last_seen)
    record["expires_at"] = to_ms(session.expires_at)
    if session.host != implicit_host:
        record["host"] = session.host
    return record


_NUMERIC = re.compile(r"-?[0-9]{1,19}")


def _legacy_chat_id(value: object) -> int:
    if isinstance(value, str):
        if not _NUMERIC.fullmatch(value):
            raise ValidationError(f"chat_id {value!r} is not a number")
        return check_chat_id(int(value))
    return check_chat_id(value)


def _legacy_scopes(value: object) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_SCOPES
    if not isinstance(value, list):
        raise ValidationError(f"scopes must be an array, got {_json_type(value)}")
    return tuple(_legacy_id("scope", item) for item in value)


def _legacy_context(value: object) -> FrozenMap[Any]:
    if value is None:
        return _EMPTY
    if not isinstance(value, dict):
        raise ValidationError(f"context must be an object, got {_json_type(value)}")
    if not value:
        return _EMPTY
    _legacy_json("context", value)
    return FrozenMap(value)


def token_from_legacy(key: str, raw: object, *, token_ttl: timedelta) -> Token:
    """Read one token record of either legacy shape (string or numeric ``chat_id``).

    The context is read whatever its size (see the section comment); a ``null`` scopes or
    context is the default. Raises :class:`ValidationError` when it cannot be understood.
    """
    if not isinstance(raw, dict):
        raise ValidationError(f"record is {_json_type(raw)}, not an object")
    inner = raw.get("token", key)
    if inner != key:
        raise ValidationError("key differs from the token inside the record")
    check_key("token", key)  # as for a session id: a token no lookup could find
    if "session_id" not in raw:
        raise ValidationError("record has no session_id")
    created = _legacy_time("created_at", raw.get("created_at"))
    expires = _legacy_time("expires_at", raw.get("expires_at"))
    if created is None and expires is None:
        raise ValidationError("record has neither created_at nor expires_at")
    if created is None:
        assert expires is not None
        created = expires - token_ttl if expires - EPOCH >= token_ttl else expires
    return _trusted(  # type: ignore[no-any-return]
        Token,
        {
            "token": key,
            "session_id": check_key("session_id", raw["session_id"]),
            "chat_id": _legacy_chat_id(raw.get("chat_id")),
            "scopes": _legacy_scopes(raw.get("scopes")),
            "context": _legacy_context(raw.get("context")),
            "created_at": created,
            "expires_at": expires if expires is not None else add_ttl(created, token_ttl),
        },
    )


def token_to_legacy(token: Token) -> dict[str, Any]:
    """The record the legacy daemon writes (``chat_id`` as a string)."""
    return {
        "token": token.token,
        "session_id": token.session_id,
        "chat_id": str(token.chat_id),
        "created_at": to_ms(token.created_at),
        "expires_at": to_ms(token.expires_at),
        "scopes": list(token.scopes),
        "context": token.context.to_dict(),
    }
