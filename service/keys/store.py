"""API keys: only a hash is stored; the key and its webhook secret are shown once."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.ids import new_id
from service.core.tables import ApiKey, utcnow


@dataclass(frozen=True)
class NewKey:
    id: str
    key: str
    webhook_secret: str


def hash_key(key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is safe (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def create_key(*, session: Session, name: str) -> NewKey:
    key = "jk_" + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        name=name,
        key_hash=hash_key(key),
        key_prefix=key[:10],
        webhook_secret=new_webhook_secret(),
    )
    session.add(row)
    session.flush()
    return NewKey(row.id, key, row.webhook_secret)


def find_key(*, session: Session, key: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


class KeyLookupError(LookupError):
    """No key, or more than one, matches what the operator named."""


def rotate_secret(
    *, session: Session, grace_seconds: float, key_id: str | None = None, name: str | None = None
) -> str:
    """Give the key a new webhook secret and return it (shown once).

    The old secret keeps signing beside the new one for `grace_seconds`, so
    receivers can switch without dropping a delivery. Rotating again inside
    the grace period retires the oldest secret at once (one previous is kept).
    """
    row = _one_active(session, key_id, name)
    row.previous_webhook_secret = row.webhook_secret
    row.previous_secret_expires_at = utcnow() + timedelta(seconds=grace_seconds)
    row.webhook_secret = new_webhook_secret()
    session.flush()
    return row.webhook_secret


def _one_active(session: Session, key_id: str | None, name: str | None) -> ApiKey:
    query = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    if key_id is not None:
        query = query.where(ApiKey.id == key_id)
    elif name is not None:
        query = query.where(ApiKey.name == name)
    else:
        raise KeyLookupError("name a key by id or by name")
    rows = list(session.scalars(query.with_for_update().limit(2)))
    if not rows:
        raise KeyLookupError(f"no active key {key_id or name!r}")
    if len(rows) > 1:
        raise KeyLookupError(f"several keys are named {name!r}; use --key-id")
    return rows[0]


def revoke_key(*, session: Session, key_id: str | None = None, name: str | None = None) -> ApiKey:
    """Refuse the key from now on; after the commit, `KeyVersion.bump` makes every API
    process drop its cached keys (service/keys/revocation.py)."""
    row = _one_active(session, key_id, name)
    row.revoked_at = utcnow()
    session.flush()
    return row


def list_keys(*, session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))
