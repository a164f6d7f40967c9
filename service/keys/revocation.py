"""The key revocation version: a token in Redis that changes whenever a key is revoked.

API processes cache key lookups; each request reads this one small value (a Redis
GET, well under a millisecond) and trusts a cached key only if it was cached under
the current version. `keys revoke` commits the revocation, then sets a new random
version, so the very next request on every API process looks the key up again.

A random token, not a counter: if Redis loses the value (a restart without
persistence) the next reader writes a fresh random one, which cannot equal what any
process cached under. When there is no Redis broker (the embedded mode) or Redis does
not answer, `read` returns None and callers must not use their cache at all.
"""

from __future__ import annotations

import logging
import secrets
import time

import redis

from service.core.resp import LeanRedis, lean_redis
from service.core.settings import Settings

log = logging.getLogger(__name__)

# After Redis fails, skip it this long: a hung Redis must not add its socket timeout
# to every request (key lookups go to the database meanwhile).
_BACKOFF_SECONDS = 5.0


class KeyVersion:
    def __init__(self, settings: Settings) -> None:
        self.name = f"{settings.broker_key_prefix}keys:revocation-version"
        self.redis: LeanRedis | redis.Redis | None = None
        if settings.broker_url.startswith(("redis://", "rediss://")):
            # Read on every request: the lean client costs a tenth of redis-py's CPU, and
            # has no connection cap (under gevent one process serves hundreds at once).
            self.redis = lean_redis(settings.broker_url, timeout=0.5)
        self._down_until = 0.0

    def read(self) -> str | None:
        """The current version, or None when it cannot be known (then: no caching)."""
        if self.redis is None or time.monotonic() < self._down_until:
            return None
        try:
            value = self.redis.get(self.name)
            if value is None:  # first use, or Redis lost it: start a new version
                self.redis.set(self.name, secrets.token_hex(16), nx=True)
                value = self.redis.get(self.name)
        except redis.RedisError as exc:
            log.warning("key revocation version unavailable; keys read from the database: %s",
                        exc)
            self._down_until = time.monotonic() + _BACKOFF_SECONDS
            return None
        return value.decode() if value is not None else None

    def bump(self) -> bool:
        """After a revocation is committed: invalidate every process's cache. False if
        Redis could not be told (processes then notice within their cache's lifetime)."""
        if self.redis is None:
            return True  # nothing caches without a version
        try:
            self.redis.set(self.name, secrets.token_hex(16))
        except redis.RedisError as exc:
            log.warning("could not publish the key revocation: %s", exc)
            return False
        return True
