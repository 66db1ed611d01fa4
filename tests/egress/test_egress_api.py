"""The egress policy end to end: a real server refuses loopback targets at create, at Test Push
and at send, and never lets a webhook reach its own API (the reproduced token-minting attack)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook, send, wait_delivery
from tests.server import ServerProcess

NO_ALLOW = {"MSGPUSH_EGRESS_ALLOW": ""}


def test_without_allow_a_loopback_webhook_is_refused_at_create_test_and_send(
    make_server: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    path = "/egress/refused"
    target = receiver.url(path) + "?key=k3y-SECRET"
    msgpush = make_server()  # ALLOW=127.0.0.0/8, as every test server: save the channel first
    with msgpush.client() as api:
        make_webhook(api, "local", target)
    msgpush.stop()
    msgpush.extra_env.update(NO_ALLOW)
    msgpush.start()
    with msgpush.client() as api:
        for spelling in ("127.0.0.1", "127.1", "2130706433", "0x7f000001", "[::1]", "localhost"):
            url = f"http://{spelling}:{receiver.port}/x"
            answer = api.post(
                "/channels", json={"name": "n", "type": "webhook", "config": {"url": url}}
            )
            assert answer.status_code == 422, (spelling, answer.text)
            error = answer.json()["error"]
            assert error["field"] == "config.url"
            assert error["code"] == "egress_refused"
            assert "MSGPUSH_EGRESS_ALLOW" in error["message"]

        tested = api.post(
            "/channels/test", json={"type": "webhook", "config": {"url": target}}
        ).json()
        assert tested["ok"] is False
        assert "MSGPUSH_EGRESS_ALLOW" in tested["diagnosis"]
        assert "k3y-SECRET" not in str(tested)

        delivery_id = send(api, ["local"])["deliveries"][0]["id"]
        delivery = wait_delivery(api, delivery_id)
        assert delivery["status"] == "failed"
        [attempt] = delivery["attempt_log"]
        assert "MSGPUSH_EGRESS_ALLOW" in attempt["diagnosis"]
        assert "loopback" in attempt["diagnosis"]
        assert "k3y-SECRET" not in str(delivery)
    assert receiver.at(path) == []


def test_test_push_to_msgpush_own_token_endpoint_is_refused_even_when_loopback_is_allowed(
    server: ServerProcess, api: httpx.Client
) -> None:
    """The reported attack: a Test Push whose body template asks the API for an admin token."""
    before = api.get("/tokens").json()
    config = {
        "url": f"http://127.0.0.1:{server.port}/api/v1/tokens",
        "headers": {"Authorization": f"Bearer {server.admin_token}"},
        "body_template": '{"name": "pwned", "role": "admin"}',
    }
    for url in (config["url"], f"http://localhost:{server.port}/api/v1/tokens"):
        result = api.post(
            "/channels/test", json={"type": "webhook", "config": {**config, "url": url}}
        )
        assert result.status_code == 200, result.text
        answer = result.json()
        assert answer["ok"] is False
        assert "own API" in answer["diagnosis"]
        assert "mpk_" not in str(answer).replace(server.admin_token, "")
        refused = api.post(
            "/channels", json={"name": "pwn", "type": "webhook", "config": {**config, "url": url}}
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "config.url"
    assert api.get("/tokens").json() == before


def test_a_redirect_to_loopback_is_not_followed(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    start, elsewhere = f"/redirect/{unique}", f"/redirected/{unique}"
    receiver.script(start, Reply(302, headers={"Location": receiver.url(elsewhere)}))
    make_webhook(api, f"redirect-{unique}", receiver.url(start))
    delivery_id = send(api, [f"redirect-{unique}"])["deliveries"][0]["id"]
    delivery = wait_delivery(api, delivery_id)
    assert delivery["status"] == "failed"
    assert delivery["attempt_log"][-1]["status_code"] == 302
    time.sleep(0.2)
    assert len(receiver.at(start)) == 1
    assert receiver.at(elsewhere) == []


def test_ca_pem_must_be_pem_certificates(api: httpx.Client, receiver: Receiver) -> None:
    for bad, says in (
        ("not a certificate", "PEM certificates"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "private key"),
    ):
        answer = api.post(
            "/channels",
            json={
                "name": "ca",
                "type": "webhook",
                "config": {"url": receiver.url("/ca"), "ca_pem": bad},
            },
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["field"] == "config.ca_pem"
        assert says in error["message"]
