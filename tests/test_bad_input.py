"""Bad input, sent as a hostile caller would: a clear 4xx naming what is wrong, nothing half-stored.

Every case checks the contract's error shape (``{"error": {"code", "message", "field"?}}``),
that ``error.field`` points at the culprit and that the message says what is wrong; where a
request could have stored something, it also counts what is stored before and after.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.receiver import Receiver
from tests.helpers import make_webhook
from tests.server import ServerProcess

MiB = 1024 * 1024
DEAD_URL = "http://127.0.0.1:9/"  # nothing listens: deliveries to it just retry, never succeed
FAKE_CHANNEL_ID = "ch_00000000000000000000000000"


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The ``error`` object of a ``status`` answer, after checking the contract's shape."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], error
    assert isinstance(error.get("message"), str) and error["message"], error
    return error


def assert_invalid(
    response: httpx.Response, field: str | None, *words: str, status: int = 422
) -> dict[str, Any]:
    error = error_of(response, status)
    assert error.get("field") == field, error
    for word in words:
        assert word.lower() in error["message"].lower(), (word, error)
    return error


def deliveries_of(api: httpx.Client, channel: str) -> list[dict[str, Any]]:
    """Every delivery to ``channel`` (a name or id), all pages."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"channel": channel, "limit": 500}
    while True:
        response = api.get("/deliveries", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if not page["next_cursor"]:
            return items
        params["cursor"] = page["next_cursor"]


def message(channel: str, **fields: Any) -> dict[str, Any]:
    return {"channels": [channel], "title": "t", "content": "c", **fields}


@pytest.fixture
def channel(api: httpx.Client, unique: str) -> Iterator[str]:
    """An enabled webhook channel nobody listens to; yields its name."""
    name = f"bad-input-{unique}"
    make_webhook(api, name, DEAD_URL)
    yield name
    api.delete(f"/channels/{name}")


# -- malformed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/messages", "/messages/batch", "/channels", "/tokens"])
def test_malformed_json_is_400(api: httpx.Client, path: str) -> None:
    for raw in (b"{", b'{"title": "t",}', b"{'title': 't'}", b"\xff\xfe", b'{"a": "\\ud800"}'):
        response = api.post(path, content=raw, headers={"Content-Type": "application/json"})
        error = error_of(response, 400)
        assert error["code"] == "invalid_json", error
        assert "not valid JSON" in error["message"], error


@pytest.mark.parametrize("path", ["/messages", "/messages/batch", "/channels", "/tokens"])
def test_empty_body_is_400(api: httpx.Client, path: str) -> None:
    for raw in (b"", b"   \n"):
        error = error_of(api.post(path, content=raw), 400)
        assert error["code"] == "invalid_json"
        assert "empty" in error["message"], error


@pytest.mark.parametrize("path", ["/messages", "/messages/batch", "/channels", "/tokens"])
def test_json_that_is_not_an_object_is_422(api: httpx.Client, path: str) -> None:
    for raw in (b"[]", b'"hello"', b"5", b"null", b"true", b'[{"title": "t"}]'):
        response = api.post(path, content=raw, headers={"Content-Type": "application/json"})
        error = assert_invalid(response, None, "object")
        assert error["code"] == "invalid"


def test_deeply_nested_json_is_a_4xx(api: httpx.Client, channel: str) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    for path in ("/messages", "/channels"):
        response = api.post(path, content=deep)
        assert response.status_code in (400, 422), response.text
        error_of(response, response.status_code)
    nested = b'{"channels": ["%s"], "title": "t", "fields": %s}' % (
        channel.encode(),
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
    )
    assert api.post("/messages", content=nested).status_code in (400, 422)
    assert deliveries_of(api, channel) == []


# -- wrong types and values in a message ------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"title": 5}, "title", ["string"]),
        ({"title": None}, "title", ["string"]),
        ({"content": ["a"]}, "content", ["string"]),
        ({"channels": "x"}, "channels", ["array"]),
        ({"channels": []}, "channels", ["at least 1"]),
        ({"channels": [5]}, "channels.0", ["string"]),
        ({"channels": ["  "]}, "channels.0", ["non-empty"]),
        ({"level": "urgent"}, "level", ["info", "critical"]),
        ({"format": "html"}, "format", ["markdown"]),
        ({"category": 1}, "category", ["task"]),
        ({"links": [{"title": "x", "url": "not a url"}]}, "links.0.url", ["URL"]),
        (
            {"links": [{"title": "x", "url": "https://ok.example"}, {"url": "x"}]},
            "links.1.title",
            ["missing"],
        ),
        ({"links": "https://x.example"}, "links", ["array"]),
        ({"fields": {"a": 1}}, "fields.a", ["string"]),
        ({"fields": {"body": 1}}, "fields.body", ["string"]),
        ({"fields": ["a"]}, "fields", ["object"]),
        ({"labels": {"env": {"x": 1}}}, "labels.env", ["string"]),
        ({"mentions": {"all": "yes please"}}, "mentions.all", ["bool"]),
        ({"mentions": {"user_ids": "u1"}}, "mentions.user_ids", ["array"]),
        ({"recipients": "everyone"}, "recipients", ["object"]),
        ({"idempotency_key": ""}, "idempotency_key", ["at least 1"]),
        ({"idempotency_key": "k" * 256}, "idempotency_key", ["at most 255"]),
        ({"idempotency_key": 42}, "idempotency_key", ["string"]),
        ({"title": "x" * 513}, "title", ["at most 512"]),
        ({"content": "x" * 65_537}, "content", ["at most 65536"]),
        ({"foo": 1}, "foo", ["unknown field"]),
        ({"Title": "t"}, "Title", ["unknown field"]),
        ({"mentions": {"foo": 1}}, "mentions.foo", ["unknown field"]),
        (
            {"links": [{"title": "x", "url": "https://x.example", "foo": 1}]},
            "links.0.foo",
            ["unknown field"],
        ),
        ({"recipients": {"users": ["u"], "teams": ["t"]}}, "recipients.teams", ["unknown field"]),
        ({"title": "", "content": ""}, "content", ["title or content", "empty"]),
        ({"title": "  ", "content": "\n\t"}, "content", ["title or content"]),
        ({"channels": ["ok\u0000"]}, "channels.0", ["NUL"]),
        ({"idempotency_key": "k\u0000"}, "idempotency_key", ["NUL"]),
        ({"title": "a\u0000b"}, "title", ["NUL"]),
        ({"content": "\u0000"}, "content", ["NUL"]),
        ({"mentions": {"user_ids": ["u1", "u\u0000"]}}, "mentions.user_ids.1", ["NUL"]),
        ({"labels": {"env": "pr\u0000d"}}, "labels.env", ["NUL"]),
        ({"recipients": {"users": ["\u0000"]}}, "recipients.users.0", ["NUL"]),
        ({"links": [{"title": "t\u0000", "url": "https://x.example"}]}, "links.0.title", ["NUL"]),
    ],
)
def test_bad_message_is_422_naming_the_field(
    api: httpx.Client, channel: str, change: dict[str, Any], field: str, words: list[str]
) -> None:
    response = api.post("/messages", json=message(channel, **change))
    error = assert_invalid(response, field, field, *words)
    assert error["code"] == "invalid"
    assert deliveries_of(api, channel) == []


