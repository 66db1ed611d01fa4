"""The Python client: send, send_many, channels, deliveries, errors."""

from __future__ import annotations

import pytest

from msgpush import Client, MsgpushError
from tests.fakes.receiver import Receiver
from tests.server import ServerProcess


def test_client_round_trip(server: ServerProcess, receiver: Receiver, unique: str) -> None:
    path = f"/client/{unique}"
    name = f"client-{unique}"
    with Client(server.url, server.admin_token) as client:
        created = client.create_channel(name, "webhook", {"url": receiver.url(path)})
        assert created["name"] == name
        assert name in [c["name"] for c in client.channels(type="webhook")]
        assert "webhook" in [t["type"] for t in client.channel_types()]

        answer = client.send(name, "Hello", "from the client", level="success", fields={"k": "v"})
        assert answer["id"].startswith("msg_")
        many = client.send_many({"channels": [name], "title": f"n{i}"} for i in range(5))
        assert len(many) == 5

        receiver.wait_for(path, 6)
        assert client.delivery(answer["deliveries"][0]["id"])["status"] in ("delivered", "sending")
        assert client.message(answer["id"])["fields"] == {"k": "v"}
        listed = list(client.iter_deliveries(channel=name, limit=2))
        assert len(listed) == 6

        with pytest.raises(MsgpushError) as caught:
            client.send("no-such-channel-" + unique, "x")
        assert caught.value.status == 422 and caught.value.field == "channels.0"

        result = client.test_channel(type="webhook", config={"url": receiver.url(path)})
        assert result["ok"] is True
        client.delete_channel(name)


def test_client_reads_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGPUSH_URL", server.url)
    monkeypatch.setenv("MSGPUSH_TOKEN", "mpk_wrong")
    with Client() as client, pytest.raises(MsgpushError) as caught:
        client.channels()
    assert caught.value.status == 401
