"""File modes in the data directory: what msgpush keeps there is for its own user only.

The data directory is created 0700 and each file msgpush creates there 0600 (the SQLite
database, so that SQLite gives its ``-wal`` and ``-shm`` files the same mode; the key file; the
lock files), whatever the umask. On start, files of an older install that others could read
are tightened to 0600, with a warning in the log.

Files that live only as long as the processes (the metrics files of serve's worker processes,
which prometheus_client maps into memory) go to a runtime directory instead (``runtime_dir``):
a write to a memory-mapped file on a full disk kills the process with SIGBUS, so nothing mapped
may live beside the database. The lock files stay beside the database: every process sharing
the database must find them at the same path, and a lock takes no space, so a full disk does
not touch them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from msgpush.settings import Settings

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


def runtime_dir(settings: Settings) -> Path:
    """The directory (0700, this user's) for files that live only while msgpush runs, never on
    the data directory's disk: ``MSGPUSH_RUNTIME_DIR`` if set, else ``msgpush-<uid>-<hash of the
    data directory>`` in the first usable of ``$XDG_RUNTIME_DIR``, ``/run``, ``/dev/shm`` (memory
    file systems) and the temporary directory. One per data directory, so that two installs on
    one host keep apart."""
    if settings.runtime_dir is not None:
        return private_dir(settings.runtime_dir)
    tag = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:12]
    name = f"msgpush-{os.getuid()}-{tag}"
    bases = (os.environ.get("XDG_RUNTIME_DIR"), "/run", "/dev/shm", tempfile.gettempdir())
    refused: list[str] = []
    for base in bases:
        if not base or not os.access(base, os.W_OK | os.X_OK):
            continue
        try:
            return _own_private_dir(Path(base) / name)
        except OSError as exc:
            refused.append(f"{base}: {exc.strerror or exc}")
    raise OSError(
        errno.EACCES,
        f"no usable runtime directory ({'; '.join(refused) or 'none writable'}); "
        "set MSGPUSH_RUNTIME_DIR",
    )


def _own_private_dir(path: Path) -> Path:
    """``path`` as a 0700 directory of this user, created if missing. In a directory others
    may write to (/dev/shm, /tmp), one made by someone else, or a link, is refused."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=PRIVATE_DIR)
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
        raise OSError(errno.EPERM, f"{path} exists and is not this user's directory")
    if stat.S_IMODE(found.st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def unwritable(settings: Settings) -> str | None:
    """Why msgpush cannot write what it keeps in the data directory, as one line naming the
    directory and the fix; None when it can. (PostgreSQL with ``MSGPUSH_SECRET_KEY`` keeps
    nothing there.)"""
    on_sqlite = not settings.database_url or settings.database_url.startswith("sqlite")
    if not on_sqlite and settings.secret_key:
        return None
    data_dir = settings.data_dir.resolve()
    database = settings.sqlite_path().resolve()
    try:
        private_dir(data_dir)
        fd, probe = tempfile.mkstemp(prefix=".msgpush-write-test-", dir=data_dir)
        os.close(fd)
        os.unlink(probe)
        if on_sqlite and database.exists() and not os.access(database, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(database))
    except OSError as exc:
        what = exc.filename if exc.filename and Path(exc.filename) == database else data_dir
        fixes = {
            errno.EROFS: "it is on a read-only file system: mount it read-write",
            errno.ENOSPC: "its disk is full: free space",
            errno.EDQUOT: "the disk quota is used up: free space",
        }
        fix = fixes.get(
            exc.errno or 0, f"give user {os.getuid()} write access to it (chown or chmod)"
        )
        return (
            f"msgpush cannot write {what} ({exc.strerror or exc}): {fix}, or point "
            "MSGPUSH_DATA_DIR (--data-dir) at a writable directory"
        )
    return None