def test_missing_channels_is_422(api: httpx.Client) -> None:
    assert_invalid(api.post("/messages", json={"title": "t"}), "channels", "missing")


def test_content_at_the_limit_is_accepted_and_one_over_is_not(
    api: httpx.Client, channel: str
) -> None:
    assert api.post("/messages", json=message(channel, content="x" * 65_536)).status_code == 202
    over = api.post("/messages", json=message(channel, content="y" * 65_537))
    assert_invalid(over, "content", "65536")
    assert len(deliveries_of(api, channel)) == 1


def test_nul_in_a_key_is_422_naming_the_key(api: httpx.Client, channel: str) -> None:
    for where in ("fields", "labels"):
        response = api.post("/messages", json=message(channel, **{where: {"k\u0000": "v"}}))
        assert_invalid(response, f"{where}.k\u0000", "names must not contain NUL")
    assert deliveries_of(api, channel) == []


def test_an_escaped_backslash_before_u0000_is_not_nul(api: httpx.Client, channel: str) -> None:
    """``\\u0000`` in the JSON is a backslash and the text u0000: the NUL check must let it be."""
    response = api.post("/messages", json=message(channel, title="C:\\u0000 drive"))
    assert response.status_code == 202, response.text
    assert api.get(f"/messages/{response.json()['id']}").json()["title"] == "C:\\u0000 drive"


