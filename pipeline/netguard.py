"""Which addresses ``image_url`` may reach: public ones, and the networks an operator opens.

The check is made on the address actually connected to, after DNS resolution. IPv4 hidden
inside IPv6 (mapped, compatible, 6to4, Teredo, NAT64) is unwrapped and checked as IPv4.
This module only judges addresses. Host names are refused before they get here when they
spell IPv4 in a non-canonical form (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``0x7f.1``,
``127.1``): ``pipeline.fetch.parse_source_url`` accepts a numeric host only as dotted-quad
decimal, because resolvers disagree on how to read the other spellings. Whatever a host
resolves to is still checked here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if it is one of the IPv4-in-IPv6 forms."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client address; the server half is checked below too
    if ip in _NAT64_WELL_KNOWN or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    packed = int(ip)
    if packed >> 32 == 0 and packed > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed)
    return None


def _public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_unspecified
    )


class AddressPolicy:
    """Decides whether an address may be connected to.

    Args:
        allowed_networks: CIDRs opened although they are not public.
    """

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)

    def _opened(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allowed)

    def permits(self, address: str | IPAddress) -> bool:
        """True if ``address`` is public or inside an opened network, wrapped forms included."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%")[0])
        inner = embedded_ipv4(ip)
        if inner is None:
            return self._opened(ip) or _public(ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
            server = ip.teredo[0]
            if not (self._opened(server) or _public(server)):
                return False
        return self._opened(inner) or _public(inner)
