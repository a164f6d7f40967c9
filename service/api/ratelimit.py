"""Per-key submission limits: 429 with Retry-After past N submissions a minute.

A fixed one-minute window counted in Redis when the broker is Redis (all API
processes share it), else in this process (the embedded single-host default).
When Redis cannot be reached the limiter lets requests through: a broken
limiter must not turn into an outage of submissions, which stay 202 while
Redis is away.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

from service.api.errors import ApiError
from service.core.settings import Settings

log = logging.getLogger(__name__)
WINDOW = 60


@dataclass(frozen=True)
class Verdict:
    limit: int
    remaining: int
    reset_in: int


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.limit = settings.rate_limit_per_minute
        self.prefix = f"{settings.broker_key_prefix}ratelimit:"
        self.redis: redis.Redis | None = None
        if settings.broker_url.startswith(("redis://", "rediss://")):
            self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=0.5,
                                              socket_connect_timeout=0.5)
        self._local: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def _count(self, key_id: str, window: int) -> int | None:
        if self.redis is not None:
            name = f"{self.prefix}{key_id}:{window}"
            try:
                pipe = self.redis.pipeline()
                pipe.incr(name)
                pipe.expire(name, 2 * WINDOW)
                return int(pipe.execute()[0])
            except redis.RedisError as exc:
                log.warning("rate limiter unavailable, letting the request through: %s", exc)
                return None
        with self._lock:
            for old in [k for k in self._local if k[1] < window]:
                del self._local[old]
            self._local[(key_id, window)] = self._local.get((key_id, window), 0) + 1
            return self._local[(key_id, window)]

    def check(self, key_id: str) -> Verdict | None:
        """Count one submission; raise a 429 ApiError past the limit. None when disabled."""
        if self.limit <= 0:
            return None
        now = time.time()
        window = int(now // WINDOW)
        reset_in = max(1, int((window + 1) * WINDOW - now + 0.999))
        count = self._count(key_id, window)
        if count is None:
            return None
        verdict = Verdict(self.limit, max(0, self.limit - count), reset_in)
        if count > self.limit:
            raise ApiError(
                429, "rate_limited",
                f"more than {self.limit} submissions a minute for this key; retry in "
                f"{reset_in}s",
                headers={"Retry-After": str(reset_in), **headers(verdict)},
            )
        return verdict


def headers(verdict: Verdict | None) -> dict[str, str]:
    if verdict is None:
        return {}
    return {"X-RateLimit-Limit": str(verdict.limit),
            "X-RateLimit-Remaining": str(verdict.remaining),
            "X-RateLimit-Reset": str(verdict.reset_in)}