# -- channel references -----------------------------------------------------------------------


def test_unknown_channel_name_or_id_is_422_naming_its_index(
    api: httpx.Client, channel: str, unique: str
) -> None:
    for ref in (f"no-such-{unique}", FAKE_CHANNEL_ID):
        response = api.post("/messages", json=message(channel, channels=[channel, ref]))
        error = assert_invalid(response, "channels.1", ref)
        assert error["code"] == "unknown_channel"
    assert deliveries_of(api, channel) == []


def test_error_index_is_the_callers_even_with_repeated_channels(
    api: httpx.Client, channel: str, unique: str
) -> None:
    channel_id = api.get(f"/channels/{channel}").json()["id"]
    repeated = [channel, f" {channel} ", channel_id, channel]
    response = api.post("/messages", json=message(channel, channels=[*repeated, f"x-{unique}"]))
    assert_invalid(response, "channels.4", f"x-{unique}")
    batch = {"messages": [message(channel), message(channel, channels=[*repeated, "  "])]}
    assert_invalid(api.post("/messages/batch", json=batch), "messages.1.channels.4", "non-empty")
    assert deliveries_of(api, channel) == []
    # a channel named several times (by name and by id) still gets one delivery
    response = api.post("/messages", json=message(channel, channels=repeated))
    assert response.status_code == 202, response.text
    assert [d["channel"] for d in response.json()["deliveries"]] == [channel]
    assert len(deliveries_of(api, channel)) == 1


def test_disabled_channel_is_422_and_nothing_is_stored(
    api: httpx.Client, channel: str, unique: str
) -> None:
    off = f"off-{unique}"
    response = api.post(
        "/channels",
        json={"name": off, "type": "webhook", "enabled": False, "config": {"url": DEAD_URL}},
    )
    assert response.status_code == 201, response.text
    try:
        response = api.post("/messages", json=message(channel, channels=[channel, off]))
        error = assert_invalid(response, "channels.1", off, "disabled")
        assert error["code"] == "channel_disabled"
        # disabling a channel in use takes effect at once
        assert api.post("/messages", json=message(channel)).status_code == 202
        assert api.patch(f"/channels/{channel}", json={"enabled": False}).status_code == 200
        response = api.post("/messages", json=message(channel))
        assert_invalid(response, "channels.0", "disabled")
        assert len(deliveries_of(api, channel)) == 1
        assert deliveries_of(api, off) == []
    finally:
        api.delete(f"/channels/{off}")


# -- batches ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ({"title": 5}, "messages.3.title", ["messages.3.title", "string"]),
        ({"foo": "bar"}, "messages.3.foo", ["messages.3.foo", "unknown field"]),
        ({"title": "", "content": ""}, "messages.3.content", ["messages.3.content", "empty"]),
        ({"links": [{"title": "x", "url": "nope"}]}, "messages.3.links.0.url", ["URL"]),
        ({"channels": ["no-such-channel-anywhere"]}, "messages.3.channels.0", ["no-such-channel"]),
        ({"channels": ["x\u0000"]}, "messages.3.channels.0", ["NUL"]),
        ({"title": "x\u0000"}, "messages.3.title", ["NUL"]),
    ],
)
def test_batch_with_one_bad_message_stores_none_of_it(
    api: httpx.Client,
    channel: str,
    unique: str,
    bad: dict[str, Any],
    field: str,
    words: list[str],
) -> None:
    messages = [message(channel, idempotency_key=f"b-{unique}-{i}") for i in range(7)]
    messages[3] = {**messages[3], **bad}
    response = api.post("/messages/batch", json={"messages": messages})
    assert_invalid(response, field, *words)
    assert deliveries_of(api, channel) == []
    # the keys of the good messages were not stored either: sending one again is not a replay
    again = api.post("/messages", json=messages[0])
    assert again.status_code == 202, again.text
    assert "Idempotent-Replayed" not in again.headers
    assert len(deliveries_of(api, channel)) == 1


