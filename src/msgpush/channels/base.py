"""What a channel type is: its settings model, limits, renderer and answer parser.

A vendor module subclasses ``ChannelType`` and decides *what* to send and *how to read the
answer*; the delivery engine decides *when* and *how often*. Sending goes through
``SendContext.exchange``, which owns HTTP, timing, error capture and the redacted transcript.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from msgpush.message import Message
from msgpush.redact import MIN_SECRET_CHARS, SecretSet, has_url_credentials, url_credentials

OutcomeKind = Literal["delivered", "retry", "failed", "refresh_token"]


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt: data the engine acts on, not an exception it must guess at."""

    kind: OutcomeKind
    status_code: int | None = None
    vendor_code: str | None = None
    vendor_message: str | None = None
    diagnosis: str | None = None
    retry_after_s: float | None = None
    warning: str | None = None

    @classmethod
    def delivered(cls, **kw: Any) -> Outcome:
        return cls("delivered", **kw)

    @classmethod
    def retry(cls, diagnosis: str, **kw: Any) -> Outcome:
        return cls("retry", diagnosis=diagnosis, **kw)

    @classmethod
    def failed(cls, diagnosis: str, **kw: Any) -> Outcome:
        return cls("failed", diagnosis=diagnosis, **kw)

    @classmethod
    def refresh_token(cls, diagnosis: str, **kw: Any) -> Outcome:
        """The vendor refused the access token: the channel has invalidated it in
        ``ctx.tokens``, and the engine repeats the attempt once, at once."""
        return cls("refresh_token", diagnosis=diagnosis, **kw)


