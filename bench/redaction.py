"""Micro-benchmark of the attempt transcript (Transcript.add plus outcome redaction) for a
typical webhook send, with and without secrets. Per-message cost on one core, best of 7.

    PYTHONPATH=src python bench/redaction.py
"""

from __future__ import annotations

import base64
import os
import timeit

import orjson

from msgpush.channels.base import Outcome, VendorRequest, VendorResponse
from msgpush.channels.signing import standard_webhooks_key, standard_webhooks_signature
from msgpush.channels.webhook import CHANNEL_TYPE, WebhookSettings
from msgpush.delivery.http import Transcript

SIGNING = "whsec_" + base64.b64encode(os.urandom(32)).decode()
BODY = orjson.dumps(
    {
        "id": "dlv_01HXYZ",
        "message_id": "msg_01HXYZ",
        "title": "Disk almost full on db-1",
        "content": "Disk /var is at 93%. " * 10,
        "format": "markdown",
        "level": "warning",
        "fields": {"host": "db-1", "mount": "/var"},
        "labels": {"env": "prod"},
    }
)
ANSWER = VendorResponse(200, {}, b'{"ok":true}')


def per_message(settings: WebhookSettings, *, signed: bool) -> float:
    secrets = CHANNEL_TYPE.secret_set(settings)
    key = standard_webhooks_key(SIGNING)
    counter = [0]

    def once() -> None:
        counter[0] += 1
        transcript = Transcript(secrets=secrets.copy())
        headers = {"Content-Type": "application/json", "webhook-id": "dlv_1", **settings.headers}
        if signed:
            signature = standard_webhooks_signature(key, f"dlv_{counter[0]}", 1_700_000_000, BODY)
            transcript.secrets.add_one_off(signature, signature.removeprefix("v1,"))
            headers["webhook-signature"] = signature
        transcript.add(VendorRequest("POST", str(settings.url), headers, BODY), ANSWER, None)
        transcript.redacted(Outcome.delivered(status_code=200))
        transcript.request_json()

    once()
    return min(timeit.repeat(once, number=2000, repeat=7)) / 2000


def main() -> None:
    plain = WebhookSettings.model_validate({"url": "https://hooks.example.com/in"})
    secret = WebhookSettings.model_validate(
        {
            "url": "https://hooks.example.com/in?api_key=k3y-abcdef123",
            "signing_secret": SIGNING,
            "headers": {"Authorization": "Bearer tok-0123456789abcdef"},
        }
    )
    for label, settings, signed in [
        ("no secrets", plain, False),
        ("auth header + api_key in the url", secret, False),
        ("the same, signed (a one-off signature per message)", secret, True),
    ]:
        print(f"{label}: {per_message(settings, signed=signed) * 1e6:.1f} us per message")


if __name__ == "__main__":
    main()
