"""A clock the suites move by hand, and the files a store keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["EPOCH_START", "FakeClock", "data_files"]

EPOCH_START = datetime(2026, 2, 9, 1, 20, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, start: datetime = EPOCH_START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self.now += delta if delta is not None else timedelta(**kwargs)
        return self.now


def data_files(data_dir: Path) -> dict[str, bytes]:
    """Every file that holds data in ``data_dir`` (not lock files or SQLite's shared memory).

    Empty for a store that keeps nothing there (postgres alone never creates ``data_dir``).
    """
    if not data_dir.exists():
        return {}
    return {
        path.name: path.read_bytes()
        for path in sorted(data_dir.iterdir())
        if path.is_file() and not path.name.endswith(("-shm", ".lock"))
    }
