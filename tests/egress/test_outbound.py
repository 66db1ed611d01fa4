"""The one HTTP client against local servers: the policy at connect time (DNS rebinding), the
proxy (the target still judged, NO_PROXY) and trust (MSGPUSH_CA_FILE, a channel's ca_pem)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from msgpush.channels.base import Outcome, VendorRequest, VendorResponse
from msgpush.delivery.http import HttpClient, Transcript
from msgpush.egress import EgressPolicy
from tests.egress.fakes import (
    LocalCertificates,
    RecordingProxy,
    ScriptedResolver,
    make_certificates,
    start_site,
)


def _classify(response: VendorResponse) -> Outcome:
    if response.status == 200:
        return Outcome.delivered()
    return Outcome.failed(f"HTTP {response.status}")


async def _exchange(http: HttpClient, url: str, ca_pem: str | None = None) -> Outcome:
    request = VendorRequest("POST", url, {"Connection": "close"}, b"{}", 5.0, ca_pem=ca_pem)
    return await http.exchanger(Transcript())(request, _classify)


class Hits:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Hits, int]]:
    hits = Hits()
    runner, port = await start_site(hits.app())
    yield hits, port
    await runner.cleanup()


@pytest.fixture(scope="module")
def certificates() -> LocalCertificates:
    return make_certificates()


@pytest.fixture
async def tls_receiver(
    certificates: LocalCertificates, tmp_path: Path
) -> AsyncIterator[tuple[Hits, int]]:
    hits = Hits()
    runner, port = await start_site(hits.app(), certificates.server_context(tmp_path))
    yield hits, port
    await runner.cleanup()


@pytest.fixture
async def proxy() -> AsyncIterator[RecordingProxy]:
    instance = await RecordingProxy().start()
    yield instance
    await instance.stop()


async def test_a_name_that_rebinds_to_a_refused_address_is_refused_at_connect(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[Hits, int]
) -> None:
    hits, port = receiver
    # 127.0.0.1 stands in for a public address (traffic stays on loopback); then the name
    # rebinds to the metadata address.
    dns = ScriptedResolver("127.0.0.1", "169.254.169.254")
    monkeypatch.setattr("msgpush.egress.DefaultResolver", lambda: dns)
    http = HttpClient(policy=EgressPolicy.from_settings("127.0.0.1", ""))
    await http.start()
    try:
        first = await _exchange(http, f"http://rebind.test:{port}/first")
        assert first.kind == "delivered"
        assert http._session is not None
        http._session.connector.clear_dns_cache()  # type: ignore[union-attr]  # the TTL ran out
        second = await _exchange(http, f"http://rebind.test:{port}/second")
    finally:
        await http.close()
    assert second.kind == "failed"  # permanent: no retry
    assert second.diagnosis is not None
    assert "rebind.test (169.254.169.254)" in second.diagnosis
    assert "MSGPUSH_EGRESS_ALLOW" in second.diagnosis
    assert hits.paths == ["/first"]


async def test_everything_goes_through_the_proxy_and_the_target_is_still_judged(
    proxy: RecordingProxy, receiver: tuple[Hits, int]
) -> None:
    hits, port = receiver
    allowing = HttpClient(policy=EgressPolicy.from_settings("127.0.0.1", ""), proxy=proxy.url)
    strict = HttpClient(proxy=proxy.url)  # the proxy is on loopback: the operator's choice
    try:
        assert (await _exchange(allowing, f"http://127.0.0.1:{port}/via")).kind == "delivered"
        assert proxy.requests == [f"POST http://127.0.0.1:{port}/via"]
        assert hits.paths == ["/via"]
        for url in (f"http://localhost:{port}/no", f"http://127.0.0.1:{port}/no"):
            refused = await _exchange(strict, url)
            assert refused.kind == "failed"
            assert "MSGPUSH_EGRESS_ALLOW" in (refused.diagnosis or "")
    finally:
        await allowing.close()
        await strict.close()
    assert len(proxy.requests) == 1
    assert hits.paths == ["/via"]


async def test_no_proxy_targets_are_sent_to_directly(
    proxy: RecordingProxy, receiver: tuple[Hits, int]
) -> None:
    hits, port = receiver
    http = HttpClient(
        policy=EgressPolicy.from_settings("127.0.0.1", ""), proxy=proxy.url, no_proxy="127.0.0.0/8"
    )
    try:
        assert (await _exchange(http, f"http://127.0.0.1:{port}/direct")).kind == "delivered"
    finally:
        await http.close()
    assert proxy.requests == []
    assert hits.paths == ["/direct"]


async def test_tls_to_an_internal_ca_needs_its_certificate(
    tls_receiver: tuple[Hits, int], certificates: LocalCertificates, tmp_path: Path
) -> None:
    hits, port = tls_receiver
    url = f"https://localhost:{port}/tls"
    policy = EgressPolicy.from_settings("localhost", "")
    ca_file = tmp_path / "corporate-ca.pem"
    ca_file.write_text(certificates.ca_pem)
    plain = HttpClient(policy=policy)
    with_ca_file = HttpClient(policy=policy, ca_file=ca_file)
    try:
        untrusted = await _exchange(plain, url)
        assert untrusted.kind == "retry"
        assert "TLS certificate check failed" in (untrusted.diagnosis or "")
        assert (await _exchange(with_ca_file, url)).kind == "delivered"
        assert (await _exchange(plain, url, ca_pem=certificates.ca_pem)).kind == "delivered"
        # the channel's CA is its own: the shared context still does not trust it
        assert (await _exchange(plain, url)).kind == "retry"
    finally:
        await plain.close()
        await with_ca_file.close()
    assert hits.paths == ["/tls", "/tls"]


async def test_https_through_the_proxy_tunnels_with_connect(
    proxy: RecordingProxy, tls_receiver: tuple[Hits, int], certificates: LocalCertificates
) -> None:
    hits, port = tls_receiver
    http = HttpClient(policy=EgressPolicy.from_settings("localhost", ""), proxy=proxy.url)
    try:
        outcome = await _exchange(http, f"https://localhost:{port}/tunnel", certificates.ca_pem)
    finally:
        await http.close()
    assert outcome.kind == "delivered", outcome
    assert proxy.requests == [f"CONNECT localhost:{port}"]
    assert hits.paths == ["/tunnel"]