def test_batch_size_limits(api: httpx.Client, channel: str) -> None:
    one = message(channel)
    assert_invalid(api.post("/messages/batch", json={"messages": []}), "messages", "at least 1")
    over = api.post("/messages/batch", json={"messages": [one] * 1001})
    assert_invalid(over, "messages", "1000")
    assert_invalid(api.post("/messages/batch", json={}), "messages", "missing")
    assert_invalid(api.post("/messages/batch", json={"messages": one}), "messages", "array")
    assert_invalid(
        api.post("/messages/batch", json={"messages": [one], "extra": 1}), "extra", "unknown"
    )
    assert_invalid(api.post("/messages/batch", json={"messages": [one, 5]}), "messages.1", "object")
    assert deliveries_of(api, channel) == []
    full = api.post("/messages/batch", json={"messages": [one] * 1000})
    assert full.status_code == 202, full.text[:500]
    assert len(full.json()["items"]) == 1000
    assert len(deliveries_of(api, channel)) == 1000


# -- bodies over the size limit ---------------------------------------------------------------


def test_body_over_the_limit_is_413(api: httpx.Client, channel: str) -> None:
    body = b'{"channels": ["%s"], "title": "t", "content": "%s"}' % (
        channel.encode(),
        b"x" * (9 * MiB),
    )
    error = error_of(api.post("/messages", content=body), 413)
    assert error["code"] == "too_large"
    assert str(8 * MiB) in error["message"]
    assert deliveries_of(api, channel) == []


def test_streamed_body_over_the_limit_is_413(api: httpx.Client, channel: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"channels": ["%s"], "title": "t", "content": "' % channel.encode()
        for _ in range(9 * 16):
            yield b"x" * (64 * 1024)
        yield b'"}'

    for path in ("/messages", "/messages/batch", "/channels"):
        request = api.build_request("POST", path, content=chunks())
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        error = error_of(api.send(request), 413)
        assert error["code"] == "too_large"
    assert deliveries_of(api, channel) == []
    # a small streamed body is read as usual
    small = api.post(
        "/messages", content=iter([b'{"channels": ["%s"], ' % channel.encode(), b'"title": "t"}'])
    )
    assert small.status_code == 202, small.text


# -- channels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"name": None}, "name", ["name is required"]),
        ({"name": ""}, "name", ["name is required"]),
        ({"name": 5}, "name", ["name"]),
        ({"name": "n" * 129}, "name", ["128"]),
        ({"name": "ch_looks_like_an_id"}, "name", ["ch_"]),
        ({"name": "nul\u0000name"}, "name", ["NUL"]),
        ({"type": None}, "type", ["unknown channel type", "webhook"]),
        ({"type": "carrier-pigeon"}, "type", ["carrier-pigeon", "webhook"]),
        ({"type": ["webhook"]}, "type", ["unknown channel type"]),
        ({"config": "http://x.example"}, "config", ["object"]),
        ({"config": {}}, "config.url", ["missing"]),
        ({"config": {"url": DEAD_URL, "colour": "red"}}, "config.colour", ["unknown field"]),
        ({"config": {"url": "not a url"}}, "config.url", ["URL"]),
        ({"config": {"url": "ftp://x.example/"}}, "config.url", ["URL"]),
        ({"config": {"url": DEAD_URL, "method": "GET"}}, "config.method", ["POST"]),
        ({"config": {"url": DEAD_URL, "timeout_s": 0}}, "config.timeout_s", ["greater than"]),
        ({"config": {"url": DEAD_URL, "timeout_s": 1e300}}, "config.timeout_s", ["large"]),
        ({"config": {"url": DEAD_URL, "headers": {"a b": "x"}}}, "config.headers", ["header"]),
        ({"config": {"url": DEAD_URL, "headers": "x"}}, "config.headers", ["object"]),
        (
            {"config": {"url": DEAD_URL, "signing_secret": "nope"}},
            "config.signing_secret",
            ["bytes"],
        ),
        (
            {"config": {"url": DEAD_URL, "body_template": "{{ x"}},
            "config.body_template",
            ["syntax"],
        ),
        ({"config": {"url": DEAD_URL, "success_codes": [99]}}, "config.success_codes.0", ["100"]),
        ({"enabled": "yes"}, "enabled", ["true or false"]),
        ({"description": 5}, "description", ["string"]),
        ({"description": "d" * 2001}, "description", ["2000"]),
        ({"rate_limit": 5}, "rate_limit", ["object"]),
        ({"rate_limit": {"per_second": 0}}, "rate_limit.per_second", ["greater than"]),
        ({"rate_limit": {"per_second": 10**30}}, "rate_limit.per_second", ["large"]),
        ({"rate_limit": {"per_day": 5}}, "rate_limit.per_day", ["unknown field"]),
        ({"colour": "red"}, "colour", ["unknown field"]),
    ],
)
def test_bad_channel_create_is_422_naming_the_field_and_stores_nothing(
    api: httpx.Client, unique: str, change: dict[str, Any], field: str, words: list[str]
) -> None:
    name = f"cc-{unique}"
    body: dict[str, Any] = {"name": name, "type": "webhook", "config": {"url": DEAD_URL}}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None or k != "name"}
    assert_invalid(api.post("/channels", json=body), field, *words)
    listed = api.get("/channels", params={"q": unique}).json()["items"]
    assert listed == []
    assert error_of(api.get(f"/channels/{name}"), 404)["code"] == "not_found"


