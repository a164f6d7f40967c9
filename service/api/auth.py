"""Bearer API keys. Every /v1 route requires one; a key sees only its own objects."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import g, request

from service.api.context import db
from service.api.errors import ApiError
from service.core.keys import find_key, hash_key

# Known keys are remembered briefly so a poll costs one query, not two. A revoked
# key therefore keeps working for up to this long in each API process.
KEY_CACHE_SECONDS = 30.0
_KEY_CACHE_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    id: str
    name: str


_cache: dict[str, tuple[float, Principal]] = {}
_lock = threading.Lock()


def _lookup(token: str) -> Principal | None:
    digest = hash_key(token)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    row = find_key(session=db(), key=token)
    if row is None:
        return None
    principal = Principal(row.id, row.name)
    with _lock:
        if len(_cache) >= _KEY_CACHE_MAX:
            _cache.clear()
        _cache[digest] = (now + KEY_CACHE_SECONDS, principal)
    return principal


def require_api_key() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    principal = _lookup(token.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key",
                       headers={"WWW-Authenticate": "Bearer"})
    g.api_key = principal
