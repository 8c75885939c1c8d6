"""The rules of SPEC 2 as plain functions, without attrs.

The models (:mod:`registry.models`) run these checks on construction, and the hook's fast path
(:mod:`registry.hook`, which writes rows with :mod:`registry.backends.sqlite_sql`) runs the same
ones before it writes a row itself, so that both refuse exactly the same input. Each raises
:class:`~registry.errors.ValidationError`. Text read from the environment or a file name may
hold lone surrogates, which no store accepts: :func:`is_utf8` tells, :func:`to_utf8` repairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from registry.errors import ValidationError

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

TRANSPORT_KINDS: Final = ("nvim", "tmux", "pty", "unknown")
STATES: Final = ("running", "stopped")
COMMAND_STATES: Final = ("ready", "leased", "done", "dead")
MAX_KEY_LEN: Final = 256
MAX_TEXT_LEN: Final = 4096
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
# Bounds on what is unbounded in SPEC 2, far above any real use (the legacy daemon writes six
# transport detail keys and one scope) but small enough that one record cannot bloat the store.
MAX_DETAIL_KEYS: Final = 256
MAX_SCOPES: Final = 256
# A token's context is free-form JSON. Its size is the UTF-8 length of its compact JSON, so a
# non-ASCII text counts its bytes, not its "\uXXXX" escapes: the legacy daemon stores the whole
# last assistant message in context.summary (tens of KB of non-ASCII text is ordinary). The depth
# bound keeps the JSON encoder's recursion far from Python's limit (3,000 levels raised a raw
# RecursionError); a top-level object with scalar values has depth 1.
MAX_CONTEXT_BYTES: Final = 1024 * 1024
MAX_CONTEXT_DEPTH: Final = 100
# A command payload (SPEC 2): at most 64 KiB as compact UTF-8 JSON.
MAX_PAYLOAD_BYTES: Final = 64 * 1024

# The C0 and C1 control characters, U+0000 to U+001F and U+007F to U+009F: a set, not a regex,
# so that a hook process never imports re (see registry._json).
_CONTROL: Final = frozenset(map(chr, (*range(0x20), *range(0x7F, 0xA0))))
# check_key and is_key check ASCII text (nearly every key) with str methods instead: within
# ASCII the control characters above are exactly the ones str.isprintable refuses (U+0000 to
# U+001F and U+007F), and ASCII text is valid UTF-8. The regex search cost about 0.25 us a key,
# and every write checks one or two.

Scalar = str | int | float | bool | None


def shown(value: object) -> str:
    """``repr(value)`` for an error message: at most 80 characters, a huge int by its size.

    Python refuses to print an int of more than 4,300 digits (a raw ValueError while the
    message of a ValidationError was being built), and an argument's repr may be megabytes long.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not hide the validation error
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def is_utf8(value: str) -> bool:
    """True if ``value`` can be encoded as UTF-8: it holds no lone surrogate.

    ``os.environ``, ``os.fsdecode`` and ``sys.argv`` turn bytes that are not UTF-8 into lone
    surrogates (``"\\udcff"``); SQLite and a UTF-8 file cannot hold them.
    """
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_utf8(value: str) -> str:
    """``value`` made storable: each byte that was not UTF-8 (a lone surrogate) becomes U+FFFD.

    For text that came from the environment or a file name, where a replacement character is
    better than losing the whole value. Valid text is returned unchanged.
    """
    if is_utf8(value):
        return value
    try:
        # The usual case: os.fsdecode's surrogateescape kept the original byte; recover it.
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _check_utf8(name: str, value: str) -> str:
    if not is_utf8(value):
        raise ValidationError(f"{name} is not valid Unicode text (it holds a lone surrogate)")
    return value


def check_key(name: str, value: object) -> str:
    """An identifier: non-empty text of at most 256 characters without control characters."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ValidationError(f"{name} must not be empty")
    if len(value) > MAX_KEY_LEN:
        raise ValidationError(f"{name} is longer than {MAX_KEY_LEN} characters")
    if str.isascii(value) and str.isprintable(value):
        return value  # ASCII: see the note at _CONTROL
    if not _CONTROL.isdisjoint(value):
        raise ValidationError(f"{name} must not contain control characters")
    return _check_utf8(name, value)


def is_key(name: str, value: object) -> bool:
    """For a lookup: True if ``value`` is an identifier some record could have.

    A string no record can hold (empty, too long, control characters, a lone surrogate) is simply
    not found, so a value a person typed or pasted never turns a lookup into an error.
    :raises ValidationError: if ``value`` is not a string at all.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__}")
    if str.isascii(value):  # see the note at _CONTROL
        return 0 < len(value) <= MAX_KEY_LEN and str.isprintable(value)
    return 0 < len(value) <= MAX_KEY_LEN and _CONTROL.isdisjoint(value) and is_utf8(value)


def check_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string or None, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LEN:
        raise ValidationError(f"{name} is longer than {MAX_TEXT_LEN} characters")
    return _check_utf8(name, value)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass; True is not a pid.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValidationError(f"{name} must be within [{low}, {high}], got {shown(value)}")
    return value


def check_pid(name: str, value: object) -> int | None:
    return None if value is None else _check_int(name, value, 1, INT64_MAX)


def check_start_time(value: object) -> int | None:
    return None if value is None else _check_int("start_time", value, 0, INT64_MAX)


def check_chat_id(value: object) -> int:
    return _check_int("chat_id", value, INT64_MIN, INT64_MAX)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_notify(value: object) -> bool:
    return check_bool("notify", value)