def test_channel_create_without_name_or_type(api: httpx.Client) -> None:
    assert_invalid(
        api.post("/channels", json={"type": "webhook", "config": {"url": DEAD_URL}}),
        "name",
        "name is required",
    )
    assert_invalid(
        api.post("/channels", json={"name": "no-type-given", "config": {"url": DEAD_URL}}),
        "type",
        "unknown channel type",
    )


def test_duplicate_channel_name_is_409(api: httpx.Client, channel: str) -> None:
    before = api.get(f"/channels/{channel}").json()
    for name in (channel, f"  {channel} "):
        response = api.post(
            "/channels",
            json={"name": name, "type": "webhook", "config": {"url": "http://x.example/"}},
        )
        error = assert_invalid(response, "name", channel, status=409)
        assert error["code"] == "conflict"
    assert [c["id"] for c in api.get("/channels", params={"q": channel}).json()["items"]] == [
        before["id"]
    ]
    assert api.get(f"/channels/{channel}").json()["config"] == before["config"]


def test_bad_channel_patch_is_422_and_changes_nothing(
    api: httpx.Client, channel: str, unique: str
) -> None:
    other = f"other-{unique}"
    make_webhook(api, other, DEAD_URL)
    before = api.get(f"/channels/{channel}").json()
    try:
        for body, field, status, words in (
            ({"type": "webhook"}, "type", 422, ["read-only"]),
            ({"id": "ch_x"}, "id", 422, ["read-only"]),
            ({"colour": "red", "name": "fine"}, "colour", 422, ["unknown"]),
            ({"config": {"colour": "red"}}, "config.colour", 422, ["unknown field"]),
            ({"config": {"url": "nope"}}, "config.url", 422, ["URL"]),
            ({"config": "x"}, "config", 422, ["object"]),
            ({"rate_limit": {"per_minute": -1}}, "rate_limit.per_minute", 422, ["greater"]),
            ({"enabled": 1}, "enabled", 422, ["true or false"]),
            ({"name": ""}, "name", 422, ["name is required"]),
            ({"name": "x\u0000"}, "name", 422, ["NUL"]),
            ({"description": None}, "description", 422, ["string"]),
            ({"name": other}, "name", 409, [other]),
        ):
            response = api.patch(f"/channels/{channel}", json=body)
            assert_invalid(response, field, *words, status=status)
        for raw in (b"[]", b'"x"'):
            assert_invalid(api.patch(f"/channels/{channel}", content=raw), None, "object")
        error_of(api.patch(f"/channels/{channel}", content=b"{"), 400)
        after = api.get(f"/channels/{channel}").json()
        assert after == before
    finally:
        api.delete(f"/channels/{other}")


