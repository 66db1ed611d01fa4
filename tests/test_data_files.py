"""File modes in the data directory: 0700 for the directory msgpush creates, 0600 for every file
it keeps there (database, -wal, -shm, key, locks), whatever the umask; looser ones are fixed."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgpush.datadir import create_private, open_private, private_dir, tighten
from tests.server import ServerProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Umask 000: whatever is 0600 was made so on purpose (subprocesses inherit it)."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_created_private_whatever_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    directory = private_dir(tmp_path / "a" / "data")
    assert _mode(directory) == 0o700
    create_private(directory / "msgpush.db")
    assert _mode(directory / "msgpush.db") == 0o600
    os.close(open_private(directory / "token-fetch.lock", os.O_WRONLY | os.O_APPEND))
    assert _mode(directory / "token-fetch.lock") == 0o600
    mounted = tmp_path / "mounted"
    mounted.mkdir(mode=0o755)
    private_dir(mounted)
    assert _mode(mounted) == 0o755, "an existing directory keeps the mode its owner chose"


def test_tighten_fixes_looser_files_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "msgpush.db"
    for path in (database, Path(f"{database}-wal"), tmp_path / "secret.key"):
        path.write_bytes(b"x")
        path.chmod(0o644)
    (tmp_path / "metrics").mkdir(mode=0o755)
    (tmp_path / "metrics").chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="msgpush.datadir"):
        tighten(tmp_path, database)
    for path in (database, Path(f"{database}-wal"), tmp_path / "secret.key"):
        assert _mode(path) == 0o600, path
        assert f"{path} was open to other users (mode 644): changed to 600" in caplog.text
    assert _mode(tmp_path / "metrics") == 0o700
    caplog.clear()
    tighten(tmp_path, database)
    assert not caplog.text, "nothing to say the second time"


def test_serve_keeps_its_files_private(tmp_path: Path, permissive_umask: None) -> None:
    runtime = tmp_path / "run"
    server = ServerProcess(
        tmp_path / "data",
        args=("--delivery-processes", "1"),
        extra_env={"MSGPUSH_RUNTIME_DIR": str(runtime)},
    )
    server.start()
    try:
        with server.client() as api:
            assert api.post("/tokens", json={"name": "n", "role": "sender"}).status_code == 201
        data = server.data_dir
        for name in ("msgpush.db", "msgpush.db-wal", "msgpush.db-shm", "msgpush.db-writelock"):
            assert _mode(data / name) == 0o600, name
        assert _mode(data / "secret.key") == 0o600
        assert not (data / "metrics").exists(), "runtime files are kept off the data directory"
        assert _mode(runtime / "metrics") == 0o700
        for mine in (runtime / "metrics").iterdir():
            assert _mode(mine) == 0o700
    finally:
        server.stop()

    (server.data_dir / "secret.key").chmod(0o644)
    (server.data_dir / "msgpush.db").chmod(0o666)
    server.start()  # an install from before: fixed on start, and logged
    server.stop()
    assert _mode(server.data_dir / "secret.key") == 0o600
    assert _mode(server.data_dir / "msgpush.db") == 0o600
    assert "secret.key was open to other users (mode 644): changed to 600" in server.log()


def test_the_cli_creates_a_private_data_dir(tmp_path: Path, permissive_umask: None) -> None:
    data = tmp_path / "new" / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGPUSH_")}
    done = subprocess.run(
        [sys.executable, "-m", "msgpush", "token", "create", "--data-dir", str(data)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(data) == 0o700
    assert _mode(data / "msgpush.db") == 0o600
    assert _mode(data / "secret.key") == 0o600


def test_parents_made_on_the_way_are_private_too(tmp_path: Path, permissive_umask: None) -> None:
    # serve makes data/metrics first: the data directory is made as its parent
    (tmp_path / "existing").mkdir(mode=0o755)
    private_dir(tmp_path / "existing" / "data" / "metrics")
    assert _mode(tmp_path / "existing") == 0o755  # there before: left as it was
    assert _mode(tmp_path / "existing" / "data") == 0o700
    assert _mode(tmp_path / "existing" / "data" / "metrics") == 0o700
