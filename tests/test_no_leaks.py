"""No secret leaves the server, whatever its characters, for every channel type.

Hypothesis draws secrets with hostile characters (quotes, backslashes, ``+/=``, ``%``, ``&``,
unicode, spaces, values over 2,000 characters) and sends through each channel type: deliveries
that succeed (app tokens fetched, DingTalk's gettoken fallback with the secret URL-encoded) and
deliveries refused by a vendor that quotes the secret back. No form of the secret may appear
in API answers, attempt records, the server log, or the database's bytes.

Every secret carries a random core, so "the core appears" means a leak (whole or cut short),
never a coincidence with ordinary text.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgpush.channels.dingtalk_app import GETTOKEN_PATH
from msgpush.channels.feishu_app import TOKEN_PATH as FEISHU_TOKEN_PATH
from tests.fakes.dingtalk import FakeDingTalkApp
from tests.fakes.feishu import FakeFeishuApp
from tests.fakes.receiver import Receiver, Reply
from tests.fakes.wecom import FakeWeComApp
from tests.helpers import send, wait_delivery
from tests.server import ServerProcess, run_async

HOSTILE = st.sampled_from(list("\"\\'+/=%&?#:@<> é漢😀"))
PIECE = st.text(alphabet=st.one_of(HOSTILE, st.characters(codec="utf-8")), max_size=12)
# types whose secret travels in a URL query (gettoken, a bot's key or access_token)
IN_QUERY = {"wecom_app", "dingtalk_app", "wecom_bot", "dingtalk_bot"}
TYPES = [
    "webhook",
    "wecom_app",
    "feishu_app",
    "dingtalk_app",
    "wecom_bot",
    "feishu_bot",
    "dingtalk_bot",
]


@st.composite
def secrets(draw: st.DrawFn) -> tuple[str, str]:
    """(a secret, its random core)."""
    core = uuid.uuid4().hex
    head, tail = draw(PIECE), draw(PIECE)
    if draw(st.booleans()):
        tail += draw(st.sampled_from(['"\\+/=%& ', "é漢😀'"])) * 300  # over 2,000 characters
    # no line breaks or NUL (refused in headers and settings), no leading/trailing spaces
    # (settings are stripped); the core keeps it unique
    secret = f"{head}{core}{tail}"
    for char in "\r\n\x00\x85\u2028\u2029":
        secret = secret.replace(char, "")
    return secret.strip(), core


def forms(secret: str) -> list[str]:
    """The forms an assertion looks for (computed here, independently of msgpush.redact)."""
    found = {
        secret,
        orjson.dumps(secret).decode()[1:-1],
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(secret.encode()).decode(),
    }
    return [f for f in found if len(f) >= 8]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Any]]:
    started = {"wecom": FakeWeComApp(), "feishu": FakeFeishuApp(), "dingtalk": FakeDingTalkApp()}
    for fake in started.values():
        fake.start()
    yield started
    for fake in started.values():
        fake.stop()


def echo_body(secret: str) -> bytes:
    """A vendor error quoting the secret: raw, JSON-escaped and URL-encoded, and padded so that
    a 200-character excerpt cuts into it."""
    text = f"invalid credential {secret} ({quote_plus(secret)})"
    return (
        "x" * 180 + json.dumps({"errcode": 40001, "code": 10014, "errmsg": text, "msg": text})
    ).encode()


def config_for(
    kind: str, secret: str, fail: bool, fakes: dict[str, Any], receiver: Receiver, path: str
) -> dict[str, Any]:
    """Settings of a channel of ``kind`` whose secret is ``secret``; ``fail``: the vendor
    (the receiver at ``path``) refuses and quotes the secret."""
    echo = Reply(200, echo_body(secret), headers={"Content-Type": "application/json"})
    if kind == "webhook":
        if fail:
            receiver.script(path, Reply(401, echo_body(secret)))
        # a URL holds 2,083 characters at most: a long secret goes in the header only, and
        # the URL carries its first 100 characters (with the core), a secret of its own.
        # Header values and Basic auth travel as Latin-1 (aiohttp refuses other characters)
        in_url = secret if len(quote(secret, safe="")) < 600 else secret[:100].strip()
        latin = all(char.isprintable() and ord(char) < 256 for char in secret)
        url = receiver.url(path)
        if latin:
            url = url.replace("://", f"://ops:{quote(in_url, safe='')}@")
        return {
            "url": f"{url}?api_key={quote_plus(in_url)}&page=1",
            "headers": {"X-Token": secret} if latin else {},
        }
    if kind == "wecom_app":
        if fail:
            receiver.script(f"{path}/cgi-bin/gettoken", echo)
            return {
                "corp_id": "ww1",
                "agent_id": 1,
                "secret": secret,
                "to_user": ["ZhangSan"],
                "api_base": receiver.url(path),
            }
        wecom = fakes["wecom"]
        app = wecom.new_app()
        app.secret = secret
        wecom._by_secret[secret] = app
        return {
            "corp_id": app.corp_id,
            "agent_id": app.agent_id,
            "secret": secret,
            "to_user": ["ZhangSan"],
            "api_base": wecom.api_base,
        }
    if kind == "feishu_app":
        if fail:
            receiver.script(f"{path}{FEISHU_TOKEN_PATH}", echo)
            return {
                "app_id": "cli_1",
                "app_secret": secret,
                "receive_ids": ["ou_1"],
                "api_base": receiver.url(path),
            }
        feishu = fakes["feishu"]
        app = feishu.new_app()
        app.app_secret = secret
        return {
            "app_id": app.app_id,
            "app_secret": secret,
            "receive_ids": [app.open_id("zhangsan")],
            "api_base": feishu.api_base,
        }
    if kind == "dingtalk_app":
        if fail:  # the new endpoint is missing (404), gettoken quotes the secret back
            receiver.script(f"{path}{GETTOKEN_PATH}", echo)
            return {
                "app_key": "dingk",
                "app_secret": secret,
                "agent_id": 1,
                "user_ids": ["u0"],
                "api_base": receiver.url(path),
            }
        dingtalk = fakes["dingtalk"]
        app = dingtalk.add_app(agent_id=4242, token_endpoint=False)  # the gettoken fallback
        app.app_secret = secret
        app.users.add("u0")
        return {
            "app_key": app.app_key,
            "app_secret": secret,
            "agent_id": 4242,
            "user_ids": ["u0"],
            "api_base": dingtalk.url(""),
        }
    answer = Reply(200, b'{"errcode":0,"code":0,"errmsg":"ok","msg":"success"}')
    receiver.script(path, echo if fail else answer)
    if kind == "wecom_bot":
        return {"webhook_url": f"{receiver.url(path)}?key={quote_plus(secret)}"}
    if kind == "feishu_bot":
        return {"webhook_url": receiver.url(path), "secret": secret}
    return {
        "webhook_url": f"{receiver.url(path)}?access_token={quote_plus(secret)}",
        "secret": secret,
    }


def database_text(server: ServerProcess) -> bytes:
    if server.database_url is None:
        return b"".join(p.read_bytes() for p in server.data_dir.glob("msgpush.db*") if p.is_file())

    async def dump() -> bytes:
        import asyncpg

        conn = await asyncpg.connect(server.database_url)
        try:
            tables = [
                r[0]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            ]
            rows = [str(list(await conn.fetch(f'SELECT * FROM "{table}"'))) for table in tables]
        finally:
            await conn.close()
        return "\n".join(rows).encode()

    return run_async(dump())


@pytest.mark.parametrize("fail", [False, True], ids=["delivered", "vendor-quotes-secret"])
@pytest.mark.parametrize("kind", TYPES)
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(drawn=secrets())
def test_no_form_of_a_secret_leaves_the_server(
    drawn: tuple[str, str],
    kind: str,
    fail: bool,
    api: httpx.Client,
    server: ServerProcess,
    receiver: Receiver,
    fakes: dict[str, Any],
) -> None:
    secret, core = drawn
    if kind.startswith("dingtalk"):  # DingTalk secrets hold no spaces (refused at save)
        secret = "".join(secret.split())
    if kind in IN_QUERY:  # a request line holds 8 KB at most (the fakes' limit, nginx's too)
        secret = secret[:400].strip()
    unique = uuid.uuid4().hex[:10]
    name = f"leak-{kind}-{unique}"
    path = f"/leak/{unique}"
    config = config_for(kind, secret, fail, fakes, receiver, path)
    created = api.post("/channels", json={"name": name, "type": kind, "config": config})
    assert created.status_code == 201, created.text
    seen = [created.text]

    message = send(api, [name])
    delivery = wait_delivery(api, message["deliveries"][0]["id"], timeout=30)
    assert fail or delivery["status"] == "delivered", [
        (a["diagnosis"], kind) for a in delivery["attempt_log"]
    ]
    tested = api.post(f"/channels/{name}/test")
    unsaved = api.post("/channels/test", json={"type": kind, "config": config})
    seen += [
        api.get("/channels").text,
        api.get(f"/channels/{name}").text,
        api.get(f"/deliveries/{delivery['id']}").text,
        api.get(f"/messages/{message['id']}").text,
        tested.text,
        unsaved.text,
        server.log(),
    ]
    if fail:  # the vendor's answer reached the records, minus the secret
        assert "invalid credential" in seen[3], [
            (a["diagnosis"], kind) for a in delivery["attempt_log"]
        ]
    stored = database_text(server)
    secret_forms = forms(secret) + forms(secret[:100].strip())
    for text in seen:
        assert core not in text
        for form in secret_forms:
            assert form not in text
    assert core.encode() not in stored
    for form in secret_forms:
        assert form.encode() not in stored
    api.delete(f"/channels/{name}")


def test_url_credentials_are_sealed_masked_and_kept_when_sent_back(
    api: httpx.Client, server: ServerProcess, receiver: Receiver, unique: str
) -> None:
    key, password = f"k3y+{unique}/=", f"pw&{unique}"
    path = f"/url-creds/{unique}"
    url = receiver.url(path).replace("://", f"://ops:{quote(password, safe='')}@")
    url += f"?api_key={quote_plus(key)}&page=1"
    name = f"url-creds-{unique}"
    created = api.post("/channels", json={"name": name, "type": "webhook", "config": {"url": url}})
    assert created.status_code == 201, created.text
    masked = created.json()["config"]["url"]
    assert masked == (receiver.url(path).replace("://", "://ops:••••@") + "?api_key=••••&page=1")
    assert masked in api.get("/channels", params={"q": name}).text

    # sent back masked (the console saves the form untouched): the stored credentials stay
    kept = api.patch(f"/channels/{name}", json={"config": {"url": masked, "timeout_s": 5}})
    assert kept.status_code == 200 and kept.json()["config"]["url"] == masked
    send(api, [name])
    [request] = receiver.wait_for(path, 1)
    query = dict(parse_qsl(request.path.split("?", 1)[1]))
    assert query == {"api_key": key, "page": "1"}
    assert request.headers["Authorization"].startswith("Basic ")

    # masked credentials do not follow the URL to another address
    moved = api.patch(
        f"/channels/{name}", json={"config": {"url": masked.replace("/url-creds/", "/other/")}}
    )
    assert moved.status_code == 422 and moved.json()["error"]["field"] == "config.url"
    # a changed URL replaces them
    changed = api.patch(f"/channels/{name}", json={"config": {"url": receiver.url(path)}})
    assert changed.json()["config"]["url"] == receiver.url(path)

    stored = database_text(server) + server.log().encode()
    for secret in (key, password):
        for form in forms(secret):
            assert form.encode() not in stored
