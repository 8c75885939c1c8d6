"""The suites every backend passes, importable so that a backend of another distribution runs
the very tests the built-in ones pass (SPEC 5).

Nothing in :mod:`registry` imports this package; it needs pytest and Hypothesis, which the
library does not. See docs/plugins.md: load :mod:`registry.testing.plugin`, implement its
``pytest_ccr_backends`` hook, and import the suites into a test module::

    from registry.testing.contract.sessions import *  # noqa: F403
"""

from __future__ import annotations

from registry.testing.clock import EPOCH_START, FakeClock, data_files
from registry.testing.values import (
    BEYOND_INT64,
    INVALID_UNICODE,
    LEGACY_SUMMARY,
    NOT_INTS,
    NOT_STRINGS,
    ODD_TEXT,
    UNPRINTABLE_INT,
)

__all__ = [
    "BEYOND_INT64",
    "EPOCH_START",
    "INVALID_UNICODE",
    "LEGACY_SUMMARY",
    "NOT_INTS",
    "NOT_STRINGS",
    "ODD_TEXT",
    "UNPRINTABLE_INT",
    "FakeClock",
    "data_files",
]
