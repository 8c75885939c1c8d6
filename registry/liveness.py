"""Is the process that started a session still running? (SPEC 7)"""

from __future__ import annotations

import os
import sys

import psutil

__all__ = ["is_process_alive", "proc_timestamp"]


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


def proc_timestamp(pid: int) -> int | None:
    """The timestamp of ``/proc/<pid>`` in whole epoch seconds, or None (no such entry, not Linux).

    Legacy hooks ran ``stat -c %Y /proc/<pid>``, and the legacy daemon's dead-session check
    compares a session's ``start_time`` with this value (within 2 s): the time the kernel first
    instantiated the entry, which is usually but not always the process's start.
    """
    if not sys.platform.startswith("linux") or pid <= 0:
        return None
    try:
        return int(os.stat(f"/proc/{pid}").st_mtime)
    except OSError:
        return None


def _proc_entry_matches(pid: int, start_time: int, tolerance_s: float) -> bool:
    stamp = proc_timestamp(pid)
    return stamp is not None and abs(stamp - start_time) <= tolerance_s
