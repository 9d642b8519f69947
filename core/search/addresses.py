"""Which addresses the page fetcher may connect to, checked on the address actually connected.

Pages are anybody's, and a result, or any redirect after it, may point into
Herald's own network: the cloud metadata service at 169.254.169.254, Redis, an
admin panel. So a connection goes only to an address the `AddressPolicy` allows
(public addresses, by default): the connector's resolver (`PolicyResolver`)
resolves each host once and refuses a host with any non-public address, and
aiohttp then connects to exactly the addresses it returned (no DNS cache, no
second lookup that a rebinding DNS server could answer differently); a socket
factory (`guarded_socket_factory`) checks each address again as its socket is
made, which also covers IP literals.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import AddrInfoType

from core.search.errors import BlockedAddress

__all__ = [
    "PUBLIC_ONLY",
    "AddressPolicy",
    "HostResolver",
    "IPAddress",
    "PolicyResolver",
    "guarded_socket_factory",
    "is_public_address",
    "parse_ip",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: a host name and port -> its addresses, as text (`system_resolver`; tests map made-up names)
HostResolver = Callable[[str, int], Awaitable[Sequence[str]]]


def _networks(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Spelled out rather than left to `is_global` alone, whose tables differ between
# Python releases (3.11.10, 3.12.4 and 3.13 each changed them).
_NOT_PUBLIC = _networks(
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata services
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation
    "192.88.99.0/24",  # deprecated 6to4 relays
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
    "::/96",  # unspecified, loopback, IPv4-compatible (deprecated)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments, Teredo
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "5f00::/16",  # segment routing
    "fc00::/7",  # unique local addresses
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_ip(address: str | IPAddress) -> IPAddress | None:
    if not isinstance(address, str):
        return address
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
    NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_public_address(address: str | IPAddress) -> bool:
    """True for an address on the public internet; False for anything else, or not an address.

    An IPv6 address that stands for an IPv4 one is judged by that IPv4 address.
    """
    ip = parse_ip(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
        if ip.is_site_local:
            return False
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if ip.is_loopback or ip.is_link_local or ip.is_private:
        return False
    return not any(ip in network for network in _NOT_PUBLIC if network.version == ip.version)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses the page fetcher may connect to: public ones, plus `also_allowed`.

    `also_allowed` exists for tests (a loopback address standing in for a public
    site) and for an operator's deliberate exception; it is matched exactly.
    """

    also_allowed: frozenset[IPAddress] = frozenset()

    def allows(self, address: str | IPAddress) -> bool:
        ip = parse_ip(address)
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.scope_id is not None:
                ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
        return ip in self.also_allowed or is_public_address(ip)


#: the default: public addresses only
PUBLIC_ONLY = AddressPolicy()


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's resolver (`getaddrinfo`, run off the event loop by asyncio)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class PolicyResolver(AbstractResolver):
    """The connector's resolver: resolves once and hands aiohttp only checked addresses.

    A host with any address the policy refuses is refused altogether: a public
    site has no reason to publish a private address, and trying the others would
    still leave the decision to the order of the answers.
    """

    def __init__(self, resolve: HostResolver, policy: AddressPolicy) -> None:
        self._resolve = resolve
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._resolve(host, port)
        addresses: list[IPAddress] = []
        for answer in answers:
            ip = parse_ip(answer)
            if ip is None or not self._policy.allows(ip):
                raise BlockedAddress(f"{host} resolves to {answer}, which is not a public address")
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip not in addresses:
                addresses.append(ip)
        results = [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for ip in addresses
        ]
        results = [r for r in results if family in (socket.AF_UNSPEC, r["family"])]
        if not results:
            raise OSError(errno.EHOSTUNREACH, f"{host} has no usable address")
        return results

    async def close(self) -> None:
        return None


def guarded_socket_factory(policy: AddressPolicy) -> Callable[[AddrInfoType], socket.socket]:
    """aiohttp's socket factory, refusing (EACCES) to make a socket for an address the
    policy refuses: the last check, on the very address about to be connected."""

    def create(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        if not policy.allows(str(sockaddr[0])):
            raise PermissionError(errno.EACCES, f"refused to connect to {sockaddr[0]}: not a public address")
        return socket.socket(family, kind, proto)

    return create
