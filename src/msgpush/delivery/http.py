"""The one outbound HTTP session (aiohttp, keep-alive, one TLS context) and the exchange.

Every vendor request goes through ``HttpClient.exchange``: it times the request, turns
transport failures into retryable outcomes, keeps a redacted transcript for the attempt record,
and lets the channel classify the answer.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
from yarl import URL

from msgpush.channels.base import Exchanger, Outcome, VendorRequest, VendorResponse
from msgpush.redact import SecretSet, redact_headers, redact_url, scrub_tokens

MAX_RESPONSE_BYTES = 256 * 1024
TRANSCRIPT_BODY_CHARS = 16_000
TRANSCRIPT_RESPONSE_CHARS = 2_000
USER_AGENT = "msgpush/0.1 (+https://github.com/msgpush)"


@dataclass
class Transcript:
    """What one attempt sent and received, secrets removed, for the delivery history.

    ``secrets`` is the attempt's SecretSet: the channel's settings, plus what the channel adds
    while sending (tokens, signatures). Every text is redacted whole, then cut.
    """

    secrets: SecretSet = field(default_factory=SecretSet)
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    last_status: int | None = None

    def add(
        self, request: VendorRequest, response: VendorResponse | None, error: str | None
    ) -> None:
        secrets = self.secrets
        body = secrets.excerpt(request.body.decode("utf-8", "replace"), TRANSCRIPT_BODY_CHARS)
        entry: dict[str, Any] = {
            "method": request.method,
            "url": redact_url(request.url, secrets),
            "headers": redact_headers(request.headers, secrets),
            "body": scrub_tokens(body),
        }
        if response is not None:
            entry["status"] = response.status
            text = secrets.excerpt(
                response.body.decode("utf-8", "replace"),
                TRANSCRIPT_RESPONSE_CHARS,
                was_cut=len(response.body) >= MAX_RESPONSE_BYTES,
            )
            entry["response"] = scrub_tokens(text)
            self.last_status = response.status
        if error:
            entry["error"] = secrets.redact(error)
        self.exchanges.append(entry)

    def redacted(self, outcome: Outcome) -> Outcome:
        """The outcome with the attempt's secrets removed from its texts."""
        if not self.secrets or not (outcome.diagnosis or outcome.vendor_message or outcome.warning):
            return outcome
        redact = self.secrets.redact
        return replace(
            outcome,
            diagnosis=redact(outcome.diagnosis) if outcome.diagnosis else None,
            vendor_message=redact(outcome.vendor_message) if outcome.vendor_message else None,
            warning=redact(outcome.warning) if outcome.warning else None,
        )

    def request_json(self) -> str | None:
        if not self.exchanges:
            return None
        return orjson.dumps(self.exchanges).decode()


class HttpClient:
    def __init__(self, *, connections: int = 256) -> None:
        self._ssl = ssl.create_default_context()
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                ssl=self._ssl,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                auto_decompress=True,
                trust_env=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, request: VendorRequest) -> VendorResponse:
        if self._session is None:
            await self.start()
        assert self._session is not None
        async with self._session.request(
            request.method,
            _parsed_url(request.url),
            data=request.body or None,
            headers=request.headers,
            timeout=_timeout(request.timeout_s),
            allow_redirects=False,
        ) as response:
            body = await response.content.read(MAX_RESPONSE_BYTES)
            headers = {name.lower(): value for name, value in response.headers.items()}
            return VendorResponse(response.status, headers, body)

    def exchanger(self, transcript: Transcript) -> Exchanger:
        async def exchange(
            request: VendorRequest, classify: Callable[[VendorResponse], Outcome]
        ) -> Outcome:
            try:
                response = await self.request(request)
            except TimeoutError:
                transcript.add(request, None, f"no answer within {request.timeout_s:g} s")
                return Outcome.retry(
                    f"the receiver did not answer within {request.timeout_s:g} s (timeout); "
                    "will retry"
                )
            except aiohttp.ClientError as exc:
                message = _transport_error(exc)
                transcript.add(request, None, message)
                return transcript.redacted(Outcome.retry(f"{message}; will retry"))
            response.secrets = transcript.secrets  # excerpts in diagnoses come out redacted
            try:  # classified first: a token it reads is marked secret before it is recorded
                outcome = classify(response)
            finally:
                transcript.add(request, response, None)
            return transcript.redacted(outcome)

        return exchange


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> URL:
    """Channels send to a handful of URLs over and over; parse each once."""
    return URL(url)


def _transport_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate check failed for {exc.host}: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection without answering"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL {exc.url}"
    return f"HTTP error: {type(exc).__name__}: {exc}"
