"""Hostile values (STYLE habit 4), shared by the contract and property suites so that every
backend meets them."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BEYOND_INT64",
    "INVALID_UNICODE",
    "LEGACY_SUMMARY",
    "NOT_INTS",
    "NOT_STRINGS",
    "ODD_TEXT",
    "UNPRINTABLE_INT",
]

# Text that is not valid Unicode: lone surrogates, which os.environ, os.fsdecode and sys.argv
# make of bytes that are not UTF-8 (a TMUX_PANE, a path).
INVALID_UNICODE = ["\udcff", "pane-\udcff", "\ud800", "emoji \U0001f99c and \udfff"]
# Valid text that is easy to get wrong: a NUL, a terminal escape sequence, Unicode line
# separators, a byte-order mark, the last code point, a C1 control; stored and read back exactly.
ODD_TEXT = ["a\x00b", "\x1b]0;title\x07", "\u2028\u2029", "\ufeffbom", "\U0010ffff", "\x85next"]
# Integers no signed 64-bit column can hold.
BEYOND_INT64 = [2**63, 2**64, -(2**63) - 1, 10**30]
# One with more digits than Python will print: an error message that shows it raised ValueError.
# (Kept out of BEYOND_INT64: Hypothesis prints its strategies.)
UNPRINTABLE_INT = -(10**5000)
# Arguments of the wrong kind where an int is expected (a bool is an int to Python, not to us).
NOT_INTS: list[Any] = [True, 1.5, "5", b"5", None]
# Arguments of the wrong kind where a string (an id, a token) is expected.
NOT_STRINGS: list[Any] = [5, 2**64, None, b"s1", ["s1"], {"s1": 1}, 1.5]
# What the legacy daemon stores in a token's context.summary: the whole last assistant message,
# untruncated; 30,000 non-ASCII characters (90,000 bytes of UTF-8, 216,000 characters once
# escaped as ASCII JSON).
LEGACY_SUMMARY = "é☕🦜日本" * 6000
