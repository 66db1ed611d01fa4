"""The one outbound HTTP session (aiohttp, keep-alive, one TLS context) and the exchange.

Every vendor request goes through ``HttpClient.exchange``: it times the request, turns
transport failures into retryable outcomes, keeps a redacted transcript for the attempt record,
and lets the channel classify the answer.

Every connection is judged by the egress policy (``msgpush.egress``): names in the session's
resolver, at connect time; IP literals (which never reach a resolver) once per URL; targets sent
through the proxy (``MSGPUSH_PROXY``, which resolves them itself) by resolving them here first.
A refusal is a permanent failure. TLS: the system store plus ``MSGPUSH_CA_FILE``, and a
channel's own ``ca_pem`` in a context of its own; certificates are always checked.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import orjson
from yarl import URL

from msgpush.channels.base import Exchanger, Outcome, VendorRequest, VendorResponse
from msgpush.egress import (
    EgressPolicy,
    EgressRefused,
    EgressResolver,
    ResolvedVerdicts,
    address_of,
    host_matches,
    parse_targets,
)
from msgpush.redact import SecretSet, redact_headers, redact_url, scrub_tokens

MAX_RESPONSE_BYTES = 256 * 1024
TRANSCRIPT_BODY_CHARS = 16_000
TRANSCRIPT_RESPONSE_CHARS = 2_000
USER_AGENT = "msgpush/0.1 (+https://github.com/msgpush)"
TARGET_CACHE_SIZE = 4096


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


class _Target(NamedTuple):
    """What is known of a URL before any connection: parsed, its proxy, a literal refusal."""

    url: URL
    proxy: URL | None
    refused: EgressRefused | None
    judge_before_proxy: bool  # a name the proxy would resolve: msgpush resolves and judges it


class ProxyChoice:
    """``MSGPUSH_PROXY`` for every target except those ``MSGPUSH_NO_PROXY`` names (host names
    and their subdomains, addresses and CIDRs; ``*``: none)."""

    def __init__(self, proxy: str | None, no_proxy: str = "") -> None:
        self.url = URL(proxy) if proxy else None
        self._everything_direct = no_proxy.strip() == "*"
        self._networks, self._hosts = parse_targets(
            "" if self._everything_direct else no_proxy, "MSGPUSH_NO_PROXY"
        )

    def for_host(self, host: str) -> URL | None:
        if self.url is None or self._everything_direct or host_matches(host, self._hosts):
            return None
        address = address_of(host)
        if address is not None and any(address in net for net in self._networks):
            return None
        return self.url

    def exempt(self) -> list[tuple[str, int]]:
        """The proxy's own (host, port): the operator's choice, not judged by the policy."""
        if self.url is None or not self.url.raw_host:
            return []
        return [(self.url.raw_host, self.url.port or 0)]


def tls_context(ca_file: Path | None = None, ca_pem: str | None = None) -> ssl.SSLContext:
    """The system's trust store plus ``ca_file`` and ``ca_pem``; certificate checks always on."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return context


class HttpClient:
    def __init__(
        self,
        *,
        connections: int = 256,
        policy: EgressPolicy | None = None,
        proxy: str | None = None,
        no_proxy: str = "",
        ca_file: Path | None = None,
    ) -> None:
        self._ca_file = ca_file
        self._ssl = tls_context(ca_file)
        self._ssl_by_pem: dict[str, ssl.SSLContext] = {}
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.policy = policy or EgressPolicy()
        self._proxy = ProxyChoice(proxy, no_proxy)
        self._proxied = ResolvedVerdicts(self.policy)
        self._targets: dict[str, _Target] = {}

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                ssl=self._ssl,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
                resolver=EgressResolver(self.policy, self._proxy.exempt()),
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

    def _target(self, url: str) -> _Target:
        """Channels send to a handful of URLs over and over; parse and judge each once."""
        target = self._targets.get(url)
        if target is None:
            parsed = URL(url)
            host = parsed.raw_host or ""
            proxy = self._proxy.for_host(host)
            target = _Target(
                parsed,
                proxy,
                self.policy.literal_refusal(parsed),
                proxy is not None and address_of(host) is None,
            )
            if len(self._targets) >= TARGET_CACHE_SIZE:
                self._targets.clear()
            self._targets[url] = target
        return target

    def _ssl_for(self, ca_pem: str) -> ssl.SSLContext:
        context = self._ssl_by_pem.get(ca_pem)
        if context is None:
            context = self._ssl_by_pem[ca_pem] = tls_context(self._ca_file, ca_pem)
        return context

    async def request(self, request: VendorRequest) -> VendorResponse:
        """Send one request; raises EgressRefused when the policy refuses its target."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        target = self._target(request.url)
        if target.refused is not None:
            raise target.refused
        if target.judge_before_proxy:
            await self._proxied.check(target.url)
        try:
            async with self._session.request(
                request.method,
                target.url,
                data=request.body or None,
                headers=request.headers,
                timeout=_timeout(request.timeout_s),
                allow_redirects=False,
                proxy=target.proxy,
                ssl=self._ssl_for(request.ca_pem) if request.ca_pem else True,
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BYTES)
                headers = {name.lower(): value for name, value in response.headers.items()}
                return VendorResponse(response.status, headers, body)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, EgressRefused):
                raise exc.os_error from None
            raise

    def exchanger(self, transcript: Transcript) -> Exchanger:
        async def exchange(
            request: VendorRequest, classify: Callable[[VendorResponse], Outcome]
        ) -> Outcome:
            try:
                response = await self.request(request)
            except EgressRefused as refused:
                transcript.add(request, None, str(refused))
                return transcript.redacted(Outcome.failed(str(refused)))
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