def test_bad_unsaved_test_push_is_422(api: httpx.Client) -> None:
    url = {"url": DEAD_URL}
    for body, field, words in (
        ({"type": "nope", "config": url}, "type", ["unknown channel type"]),
        ({"type": "webhook", "config": {"url": "x"}}, "config.url", ["URL"]),
        ({"type": "webhook", "config": {**url, "foo": 1}}, "config.foo", ["unknown field"]),
        ({"type": "webhook", "config": url, "foo": 1}, "foo", ["unknown field"]),
        ({"type": "webhook", "config": url, "name": {"a": 1}}, "name", ["string"]),
    ):
        assert_invalid(api.post("/channels/test", json=body), field, *words)


# -- query parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"status": "bogus"}, "status", ["bogus", "delivered"]),
        ({"status": "failed,nope"}, "status", ["nope"]),
        ({"since": "notatime"}, "since", ["notatime", "ISO 8601"]),
        ({"until": "2026-13-45"}, "until", ["ISO 8601"]),
        ({"since": "nan"}, "since", ["not a time"]),
        ({"since": "inf"}, "since", ["out of range"]),
        ({"until": "-inf"}, "until", ["out of range"]),
        ({"since": "1e300"}, "since", ["out of range"]),
        ({"limit": "0"}, "limit", ["greater than or equal to 1"]),
        ({"limit": "-5"}, "limit", ["greater than or equal to 1"]),
        ({"limit": "100000"}, "limit", ["less than or equal to 500"]),
        ({"limit": "9" * 40}, "limit", ["less than or equal"]),
        ({"limit": "ten"}, "limit", ["integer"]),
        ({"limit": "1.5"}, "limit", ["integer"]),
        ({"channel": "a\u0000b"}, "channel", ["NUL"]),
        ({"cursor": "\u0000"}, "cursor", ["NUL"]),
        ({"message_id": "msg_\u0000"}, "message_id", ["NUL"]),
    ],
)
def test_bad_delivery_filters_are_422(
    api: httpx.Client, params: dict[str, str], field: str, words: list[str]
) -> None:
    assert_invalid(api.get("/deliveries", params=params), field, *words)


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"limit": "0"}, "limit", ["greater than"]),
        ({"limit": "100000"}, "limit", ["less than"]),
        ({"q": "\u0000"}, "q", ["NUL"]),
        ({"type": "web\u0000hook"}, "type", ["NUL"]),
    ],
)
def test_bad_channel_list_params_are_422(
    api: httpx.Client, params: dict[str, str], field: str, words: list[str]
) -> None:
    assert_invalid(api.get("/channels", params=params), field, *words)


def test_good_filters_still_work(api: httpx.Client, channel: str) -> None:
    for params in (
        {"status": "failed,delivered", "since": "2020-01-01T00:00:00Z", "until": "1999999999"},
        {"since": "9999-12-31T23:59:59Z", "limit": "500"},
        {"since": "0", "limit": "1"},
    ):
        response = api.get("/deliveries", params={"channel": channel, **params})
        assert response.status_code == 200, (params, response.text)


# -- unknown ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/channels/ch_00000000000000000000000000"),
        ("GET", "/channels/no-such-channel"),
        ("PATCH", "/channels/ch_00000000000000000000000000"),
        ("DELETE", "/channels/ch_00000000000000000000000000"),
        ("POST", "/channels/ch_00000000000000000000000000/test"),
        ("GET", "/messages/msg_00000000000000000000000000"),
        ("GET", "/messages/not-a-message-id"),
        ("GET", "/deliveries/dlv_00000000000000000000000000"),
        ("POST", "/deliveries/dlv_00000000000000000000000000/retry"),
        ("DELETE", "/tokens/tok_00000000000000000000000000"),
        ("GET", "/channels/%00"),
        ("GET", "/messages/msg_%00"),
        ("GET", "/deliveries/dlv_%00x"),
        ("POST", "/deliveries/%00/retry"),
        ("DELETE", "/tokens/tok_%00"),
    ],
)
def test_unknown_ids_are_404(api: httpx.Client, method: str, path: str) -> None:
    body = {"json": {"description": "x"}} if method == "PATCH" else {}
    error = error_of(api.request(method, path, **body), 404)
    assert error["code"] == "not_found"
    assert error["message"].startswith("no "), error


