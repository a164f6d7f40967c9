"""One HTTP POST to an address the SSRF guard already approved.

The connection goes to the checked IP itself; the URL's host name travels only
in the Host header and, for https, as SNI and the name the certificate must
match. No proxy from the environment, no redirects, no urllib3 retries (the
outbox schedule is the retry policy), and at most MAX_RESPONSE_BYTES of the
answer are read, so a receiver can neither steer nor flood the dispatcher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import certifi
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from service.webhooks.addresses import IPAddress
from service.webhooks.ssrf import Target

MAX_RESPONSE_BYTES = 4096
USER_AGENT = "janus-service-webhooks/1"


class TransportError(Exception):
    """No HTTP answer: the message says what went wrong, for the delivery log."""


@dataclass(frozen=True)
class Answer:
    status: int
    location: str | None
    body: bytes  # the first MAX_RESPONSE_BYTES at most
    address: str  # the IP we actually talked to


def _pool(
    target: Target, ip: IPAddress, timeout: urllib3.Timeout, ca_certs: str | None
) -> urllib3.HTTPConnectionPool:
    common = {"host": str(ip), "port": target.port, "timeout": timeout, "maxsize": 1,
              "retries": False}
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            **common,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs or certifi.where(),
            assert_hostname=target.host,
            server_hostname=target.host,  # SNI names the host, not the pinned IP
        )
    return urllib3.HTTPConnectionPool(**common)


def _read_capped(response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    body = b""
    try:
        while len(body) < MAX_RESPONSE_BYTES and time.monotonic() < deadline:
            chunk = response.read(min(1024, MAX_RESPONSE_BYTES - len(body)))
            if not chunk:
                break
            body += chunk
    except HTTPError:
        pass  # the status line already decided the outcome; the body is only for the log
    return body


def _describe(exc: BaseException, ip: IPAddress, port: int, total: float) -> str:
    where = f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"
    if isinstance(exc, NewConnectionError):
        reason = str(exc).split(":", 1)[-1].strip()
        return f"connection to {where} failed: {reason}"
    if isinstance(exc, ConnectTimeoutError):
        return f"timeout: connecting to {where} timed out"
    if isinstance(exc, ReadTimeoutError):
        return f"timeout: no response from {where} within {total:g}s"
    if isinstance(exc, SSLError):
        return f"tls error with {where}: {exc}"
    if isinstance(exc, ProtocolError):
        return f"connection error with {where}: {exc}"
    return f"http error with {where}: {type(exc).__name__}: {exc}"


def post(
    target: Target,
    addresses: list[IPAddress],
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout: float,
    total_timeout: float,
    ca_certs: str | None = None,
) -> Answer:
    """POST `body` to the first of `addresses` that accepts a connection.

    Only a failure to connect moves on to the next address; once a request is
    sent, its outcome is final for this attempt (a second send could deliver twice).
    """
    deadline = time.monotonic() + total_timeout
    all_headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **headers,
    }
    errors: list[str] = []
    for ip in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        timeout = urllib3.Timeout(
            total=remaining, connect=min(connect_timeout, remaining), read=remaining
        )
        pool = _pool(target, ip, timeout, ca_certs)
        try:
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers=all_headers,
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
            try:
                data = _read_capped(response, deadline)
                return Answer(response.status, response.headers.get("Location"), data, str(ip))
            finally:
                response.close()
        except (NewConnectionError, ConnectTimeoutError) as exc:
            errors.append(_describe(exc, ip, target.port, total_timeout))
        except (HTTPError, OSError) as exc:  # urllib3 lets a few raw socket errors through
            raise TransportError(_describe(exc, ip, target.port, total_timeout)) from exc
        finally:
            pool.close()
    if not errors:
        errors.append(f"timeout: no address answered within {total_timeout:g}s")
    raise TransportError("; ".join(errors))
