"""The ``ccr-registry`` console script and ``python -m registry``.

A Claude Code hook is a process of its own on every agent event, so this module imports nothing
but :mod:`sys` before it decides: ``[--data-dir D] ... hook EVENT`` goes straight to
:mod:`registry.hook`, anything else to :func:`registry.cli.main`. Importing ``registry.cli``
(the whole command line, ~1,200 lines) first cost every hook process: with sqlite_sql no longer
importing pathlib, a hook in a clean install went from 62-69 ms to 53-58 ms median (3.2-3.5x to
2.7-3.0x a bare ``python -c pass``, interleaved runs of both installs).
"""

from __future__ import annotations

import sys

# Imported for annotations only: importing typing costs a hook process measurable start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final

# The command words, for the early hook dispatch (registry.cli's parser defines each one).
COMMANDS: Final = (
    "hook", "sessions", "tokens", "inbox", "cleanup", "migrate", "export", "verify", "doctor",
    "config",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ccr-registry`` command line; the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    from registry.hook import is_hook_invocation

    if is_hook_invocation(arguments, COMMANDS):
        from registry.hook import main as hook_main

        return hook_main(arguments)
    from registry.cli import main as cli_main

    return cli_main(arguments)