@dataclass
class VendorRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    timeout_s: float = 10.0
    ca_pem: str | None = None  # certificates trusted for this request besides the system's

    @classmethod
    def json(
        cls, url: str, payload: Any, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> VendorRequest:
        merged = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        return cls("POST", url, merged, orjson.dumps(payload), **kw)


@dataclass
class VendorResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    # set by the exchange: excerpts (``text``) come out redacted, cut after redaction
    secrets: SecretSet | None = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def text(self, limit: int = 500) -> str:
        """The body's first ``limit`` characters, for an excerpt in a diagnosis or transcript:
        secrets (when the exchange set them) are redacted in the whole body before the cut."""
        if self.secrets is None:
            return self.body[:limit].decode("utf-8", "replace")
        return self.secrets.excerpt(self.body.decode("utf-8", "replace"), limit)


class Exchanger(Protocol):
    async def __call__(
        self, request: VendorRequest, classify: Callable[[VendorResponse], Outcome]
    ) -> Outcome: ...


def token_key(*parts: str) -> str:
    """A key for the token cache naming a set of credentials without revealing them."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class FetchedToken:
    """An access token as a vendor's token endpoint issued it."""

    token: str
    expires_in_s: float


class TokenFetchFailed(Exception):
    """Getting a token failed; ``outcome`` says whether to retry and what to fix."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.diagnosis)
        self.outcome = outcome


# WeCom, Feishu and DingTalk tokens live 7200 s (docs/vendors/README.md); assumed when an
# answer omits the lifetime, as wechatpy, apprise and the Feishu SDK do.
DEFAULT_TOKEN_LIFETIME_S = 7200.0


def token_lifetime_s(value: Any) -> float:
    """A token answer's lifetime in seconds (a number or a numeric string); a missing, zero or
    odd value means the vendors' documented 7200 s, never 0 (a misread lifetime would refetch
    the token for every message)."""
    if isinstance(value, bool):
        return DEFAULT_TOKEN_LIFETIME_S
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME_S
    return seconds if seconds > 0 else DEFAULT_TOKEN_LIFETIME_S


def with_step(outcome: Outcome, prefix: str) -> Outcome:
    """The outcome with its diagnosis prefixed by the step that failed (Test Push says which)."""
    if outcome.kind == "delivered" or not outcome.diagnosis:
        return outcome
    return replace(outcome, diagnosis=prefix + outcome.diagnosis)


class TokenSource(Protocol):
    """The shared access-token cache (msgpush.delivery.tokens.TokenCache)."""

    async def get(self, key: str, fetch: Callable[[], Awaitable[FetchedToken]]) -> str: ...

    async def invalidate(self, key: str, token: str) -> None: ...


def token_in_answer(
    outcome: Outcome,
    response: VendorResponse,
    token_field: str,
    lifetime_field: str,
    missing: str,
) -> tuple[Outcome, FetchedToken | None]:
    """The token an accepted token answer carries, or a failure saying ``missing``: an answer
    that says success without a token is never taken as one."""
    if outcome.kind != "delivered":
        return outcome, None
    body = response.json()
    token = body.get(token_field) if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip():
        failed = Outcome.failed(missing, status_code=response.status, vendor_code="0")
        return failed, None
    return outcome, FetchedToken(token, token_lifetime_s(body.get(lifetime_field)))


TokenReader = Callable[["VendorResponse"], tuple[Outcome, FetchedToken | None]]


async def cached_token(
    ctx: SendContext, key: str, request: VendorRequest, read: TokenReader, step: str
) -> str:
    """The token for ``key`` from the shared cache, or fetched with ``request`` and ``read``
    (which turns the vendor's answer into an outcome and, on success, the token). A failed
    fetch raises TokenFetchFailed, its diagnosis prefixed with ``step``."""

    async def fetch() -> FetchedToken:
        got: list[FetchedToken] = []

        def classify(response: VendorResponse) -> Outcome:
            outcome, fetched = read(response)
            if fetched is not None:
                ctx.secrets.add(fetched.token)  # before the transcript records the answer
                got.append(fetched)
            return outcome

        outcome = await ctx.exchange(request, classify)
        if not got:
            raise TokenFetchFailed(with_step(outcome, step))
        return got[0]

    return await fetched_or_cached(ctx, key, fetch)


async def fetched_or_cached(
    ctx: SendContext, key: str, fetch: Callable[[], Awaitable[FetchedToken]]
) -> str:
    """The token for ``key`` from the shared cache or ``fetch``, marked secret for the attempt."""

    async def marked() -> FetchedToken:
        fetched = await fetch()
        ctx.secrets.add(fetched.token)
        return fetched

    token = (await marked()).token if ctx.tokens is None else await ctx.tokens.get(key, marked)
    ctx.secrets.add(token)
    return token


@dataclass
class SendContext:
    """What a sender may use during one attempt."""

    delivery_id: str
    attempt: int
    exchange: Exchanger
    message_id: str = ""
    created_at_ms: int = 0
    event: dict[str, Any] | None = None
    is_test: bool = False
    tokens: TokenSource | None = None
    # what this attempt must never record: the channel's secrets, and the tokens and
    # signatures the channel adds as it makes them (the exchange's transcript shares the set)
    secrets: SecretSet = field(default_factory=SecretSet)


class RateLimit(BaseModel):
    """Sending limits of a channel: at most N per second / minute / hour."""

    model_config = ConfigDict(extra="forbid")

    per_second: int | None = Field(default=None, ge=1, description="messages per second")
    per_minute: int | None = Field(default=None, ge=1, description="messages per minute")
    per_hour: int | None = Field(default=None, ge=1, description="messages per hour")

    def windows(self) -> list[tuple[int, int]]:
        """(window length in ms, max sends in it), shortest window first."""
        pairs = [(1_000, self.per_second), (60_000, self.per_minute), (3_600_000, self.per_hour)]
        return [(ms, limit) for ms, limit in pairs if limit is not None]

    def lowered_by(self, override: RateLimit | None) -> RateLimit:
        if override is None:
            return self
        merged: dict[str, int | None] = {}
        for name in ("per_second", "per_minute", "per_hour"):
            mine, theirs = getattr(self, name), getattr(override, name)
            values = [v for v in (mine, theirs) if v is not None]
            merged[name] = min(values) if values else None
        return RateLimit(**merged)


TARGET_URL_FIELDS = ("url", "webhook_url", "api_base", "oapi_base")


class ChannelSettings(BaseModel):
    """Base of every type's settings: unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid")


def secret_field(**kw: Any) -> Any:
    """A setting stored encrypted and never read back (the console shows a password input)."""
    extra = kw.pop("json_schema_extra", {}) or {}
    return Field(json_schema_extra={**extra, "x-secret": True}, **kw)


class ChannelType(ABC):
    """One vendor's channel: subclass it in ``msgpush.channels.<type_id>``."""

    type_id: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str]
    description_zh: ClassVar[str | None] = None
    settings_model: ClassVar[type[ChannelSettings]]
    formats: ClassVar[tuple[str, ...]] = ("markdown", "text")
    default_limits: ClassVar[RateLimit] = RateLimit()
    size_limits: ClassVar[dict[str, int]] = {}

    @classmethod
    def secret_fields(cls) -> list[str]:
        return [
            name
            for name, info in cls.settings_model.model_fields.items()
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("x-secret")
        ]

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "type": cls.type_id,
            "name": cls.name,
            "description": cls.description,
            "description_zh": cls.description_zh,
            "schema": cls.settings_model.model_json_schema(),
            "secret_fields": cls.secret_fields(),
            "formats": list(cls.formats),
            "limits": {
                "rate": cls.default_limits.model_dump(exclude_none=True),
                "size_bytes": dict(cls.size_limits),
            },
        }

    @classmethod
    def split(cls, settings: ChannelSettings) -> tuple[dict[str, Any], dict[str, Any]]:
        """(public settings, secret settings) as plain JSON-able dicts."""
        secret_names = set(cls.secret_fields())
        public: dict[str, Any] = {}
        secret: dict[str, Any] = {}
        dumped = settings.model_dump(mode="json", exclude_none=True)
        for name, value in dumped.items():
            raw = getattr(settings, name)
            if isinstance(raw, SecretStr):
                value = raw.get_secret_value()
            # a URL setting (a webhook's url, an api_base) that carries credentials is sealed
            # whole; it reads back masked (ChannelService)
            carries = isinstance(value, str) and value.startswith(("http://", "https://"))
            hidden = name in secret_names or (carries and has_url_credentials(value))
            (secret if hidden else public)[name] = value
        for name in secret_names:  # empty secrets are "not set", not stored
            if secret.get(name) in ("", {}, None):
                secret.pop(name, None)
        return public, secret

    @classmethod
    def secret_values(cls, settings: ChannelSettings) -> list[str]:
        """Every secret string in these settings (and the credentials inside them: a URL's
        key, a header's token), for redacting transcripts and errors."""
        _, secret = cls.split(settings)
        values: list[str] = []
        for value in secret.values():
            if isinstance(value, dict):
                for item in map(str, value.values()):
                    values += [item, *_header_credentials(item)]
            else:
                values += [str(value), *_url_credentials(str(value))]
        return [v for v in dict.fromkeys(values) if len(v) >= MIN_SECRET_CHARS]

    @classmethod
    def secret_set(cls, settings: ChannelSettings) -> SecretSet:
        """The settings' secrets as a set that redacts every form of them."""
        return SecretSet(cls.secret_values(settings))

    @classmethod
    def target_urls(cls, settings: ChannelSettings) -> dict[str, str]:
        """The settings that say where requests go ({field: URL}), for the egress check at save."""
        urls: dict[str, str] = {}
        for name in TARGET_URL_FIELDS:
            value = getattr(settings, name, None)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value and "://" in str(value):
                urls[name] = str(value)
        return urls

    def check(self, settings: ChannelSettings) -> None:  # noqa: B027 - optional hook
        """Extra validation beyond the schema; raise ValueError naming the setting."""

    async def verify(self, settings: ChannelSettings) -> None:  # noqa: B027 - optional hook
        """Validation that takes work done outside the event loop (a body template's sample
        render); raise ValueError naming the setting, like :meth:`check`."""

    @abstractmethod
    def render(self, message: Message, settings: Any, ctx: SendContext) -> VendorRequest:
        """The vendor request for one message (single-request types)."""

    @abstractmethod
    def classify(self, response: VendorResponse) -> Outcome:
        """Read the vendor's answer: delivered, retry, refresh the token, or failed."""

    async def send(self, message: Message, settings: Any, ctx: SendContext) -> Outcome:
        """Deliver one message; types that need several requests (tokens, splits) override."""
        return await ctx.exchange(self.render(message, settings, ctx), self.classify)


