"""Secrets never leave the server: not in API answers, attempt logs, logs, or the database file."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path

import httpx

from msgpush.secretbox import SecretBox, load_or_create_key
from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook, send, wait_delivery
from tests.server import ServerProcess

SIGNING = "whsec_" + base64.b64encode(os.urandom(32)).decode()
HEADER_SECRET = "Bearer hdr-" + os.urandom(12).hex()


def test_secrets_are_write_only_masked_scrubbed_and_encrypted(
    api: httpx.Client, server: ServerProcess, receiver: Receiver, unique: str
) -> None:
    path = f"/secret/{unique}"
    # the receiver echoes the secret back, as a careless one might, in an error
    receiver.script(path, Reply(500, f"bad auth {HEADER_SECRET}".encode()))
    name = f"secret-{unique}"
    created = make_webhook(
        api,
        name,
        receiver.url(path),
        signing_secret=SIGNING,
        headers={"Authorization": HEADER_SECRET},
    )
    seen: list[str] = [str(created)]
    assert created["config"]["signing_secret"].startswith("••••")
    assert created["config"]["headers"] == {"Authorization": "••••"}

    delivery_id = send(api, [name])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "delivered"
    requests = receiver.at(path)
    assert requests[-1].headers["Authorization"] == HEADER_SECRET  # the receiver does get it

    tested = api.post(f"/channels/{name}/test")
    assert tested.json()["ok"] is True
    seen += [
        api.get(f"/channels/{name}").text,
        api.get("/channels").text,
        api.get(f"/deliveries/{delivery_id}").text,
        api.get("/deliveries", params={"channel": name}).text,
        tested.text,
        api.post(
            "/channels/test",
            json={
                "type": "webhook",
                "config": created["config"]
                | {
                    "url": receiver.url(path),
                    "signing_secret": SIGNING,
                    "headers": {"Authorization": HEADER_SECRET},
                },
            },
        ).text,
    ]
    attempt = final["attempt_log"][0]
    assert "••••" in attempt["diagnosis"]  # the echoed secret was scrubbed from the diagnosis
    assert attempt["request"][0]["headers"]["Authorization"] == "••••"
    assert attempt["request"][0]["headers"]["webhook-signature"] == "••••"

    # editing without the secret keeps it; a masked value sent back keeps it too
    api.patch(f"/channels/{name}", json={"config": {"signing_secret": "", "timeout_s": 5}})
    api.patch(
        f"/channels/{name}",
        json={"config": {"signing_secret": created["config"]["signing_secret"]}},
    )
    send(api, [name])
    latest = receiver.wait_for(path, len(requests) + 2)[-1]
    from standardwebhooks.webhooks import Webhook

    Webhook(SIGNING).verify(latest.body, latest.headers)

    raw_secret = SIGNING.removeprefix("whsec_")
    for text in [*seen, server.log()]:
        assert raw_secret not in text and SIGNING not in text
        assert HEADER_SECRET not in text and HEADER_SECRET.split()[1] not in text

    if server.database_url is None:  # at rest: the SQLite file holds only ciphertext
        data = b"".join(p.read_bytes() for p in server.data_dir.glob("msgpush.db*") if p.is_file())
        assert SIGNING.encode() not in data and HEADER_SECRET.encode() not in data
        assert name.encode() in data  # (the search itself works)


def test_secret_edits_keep_merge_and_clear(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    name = f"sec-edit-{unique}"
    make_webhook(
        api,
        name,
        receiver.url(f"/sec-edit/{unique}"),
        signing_secret=SIGNING,
        headers={"Authorization": HEADER_SECRET, "X-Env": "prod-key-123"},
    )
    # one header changed, the other sent back masked: it keeps its stored value
    api.patch(
        f"/channels/{name}",
        json={"config": {"headers": {"Authorization": "••••", "X-Env": "staging"}}},
    )
    send(api, [name])
    [request] = receiver.wait_for(f"/sec-edit/{unique}", 1)
    assert (
        request.headers["Authorization"] == HEADER_SECRET and request.headers["X-Env"] == "staging"
    )
    # Test Push of unsaved edits on a saved channel keeps the stored secret, records nothing
    tested = api.post(f"/channels/{name}/test", json={"config": {"timeout_s": 3}})
    assert tested.status_code == 200 and tested.json()["ok"] is True
    assert api.get(f"/channels/{name}").json()["last_test"] is None
    # null clears a stored secret
    cleared = api.patch(f"/channels/{name}", json={"config": {"signing_secret": None}})
    assert "signing_secret" not in cleared.json()["config"]


def test_url_credentials_kept_in_clear_by_an_older_version_are_sealed_on_start(
    tmp_path: Path, receiver: Receiver, unique: str
) -> None:
    path = f"/old/{unique}"
    key = "k-" + os.urandom(8).hex()
    url = receiver.url(path) + f"?api_key={key}"
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as api:
            channel_id = make_webhook(api, f"old-{unique}", url)["id"]
    finally:
        server.stop()
    # what an older msgpush stored: the URL, credentials and all, with the plain settings
    database = tmp_path / "data" / "msgpush.db"
    box = SecretBox(load_or_create_key(tmp_path / "data", None))
    with sqlite3.connect(database) as conn:
        config, sealed = conn.execute(
            "SELECT config, secrets FROM channels WHERE id = ?", (channel_id,)
        ).fetchone()
        plain, secret = json.loads(config), box.open(sealed)
        plain["url"] = secret.pop("url")
        conn.execute(
            "UPDATE channels SET config = ?, secrets = ? WHERE id = ?",
            (json.dumps(plain), box.seal(secret), channel_id),
        )
        (config,) = conn.execute(
            "SELECT config FROM channels WHERE id = ?", (channel_id,)
        ).fetchone()
        assert key in config

    server.start()
    try:
        with sqlite3.connect(database) as conn:
            (config,) = conn.execute(
                "SELECT config FROM channels WHERE id = ?", (channel_id,)
            ).fetchone()
        assert key not in config
        assert "sealed URL credentials kept in clear by 1 older channels" in server.log()
        with server.client() as api:
            shown = api.get(f"/channels/{channel_id}").json()["config"]["url"]
            assert key not in shown and "api_key=••••" in shown
            assert api.post(f"/channels/{channel_id}/test").json()["ok"] is True
        [arrived] = receiver.at(path)  # the Test Push, sent with the stored credential
        assert arrived.path.endswith(f"?api_key={key}")
    finally:
        server.stop()
