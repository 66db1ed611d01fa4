"""The one outbound HTTP session (aiohttp, keep-alive, one TLS context) and the exchange.

Every vendor request goes through ``HttpClient.exchange``: it times the request, turns
transport failures into retryable outcomes, keeps a redacted transcript for the attempt record,
and lets the channel classify the answer.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from yarl import URL

from msgpush.channels.base import Exchanger, Outcome, VendorRequest, VendorResponse
from msgpush.redact import redact_headers, redact_url, scrub, scrub_tokens

MAX_RESPONSE_BYTES = 256 * 1024
TRANSCRIPT_BODY_CHARS = 16_000
USER_AGENT = "msgpush/0.1 (+https://github.com/msgpush)"


@dataclass
class Transcript:
    """What one attempt sent and received, secrets removed, for the delivery history."""

    secrets: list[str] = field(default_factory=list)
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    last_status: int | None = None

    def add(
        self, request: VendorRequest, response: VendorResponse | None, error: str | None
    ) -> None:
        body = scrub_tokens(
            scrub(request.body[:TRANSCRIPT_BODY_CHARS].decode("utf-8", "replace"), self.secrets)
        )
        entry: dict[str, Any] = {
            "method": request.method,
            "url": redact_url(request.url, self.secrets),
            "headers": redact_headers(request.headers, self.secrets),
            "body": body,
        }
        if response is not None:
            entry["status"] = response.status
            entry["response"] = scrub_tokens(scrub(response.text(2_000), self.secrets))
            self.last_status = response.status
        if error:
            entry["error"] = scrub(error, self.secrets)
        self.exchanges.append(entry)

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
                return Outcome.retry(scrub(f"{message}; will retry", transcript.secrets))
            transcript.add(request, response, None)
            outcome = classify(response)
            if outcome.diagnosis:
                outcome = _scrubbed(outcome, transcript.secrets)
            return outcome

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


def _scrubbed(outcome: Outcome, secrets: Iterable[str]) -> Outcome:
    from dataclasses import replace

    secrets = list(secrets)
    return replace(
        outcome,
        diagnosis=scrub(outcome.diagnosis or "", secrets) or None,
        vendor_message=scrub(outcome.vendor_message, secrets) if outcome.vendor_message else None,
    )
