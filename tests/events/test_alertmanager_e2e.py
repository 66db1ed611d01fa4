"""A real Prometheus Alertmanager (Debian's prometheus-alertmanager) on loopback, pointed at
msgpush: alerts posted to it arrive through msgpush at a fake DingTalk robot, firing and then
resolved. Skips with the reason where the package is missing; CI must have it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.dingtalk import FakeDingTalk, Robot
from tests.server import ServerProcess, free_port

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

pytestmark = pytest.mark.slow

if ALERTMANAGER is None:
    reason = "prometheus-alertmanager is not installed: apt-get install -y prometheus-alertmanager"
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

CONFIG = """\
route:
  receiver: msgpush
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: msgpush
    webhook_configs:
      - url: "{url}/api/v1/integrations/alertmanager?channels=am-dingtalk"
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: "{token}"
"""


class Alertmanager:
    """Our own instance: a free loopback port, its own config and storage, no cluster."""

    def __init__(self, workdir: Path, msgpush: ServerProcess, token: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "alertmanager.yml").write_text(CONFIG.format(url=msgpush.url, token=token))
        self.log_path = workdir / "alertmanager.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Alertmanager:
        assert ALERTMANAGER is not None
        self.proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={self.workdir / 'alertmanager.yml'}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited: {self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"alertmanager did not become ready: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def post(self, *alerts: dict[str, Any]) -> None:
        response = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=10)
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Alertmanager, Robot, FakeDingTalk]]:
    msgpush = ServerProcess(tmp_path_factory.mktemp("msgpush-am")).start()
    fake = FakeDingTalk().start()
    robot = fake.add_robot()
    alertmanager: Alertmanager | None = None
    try:
        with msgpush.client() as api:
            channel = {
                "name": "am-dingtalk",
                "type": "dingtalk_bot",
                "config": {"webhook_url": fake.webhook_url(robot)},
            }
            assert api.post("/channels", json=channel).status_code == 201
            token = api.post("/tokens", json={"name": "alertmanager", "role": "sender"}).json()[
                "token"
            ]
        alertmanager = Alertmanager(tmp_path_factory.mktemp("alertmanager"), msgpush, token).start()
        yield alertmanager, robot, fake
    finally:
        if alertmanager is not None:
            alertmanager.stop()
        fake.stop()
        msgpush.stop()


def wait_posted(robot: Robot, count: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(robot.posted) >= count:
            break
        time.sleep(0.1)
    texts = []
    for posted in robot.posted:
        part = posted.body.get(posted.msgtype, {})
        texts.append(str(part.get("text") or part.get("content") or ""))
    assert len(texts) >= count, texts
    return texts


def test_alerts_posted_to_alertmanager_arrive_through_msgpush(
    stack: tuple[Alertmanager, Robot, FakeDingTalk],
) -> None:
    alertmanager, robot, _fake = stack
    started = datetime.now(UTC) - timedelta(minutes=3)
    alert = {
        "labels": {
            "alertname": "DiskFull",
            "instance": "nas-1",
            "severity": "critical",
            "env": "prod",
        },
        "annotations": {
            "summary": "Disk /data is 97% full",
            "runbook_url": "https://wiki.example.com/disk",
        },
        "startsAt": started.isoformat(),
        "generatorURL": "http://prometheus.example.com/graph?g0.expr=disk_used_percent",
    }
    alertmanager.post(alert)
    [firing] = wait_posted(robot, 1)
    assert "DiskFull on nas-1 is firing" in firing
    assert "Disk /data is 97% full" in firing
    assert "CRITICAL" in firing

    alertmanager.post({**alert, "endsAt": datetime.now(UTC).isoformat()})
    texts = wait_posted(robot, 2)
    resolved = texts[1]
    assert "Resolved: DiskFull on nas-1" in resolved
    assert "after firing for 3m" in resolved
    # Alertmanager re-sends, msgpush announces each state once; the robot's limit was kept
    time.sleep(2.5)
    assert len(robot.posted) == 2
    assert robot.rate_rejections() == []
