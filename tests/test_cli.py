"""The msgpush command against a running server: tokens, channels, send."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.fakes.receiver import Receiver
from tests.helpers import wait_delivery
from tests.server import ServerProcess


def msgpush(
    server: ServerProcess, *args: str, token: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = server.env()
    env["MSGPUSH_URL"] = server.url
    env["MSGPUSH_TOKEN"] = token or server.admin_token
    return subprocess.run(
        [sys.executable, "-m", "msgpush", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_create_prints_only_the_token(server: ServerProcess, api: httpx.Client) -> None:
    result = msgpush(server, "token", "create", "--role", "sender", "--name", "ci")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith("mpk_")
    with server.client(token) as client:
        assert client.get("/channel-types").status_code == 200
        assert client.get("/channels").status_code == 403
    bad = msgpush(server, "token", "create", "--role", "root")
    assert bad.returncode == 2 and "role must be one of" in bad.stderr


def test_channel_add_list_test_send_rm(
    server: ServerProcess, api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/cli/{unique}"
    name = f"cli-{unique}"
    added = msgpush(
        server,
        "channel",
        "add",
        name,
        "--type",
        "webhook",
        "--set",
        f"url={receiver.url(path)}",
        "--set",
        "timeout_s=5",
    )
    assert added.returncode == 0, added.stderr
    channel_id = added.stdout.strip()
    assert channel_id.startswith("ch_")

    listed = msgpush(server, "channel", "list")
    assert name in listed.stdout and channel_id in listed.stdout

    tested = msgpush(server, "channel", "test", name)
    assert tested.returncode == 0 and tested.stdout.startswith("OK"), tested.stdout
    assert "Test Push" in receiver.wait_for(path, 1)[0].json()["title"]

    sent = msgpush(
        server,
        "send",
        "-c",
        name,
        "-t",
        "From the CLI",
        "-m",
        "-",
        "--level",
        "warning",
        "--label",
        "env=prod",
        stdin="body from stdin",
    )
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    message = api.get(f"/messages/{message_id}").json()
    assert message["content"] == "body from stdin" and message["labels"] == {"env": "prod"}
    wait_delivery(api, message["deliveries"][0]["id"])
    assert receiver.wait_for(path, 2)[-1].json()["title"] == "From the CLI"

    bad = msgpush(server, "send", "-c", "no-such-channel", "-t", "x")
    assert bad.returncode == 1 and "no-such-channel" in bad.stderr

    removed = msgpush(server, "channel", "rm", name)
    assert removed.returncode == 0
    assert api.get(f"/channels/{name}").status_code == 404


def test_channel_test_failure_exits_nonzero_with_diagnosis(
    server: ServerProcess, unique: str
) -> None:
    name = f"clifail-{unique}"
    assert (
        msgpush(
            server, "channel", "add", name, "--type", "webhook", "--set", "url=http://127.0.0.1:9/"
        ).returncode
        == 0
    )
    tested = msgpush(server, "channel", "test", name)
    assert tested.returncode == 1
    assert "FAILED" in tested.stdout and "cannot connect" in tested.stdout