def test_retry_of_a_delivery_that_is_not_failed_is_409(api: httpx.Client, channel: str) -> None:
    sent = api.post("/messages", json=message(channel)).json()
    delivery_id = sent["deliveries"][0]["id"]
    error = error_of(api.post(f"/deliveries/{delivery_id}/retry"), 409)
    assert "only failed or cancelled" in error["message"]


# -- tokens -----------------------------------------------------------------------------------


def test_bad_token_create_is_422_and_stores_nothing(api: httpx.Client, unique: str) -> None:
    before = api.get("/tokens").json()["items"]
    for body, field, words in (
        ({"name": f"t-{unique}", "role": "root"}, "role", ["admin, sender"]),
        ({"name": f"t-{unique}"}, "role", ["admin, sender"]),
        ({"name": f"t-{unique}", "role": ["sender"]}, "role", ["admin, sender"]),
        ({"role": "sender"}, "name", ["name is required"]),
        ({"name": "  ", "role": "sender"}, "name", ["name is required"]),
        ({"name": 5, "role": "sender"}, "name", ["name"]),
        ({"name": "n" * 129, "role": "sender"}, "name", ["128"]),
        ({"name": "a\u0000", "role": "sender"}, "name", ["NUL"]),
        ({"name": f"t-{unique}", "role": "sender", "expires": 5}, "expires", ["unknown"]),
    ):
        assert_invalid(api.post("/tokens", json=body), field, *words)
    assert api.get("/tokens").json()["items"] == before


# -- authentication ---------------------------------------------------------------------------


def test_missing_or_bad_token_is_401(server: ServerProcess) -> None:
    url = f"{server.url}/api/v1/channels"
    for headers, words in (
        ({}, "missing API token"),
        ({"Authorization": ""}, "missing"),
        ({"Authorization": "Bearer"}, "missing"),
        ({"Authorization": f"Basic {server.admin_token}"}, "Bearer"),
        ({"Authorization": server.admin_token}, "Bearer"),
        ({"Authorization": "Bearer mpk_not_a_real_token"}, "not valid"),
        ({"Authorization": f"Bearer {server.admin_token}x"}, "not valid"),
    ):
        error = error_of(httpx.get(url, headers=headers), 401)
        assert error["code"] == "unauthorized"
        assert words in error["message"], (headers, error)


def test_sender_token_on_an_admin_route_is_403(
    server: ServerProcess, sender_token: str, unique: str
) -> None:
    with server.client(sender_token) as client:
        response = client.post(
            "/channels",
            json={"name": f"s-{unique}", "type": "webhook", "config": {"url": DEAD_URL}},
        )
        error = error_of(response, 403)
        assert error["code"] == "forbidden"
        assert "admin" in error["message"] and "sender" in error["message"]
        error_of(client.post("/tokens", json={"name": "escalate", "role": "admin"}), 403)
    with server.client() as admin:
        assert admin.get(f"/channels/s-{unique}").status_code == 404
        assert "escalate" not in {t["name"] for t in admin.get("/tokens").json()["items"]}


# -- many hostile callers at once -------------------------------------------------------------