def check_state(value: object) -> str:
    if value not in STATES:
        raise ValidationError(f"state must be one of {', '.join(STATES)}; got {shown(value)}")
    return str(value)


def check_command_state(value: object) -> str:
    if value not in COMMAND_STATES:
        raise ValidationError(
            f"command state must be one of {', '.join(COMMAND_STATES)}; got {shown(value)}"
        )
    return str(value)


def check_optional_key(name: str, value: object) -> str | None:
    return None if value is None else check_key(name, value)


def check_optional_chat_id(value: object) -> int | None:
    return None if value is None else check_chat_id(value)


def check_count(name: str, value: object) -> int:
    """A non-negative int within signed 64 bits (``attempts``, ``seq``)."""
    return _check_int(name, value, 0, INT64_MAX)


def check_kind(value: object) -> str:
    if value not in TRANSPORT_KINDS:
        raise ValidationError(
            f"transport kind must be one of {', '.join(TRANSPORT_KINDS)}; got {shown(value)}"
        )
    return str(value)


def check_scalar(name: str, value: object) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # JSON has no integer bound, but SQLite and the legacy daemon's readers do.
        return _check_int(name, value, INT64_MIN, INT64_MAX)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{name} must be a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LEN:
            raise ValidationError(f"{name} is longer than {MAX_TEXT_LEN} characters")
        return _check_utf8(name, value)
    raise ValidationError(f"{name} must be a JSON scalar, got {type(value).__name__}")


def check_details(value: object) -> dict[str, Scalar]:
    """Transport details: identifier keys (not ``kind``) to JSON scalars; returns a copy."""
    if not isinstance(value, Mapping):
        raise ValidationError(f"transport details must be a mapping, got {type(value).__name__}")
    if len(value) > MAX_DETAIL_KEYS:
        raise ValidationError(f"transport details have more than {MAX_DETAIL_KEYS} keys")
    out: dict[str, Scalar] = {}
    for key, item in value.items():
        check_key("transport detail key", key)
        if key == "kind":
            # The legacy format flattens details next to "kind"; this one would collide.
            raise ValidationError("transport detail key 'kind' is reserved")
        out[key] = check_scalar(f"transport detail {key!r}", item)
    return out


def check_scopes(value: object) -> tuple[str, ...]:
    """A list or tuple of at most 256 identifiers."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValidationError(
            f"scopes must be a list or tuple of strings, got {type(value).__name__}"
        )
    if len(value) > MAX_SCOPES:
        raise ValidationError(f"scopes has more than {MAX_SCOPES} items")
    for item in value:
        check_key("scope", item)
    # A tuple is returned as it is (a generator into a new tuple cost about 1 us per mint).
    return value if type(value) is tuple else tuple(value)


def check_context(value: object) -> dict[str, object]:
    """A token context: a JSON object of at most 1 MiB and 100 levels; returns a deep copy.

    Only ``dict`` (string keys), ``list``, ``str``, ``int``, finite ``float``, ``bool`` and
    ``None`` are allowed, every string (keys too) must be valid Unicode, and the size is the UTF-8
    length of its compact JSON (``ensure_ascii=False``).
    """
    return check_json_object("context", value, MAX_CONTEXT_BYTES)


def check_payload(value: object) -> dict[str, object]:
    """A command payload: a JSON object of at most 64 KiB and 100 levels; returns a deep copy.

    The same rules as :func:`check_context`, with the inbox's size limit.
    """
    return check_json_object("payload", value, MAX_PAYLOAD_BYTES)


def check_json_object(name: str, value: object, max_bytes: int) -> dict[str, object]:
    """A JSON object of at most ``max_bytes`` as compact UTF-8 JSON and 100 levels; a deep copy."""
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} must be a mapping, got {type(value).__name__}")
    if not value:
        return {}  # the common case (mint_token without a context): nothing to walk or measure
    from registry import _json  # lazily: a hook that only registers never needs it here

    top = dict(value)
    # Walked with an explicit stack, so no nesting depth can exhaust Python's recursion.
    stack: list[tuple[object, int]] = [(top, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_CONTEXT_DEPTH:
                raise ValidationError(f"{name} is nested deeper than {MAX_CONTEXT_DEPTH} levels")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValidationError(f"{name} keys must be strings, got {type(key).__name__}")
                _check_utf8(f"a {name} key", key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_CONTEXT_DEPTH:
                raise ValidationError(f"{name} is nested deeper than {MAX_CONTEXT_DEPTH} levels")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_utf8(f"a {name} string", item)
        elif item is not None and not isinstance(item, bool | int | float):
            raise ValidationError(
                f"{name} must hold only JSON types (dict, list, str, number, bool, None), "
                f"got {type(item).__name__}"
            )
    try:
        text = _json.dumps(top, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        # NaN or infinity; an integer too long to print (Python's 4,300-digit limit).
        raise ValidationError(f"{name} must be JSON: {exc}") from exc
    if len(text) > max_bytes // 4 and len(text.encode("utf-8")) > max_bytes:
        raise ValidationError(f"{name} is larger than {max_bytes} bytes as UTF-8 JSON")
    copy: dict[str, object] = _json.loads(text)
    if copy != top:
        # Subclasses that print as something else (an IntEnum, a str subclass) would not
        # survive a round trip through the disk.
        raise ValidationError(f"{name} must hold only JSON types (dict, list, str, number, bool)")
    return copy
