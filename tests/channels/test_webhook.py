"""The webhook channel end to end: envelope, Standard Webhooks signature, templates, codes."""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.fakes.receiver import Receiver, Reply
from tests.helpers import make_webhook, send, wait_delivery

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_signed_delivery_verifies_with_the_standard_webhooks_library(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/signed/{unique}"
    make_webhook(api, f"signed-{unique}", receiver.url(path), signing_secret=SECRET)
    answer = send(
        api,
        [f"signed-{unique}"],
        title="Task daily_sales failed",
        content="**daily_sales** failed",
        level="error",
        category="task",
        fields={"Task": "daily_sales"},
        links=[{"title": "Open", "url": "https://example.com/t/42"}],
        labels={"env": "prod"},
    )
    delivery_id = answer["deliveries"][0]["id"]
    [request] = receiver.wait_for(path, 1)

    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == delivery_id
    assert payload == {
        "id": delivery_id,
        "message_id": answer["id"],
        "title": "Task daily_sales failed",
        "content": "**daily_sales** failed",
        "format": "markdown",
        "level": "error",
        "category": "task",
        "fields": {"Task": "daily_sales"},
        "links": [{"title": "Open", "url": "https://example.com/t/42"}],
        "labels": {"env": "prod"},
        "created_at": payload["created_at"],
        "event": None,
    }
    assert payload["created_at"].endswith("Z")
    with pytest.raises(WebhookVerificationError):
        other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        Webhook(other).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body + b" ", request.headers)
    assert wait_delivery(api, delivery_id)["status"] == "delivered"


def test_webhook_id_is_stable_across_retries_and_each_attempt_is_signed_afresh(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/retry-sign/{unique}"
    receiver.script(path, 503, 502)
    make_webhook(api, f"rs-{unique}", receiver.url(path), signing_secret=SECRET)
    delivery_id = send(api, [f"rs-{unique}"])["deliveries"][0]["id"]
    requests = receiver.wait_for(path, 3)
    assert {r.headers["webhook-id"] for r in requests} == {delivery_id}
    for request in requests:
        Webhook(SECRET).verify(request.body, request.headers)
    assert wait_delivery(api, delivery_id)["status"] == "delivered"


def test_unsigned_delivery_has_id_and_timestamp_but_no_signature(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/unsigned/{unique}"
    make_webhook(api, f"unsigned-{unique}", receiver.url(path))
    send(api, [f"unsigned-{unique}"])
    [request] = receiver.wait_for(path, 1)
    assert request.headers["webhook-id"].startswith("dlv_")
    assert request.headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in request.headers
    assert request.headers["Content-Type"] == "application/json"


def test_body_template_method_and_headers(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/templated/{unique}"
    template = (
        '{"msg_type": "text", "text": {{ (message.title ~ ": " ~ message.content) | tojson }},'
        ' "lvl": "{{ message.level }}", "dlv": "{{ delivery_id }}"}'
    )
    make_webhook(
        api,
        f"tpl-{unique}",
        receiver.url(path),
        method="PUT",
        headers={"Authorization": "Bearer s3cr3t-value-xyz", "X-Team": "data"},
        body_template=template,
    )
    answer = send(
        api, [f"tpl-{unique}"], title='He said "hi"', content="line1\nline2", level="warning"
    )
    [request] = receiver.wait_for(path, 1)
    assert request.method == "PUT"
    assert request.headers["Authorization"] == "Bearer s3cr3t-value-xyz"
    assert request.headers["X-Team"] == "data"
    assert request.json() == {
        "msg_type": "text",
        "text": 'He said "hi": line1\nline2',
        "lvl": "warning",
        "dlv": answer["deliveries"][0]["id"],
    }


def test_template_errors_are_422_naming_the_field(api: httpx.Client, unique: str) -> None:
    for template, expected in (
        ("{{ message.title ", "syntax error on line 1"),
        ("{{ nope.title }}", "nope"),
        ("{{ message.__class__.__mro__ }}", "template"),
    ):
        response = api.post(
            "/channels",
            json={
                "name": f"bad-tpl-{unique}",
                "type": "webhook",
                "config": {"url": "http://127.0.0.1:9/", "body_template": template},
            },
        )
        assert response.status_code == 422, (template, response.text)
        error = response.json()["error"]
        assert error["field"] == "config.body_template", error
        assert expected in error["message"], error


def test_success_codes_decide_delivery(api: httpx.Client, receiver: Receiver, unique: str) -> None:
    path = f"/codes/{unique}"
    receiver.script(path, Reply(status=202), Reply(status=200))
    make_webhook(api, f"codes-{unique}", receiver.url(path), success_codes=[200])
    delivery_id = send(api, [f"codes-{unique}"])["deliveries"][0]["id"]
    final = wait_delivery(api, delivery_id)
    assert final["status"] == "failed"
    assert "success_codes" in final["error"]
    assert len(receiver.at(path)) == 1


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-Key": "值-" + "s3cret"}, "a character an HTTP header cannot carry"),
        ({"X-Key": "abc\x7fdef"}, "a character an HTTP header cannot carry"),
        ({"X-Key": "a\x00b"}, "NUL"),
        ({"X Key": "v"}, "not a valid HTTP header name"),
        ({"X-Kéy": "v"}, "not a valid HTTP header name"),
        ({"Content-Length": "5"}, "set by msgpush"),
    ],
)
def test_header_values_a_request_cannot_carry_are_refused_at_save(
    api: httpx.Client, receiver: Receiver, unique: str, headers: dict[str, str], says: str
) -> None:
    answer = api.post(
        "/channels",
        json={
            "name": f"hdr-{unique}",
            "type": "webhook",
            "config": {"url": receiver.url("/hdr"), "headers": headers},
        },
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"].startswith("config.headers"), error
    assert says in error["message"], error
    assert "s3cret" not in answer.text


def test_latin1_header_values_are_accepted(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    path = f"/latin/{unique}"
    make_webhook(api, f"latin-{unique}", receiver.url(path), headers={"X-Name": "café\tau lait"})
    send(api, [f"latin-{unique}"])
    [arrived] = receiver.wait_for(path, 1)
    assert arrived.headers["X-Name"].encode("latin-1") == "café\tau lait".encode("latin-1")