@dataclass(frozen=True)
class VendorCode:
    """What one vendor error code means (retry, refresh the token, or fail) and how to fix it.

    ``diagnosis`` may use ``{message}`` (the vendor's text) and any name the channel passes.
    """

    kind: OutcomeKind
    diagnosis: str
    retry_after_s: float | None = None


def vendor_outcome(
    code: int | str,
    message: str,
    table: dict[int | str, VendorCode],
    *,
    status_code: int,
    **names: Any,
) -> Outcome:
    """The outcome of a vendor's answer carrying a business error code (not 0/success)."""
    entry = table.get(code)
    vendor: dict[str, Any] = {
        "status_code": status_code,
        "vendor_code": str(code),
        "vendor_message": message,
    }
    if entry is None:
        if status_code >= 500:
            return Outcome.retry(
                f"vendor error {code} ({message}) with HTTP {status_code}", **vendor
            )
        return Outcome.failed(
            f"vendor error {code}: {message}. msgpush does not know this code; look it up in the "
            "vendor's error code list",
            **vendor,
        )
    try:
        diagnosis = entry.diagnosis.format(message=message, **names)
    except (KeyError, IndexError):
        diagnosis = entry.diagnosis
    if entry.kind == "refresh_token":  # which of a vendor's several token codes it was
        diagnosis = f"{diagnosis} (code {code})"
    return Outcome(entry.kind, diagnosis=diagnosis, retry_after_s=entry.retry_after_s, **vendor)


