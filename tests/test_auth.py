"""Authentication and roles on every route the running server publishes in /openapi.json.

``SENDER_ROUTES`` and ``ADMIN_ROUTES`` are the explicit decision for each route; a route that
appears in the API without being added to one of them fails ``test_every_route_has_a_role``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.server import ServerProcess

PREFIX = "/api/v1"
METHODS = ("get", "post", "put", "patch", "delete")

# what a sender token may do: send messages and events, feed the alerting integrations, and
# read messages, events, deliveries and channel types
SENDER_ROUTES = {
    ("GET", "/channel-types"),
    ("POST", "/messages"),
    ("POST", "/messages/batch"),
    ("GET", "/messages/{message_id}"),
    ("GET", "/deliveries"),
    ("GET", "/deliveries/{delivery_id}"),
    ("POST", "/events"),
    ("GET", "/events"),
    ("GET", "/events/{event_id}"),
    ("POST", "/integrations/alertmanager"),
    ("POST", "/integrations/grafana"),
}
# the only routes that also take the token as ?token= (Alertmanager and Grafana cannot always
# set a header)
QUERY_TOKEN_ROUTES = {("POST", "/integrations/alertmanager"), ("POST", "/integrations/grafana")}
# everything else is admin only
ADMIN_ROUTES = {
    ("GET", "/channels"),
    ("POST", "/channels"),
    ("POST", "/channels/test"),
    ("GET", "/channels/{ref}"),
    ("PATCH", "/channels/{ref}"),
    ("DELETE", "/channels/{ref}"),
    ("POST", "/channels/{ref}/test"),
    ("POST", "/deliveries/{delivery_id}/retry"),
    ("GET", "/tokens"),
    ("POST", "/tokens"),
    ("DELETE", "/tokens/{token_id}"),
    ("GET", "/rules"),
    ("POST", "/rules"),
    ("GET", "/rules/{ref}"),
    ("PATCH", "/rules/{ref}"),
    ("DELETE", "/rules/{ref}"),
    ("GET", "/templates"),
    ("POST", "/templates/preview"),
    ("GET", "/templates/{event_type}"),
    ("PUT", "/templates/{event_type}"),
    ("DELETE", "/templates/{event_type}"),
    ("GET", "/audit"),
}

# plausible ids that exist nowhere
FAKE_PARAMS = {
    "ref": "ch_00000000000000000000000000",
    "message_id": "msg_00000000000000000000000000",
    "delivery_id": "dlv_00000000000000000000000000",
    "token_id": "tok_00000000000000000000000000",
    "event_id": "evt_00000000000000000000000000",
    "event_type": "nothing.here",
}


PUBLIC_PROBES = {"/readyz"}


def published_routes(server: ServerProcess) -> set[tuple[str, str]]:
    """(METHOD, path under /api/v1) for every operation in the server's OpenAPI document."""
    schema: dict[str, Any] = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    routes = set()
    for path, operations in schema["paths"].items():
        if path in PUBLIC_PROBES:  # readiness for load balancers and orchestrators: no token
            assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200
            continue
        assert path.startswith(PREFIX), f"{path} is published outside {PREFIX}"
        for method in operations:
            if method in METHODS:
                routes.add((method.upper(), path.removeprefix(PREFIX)))
    return routes


@pytest.fixture
def routes(server: ServerProcess) -> list[tuple[str, str]]:
    found = published_routes(server)
    assert found, "the OpenAPI document lists no routes"
    return sorted(found)


def concrete(path: str) -> str:
    for name, value in FAKE_PARAMS.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"{path}: add a fake value for its parameter to FAKE_PARAMS"
    return path


