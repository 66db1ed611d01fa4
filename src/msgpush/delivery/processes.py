"""Delivery worker processes that ``msgpush serve`` starts beside itself when it falls behind.

One Python process runs on one core. ``serve`` sends with its own engine while that keeps up;
when the engine has had more due work than send slots for a while (a backlog), ``serve``
starts ``delivery_processes`` ``msgpush worker`` children that claim and send from the same
database, and its own engine pauses so that this process is free to accept messages. A child
that finds nothing to send for ``delivery_process_idle_s`` exits; when none is left ``serve`` sends again
itself. At rest there is one process.

Each child gets the read end of a pipe from the parent:

- the parent writes a byte to every pipe when it has stored a message, so a child looks for
  work at once instead of at its next poll (a burst of writes in one loop turn is one byte);
- when the parent dies, even by ``kill -9``, the child reads end-of-file and shuts down
  cleanly (it finishes or gives back its claims), so no orphan keeps sending.

A child tells the parent it is ready by printing ``ready`` on its standard output. A child
that fails (any exit but the idle one) is started again after a short pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from msgpush import metrics

log = logging.getLogger(__name__)

WAKE_FD_ENV = "MSGPUSH_WAKE_FD"
READY_LINE = b"ready"
IDLE_EXIT_CODE = 0
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 8.0


class _Child:
    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.wake_fd: int | None = None
        self.ready = False
        self.task: asyncio.Task[None] | None = None


class WorkerProcesses:
    """Starts on demand, wakes, restarts and stops the ``msgpush worker`` children of a serve.

    ``on_ready_count`` is told how many children are ready to send whenever that changes.
    """

    def __init__(
        self, count: int, data_dir: Path, on_ready_count: Callable[[int], None] | None = None
    ) -> None:
        self._data_dir = data_dir.resolve()
        self._children = [_Child(number) for number in range(count)]
        self._on_ready_count = on_ready_count or (lambda _count: None)
        self._stopping = False
        self._wake_pending = False
        self.started_total = 0

    @property
    def count(self) -> int:
        return len(self._children)

    @property
    def running(self) -> int:
        return sum(1 for c in self._children if c.task is not None)

    @property
    def ready(self) -> int:
        return sum(1 for c in self._children if c.ready)

    def scale_up(self) -> None:
        """Start every child that is not running (called when the engine has a backlog)."""
        if self._stopping:
            return
        for child in self._children:
            if child.task is None:
                child.task = asyncio.create_task(
                    self._run(child), name=f"msgpush-worker-{child.number}"
                )

    async def _run(self, child: _Child) -> None:
        try:
            while not self._stopping:
                code = await self._run_once(child)
                if code == IDLE_EXIT_CODE or self._stopping:
                    return
                log.error(
                    "delivery worker process %d exited with %s; starting it again",
                    child.number,
                    code,
                )
                await asyncio.sleep(RESTART_DELAY_S)
        finally:
            child.task = None

    async def _run_once(self, child: _Child) -> int:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        env = {**os.environ, WAKE_FD_ENV: str(read_fd), "MSGPUSH_DATA_DIR": str(self._data_dir)}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "msgpush",
                "worker",
                env=env,
                pass_fds=(read_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        child.process, child.wake_fd = process, write_fd
        self.started_total += 1
        log.info("started delivery worker process %d (pid %d)", child.number, process.pid)
        try:
            assert process.stdout is not None
            async for line in process.stdout:
                if line.strip() == READY_LINE and not child.ready:
                    child.ready = True
                    self._on_ready_count(self.ready)
            return await process.wait()
        finally:
            if process.returncode is not None:
                metrics.process_gone(process.pid)
            os.close(write_fd)
            child.wake_fd = None
            if child.ready:
                child.ready = False
                self._on_ready_count(self.ready)

    def notify(self) -> None:
        """New work is due: wake every child (once per event-loop turn, however many calls)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        for child in self._children:
            if child.wake_fd is None:
                continue
            # A full pipe already holds an unread wake-up.
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(child.wake_fd, b"\x01")

    async def stop(self) -> None:
        """Ask every child to finish (SIGTERM: in-flight sends end or are given back)."""
        self._stopping = True
        running = [c for c in self._children if c.task is not None and c.process is not None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        tasks = [c.task for c in running if c.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for child in running:
                if child.process is not None and child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
            if late:
                await asyncio.wait(late, timeout=2.0)


def listen_to_parent(on_wake: Callable[[], None], on_parent_gone: Callable[[], None]) -> bool:
    """In a worker started by ``serve``: call ``on_wake`` for each wake-up byte and
    ``on_parent_gone`` when the parent's end of the pipe closes. False when not a child."""
    raw = os.environ.pop(WAKE_FD_ENV, None)
    if raw is None:
        return False
    fd = int(raw)
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if data:
            on_wake()
            return
        loop.remove_reader(fd)
        os.close(fd)
        on_parent_gone()

    loop.add_reader(fd, readable)
    return True


def tell_parent_ready() -> None:
    sys.stdout.buffer.write(READY_LINE + b"\n")
    sys.stdout.flush()
