"""File modes in the data directory: what msgpush keeps there is for its own user only.

The data directory is created 0700 and each file msgpush creates there 0600 (the SQLite
database, so that SQLite gives its ``-wal`` and ``-shm`` files the same mode; the key file; the
lock files), whatever the umask. On start, files of an older install that others could read
are tightened to 0600, with a warning in the log.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# beside the SQLite database: its write-ahead log, shared memory index, rollback journal and the
# writers' lock file (storage/db.py)
DATABASE_COMPANIONS = ("-wal", "-shm", "-journal", "-writelock")
# in the data directory whatever the database: the key file and the access-token fetch lock
DATA_FILES = ("secret.key", "token-fetch.lock")


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its missing parents) if missing, each directory created 0700 (a
    data directory made as the parent of ``metrics/`` is private too). An existing directory
    keeps its mode: it may be one the operator chose, such as a volume mount."""
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, PRIVATE_DIR)
    return path


def open_private(path: Path, flags: int = os.O_RDWR) -> int:
    """``os.open`` creating ``path`` 0600 if missing (and tightening it if looser); the fd."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE)
    try:
        _tighten_fd(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> None:
    """Make sure ``path`` exists, 0600 (an empty file is a valid new SQLite database)."""
    os.close(open_private(path))


def _tighten_fd(fd: int, path: Path) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode != PRIVATE_FILE:
        os.fchmod(fd, PRIVATE_FILE)
        if mode & 0o077:
            _tightened(path, mode, PRIVATE_FILE)


def _tightened(path: Path, mode: int, new_mode: int) -> None:
    log.warning("%s was open to other users (mode %03o): changed to %03o", path, mode, new_mode)


def tighten(data_dir: Path, database: Path | None) -> None:
    """On start: the files msgpush keeps that others may read or write become 0600, the
    metrics directory 0700; each change is logged. Paths that do not exist are skipped."""
    paths = [data_dir / name for name in DATA_FILES]
    if database is not None:
        paths += [database, *(Path(f"{database}{suffix}") for suffix in DATABASE_COMPANIONS)]
    for path in paths:
        _restrict(path, PRIVATE_FILE)
    _restrict(data_dir / "metrics", PRIVATE_DIR)


def _restrict(path: Path, private_mode: int) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, private_mode)
        _tightened(path, mode, private_mode)
