"""Real-speed check of a vendor rate limit: a burst of 25 alerts to one DingTalk bot (20 a minute).

    .venv/bin/python bench/rate_limits.py    # about 70 seconds

The tests check bursts with shrunk windows (MSGPUSH_RATE_WINDOW_SCALE); this runs the real
one-minute window once: msgpush serve (SQLite, temporary directory) sends to the strict fake
DingTalk robot of the test suite (tests/fakes/dingtalk.py), which locks the robot for ten
minutes after a 21st message in a minute, exactly as DingTalk does. Expected: 20 messages at
once, the other 5 when the window allows, zero rate-limit answers, every delivery delivered.
Loopback only; it stops everything at the end. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.dingtalk import FakeDingTalk  # noqa: E402
from tests.server import free_port  # noqa: E402

BURST = 25
DEADLINE_S = 150.0


def main() -> int:
    fake = FakeDingTalk().start()
    robot = fake.add_robot()
    port = free_port()
    token = "mpk_bench_" + secrets.token_hex(8)
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSGPUSH_")}
        env.update(
            MSGPUSH_DATA_DIR=data_dir, MSGPUSH_ADMIN_TOKEN=token, MSGPUSH_EGRESS_ALLOW="127.0.0.1"
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "msgpush", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return run(fake, robot, port, token)
        finally:
            server.terminate()
            server.wait(20)
            fake.stop()


def run(fake: FakeDingTalk, robot: object, port: int, token: str) -> int:
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    created = api.post(
        "/channels",
        json={
            "name": "ops-dingtalk",
            "type": "dingtalk_bot",
            "config": {"webhook_url": fake.webhook_url(robot)},  # type: ignore[arg-type]
        },
    )
    created.raise_for_status()
    messages = [
        {"channels": ["ops-dingtalk"], "title": f"Alert {i}", "level": "warning"}
        for i in range(BURST)
    ]
    started = time.monotonic()
    api.post("/messages/batch", json={"messages": messages}).raise_for_status()
    delivered: list[dict[str, object]] = []
    while time.monotonic() - started < DEADLINE_S:
        page = api.get("/deliveries", params={"channel": "ops-dingtalk", "limit": 100}).json()
        delivered = [d for d in page["items"] if d["status"] == "delivered"]
        if len(delivered) == BURST:
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    posted = len(robot.posted)  # type: ignore[attr-defined]
    refused = robot.rate_rejections()  # type: ignore[attr-defined]
    print(f"burst of {BURST} to one DingTalk bot (20/min), real one-minute window:")
    print(f"  delivered {len(delivered)}/{BURST} in {elapsed:.1f} s; posted at the fake {posted}")
    print(f"  rate-limit answers from the fake: {len(refused)}")
    ok = len(delivered) == BURST and not refused and elapsed >= 60
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
