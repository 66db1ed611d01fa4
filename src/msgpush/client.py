"""The Python client: ``Client(url, token).send(...)`` and friends, over the REST API."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import httpx


class MsgpushError(Exception):
    """An error answer from msgpush: HTTP status, error code, message and the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class Client:
    """A msgpush API client.

    ``url`` and ``token`` default to ``MSGPUSH_URL`` (else http://127.0.0.1:8080) and
    ``MSGPUSH_TOKEN``.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0
    ) -> None:
        base = (url or os.environ.get("MSGPUSH_URL") or "http://127.0.0.1:8080").rstrip("/")
        token = token or os.environ.get("MSGPUSH_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = self._http.request(method, path, **kw)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except Exception:
                raise MsgpushError(
                    response.status_code, "http_error", response.text[:500]
                ) from None
            raise MsgpushError(
                response.status_code,
                error.get("code", ""),
                error.get("message", ""),
                error.get("field"),
            )
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- sending -----------------------------------------------------------------------------

    def send(
        self,
        channels: str | Iterable[str],
        title: str = "",
        content: str = "",
        **fields: Any,
    ) -> dict[str, Any]:
        """Send one message; answers ``{"id": "msg_…", "deliveries": [...]}`` once stored.

        Other message fields (format, level, category, fields, links, mentions, recipients,
        labels, idempotency_key) go as keyword arguments.
        """
        names = [channels] if isinstance(channels, str) else list(channels)
        body = {"channels": names, "title": title, "content": content, **fields}
        result: dict[str, Any] = self._call("POST", "/messages", json=body)
        return result

    def send_many(self, messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send many messages (each a dict as for ``send``), 1,000 per request."""
        answers: list[dict[str, Any]] = []
        chunk: list[dict[str, Any]] = []
        for message in messages:
            chunk.append(message)
            if len(chunk) == 1000:
                answers.extend(
                    self._call("POST", "/messages/batch", json={"messages": chunk})["items"]
                )
                chunk = []
        if chunk:
            answers.extend(self._call("POST", "/messages/batch", json={"messages": chunk})["items"])
        return answers

    def message(self, message_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/messages/{message_id}")
        return result

    # -- events ------------------------------------------------------------------------------

    def event(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        source: str = "",
        level: str | None = None,
        labels: dict[str, str] | None = None,
        channels: str | Iterable[str] | None = None,
        idempotency_key: str | None = None,
        occurred_at: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Report an event (``task.failed``, ``alert.firing``, …); answers once it is stored:
        ``{"id": "evt_…", "rules": [...], "messages": [...], "grouped": [...], "warnings": [...]}``.

        The rules decide where it goes; ``channels`` sends it to these channels too.
        """
        refs = [channels] if isinstance(channels, str) else list(channels or [])
        body: dict[str, Any] = {"type": type, "source": source, "data": data or {}, **extra}
        optional = {
            "level": level,
            "labels": labels,
            "channels": refs or None,
            "idempotency_key": idempotency_key,
            "occurred_at": occurred_at,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        result: dict[str, Any] = self._call("POST", "/events", json=body)
        return result

    def get_event(self, event_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/events/{event_id}")
        return result

    # -- rules and templates -----------------------------------------------------------------

    def rules(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/rules")["items"]
        return result

    def create_rule(
        self, name: str, event_types: list[str], channels: list[str], **fields: Any
    ) -> dict[str, Any]:
        """A rule: ``min_level``, ``labels``, ``recipients``, ``template``, ``group_by``,
        ``group_window_s``, ``enabled`` and ``description`` go as keyword arguments."""
        body = {"name": name, "event_types": event_types, "channels": channels, **fields}
        result: dict[str, Any] = self._call("POST", "/rules", json=body)
        return result

    def update_rule(self, ref: str, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", f"/rules/{ref}", json=changes)
        return result

    def delete_rule(self, ref: str) -> None:
        self._call("DELETE", f"/rules/{ref}")

    def set_template(self, event_type: str, **template: Any) -> dict[str, Any]:
        """Override an event type's template: ``title``, ``content`` (Jinja2), ``format``."""
        result: dict[str, Any] = self._call("PUT", f"/templates/{event_type}", json=template)
        return result

    def delete_template(self, event_type: str) -> None:
        self._call("DELETE", f"/templates/{event_type}")

    def preview(
        self,
        event_type: str | None = None,
        *,
        event: dict[str, Any] | None = None,
        template: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The message an event (or the sample of ``event_type``) becomes with ``template``."""
        body = {"event_type": event_type, "event": event, "template": template}
        payload = {k: v for k, v in body.items() if v is not None}
        result: dict[str, Any] = self._call("POST", "/templates/preview", json=payload)
        return result

    # -- channels ----------------------------------------------------------------------------

    def channels(self, type: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {k: v for k, v in {"type": type, "cursor": cursor}.items() if v}
            page = self._call("GET", "/channels", params=params)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def channel_types(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/channel-types")["items"]
        return result

    def create_channel(
        self, name: str, type: str, config: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        body = {"name": name, "type": type, "config": config, **extra}
        result: dict[str, Any] = self._call("POST", "/channels", json=body)
        return result

    def update_channel(self, ref: str, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", f"/channels/{ref}", json=changes)
        return result

    def delete_channel(self, ref: str) -> None:
        self._call("DELETE", f"/channels/{ref}")

    def test_channel(
        self,
        ref: str | None = None,
        *,
        type: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Test Push a saved channel (``ref``), or unsaved settings (``type`` and ``config``)."""
        if ref is not None:
            result: dict[str, Any] = self._call("POST", f"/channels/{ref}/test")
        else:
            result = self._call(
                "POST", "/channels/test", json={"type": type, "config": config or {}}
            )
        return result

    # -- history -----------------------------------------------------------------------------

    def deliveries(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of the delivery history (filters: channel, status, since, until, limit, cursor)."""
        params = {k: v for k, v in filters.items() if v is not None}
        result: list[dict[str, Any]] = self._call("GET", "/deliveries", params=params)["items"]
        return result

    def iter_deliveries(self, **filters: Any) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self._call("GET", "/deliveries", params=params)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/deliveries/{delivery_id}")
        return result

    def retry(self, delivery_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/deliveries/{delivery_id}/retry")
        return result
