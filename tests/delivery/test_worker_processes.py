"""Worker processes that ``serve`` starts when deliveries fall behind, and their ends."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.receiver import Receiver, Reply
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

BACKLOG_ENV = {
    "MSGPUSH_DELIVERY_PROCESSES": "2",
    "MSGPUSH_WORKERS": "4",  # 4 send slots and a 20 ms receiver: a backlog at once
    "MSGPUSH_DELIVERY_PROCESS_IDLE_S": "1.5",
}


def health(server: ServerProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/healthz", timeout=5).json()
    return body


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def send_burst(api: httpx.Client, channel: str, count: int, tag: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 100):
        items = [
            {"channels": [channel], "title": f"{tag}-{n}", "content": "burst"}
            for n in range(start, min(start + 100, count))
        ]
        response = api.post("/messages/batch", json={"messages": items})
        assert response.status_code == 202, response.text
        ids += [item["id"] for item in response.json()["items"]]
    return ids


def burst_until_two_workers(
    server: ServerProcess, receiver: Receiver, name: str, path: str, count: int
) -> list[str]:
    """A webhook channel to a slow receiver, ``count`` messages to it, and both worker
    processes ready; returns the message ids."""
    receiver.script(path, *[Reply(200, delay_s=0.05) for _ in range(count)])
    with server.client() as api:
        api.post(
            "/channels",
            json={"name": name, "type": "webhook", "config": {"url": receiver.url(path)}},
        ).raise_for_status()
        ids = send_burst(api, name, count, name)
    wait_until(lambda: health(server)["worker_processes"]["ready"] == 2, 20, "two workers")
    return ids


def delivered_total(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    pattern = r'msgpush_delivery_attempts_total\{channel_type="webhook",outcome="delivered"\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def test_a_backlog_starts_worker_processes_that_send_then_leave_when_idle(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server(**BACKLOG_ENV)
    assert health(server)["worker_processes"] == {
        "max": 2,
        "running": 0,
        "ready": 0,
        "started_total": 0,
    }, "at rest serve is one process"
    path = f"/workers/{unique}"
    receiver.script(path, *[Reply(200, delay_s=0.02) for _ in range(600)])
    with server.client() as api:
        created = api.post(
            "/channels",
            json={"name": unique, "type": "webhook", "config": {"url": receiver.url(path)}},
        )
        assert created.status_code == 201, created.text
        ids = send_burst(api, unique, 600, "burst")
        wait_until(lambda: health(server)["worker_processes"]["ready"] >= 1, 20, "a worker")

        received = receiver.wait_for(path, 600, timeout=90)
        message_ids = [r.json()["message_id"] for r in received]
        assert sorted(message_ids) == sorted(ids), "every message once, none twice"

        # the sends were made by several processes, and every attempt is in /metrics
        workers = set()
        for message_id in ids[::25]:
            delivery = api.get("/deliveries", params={"message_id": message_id}).json()["items"][0]
            attempts = api.get(f"/deliveries/{delivery['id']}").json()["attempt_log"]
            workers.add(attempts[-1]["worker"].rsplit("-", 2)[1])  # host-pid-suffix
        assert len(workers) >= 2, f"all sends came from one process: {workers}"
        wait_until(lambda: delivered_total(server) == 600, 10, "/metrics to count 600 sends")
        assert "process_resident_memory_bytes" in httpx.get(f"{server.url}/metrics").text

        # idle children leave; serve sends again itself
        wait_until(lambda: health(server)["worker_processes"]["running"] == 0, 30, "idle exit")
        assert children(server.proc.pid if server.proc else 0) == []
        ids.append(
            api.post("/messages", json={"channels": [unique], "title": "after"}).json()["id"]
        )
        assert receiver.wait_for(path, 601, timeout=15)[-1].json()["message_id"] == ids[-1]


def test_worker_processes_stop_when_serve_is_killed(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server(**{**BACKLOG_ENV, "MSGPUSH_DELIVERY_PROCESS_IDLE_S": "60"})
    burst_until_two_workers(server, receiver, unique, f"/orphans/{unique}", 400)
    assert server.proc is not None
    kids = children(server.proc.pid)
    assert len(kids) == 2
    server.kill()  # SIGKILL: serve runs no shutdown code at all
    wait_until(lambda: not any(alive(pid) for pid in kids), 20, "the workers to exit")


def test_a_crashed_worker_process_is_started_again(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    server = make_server(**{**BACKLOG_ENV, "MSGPUSH_DELIVERY_PROCESS_IDLE_S": "60"})
    path = f"/restart/{unique}"
    ids = burst_until_two_workers(server, receiver, unique, path, 300)
    assert server.proc is not None
    os.kill(children(server.proc.pid)[0], signal.SIGKILL)
    wait_until(lambda: health(server)["worker_processes"]["started_total"] >= 3, 20, "restart")
    received = receiver.wait_for(path, 300, timeout=90)  # its claims come back (owner lock)
    assert {r.json()["message_id"] for r in received} == set(ids)
    assert "exited with -9; starting it again" in server.log()


def test_a_burst_held_back_by_a_rate_limit_starts_no_worker_process(
    make_server: Callable[..., ServerProcess], receiver: Receiver, unique: str
) -> None:
    """Sends waiting for their channel's rate window are not a backlog: more processes would
    not send them sooner, and each process paces only its own requests."""
    server = make_server(**BACKLOG_ENV, MSGPUSH_RATE_WINDOW_SCALE="0.05")  # 1 s -> 50 ms
    path = f"/limited/{unique}"
    with server.client() as api:
        created = api.post(
            "/channels",
            json={
                "name": unique,
                "type": "webhook",
                "config": {"url": receiver.url(path)},
                "rate_limit": {"per_second": 5},
            },
        )
        assert created.status_code == 201, created.text
        ids = send_burst(api, unique, 200, "limited")
    received = receiver.wait_for(path, 200, timeout=60)
    assert {r.json()["message_id"] for r in received} == set(ids)
    assert health(server)["worker_processes"]["started_total"] == 0