def unauthorized(response: VendorResponse, vendor: str) -> Outcome | None:
    """HTTP 401 from an app API, whatever its body says: the access token was refused, so
    fetch a new one and repeat once, as for the vendor's own token codes."""
    if response.status != 401:
        return None
    return Outcome.refresh_token(
        f"{vendor} answered HTTP 401 (the access token was refused); msgpush fetched a new one "
        "and repeated the attempt",
        status_code=401,
    )


def _url_credentials(value: str) -> list[str]:
    """The parts of a secret URL that are credentials on their own (a bot's key or token, a
    password), so that text quoting just the key is redacted too."""
    if not value.startswith(("http://", "https://")):
        return []
    parts = urlsplit(value)
    found = [v for _, v in parse_qsl(parts.query) if len(v) >= 8]
    found += [s for s in parts.path.split("/") if len(s) >= 16 and not s.isalpha()]
    return found + url_credentials(value)


def _header_credentials(value: str) -> list[str]:
    """The credential inside a header value: the token after an auth scheme (``Bearer x``),
    and for ``Basic`` the decoded ``user:password`` and the password."""
    scheme, _, credential = value.strip().partition(" ")
    if not credential:
        return []
    found = [credential.strip()]
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode()
        except (binascii.Error, ValueError):
            return found
        found += [decoded, decoded.partition(":")[2]]
    return found


def http_status_outcome(
    response: VendorResponse, success_codes: list[int] | None = None
) -> Outcome:
    """Classify a plain HTTP answer (no vendor code): the generic webhook's rules."""
    status = response.status
    ok = status in success_codes if success_codes else 200 <= status < 300
    if ok:
        return Outcome.delivered(status_code=status)
    excerpt = response.text(200).strip()
    detail = f": {excerpt}" if excerpt else ""
    retry_after = _retry_after(response.headers.get("retry-after"))
    if status in (408, 425, 429) or status >= 500:
        return Outcome.retry(
            f"the receiver answered HTTP {status}{detail}; will retry",
            status_code=status,
            retry_after_s=retry_after,
        )
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        return Outcome.failed(
            f"the receiver redirected (HTTP {status}) to {location or 'another URL'}; "
            "redirects are not followed: set the channel's url to the final address",
            status_code=status,
        )
    if status == 410:
        return Outcome.failed(
            "the receiver answered 410 Gone: the endpoint was removed; fix or delete the channel",
            status_code=status,
        )
    if status in (401, 403):
        return Outcome.failed(
            f"the receiver refused the request (HTTP {status}){detail}; check the channel's "
            "headers (credentials) and signing_secret",
            status_code=status,
        )
    if 200 <= status < 300:
        return Outcome.failed(
            f"HTTP {status} is not in the channel's success_codes {success_codes}",
            status_code=status,
        )
    return Outcome.failed(
        f"the receiver rejected the request with HTTP {status}{detail}; check the channel's "
        "url, method and body_template",
        status_code=status,
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
