"""The egress policy: which addresses msgpush may send to (against SSRF).

msgpush sends wherever a channel's settings say, so a settings writer could point it at the
machine it runs on (its own API, a database port), at a cloud metadata service or at other
special addresses. The policy judges every address a request would connect to, after DNS
resolution and at connect time (``EgressResolver`` sits inside the one aiohttp session), so
a name that resolves to a refused address is refused and DNS rebinding cannot slip through.

Order of the verdict for one (host name, address, port):

1. msgpush's own API (a local address at a port msgpush listens on) is always refused;
2. ``MSGPUSH_EGRESS_DENY`` (CIDRs and host names) refuses;
3. ``MSGPUSH_EGRESS_ALLOW`` (CIDRs and host names) allows;
4. by default, global addresses and the private ranges (10/8, 172.16/12, 192.168/16,
   fc00::/7) are allowed; loopback, link-local (cloud metadata), unspecified, multicast,
   reserved, broadcast and the other special-purpose ranges are refused.

IPv4-mapped, 6to4, Teredo and NAT64 IPv6 forms are judged by the IPv4 address they carry.
A host name entry matches that name and its subdomains (``example.com`` matches
``hooks.example.com``), case-insensitively.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_SETTING = "MSGPUSH_EGRESS_ALLOW"
PRIVATE_RANGES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What glibc's inet_aton reads as an IPv4 address (127.1, 2130706433, 0x7f000001, 0177.0.0.1).
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)
RESOLVE_TIMEOUT_S = 3.0


class EgressRefused(OSError):
    """A target the egress policy refuses; the message says why and how to allow it."""

    def __init__(self, host: str, address: str, reason: str, *, own_api: bool = False) -> None:
        shown = host if host == address else f"{host} ({address})"
        if own_api:
            text = (
                f"msgpush refuses to send to {shown}: {reason}. msgpush never sends to its own "
                f"API, whatever {ALLOW_SETTING} says"
            )
        else:
            text = (
                f"msgpush refuses to send to {shown}: {reason}. To allow this target on "
                f"purpose, add it to {ALLOW_SETTING} (e.g. {ALLOW_SETTING}={address})"
            )
        super().__init__(text)
        self.host = host
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])


def parse_targets(text: str, setting: str) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
    """``a, b, c`` of CIDRs, addresses and host names → (networks, host names); ValueError
    naming ``setting`` and the entry when one is neither."""
    networks: list[IPNetwork] = []
    hosts: list[str] = []
    for raw in text.split(","):
        entry = raw.strip().strip("[]").lower().rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        if "/" in entry or not re.fullmatch(r"[a-z0-9_*.-]+", entry):
            raise ValueError(
                f"{setting}: {raw.strip()!r} is neither a CIDR (10.0.0.0/8), an address nor a "
                "host name"
            )
        hosts.append(entry.removeprefix("*."))
    return tuple(networks), tuple(hosts)


def host_matches(host: str, names: Iterable[str]) -> bool:
    """``host`` is one of ``names`` or a subdomain of one."""
    host = host.lower().rstrip(".")
    return any(host == name or host.endswith("." + name) for name in names)


def address_of(host: str) -> IPAddress | None:
    """The IP address a URL host spells, in any spelling a resolver would accept, else None."""
    literal = host.strip("[]")
    try:
        return ipaddress.ip_address(literal)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(literal) and any(c.isdigit() for c in literal):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(literal))
    return None


def carried_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form carries (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def default_refusal(address: IPAddress) -> str | None:
    """Why the default policy refuses ``address`` (None: allowed)."""
    inner = carried_ipv4(address)
    if inner is not None:
        return default_refusal(inner)
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address (this machine)"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if any(address in net for net in PRIVATE_RANGES):
        return None
    if address.is_reserved or not address.is_global:
        return "a reserved or special-purpose address"
    return None


def _is_local(address: IPAddress) -> bool:
    """Whether ``address`` belongs to this machine: only then can a socket bind to it."""
    if address.is_unspecified or address.is_loopback:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def own_ports(listen: str) -> frozenset[int]:
    """The ports of ``host:port, …`` (what MSGPUSH_API_LISTEN holds)."""
    ports = set()
    for entry in listen.split(","):
        _, sep, port = entry.strip().rpartition(":")
        if sep and port.isdigit():
            ports.add(int(port))
    return frozenset(ports)


@dataclass
class EgressPolicy:
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_networks: tuple[IPNetwork, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    api_ports: frozenset[int] = frozenset()
    _local: dict[str, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, allow: str, deny: str, api_listen: str = "") -> EgressPolicy:
        allow_networks, allow_hosts = parse_targets(allow, ALLOW_SETTING)
        deny_networks, deny_hosts = parse_targets(deny, "MSGPUSH_EGRESS_DENY")
        return cls(allow_networks, allow_hosts, deny_networks, deny_hosts, own_ports(api_listen))

    def refusal(self, host: str, address: IPAddress, port: int) -> EgressRefused | None:
        """The refusal of a connection to ``address``:``port`` for URL host ``host``, or None."""
        judged = carried_ipv4(address) or address
        shown = str(address)
        if port in self.api_ports and self._is_local(judged):
            return EgressRefused(host, shown, f"port {port} here is msgpush's API", own_api=True)
        if host_matches(host, self.deny_hosts) or any(judged in n for n in self.deny_networks):
            return EgressRefused(host, shown, "it is listed in MSGPUSH_EGRESS_DENY")
        if host_matches(host, self.allow_hosts) or any(judged in n for n in self.allow_networks):
            return None
        reason = default_refusal(judged)
        return EgressRefused(host, shown, f"{reason}") if reason else None

    def _is_local(self, address: IPAddress) -> bool:
        key = str(address)
        local = self._local.get(key)
        if local is None:
            local = self._local[key] = _is_local(address)
        return local

    def literal_refusal(self, url: URL) -> EgressRefused | None:
        """The refusal of a URL whose host is an IP address in any spelling (None for names:
        the resolver judges those). IP literals never reach a resolver, hence this check."""
        host = url.raw_host or ""
        address = address_of(host)
        if address is None:
            if host_matches(host, self.deny_hosts):
                return EgressRefused(host, host, "it is listed in MSGPUSH_EGRESS_DENY")
            return None
        return self.refusal(host, address, url.port or 0)

    async def check(self, url: URL, *, timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
        """Raise EgressRefused when ``url``'s host, as this machine resolves it now, is refused.
        A name that does not resolve here is let through: the connection decides later."""
        refused = self.literal_refusal(url)
        if refused is not None:
            raise refused
        host = url.raw_host or ""
        if address_of(host) is not None:
            return
        port = url.port or 0
        try:
            async with asyncio.timeout(timeout_s):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except (OSError, TimeoutError):
            return
        for *_, sockaddr in infos:
            refused = self.refusal(host, ipaddress.ip_address(sockaddr[0]), port)
            if refused is not None:
                raise refused


class EgressResolver(AbstractResolver):
    """aiohttp's resolver, judged: every address a name resolves to must pass the policy, or the
    connection fails with EgressRefused (aiohttp connects only to the addresses returned here,
    so what is judged is what is connected to). ``exempt`` (host, port) pairs, the configured
    proxy, are the operator's own and not judged."""

    def __init__(
        self, policy: EgressPolicy, exempt: Iterable[tuple[str, int]] = (), inner: Any = None
    ) -> None:
        self._policy = policy
        self._exempt = set(exempt)
        self._inner: AbstractResolver = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if (host, port) in self._exempt:
            return results
        for result in results:
            refused = self._policy.refusal(host, ipaddress.ip_address(result["host"]), port)
            if refused is not None:
                raise refused
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class ResolvedVerdicts:
    """Verdicts on target names sent through the proxy (which resolves them itself): judged as
    this machine resolves them, remembered for ``ttl_s`` like aiohttp's own DNS cache."""

    policy: EgressPolicy
    ttl_s: float = 300.0
    _until: dict[tuple[str, int], float] = field(default_factory=dict)

    async def check(self, url: URL) -> None:
        key = (url.raw_host or "", url.port or 0)
        if self._until.get(key, 0.0) > time.monotonic():
            return
        await self.policy.check(url)
        if len(self._until) > 4096:
            self._until.clear()
        self._until[key] = time.monotonic() + self.ttl_s