def test_concurrent_mixed_good_and_bad_requests_never_5xx(
    server: ServerProcess, api: httpx.Client, receiver: Receiver, unique: str
) -> None:
    name = f"busy-{unique}"
    make_webhook(api, name, receiver.url(f"/busy/{unique}"))
    off = f"busy-off-{unique}"
    assert (
        api.post(
            "/channels",
            json={"name": off, "type": "webhook", "enabled": False, "config": {"url": DEAD_URL}},
        ).status_code
        == 201
    )
    good = message(name)
    kinds: list[tuple[str, str, Any, int]] = [  # (kind, path, body, expected status)
        ("good", "/messages", good, 202),
        ("good-batch", "/messages/batch", {"messages": [good, good, good]}, 202),
        ("shared-key", "/messages", None, 202),
        ("title-int", "/messages", {**good, "title": 5}, 422),
        ("unknown-channel", "/messages", {**good, "channels": [name, f"nope-{unique}"]}, 422),
        ("disabled", "/messages", {**good, "channels": [off]}, 422),
        ("unknown-field", "/messages", {**good, "mentions": {"foo": 1}}, 422),
        ("empty-message", "/messages", {**good, "title": "", "content": ""}, 422),
        ("too-long", "/messages", {**good, "content": "x" * 65_537}, 422),
        ("nul-key", "/messages", {**good, "idempotency_key": "\u0000"}, 422),
        ("bad-batch", "/messages/batch", {"messages": [good, {**good, "level": "urgent"}]}, 422),
        ("malformed", "/messages", b'{"channels": [', 400),
        ("empty", "/messages", b"", 400),
        ("not-object", "/messages/batch", b"[1, 2]", 422),
    ]
    threads, per_thread = 16, 30
    results: list[tuple[str, int, str, str | None]] = []  # kind, status, answer, shared key
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        got: list[tuple[str, int, str, str | None]] = []
        with server.client() as client:
            for _ in range(per_thread):
                kind, path, body, _ = rng.choice(kinds)
                key = None
                if kind == "shared-key":
                    key = f"shared-{unique}-{rng.randrange(3)}"
                    body = {**good, "idempotency_key": key}
                if isinstance(body, bytes):
                    response = client.post(path, content=body)
                else:
                    response = client.post(path, json=body)
                got.append((kind, response.status_code, response.text[:300], key))
        with lock:
            results.extend(got)

    pool = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    assert len(results) == threads * per_thread
    server_errors = [r for r in results if r[1] >= 500]
    assert server_errors == [], server_errors[:5]
    expected = {kind: status for kind, _, _, status in kinds}
    wrong = [r for r in results if r[1] != expected[r[0]]]
    assert wrong == [], wrong[:5]

    # exactly what was accepted is stored: one delivery per accepted message, keys deduplicated
    counts = {kind: sum(1 for r in results if r[0] == kind) for kind in expected}
    shared = {r[3] for r in results if r[3] is not None}
    stored = len(deliveries_of(api, name))
    assert stored == counts["good"] + 3 * counts["good-batch"] + len(shared), counts
    assert deliveries_of(api, off) == []
    assert api.get("/channels/" + name).status_code == 200
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"


def test_concurrent_creates_of_one_name_give_one_201_and_the_rest_409(
    server: ServerProcess, api: httpx.Client, unique: str
) -> None:
    name = f"race-{unique}"
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def create() -> None:
        with server.client() as client:
            start.wait(10)
            response = client.post(
                "/channels", json={"name": name, "type": "webhook", "config": {"url": DEAD_URL}}
            )
        with lock:
            statuses.append(response.status_code)

    pool = [threading.Thread(target=create) for _ in range(16)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    assert sorted(statuses) == [201] + [409] * 15, statuses
    assert len(api.get("/channels", params={"q": name}).json()["items"]) == 1
    api.delete(f"/channels/{name}")


def test_unknown_query_parameter_is_named(api: httpx.Client) -> None:
    response = api.get("/deliveries", params={"stauts": "failed"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "stauts" and "status" in error["message"]


def test_last_admin_token_cannot_be_deleted(api: httpx.Client) -> None:
    admins = [t for t in api.get("/tokens").json()["items"] if t["role"] == "admin"]
    extra = api.post("/tokens", json={"name": "second admin", "role": "admin"}).json()
    assert api.delete(f"/tokens/{extra['id']}").status_code == 204
    if len(admins) == 1:
        refused = api.delete(f"/tokens/{admins[0]['id']}")
        assert refused.status_code == 409 and "last admin" in refused.json()["error"]["message"]
