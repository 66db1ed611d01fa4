"""The egress policy in isolation: every spelling of a refused address, IPv6 and its IPv4
forms, ALLOW/DENY precedence, host names, the own-API guard, the resolver and the proxy choice."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any

import pytest
from yarl import URL

from msgpush.delivery.http import ProxyChoice
from msgpush.egress import (
    EgressPolicy,
    EgressRefused,
    EgressResolver,
    address_of,
    parse_targets,
)
from msgpush.settings import Settings
from tests.egress.fakes import ScriptedResolver

DEFAULT = EgressPolicy()

REFUSED_BY_DEFAULT = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "[::1]",
    "0.0.0.0",
    "[::]",
    "169.254.169.254",
    "[fe80::1]",
    "224.0.0.1",
    "[ff02::1]",
    "240.0.0.1",
    "255.255.255.255",
    "100.64.0.1",
    "192.0.2.10",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
]
ALLOWED_BY_DEFAULT = [
    "10.1.2.3",
    "172.16.0.5",
    "192.168.1.1",
    "[fd00::1]",
    "8.8.8.8",
    "[2606:4700::1111]",
    "[::ffff:10.0.0.1]",
]


@pytest.mark.parametrize("host", REFUSED_BY_DEFAULT)
def test_default_policy_refuses_special_addresses_in_any_spelling(host: str) -> None:
    refused = DEFAULT.literal_refusal(URL(f"http://{host}:8000/x?key=SECRET"))
    assert refused is not None, host
    assert "MSGPUSH_EGRESS_ALLOW" in str(refused)
    assert "SECRET" not in str(refused) and "/x" not in str(refused)


@pytest.mark.parametrize("host", ALLOWED_BY_DEFAULT)
def test_default_policy_allows_private_and_global_addresses(host: str) -> None:
    assert DEFAULT.literal_refusal(URL(f"http://{host}/")) is None


def test_odd_spellings_read_as_the_address_a_resolver_would_use() -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    for spelling in ("127.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.0.0.1"):
        assert address_of(spelling) == loopback
    assert address_of("[::1]") == ipaddress.ip_address("::1")
    assert address_of("hooks.example.com") is None
    assert address_of("cafe.example") is None


def test_allow_wins_over_the_defaults_and_deny_over_allow() -> None:
    policy = EgressPolicy.from_settings("127.0.0.0/8, ::1", "127.0.0.9")
    assert policy.literal_refusal(URL("http://127.0.0.1:9000/")) is None
    assert policy.literal_refusal(URL("http://[::ffff:127.0.0.1]:9000/")) is None
    assert policy.literal_refusal(URL("http://[::1]:9000/")) is None
    refused = policy.literal_refusal(URL("http://127.0.0.9:9000/"))
    assert refused is not None and "MSGPUSH_EGRESS_DENY" in str(refused)
    assert policy.literal_refusal(URL("http://169.254.169.254/")) is not None


def test_deny_refuses_what_the_defaults_allow() -> None:
    policy = EgressPolicy.from_settings("", "10.0.0.0/8, internal.example")
    assert policy.literal_refusal(URL("http://10.9.9.9/")) is not None
    assert policy.literal_refusal(URL("http://[::ffff:10.9.9.9]/")) is not None
    assert policy.literal_refusal(URL("http://hooks.internal.example/")) is not None
    assert policy.literal_refusal(URL("http://internal.example.org/")) is None


def test_host_names_match_the_name_and_its_subdomains() -> None:
    policy = EgressPolicy.from_settings("localhost, dev.example", "")
    address = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal("localhost", address, 80) is None
    assert policy.refusal("hooks.dev.example", address, 80) is None
    assert policy.refusal("LOCALHOST.", address, 80) is None
    assert policy.refusal("notdev.example", address, 80) is not None
    assert DEFAULT.refusal("localhost", address, 80) is not None


def test_own_api_is_refused_whatever_is_allowed() -> None:
    policy = EgressPolicy.from_settings(
        "127.0.0.0/8, ::/0, 0.0.0.0/0, localhost", "", "0.0.0.0:8080"
    )
    for host in ("127.0.0.1", "127.0.0.2", "[::1]", "0.0.0.0", "[::ffff:127.0.0.1]"):
        refused = policy.literal_refusal(URL(f"http://{host}:8080/api/v1/tokens"))
        assert refused is not None, host
        assert "own API" in str(refused)
    assert policy.literal_refusal(URL("http://127.0.0.1:8081/")) is None
    # an address of another machine at the same port is not msgpush's API
    assert policy.literal_refusal(URL("http://192.0.2.1:8080/")) is None
    assert policy.refusal("localhost", ipaddress.ip_address("127.0.0.1"), 8080) is not None


def test_bad_entries_are_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="MSGPUSH_EGRESS_ALLOW"):
        parse_targets("10.0.0.0/33", "MSGPUSH_EGRESS_ALLOW")
    with pytest.raises(ValueError, match="MSGPUSH_EGRESS_DENY"):
        Settings(egress_deny="http://x/y")
    assert parse_targets(" 10.0.0.0/8 , [::1], Hooks.Example. ", "X") == (
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
        ("hooks.example",),
    )


def test_resolver_refuses_a_name_that_rebinds_to_loopback() -> None:
    inner = ScriptedResolver("93.184.216.34", "127.0.0.1")
    resolver = EgressResolver(DEFAULT, inner=inner)

    async def run() -> Any:
        first = await resolver.resolve("rebind.example", 80)
        with pytest.raises(EgressRefused) as refused:
            await resolver.resolve("rebind.example", 80)
        return first, refused.value

    first, refused = asyncio.run(run())
    assert first[0]["host"] == "93.184.216.34"
    assert "rebind.example (127.0.0.1)" in str(refused)


def test_resolver_refuses_a_name_when_any_of_its_addresses_is_refused() -> None:
    inner = ScriptedResolver("10.0.0.1", "169.254.169.254", per_lookup=2)
    resolver = EgressResolver(DEFAULT, inner=inner)
    with pytest.raises(EgressRefused, match="link-local"):
        asyncio.run(resolver.resolve("mixed.example", 80))


def test_resolver_lets_the_configured_proxy_through() -> None:
    resolver = EgressResolver(DEFAULT, [("proxy.corp", 3128)], inner=ScriptedResolver("127.0.0.1"))
    assert asyncio.run(resolver.resolve("proxy.corp", 3128))[0]["host"] == "127.0.0.1"


def test_check_resolves_names_before_saving() -> None:
    with pytest.raises(EgressRefused, match=re.escape("localhost (127.0.0.1)")):
        asyncio.run(DEFAULT.check(URL("http://localhost:9000/")))
    asyncio.run(DEFAULT.check(URL("http://does-not-resolve.invalid/")))  # decided at send time


def test_no_proxy_names_hosts_suffixes_and_cidrs() -> None:
    choice = ProxyChoice("http://proxy.corp:3128", "internal.example, 10.0.0.0/8")
    assert choice.for_host("api.vendor.example") == URL("http://proxy.corp:3128")
    assert choice.for_host("hooks.internal.example") is None
    assert choice.for_host("10.1.1.1") is None
    assert ProxyChoice("http://proxy.corp:3128", "*").for_host("x.example") is None
    assert ProxyChoice(None).for_host("x.example") is None
