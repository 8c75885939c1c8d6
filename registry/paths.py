"""Private files and directories: what the library creates is 0600, a new data directory 0700."""

from __future__ import annotations

import os
from pathlib import Path

from registry.errors import RegistryError

__all__ = ["create_private_file", "ensure_private_dir", "fsync_dir"]

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; an existing directory is kept as is.

    mkdir first, then look: several processes may start on a new data directory at once.
    """
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        if not path.is_dir():
            message = f"{path}: data directory path exists and is not a directory"
            raise RegistryError(message) from None
        return
    # mkdir's mode is filtered by the umask; the data directory must not be.
    os.chmod(path, DIR_MODE)


def create_private_file(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists; never follows a symlink."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