def call(server: ServerProcess, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
    return httpx.request(
        method, f"{server.url}{PREFIX}{concrete(path)}", headers=headers, timeout=30, **body
    )


def test_every_route_has_a_role(server: ServerProcess) -> None:
    published = published_routes(server)
    assert not SENDER_ROUTES & ADMIN_ROUTES
    undecided = published - SENDER_ROUTES - ADMIN_ROUTES
    assert not undecided, f"new routes: add each to SENDER_ROUTES or ADMIN_ROUTES: {undecided}"
    stale = (SENDER_ROUTES | ADMIN_ROUTES) - published
    assert not stale, f"routes no longer published: remove them from the tables: {stale}"


def test_no_token_is_401_everywhere(server: ServerProcess, routes: list[tuple[str, str]]) -> None:
    wrong = []
    for method, path in routes:
        response = call(server, method, path, None)
        error = response.json().get("error", {})
        if response.status_code != 401 or error.get("code") != "unauthorized":
            wrong.append((method, path, response.status_code, response.text[:200]))
        elif "Bearer" not in error.get("message", ""):
            wrong.append((method, path, "message does not say how to authenticate", error))
    assert wrong == []


@pytest.mark.parametrize(
    "header",
    [
        "Bearer mpk_this_token_does_not_exist",
        "Bearer mpk_",
        "Basic dXNlcjpwYXNz",
        "bearer",
        "Token mpk_abc",
    ],
)
def test_invalid_token_is_401_everywhere(
    server: ServerProcess, routes: list[tuple[str, str]], header: str
) -> None:
    wrong = []
    for method, path in routes:
        url = f"{server.url}{PREFIX}{concrete(path)}"
        response = httpx.request(method, url, headers={"Authorization": header}, timeout=30)
        if response.status_code != 401 or response.json()["error"]["code"] != "unauthorized":
            wrong.append((method, path, response.status_code, response.text[:200]))
    assert wrong == []


def test_auth_is_checked_before_the_input(server: ServerProcess) -> None:
    """Bad input from a caller without a valid token is still a 401: nothing is validated first."""
    base = f"{server.url}{PREFIX}"
    for token in (None, "mpk_nope"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for method, url, body in (
            ("GET", f"{base}/deliveries?limit=0&status=bogus&since=x", None),
            ("GET", f"{base}/channels?limit=abc", None),
            ("GET", f"{base}/deliveries?channel=%00", None),
            ("POST", f"{base}/messages", b"{not json"),
            ("POST", f"{base}/messages/batch", b"[]"),
            ("POST", f"{base}/channels", b'{"name": 5}'),
            ("GET", f"{base}/channels/%00", None),
        ):
            response = httpx.request(method, url, headers=headers, content=body, timeout=30)
            assert response.status_code == 401, (token, method, url, response.text)


def test_sender_token_is_403_on_admin_routes_and_admitted_on_sender_routes(
    server: ServerProcess, routes: list[tuple[str, str]], sender_token: str
) -> None:
    wrong = []
    for method, path in routes:
        response = call(server, method, path, sender_token)
        status = response.status_code
        if (method, path) in ADMIN_ROUTES:
            error = response.json().get("error", {})
            if status != 403 or error.get("code") != "forbidden":
                wrong.append((method, path, status, response.text[:200]))
        elif status in (401, 403) or status >= 500:
            wrong.append((method, path, status, response.text[:200]))
    assert wrong == []


def test_admin_token_is_admitted_everywhere(
    server: ServerProcess, routes: list[tuple[str, str]]
) -> None:
    wrong = []
    for method, path in routes:
        response = call(server, method, path, server.admin_token)
        if response.status_code in (401, 403) or response.status_code >= 500:
            wrong.append((method, path, response.status_code, response.text[:200]))
    assert wrong == []


def test_sender_can_send_and_read_back(
    api: httpx.Client, server: ServerProcess, sender_token: str, unique: str
) -> None:
    name = f"auth-{unique}"
    created = api.post(
        "/channels",
        json={"name": name, "type": "webhook", "config": {"url": "http://127.0.0.1:9/"}},
    )
    assert created.status_code == 201, created.text
    try:
        with server.client(sender_token) as sender:
            sent = sender.post("/messages", json={"channels": [name], "title": "t"})
            assert sent.status_code == 202, sent.text
            message_id = sent.json()["id"]
            delivery_id = sent.json()["deliveries"][0]["id"]
            assert sender.get(f"/messages/{message_id}").status_code == 200
            assert sender.get(f"/deliveries/{delivery_id}").status_code == 200
            assert sender.get("/deliveries", params={"channel": name}).status_code == 200
            assert sender.get("/channel-types").status_code == 200
            batch = sender.post(
                "/messages/batch", json={"messages": [{"channels": [name], "title": "b"}]}
            )
            assert batch.status_code == 202, batch.text
            # but it can neither see the channel's settings nor resend
            assert sender.get(f"/channels/{name}").status_code == 403
            assert sender.post(f"/deliveries/{delivery_id}/retry").status_code == 403
    finally:
        api.delete(f"/channels/{name}")


def test_deleted_token_is_401_at_once(api: httpx.Client, server: ServerProcess) -> None:
    created = api.post("/tokens", json={"name": "short-lived", "role": "sender"})
    assert created.status_code == 201, created.text
    token, token_id = created.json()["token"], created.json()["id"]
    with server.client(token) as client:
        assert client.get("/channel-types").status_code == 200
        assert api.delete(f"/tokens/{token_id}").status_code == 204
        response = client.get("/channel-types")
        assert response.status_code == 401, response.text
        assert "not valid" in response.json()["error"]["message"]
    assert api.delete(f"/tokens/{token_id}").status_code == 404


def test_sender_cannot_create_or_delete_tokens(
    api: httpx.Client, server: ServerProcess, sender_token: str
) -> None:
    with server.client(sender_token) as sender:
        assert sender.post("/tokens", json={"name": "mine", "role": "admin"}).status_code == 403
        own = [t for t in api.get("/tokens").json()["items"] if t["role"] == "admin"]
        assert sender.delete(f"/tokens/{own[0]['id']}").status_code == 403
    assert {t["id"] for t in own} <= {t["id"] for t in api.get("/tokens").json()["items"]}


def test_public_routes_need_no_token(server: ServerProcess) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json"):
        response = httpx.get(f"{server.url}{path}", timeout=10)
        assert response.status_code == 200, (path, response.text[:200])


def test_token_in_the_query_string_is_not_accepted(server: ServerProcess) -> None:
    for query in (f"token={server.admin_token}", f"access_token={server.admin_token}"):
        response = httpx.get(f"{server.url}{PREFIX}/channels?{query}", timeout=10)
        assert response.status_code == 401, response.text


def test_query_token_only_on_the_integration_routes(
    server: ServerProcess, routes: list[tuple[str, str]], sender_token: str
) -> None:
    """?token= is refused on every route but the integrations, where it authenticates."""
    wrong = []
    for method, path in routes:
        url = f"{server.url}{PREFIX}{concrete(path)}?token={sender_token}"
        body = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
        response = httpx.request(method, url, timeout=30, **body)
        if (method, path) in QUERY_TOKEN_ROUTES:
            if response.status_code in (401, 403) or response.status_code >= 500:
                wrong.append((method, path, response.status_code, response.text[:200]))
        elif response.status_code != 401:
            wrong.append((method, path, response.status_code, response.text[:200]))
    assert wrong == []
