"""Is the process that started a session still running? (SPEC 7)"""

from __future__ import annotations

import os
import sys

import psutil

__all__ = ["is_process_alive"]


def is_process_alive(pid: int, start_time: int | None = None, *, tolerance_s: float = 2) -> bool:
    """True if process ``pid`` exists, is not a zombie and, given ``start_time``, is that process.

    ``start_time`` is in epoch seconds. PIDs are reused, so with a start time the process only
    counts when its real start time (``psutil.Process.create_time()``) or, on Linux, the
    timestamp of ``/proc/<pid>`` (what the legacy hooks recorded) is within ``tolerance_s`` of it.
    A process that exists but cannot be inspected (another user's) counts as alive.
    """
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if start_time is None:
            return True
        created = process.create_time()
    except psutil.NoSuchProcess:  # ZombieProcess is a subclass
        return False
    except psutil.AccessDenied:
        return True
    if abs(created - start_time) <= tolerance_s:
        return True
    return _proc_entry_matches(pid, start_time, tolerance_s)


def _proc_entry_matches(pid: int, start_time: int, tolerance_s: float) -> bool:
    # Legacy hooks ran `stat -c %Y /proc/<pid>`: the mtime of the /proc entry, set when the
    # kernel first instantiated it, which is usually but not always the process's start.
    if not sys.platform.startswith("linux"):
        return False
    try:
        return abs(os.stat(f"/proc/{pid}").st_mtime - start_time) <= tolerance_s
    except OSError:
        return False
