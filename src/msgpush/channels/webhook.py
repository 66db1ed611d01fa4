"""Custom HTTP webhook: the JSON envelope (or a sandboxed Jinja2 body), signed per Standard Webhooks."""

from __future__ import annotations

import re
import ssl
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, HttpUrl, SecretStr, field_validator

from msgpush import template_worker
from msgpush.channels.base import (
    ChannelSettings,
    ChannelType,
    Outcome,
    SendContext,
    VendorRequest,
    VendorResponse,
    http_status_outcome,
    secret_field,
)
from msgpush.channels.signing import standard_webhooks_key, standard_webhooks_signature
from msgpush.ids import iso, now_ms
from msgpush.message import Message
from msgpush.templating import BODY_OUTPUT_CHARS, TemplateError, compile_template, render_limited

# Standard Webhooks: a secret is 24-64 random bytes ("Signature scheme" of
# https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md).
SIGNING_KEY_MIN_BYTES = 24
SIGNING_KEY_MAX_BYTES = 64
RESERVED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-length"}


# RFC 9110 §5.1 and §5.5: a name is a token; a value is visible characters, spaces and tabs, and
# the obsolete Latin-1 range that HTTP libraries still encode
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


class WebhookSettings(ChannelSettings):
    url: HttpUrl = Field(
        json_schema_extra={
            "x-title-zh": "Webhook 地址",
            "x-description-zh": "发送目标：你方系统的 http(s) 地址。不跟随重定向。",
        },
        title="URL",
        description="Where to send: an http(s) address of your system. Redirects are not followed.",
    )
    method: Literal["POST", "PUT"] = Field(
        json_schema_extra={
            "x-title-zh": "请求方法",
            "x-description-zh": "发送请求所用的 HTTP 方法：POST 或 PUT。",
        },
        default="POST",
        title="Method",
    )
    headers: dict[str, str] = secret_field(
        json_schema_extra={
            "x-title-zh": "请求头",
            "x-description-zh": "附加的请求头，如 Authorization。加密保存，值不会再显示。",
        },
        default_factory=dict,
        title="Headers",
        description="Extra request headers, e.g. Authorization. Stored encrypted; values never shown.",
    )
    body_template: str | None = Field(
        default=None,
        title="Body template",
        description=(
            "Jinja2 template for the request body (sandboxed). Variables: message, envelope, "
            "delivery_id, message_id, event. Empty: the standard JSON envelope."
        ),
        json_schema_extra={
            "format": "textarea",
            "x-title-zh": "请求体模板",
            "x-description-zh": (
                "请求体的 Jinja2 模板（沙箱执行）。可用变量：message、envelope、delivery_id、"
                "message_id、event。留空：使用标准 JSON 信封。"
            ),
        },
    )
    content_type: str = Field(
        json_schema_extra={
            "x-title-zh": "内容类型",
            "x-description-zh": "请求体的 Content-Type 请求头。",
        },
        default="application/json",
        title="Content type",
        description="Content-Type header of the body.",
        max_length=200,
    )
    signing_secret: SecretStr | None = secret_field(
        json_schema_extra={
            "x-title-zh": "签名密钥",
            "x-description-zh": (
                "Standard Webhooks 密钥（whsec_ + 24-64 个随机字节的 base64）。设置后，每个请求都带 "
                "webhook-signature 请求头，接收方可据此验签。"
            ),
        },
        default=None,
        title="Signing secret",
        description=(
            "Standard Webhooks secret (whsec_ + base64 of 24-64 random bytes). When set, each "
            "request carries a webhook-signature header your receiver can verify."
        ),
    )
    timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        json_schema_extra={
            "x-title-zh": "超时（秒）",
            "x-description-zh": "等待响应的秒数（1-60）。",
        },
        default=10.0,
        title="Timeout (s)",
        description="Seconds to wait for an answer (1-60).",
    )
    success_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        json_schema_extra={
            "x-title-zh": "成功状态码",
            "x-description-zh": "表示投递成功的 HTTP 状态码。留空：任意 2xx。",
        },
        default_factory=list,
        title="Success codes",
        description="HTTP statuses that mean delivered. Empty: any 2xx.",
        max_length=50,
    )

    ca_pem: str | None = Field(
        default=None,
        max_length=200_000,
        title="CA certificates (PEM)",
        description=(
            "PEM certificates of the CA that signed your endpoint's certificate (an internal CA), "
            "trusted for this channel besides the system's. Certificates are always checked."
        ),
        json_schema_extra={
            "format": "textarea",
            "x-title-zh": "CA 证书（PEM）",
            "x-description-zh": (
                "为你方接口证书签名的 CA 证书（如内部 CA），PEM 格式；本渠道在系统信任之外额外信任它。"
                "证书校验始终开启。"
            ),
        },
    )

    @field_validator("ca_pem")
    @classmethod
    def _ca_pem(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        if "PRIVATE KEY" in value:
            raise ValueError(
                "ca_pem holds a private key: paste only the CA's certificate "
                "(-----BEGIN CERTIFICATE-----), and keep the key secret"
            )
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("ca_pem must be PEM certificates (-----BEGIN CERTIFICATE----- …)")
        try:
            ssl.create_default_context().load_verify_locations(cadata=value)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"ca_pem is not a valid PEM certificate ({exc})") from None
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by msgpush and cannot be overridden")
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"header {name!r} contains a line break")
            if not HEADER_VALUE.fullmatch(header_value):  # the value may be a secret: not shown
                raise ValueError(
                    f"header {name!r} contains a character an HTTP header cannot carry (a "
                    "control character, or a letter beyond Latin-1); use plain ASCII text"
                )
        return value

    @field_validator("signing_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return value
        key = standard_webhooks_key(value.get_secret_value())
        if not SIGNING_KEY_MIN_BYTES <= len(key) <= SIGNING_KEY_MAX_BYTES:
            raise ValueError(
                f"signing_secret decodes to {len(key)} bytes; Standard Webhooks asks for "
                f"{SIGNING_KEY_MIN_BYTES}-{SIGNING_KEY_MAX_BYTES} random bytes after whsec_"
            )
        return value

    @field_validator("body_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value:
            try:
                compile_template(value)
            except TemplateError as exc:
                raise ValueError(str(exc)) from exc
        return value or None


def envelope(message: Message, ctx: SendContext) -> dict[str, Any]:
    """The default JSON body (README, "The webhook channel")."""
    return {
        "id": ctx.delivery_id,
        "message_id": ctx.message_id,
        "title": message.title,
        "content": message.content,
        "format": message.format.value,
        "level": message.level.value,
        "category": message.category.value,
        "fields": message.fields,
        "links": [link.model_dump(mode="json") for link in message.links],
        "labels": message.labels,
        "created_at": iso(ctx.created_at_ms or now_ms()),
        "event": ctx.event,
    }


class WebhookChannel(ChannelType):
    type_id = "webhook"
    name = "Custom Webhook"
    description = (
        "Any HTTP endpoint of your own systems: a JSON envelope or your own body template, "
        "signed per Standard Webhooks."
    )
    description_zh = (
        "你自己系统的任意 HTTP 接口：标准 JSON 信封或自定义请求体模板，按 Standard Webhooks 签名。"
    )
    settings_model = WebhookSettings
    formats = ("markdown", "text")

    async def verify(self, settings: Any) -> None:
        """A body template must render a sample message, within the render limits."""
        if settings.body_template:
            sample = Message(title="Sample", content="Sample content")
            ctx = SendContext(delivery_id="dlv_sample", attempt=1, exchange=_never)
            [result] = await template_worker.render(
                [settings.body_template], _context(sample, ctx), template_worker.WEBHOOK_CHECK
            )
            if isinstance(result, TemplateError):
                raise ValueError(f"body_template: {result}")

    def _request(self, settings: WebhookSettings, ctx: SendContext, body: bytes) -> VendorRequest:
        timestamp = int(time.time())
        headers = {
            **settings.headers,
            "Content-Type": settings.content_type,
            "webhook-id": ctx.delivery_id,
            "webhook-timestamp": str(timestamp),
        }
        if settings.signing_secret is not None and settings.signing_secret.get_secret_value():
            key = standard_webhooks_key(settings.signing_secret.get_secret_value())
            signature = standard_webhooks_signature(key, ctx.delivery_id, timestamp, body)
            ctx.secrets.add_one_off(signature, signature.removeprefix("v1,"))
            headers["webhook-signature"] = signature
        return VendorRequest(
            settings.method,
            str(settings.url),
            headers,
            body,
            timeout_s=settings.timeout_s,
            ca_pem=settings.ca_pem,
        )

    def render(
        self, message: Message, settings: WebhookSettings, ctx: SendContext
    ) -> VendorRequest:
        """The request, a body template rendered in this process (tests and tools; :meth:`send`
        renders it in the render workers, within a time limit)."""
        if settings.body_template:
            source, context = settings.body_template, _context(message, ctx)
            body = render_limited(source, context, BODY_OUTPUT_CHARS).encode()
        else:
            body = orjson.dumps(envelope(message, ctx))
        return self._request(settings, ctx, body)

    def classify(self, response: VendorResponse) -> Outcome:  # pragma: no cover - see send
        return http_status_outcome(response)

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        if settings.body_template:
            [result] = await template_worker.render(
                [settings.body_template], _context(message, ctx), template_worker.WEBHOOK_SEND
            )
            if isinstance(result, TemplateError):
                return Outcome.failed(f"body_template could not render this message: {result}")
            body = result.encode()
        else:
            body = orjson.dumps(envelope(message, ctx))
        codes = list(settings.success_codes)
        request = self._request(settings, ctx, body)
        return await ctx.exchange(request, lambda response: http_status_outcome(response, codes))


def _context(message: Message, ctx: SendContext) -> dict[str, Any]:
    """What a body template sees."""
    return {
        "message": message.model_dump(mode="json"),
        "envelope": envelope(message, ctx),
        "delivery_id": ctx.delivery_id,
        "message_id": ctx.message_id,
        "event": ctx.event,
    }


async def _never(request: VendorRequest, classify: Any) -> Outcome:  # pragma: no cover
    raise RuntimeError("the sample render never sends")


CHANNEL_TYPE = WebhookChannel()
