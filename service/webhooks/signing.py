"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

`webhook-signature` is `v1,<base64 HMAC-SHA256>` of `"{id}.{timestamp}.{body}"`
keyed with the bytes behind the `whsec_` prefix. While a rotated-out secret is
still in its grace period both signatures are sent, space-separated, so a
receiver holding either secret verifies the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

from service.core.tables import ApiKey

PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    """The HMAC key: base64-decode of what follows `whsec_` (padding tolerated)."""
    raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<signature>` token."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signing_secrets(key: ApiKey, now: datetime) -> list[str]:
    """The current secret, then the previous one while its grace period lasts."""
    out = [key.webhook_secret]
    expires = key.previous_secret_expires_at
    if key.previous_webhook_secret and expires is not None and expires > now:
        out.append(key.previous_webhook_secret)
    return out


def webhook_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }
