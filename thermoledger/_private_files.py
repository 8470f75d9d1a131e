"""Files only their owner may read: the server's SQLite database, the meter's spool and control.

Both the service's database layer and the meter create SQLite files that hold tokens' hashes,
run data or a queue of uploads. SQLite creates its ``-wal``, ``-shm`` and ``-journal`` files with
the database file's mode, so creating the file itself 0600 before SQLite opens it keeps every
one of them private, without touching the process's umask (the meter runs inside a training job,
whose other threads may create files meanwhile). The directories made on the way are 0700;
existing files and directories keep their modes.

Standard library only, beside every package, so that `thermoledger.db` and `thermoledger.meters`
share it without importing each other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "create_private_file", "make_private_dirs"]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each 0700; existing ones are left alone.

    Raises:
        OSError: A directory cannot be created.
    """
    missing: list[Path] = []
    walk = directory
    while not walk.exists() and walk != walk.parent:
        missing.append(walk)
        walk = walk.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile: not ours to change
        os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have taken some of the owner's bits


def create_private_file(path: str | Path, *, missing_dir_ok: bool = False) -> None:
    """Create ``path``, empty and 0600, unless it exists (SQLite takes an empty file as a new
    database, and gives its ``-wal``, ``-shm`` and ``-journal`` files this file's mode).

    Args:
        path: The file.
        missing_dir_ok: Do nothing when the directory does not exist (the caller's next step,
            e.g. SQLite's connect, then says so in its own words).

    Raises:
        OSError: The file cannot be created.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        if missing_dir_ok:
            return
        raise
    try:
        # The umask may have taken some of the owner's bits (Windows has a read-only flag only).
        if sys.platform != "win32":
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
