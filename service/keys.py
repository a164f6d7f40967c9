"""API keys: only a hash is stored; the key and its webhook secret are shown once."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.ids import new_id
from service.tables import ApiKey


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
