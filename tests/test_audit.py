"""The audit log: every admin change yields an entry naming who, what, which fields (never a
secret's value), readable by admins only at GET /api/v1/audit."""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.receiver import Receiver
from tests.server import ServerProcess


def _entries(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    answer = api.get("/audit", params=params)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def _latest(api: httpx.Client, object_id: str) -> dict[str, Any]:
    return _entries(api, object_id=object_id, limit=1)[0]


def _signing_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _admin_id(api: httpx.Client, server: ServerProcess) -> str:
    prefix = server.admin_token[:8]
    tokens = api.get("/tokens").json()["items"]
    return str(next(t["id"] for t in tokens if t["prefix"] == prefix))


def test_channel_changes_are_audited_without_secret_values(
    api: httpx.Client, server: ServerProcess, receiver: Receiver, unique: str
) -> None:
    secret = _signing_secret()
    path = f"/audit/{unique}"
    receiver.script(path, 200, 200)
    created = api.post(
        "/channels",
        json={
            "name": f"audit-{unique}",
            "type": "webhook",
            "config": {"url": receiver.url(path), "signing_secret": secret},
        },
    )
    assert created.status_code == 201, created.text
    channel_id = created.json()["id"]
    admin_id = _admin_id(api, server)

    entry = _latest(api, channel_id)
    assert entry["action"] == "create" and entry["kind"] == "channel"
    assert entry["object_name"] == f"audit-{unique}"
    assert entry["token"]["id"] == admin_id and entry["token"]["name"] == "initial admin"
    assert entry["address"] == "127.0.0.1"
    assert {"name", "type", "config.url", "config.signing_secret"} <= set(entry["fields"])

    new_secret = _signing_secret()
    changed = api.patch(
        f"/channels/{channel_id}",
        json={"config": {"signing_secret": new_secret}, "description": "d"},
    )
    assert changed.status_code == 200, changed.text
    entry = _latest(api, channel_id)
    assert entry["action"] == "update"
    assert entry["fields"] == ["description", "config.signing_secret"]

    # sent back masked, as the console does: nothing changed, nothing listed
    masked = api.get(f"/channels/{channel_id}").json()["config"]
    api.patch(f"/channels/{channel_id}", json={"config": masked})
    assert _latest(api, channel_id)["fields"] == []

    assert api.patch(f"/channels/{channel_id}", json={"enabled": False}).status_code == 200
    assert _latest(api, channel_id)["action"] == "disable"
    assert api.patch(f"/channels/{channel_id}", json={"enabled": True}).status_code == 200
    assert _latest(api, channel_id)["action"] == "enable"

    tried = _signing_secret()
    tested = api.post(f"/channels/{channel_id}/test", json={"config": {"signing_secret": tried}})
    assert tested.status_code == 200, tested.text
    entry = _latest(api, channel_id)
    assert entry["action"] == "test" and entry["fields"] == ["config.signing_secret"]

    assert api.delete(f"/channels/{channel_id}").status_code == 204
    entry = _latest(api, channel_id)
    assert entry["action"] == "delete" and entry["object_name"] == f"audit-{unique}"

    trail = _entries(api, object_id=channel_id)
    actions = [e["action"] for e in trail]
    assert actions == ["delete", "test", "enable", "disable", "update", "update", "create"]
    text = orjson.dumps(trail).decode()
    for value in (secret, new_secret, tried):
        assert value not in text
        assert value.removeprefix("whsec_")[:12] not in text


def test_rules_templates_and_tokens_are_audited(
    api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    channel = api.post(
        "/channels",
        json={"name": f"rt-{unique}", "type": "webhook", "config": {"url": receiver.url("/x")}},
    ).json()
    rule = api.post(
        "/rules",
        json={"name": f"rule-{unique}", "event_types": ["task.*"], "channels": [channel["name"]]},
    )
    assert rule.status_code == 201, rule.text
    rule_id = rule.json()["id"]
    entry = _latest(api, rule_id)
    assert (entry["kind"], entry["action"]) == ("rule", "create")
    assert entry["fields"] == ["channels", "event_types", "name"]

    api.patch(f"/rules/{rule_id}", json={"min_level": "error"})
    assert _latest(api, rule_id)["fields"] == ["min_level"]
    api.patch(f"/rules/{rule_id}", json={"enabled": False})
    assert _latest(api, rule_id)["action"] == "disable"
    assert api.delete(f"/rules/{rule_id}").status_code == 204
    assert _latest(api, rule_id)["action"] == "delete"

    event_type = f"audit{unique}.done"
    put = api.put(f"/templates/{event_type}", json={"title": "t1"})
    assert put.status_code == 200, put.text
    entry = _latest(api, event_type)
    assert (entry["kind"], entry["action"], entry["fields"]) == ("template", "create", ["title"])
    api.put(f"/templates/{event_type}", json={"title": "t1", "content": "c"})
    entry = _latest(api, event_type)
    assert (entry["action"], entry["fields"]) == ("update", ["content"])
    assert api.delete(f"/templates/{event_type}").status_code == 204
    assert _latest(api, event_type)["action"] == "delete"

    created = api.post("/tokens", json={"name": f"tok-{unique}", "role": "sender"})
    token = created.json()
    entry = _latest(api, token["id"])
    assert (entry["kind"], entry["action"], entry["object_name"]) == (
        "token",
        "create",
        f"tok-{unique}",
    )
    assert token["token"] not in orjson.dumps(entry).decode()
    assert api.delete(f"/tokens/{token['id']}").status_code == 204
    assert _latest(api, token["id"])["action"] == "delete"

    # filters and paging
    templates = _entries(api, kind="template", object_id=event_type)
    assert [e["action"] for e in templates] == ["delete", "update", "create"]
    first = api.get("/audit", params={"object_id": rule_id, "limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = api.get(
        "/audit", params={"object_id": rule_id, "limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [e["action"] for e in first["items"] + rest["items"]] == [
        "delete",
        "disable",
        "update",
        "create",
    ]
    assert rest["next_cursor"] is None
    assert _entries(api, object_id=rule_id, since="2999-01-01T00:00:00Z") == []
    mine = _entries(api, token_id=entry["token"]["id"], limit=500)
    assert {e["object_id"] for e in mine} >= {rule_id, event_type, token["id"]}


def test_audit_is_for_admins_and_checks_its_filters(
    api: httpx.Client, server: ServerProcess, sender_token: str
) -> None:
    with server.client(sender_token) as as_sender:
        refused = as_sender.get("/audit")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    bad = api.get("/audit", params={"kind": "delivery"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "kind"
    bad = api.get("/audit", params={"since": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "since"


@pytest.mark.parametrize("limit", [0, 501])
def test_audit_limit_bounds(api: httpx.Client, limit: int) -> None:
    assert api.get("/audit", params={"limit": limit}).status_code == 422
