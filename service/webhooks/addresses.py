"""Which IP addresses a webhook may reach, however they are written.

The ranges are listed here rather than taken from `ipaddress`'s flags alone,
and IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4) are judged by
the IPv4 address they reach.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4, _V6 = ipaddress.IPv4Network, ipaddress.IPv6Network
# Why each range is refused. Python's own is_global/is_private flags disagree
# across versions (3.11 calls 224.0.0.0/4 and 64:ff9b::/96 "global"), so the
# list is ours; the flags are only a second net below it.
_REFUSED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified/this-network address"),
    (_V4("10.0.0.0/8"), "private address (RFC 1918)"),
    (_V4("100.64.0.0/10"), "carrier-grade NAT address (RFC 6598)"),
    (_V4("127.0.0.0/8"), "loopback address"),
    (_V4("169.254.0.0/16"), "link-local address"),
    (_V4("172.16.0.0/12"), "private address (RFC 1918)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignment address"),
    (_V4("192.0.2.0/24"), "documentation address"),
    (_V4("192.88.99.0/24"), "6to4 relay address"),
    (_V4("192.168.0.0/16"), "private address (RFC 1918)"),
    (_V4("198.18.0.0/15"), "benchmarking address"),
    (_V4("198.51.100.0/24"), "documentation address"),
    (_V4("203.0.113.0/24"), "documentation address"),
    (_V4("224.0.0.0/4"), "multicast address"),
    (_V4("240.0.0.0/4"), "reserved address"),
    (_V6("::/128"), "unspecified address"),
    (_V6("::1/128"), "loopback address"),
    (_V6("::/8"), "reserved address (IPv4-compatible or unassigned)"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64 address"),
    (_V6("100::/64"), "discard-only address"),
    (_V6("2001::/32"), "Teredo tunnel address"),
    (_V6("2001:db8::/32"), "documentation address"),
    (_V6("fc00::/7"), "unique-local address"),
    (_V6("fe80::/10"), "link-local address"),
    (_V6("fec0::/10"), "site-local address"),
    (_V6("ff00::/8"), "multicast address"),
)
_NAT64 = _V6("64:ff9b::/96")
# Cloud instance-metadata endpoints (AWS, ECS, GCP, Azure, Alibaba, Oracle).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200",
              "192.0.0.192")
)
_V4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """Parse IPv4 the way C's inet_aton does (and so curl, browsers and getaddrinfo).

    `2130706433`, `0x7f.1`, `017700000001` and `127.1` all mean 127.0.0.1; a
    guard that only knew dotted quads would pass them through.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.fullmatch(p) for p in parts):
        return None
    nums = []
    for p in parts:
        if p[:2].lower() == "0x":
            nums.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p[0] == "0":
            nums.append(int(p, 8))
        else:
            nums.append(int(p))
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = 0
    for n in head:
        value = value << 8 | n
    return ipaddress.IPv4Address(value << (8 * (4 - len(head))) | last)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a v6 form carries (mapped, NAT64, 6to4), which is what it reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be called, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            why = refusal_reason(inner)
            return f"IPv6 form of a {why}" if why else None
    if ip in _METADATA_ADDRESSES:
        return "cloud metadata address"
    for network, why in _REFUSED:
        if ip.version == network.version and ip in network:
            return why
    if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast:
        return "non-public address"
    if ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "non-public address"
    return None


def is_metadata(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in _METADATA_ADDRESSES
