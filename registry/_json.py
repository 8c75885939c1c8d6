"""JSON text in and out through CPython's C accelerator, without importing the json package.

A hook is a process of its own on every agent event, and the json package imports :mod:`re`
(and with it enum, functools and the regex compiler) for the pure-Python fallbacks it keeps
beside the C ones: about half a bare interpreter's start-up (``bench/hook_startup.py``). The
functions below build the very objects json's own ``loads`` and ``dumps`` run
(``JSONDecoder.__init__`` makes its scanner with ``_json.make_scanner``, ``JSONEncoder.iterencode``
its one-shot encoder with ``_json.make_encoder``) with json's defaults, so the text and the values
are json's, character for character (``tests/backends/test_json_text.py`` compares them on generated
documents). An interpreter without ``_json`` gets the json package itself.

Only what the library uses: :func:`loads` of a ``str`` (a hook decodes its stdin as UTF-8
first) and :func:`dumps` with ``separators``, ``ensure_ascii`` and ``allow_nan``.
"""

from __future__ import annotations

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["dumps", "loads"]

_WHITESPACE = " \t\n\r"  # json's WHITESPACE: the only characters allowed around a document

try:
    import _json as _c
except ImportError:  # another interpreter: the json package's own functions, imported on use
    _c = None  # type: ignore[assignment]


def _constant(name: str) -> float:
    # json's parse_constant: NaN, Infinity and -Infinity are read, as json.loads reads them.
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


class _Context:
    """The attributes ``make_scanner`` reads: JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)


# The stub wants a scanner as the context; make_scanner reads only the attributes above.
_scan = None if _c is None else _c.make_scanner(_Context())  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """The value of the JSON document ``text``; ValueError if it is not one.

    json.loads and JSONDecoder.decode: a leading BOM is refused, whitespace around the
    document is skipped, anything else after it is an error ("Extra data"); the messages
    are json's.
    """
    if not isinstance(text, str):
        raise TypeError(f"the JSON text must be str, not {type(text).__name__}")
    if _scan is None:
        import json

        return json.loads(text)
    if text.startswith("\ufeff"):
        raise _error("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise _error("Expecting value", text, stop.value) from None
    if end != len(text.rstrip(_WHITESPACE)):
        raise _error("Extra data", text, len(text) - len(text[end:].lstrip(_WHITESPACE)))
    return value


def _error(message: str, text: str, position: int) -> ValueError:
    # JSONDecodeError's message (the scanner raises JSONDecodeError itself for the rest).
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)
    return ValueError(f"{message}: line {line} column {column} (char {position})")


def _default(value: object) -> object:
    # JSONEncoder.default
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(
    value: object,
    *,
    separators: tuple[str, str] = (", ", ": "),
    ensure_ascii: bool = True,
    allow_nan: bool = True,
) -> str:
    """``json.dumps(value, ...)`` with these keywords (and json's defaults for the rest).

    JSONEncoder.encode: a string is encoded directly; anything else by a one-shot C encoder
    that checks for circular references, as json's default ``check_circular``.
    """
    if _c is None:
        import json

        return json.dumps(
            value, separators=separators, ensure_ascii=ensure_ascii, allow_nan=allow_nan
        )
    quote = _c.encode_basestring_ascii if ensure_ascii else _c.encode_basestring
    if isinstance(value, str):
        return quote(value)
    item_separator, key_separator = separators
    encode = _c.make_encoder(
        {}, _default, quote, None, key_separator, item_separator, False, False, allow_nan
    )
    return "".join(encode(value, 0))
