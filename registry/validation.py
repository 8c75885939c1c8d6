"""The rules of SPEC 2 as plain functions, without attrs.

The models (:mod:`registry.models`) run these checks on construction, and the hook's fast path
(:mod:`registry.backends.sqlite_sql`) runs the same ones before it writes a row itself, so that
both refuse exactly the same input. Each raises :class:`~registry.errors.ValidationError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from registry.errors import ValidationError

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

TRANSPORT_KINDS: Final = ("nvim", "tmux", "pty", "unknown")
STATES: Final = ("running", "stopped")
MAX_KEY_LEN: Final = 256
MAX_TEXT_LEN: Final = 4096
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Scalar = str | int | float | bool | None


def check_key(name: str, value: object) -> str:
    """An identifier: non-empty text of at most 256 characters without control characters."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ValidationError(f"{name} must not be empty")
    if len(value) > MAX_KEY_LEN:
        raise ValidationError(f"{name} is longer than {MAX_KEY_LEN} characters")
    if _CONTROL.search(value):
        raise ValidationError(f"{name} must not contain control characters")
    return value


def check_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string or None, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LEN:
        raise ValidationError(f"{name} is longer than {MAX_TEXT_LEN} characters")
    return value


def _check_int(name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass; True is not a pid.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValidationError(f"{name} must be within [{low}, {high}], got {value}")
    return value


def check_pid(name: str, value: object) -> int | None:
    return None if value is None else _check_int(name, value, 1, INT64_MAX)


def check_start_time(value: object) -> int | None:
    return None if value is None else _check_int("start_time", value, 0, INT64_MAX)


def check_chat_id(value: object) -> int:
    return _check_int("chat_id", value, INT64_MIN, INT64_MAX)


def check_notify(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"notify must be a bool, got {type(value).__name__}")
    return value


def check_state(value: object) -> str:
    if value not in STATES:
        raise ValidationError(f"state must be one of {', '.join(STATES)}; got {value!r}")
    return str(value)


def check_kind(value: object) -> str:
    if value not in TRANSPORT_KINDS:
        raise ValidationError(
            f"transport kind must be one of {', '.join(TRANSPORT_KINDS)}; got {value!r}"
        )
    return str(value)


def check_scalar(name: str, value: object) -> Scalar:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{name} must be a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LEN:
            raise ValidationError(f"{name} is longer than {MAX_TEXT_LEN} characters")
        return value
    raise ValidationError(f"{name} must be a JSON scalar, got {type(value).__name__}")


def check_details(value: object) -> dict[str, Scalar]:
    """Transport details: identifier keys (not ``kind``) to JSON scalars; returns a copy."""
    if not isinstance(value, Mapping):
        raise ValidationError(f"transport details must be a mapping, got {type(value).__name__}")
    out: dict[str, Scalar] = {}
    for key, item in value.items():
        check_key("transport detail key", key)
        if key == "kind":
            # The legacy format flattens details next to "kind"; this one would collide.
            raise ValidationError("transport detail key 'kind' is reserved")
        out[key] = check_scalar(f"transport detail {key!r}", item)
    return out
