"""The SSRF guard: which webhook URLs may be called, and at which addresses.

A webhook URL is supplied by a client but called from inside our network, so
it must never reach loopback, private ranges, link-local (cloud metadata),
multicast or reserved addresses, however the address is spelled. Two checks:

- at submit, `check_webhook_url` refuses a bad URL and a host whose addresses
  are all refused (or that does not resolve);
- at every delivery, `resolve_target` resolves again and returns only the
  addresses that pass; the transport connects to one of exactly those, so a DNS
  answer that changes between check and connect (rebinding) cannot redirect
  the request: there is no second lookup.

`JANUS_WEBHOOK_ALLOWLIST` (host names, addresses or CIDR networks) lifts the
check for what it names; `JANUS_WEBHOOK_ALLOW_PRIVATE=1` lifts it for every
address except cloud metadata endpoints, which only an explicit allow-list
entry can open.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from service.core.settings import Settings
from service.webhooks.addresses import IPAddress, inet_aton, is_metadata, refusal_reason

Resolver = Callable[..., list[tuple[Any, ...]]]

MAX_URL_LENGTH = 2048
SUBMIT_RESOLVE_TIMEOUT = 3.0

_METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "instance-data.ec2.internal", "instance-data"}
)
_HOST_CHARS = re.compile(r"[a-z0-9._-]+")


class UnsafeWebhookURL(ValueError):
    """The URL may not be called; the message says why, in a sentence for the client."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # ASCII, lowercase, no brackets, no trailing dot
    port: int
    host_header: str  # what the Host header (and TLS SNI, without the port) carry
    path: str  # path and query; the fragment is never sent
    literal: IPAddress | None  # set when the URL names an address, not a name


@lru_cache(maxsize=32)
def _allowlist(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[Any, ...]]:
    """(host names, networks) from JANUS_WEBHOOK_ALLOWLIST entries."""
    hosts, networks = set(), []
    for entry in entries:
        entry = entry.strip().lower().rstrip(".").strip("[]")
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry)
    return frozenset(hosts), tuple(networks)


def _host_allowlisted(host: str, settings: Settings) -> bool:
    return host in _allowlist(tuple(settings.webhook_allowlist))[0]


def _ip_allowlisted(ip: IPAddress, settings: Settings) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    networks = _allowlist(tuple(settings.webhook_allowlist))[1]
    return any(ip.version == n.version and ip in n for n in networks)


def address_refusal(ip: IPAddress, host: str, settings: Settings) -> str | None:
    """Why this deployment refuses `ip` for `host`, or None when it may be called."""
    why = refusal_reason(ip)
    if why is None or _host_allowlisted(host, settings) or _ip_allowlisted(ip, settings):
        return None
    if settings.webhook_allow_private and not is_metadata(ip):
        return None
    return why


def _normalize_host(raw: str) -> str:
    try:
        host = raw.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise UnsafeWebhookURL(f"webhook host {raw!r} is not a valid host name") from exc
    return host[:-1] if host.endswith(".") else host


def parse_url(url: str) -> Target:
    """The static checks: scheme, host, no credentials, a sane port, no odd characters."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookURL(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise UnsafeWebhookURL("webhook URL contains whitespace, control characters or '\\'")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeWebhookURL(f"webhook URL cannot be parsed: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookURL("webhook must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeWebhookURL("webhook URL must not carry credentials")
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookURL("webhook URL has an invalid port") from exc
    if explicit_port == 0:
        raise UnsafeWebhookURL("webhook URL has an invalid port")
    port = explicit_port or (443 if parts.scheme == "https" else 80)
    v6 = parts.netloc.startswith("[")
    literal: IPAddress | None
    if v6:
        host = parts.hostname
        if "%" in host:
            raise UnsafeWebhookURL("webhook host must not carry an IPv6 zone identifier")
        try:
            literal = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UnsafeWebhookURL(f"webhook host [{host}] is not an IPv6 address") from exc
        host = literal.compressed
    else:
        host = _normalize_host(parts.hostname)
        if not _HOST_CHARS.fullmatch(host) or ".." in host:
            raise UnsafeWebhookURL(f"webhook host {host!r} is not a valid host name")
        literal = inet_aton(host)
    if host in _METADATA_HOSTS:
        raise UnsafeWebhookURL(f"webhook host {host!r} is a cloud metadata endpoint")
    shown = f"[{host}]" if v6 else host
    host_header = shown if explicit_port is None else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, host_header, path, literal)


def _lookup(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    found: list[IPAddress] = []
    for *_, sockaddr in resolver(host, port, type=socket.SOCK_STREAM):
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    return found


def resolve_target(
    target: Target, settings: Settings, resolver: Resolver = socket.getaddrinfo
) -> list[IPAddress]:
    """The addresses that may be called for `target`, in resolver order; never empty.

    Resolving here, once, and connecting only to what this returns is what
    makes the guard hold against DNS rebinding.
    """
    if target.host in _METADATA_HOSTS and not _host_allowlisted(target.host, settings):
        raise UnsafeWebhookURL(f"webhook host {target.host!r} is a cloud metadata endpoint")
    if target.literal is not None:
        addresses: list[IPAddress] = [target.literal]
    else:
        try:
            addresses = _lookup(target.host, target.port, resolver)
        except (OSError, UnicodeError, ValueError) as exc:
            raise UnsafeWebhookURL(f"webhook host {target.host!r} does not resolve") from exc
        if not addresses:
            raise UnsafeWebhookURL(f"webhook host {target.host!r} does not resolve")
    allowed, refused = [], []
    for ip in addresses:
        why = address_refusal(ip, target.host, settings)
        if why is None:
            allowed.append(ip)
        else:
            refused.append(f"{ip} ({why})")
    if not allowed and target.literal is not None:
        raise UnsafeWebhookURL(f"webhook host {target.host!r} is a refused address: {refused[0]}")
    if not allowed:
        raise UnsafeWebhookURL(
            f"webhook host {target.host!r} resolves only to refused addresses: "
            + ", ".join(refused)
        )
    return allowed


_SUBMIT_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-resolve")
# Submit-time verdicts, briefly: a 10,000-line batch naming one webhook resolves it
# once, not 10,000 times. Delivery never uses this; it always resolves afresh.
_VERDICTS: dict[tuple[Any, ...], tuple[float, str | None]] = {}
_VERDICT_TTL = 10.0


def check_webhook_url(
    url: str,
    settings: Settings,
    resolver: Resolver = socket.getaddrinfo,
    timeout: float = SUBMIT_RESOLVE_TIMEOUT,
) -> Target:
    """Submit-time check; raises UnsafeWebhookURL. The lookup is bounded by `timeout`
    so a slow resolver cannot hold an API thread for the libc default (up to ~30 s)."""
    target = parse_url(url)
    key = (target.host, target.port, tuple(settings.webhook_allowlist),
           settings.webhook_allow_private, resolver)
    cached = _VERDICTS.get(key)
    if cached is None or cached[0] < time.monotonic():
        future = _SUBMIT_RESOLVER.submit(resolve_target, target, settings, resolver)
        try:
            future.result(timeout=timeout)
            verdict = None
        except UnsafeWebhookURL as exc:
            verdict = str(exc)
        except FutureTimeout:
            verdict = f"webhook host {target.host!r} did not resolve within {timeout:g}s"
        if len(_VERDICTS) > 1024:
            _VERDICTS.clear()
        cached = _VERDICTS[key] = (time.monotonic() + _VERDICT_TTL, verdict)
    if cached[1] is not None:
        raise UnsafeWebhookURL(cached[1])
    return target
