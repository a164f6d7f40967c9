"""Bearer API keys. Every /v1 route requires one; a key sees only its own objects."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import g, request

from service.api.context import db, runtime
from service.api.errors import ApiError
from service.keys.revocation import KeyVersion
from service.keys.store import find_key, hash_key

# Known keys are remembered so that a poll costs one query, not two. A cached key is
# used only while the revocation version it was cached under is still current (one
# Redis GET per request), so a revocation takes effect on the next request in every
# process; the lifetime bounds what a change made behind the CLI's back can cost.
KEY_CACHE_SECONDS = 30.0
_KEY_CACHE_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    id: str
    name: str


@dataclass(frozen=True)
class _Entry:
    expires: float
    version: str
    principal: Principal


class KeyCache:
    """One per app (so per API process): key hash -> principal, tagged with a version."""

    def __init__(self, version: KeyVersion) -> None:
        self.version = version
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def lookup(self, token: str) -> Principal | None:
        digest = hash_key(token)
        version = self.version.read()  # None: unknown, so nothing cached can be trusted
        now = time.monotonic()
        if version is not None:
            with self._lock:
                hit = self._entries.get(digest)
            if hit is not None and hit.expires > now and hit.version == version:
                return hit.principal
        row = find_key(session=db(), key=token)
        if row is None:
            return None
        principal = Principal(row.id, row.name)
        if version is not None:
            # Tagged with the version read *before* the lookup: a revocation committed
            # in between changed the version, so this entry is never trusted.
            with self._lock:
                if len(self._entries) >= _KEY_CACHE_MAX:
                    self._entries.clear()
                self._entries[digest] = _Entry(now + KEY_CACHE_SECONDS, version, principal)
        return principal


def require_api_key() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    principal = runtime().keys.lookup(token.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key",
                       headers={"WWW-Authenticate": "Bearer"})
    g.api_key = principal
