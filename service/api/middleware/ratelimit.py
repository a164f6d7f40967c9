"""Per-key submission limits: at most N submissions in any 60 seconds, else 429.

A sliding log: each accepted submission is a timestamp; a new one is accepted only
if fewer than N lie in the last 60 s. Unlike a fixed one-minute window, a client
cannot send N just before a window's edge and N more just after it. Kept in Redis
(one sorted set per key, trimmed and checked atomically by a Lua script, so all API
processes share it) when the broker is Redis, else in this process (the embedded
single-host default). Memory: at most N timestamps per active key, for 60 s.

When Redis cannot be reached, `JANUS_RATE_LIMIT_FAIL_MODE` decides: `open` (the
default) lets submissions through, so a broken limiter does not become an outage
of submissions, which stay 202 while Redis is away; `closed` answers 503
`rate_limiter_unavailable` with Retry-After, for deployments where an unmetered
client costs more than a refused one.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import redis

from service.api.errors import ApiError
from service.core.settings import Settings

log = logging.getLogger(__name__)
WINDOW = 60.0
UNAVAILABLE_RETRY_AFTER = 5  # seconds a client is told to wait when failing closed

# KEYS[1]: the key's log; ARGV: now (s), window (s), limit, a unique member.
# Returns {accepted 0|1, count in the window, seconds until the oldest entry leaves}.
_SLIDING_LOG = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local accepted = 0
if count < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  count = count + 1
  accepted = 1
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {accepted, count, tostring(reset)}
"""


@dataclass(frozen=True)
class Verdict:
    limit: int
    remaining: int
    reset_in: int  # seconds until the oldest counted submission leaves the window


class RateLimiter:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.limit = settings.rate_limit_per_minute
        self.fail_closed = settings.rate_limit_fail_mode == "closed"
        self.prefix = f"{settings.broker_key_prefix}ratelimit:"
        self.clock = clock
        self.redis: redis.Redis | None = None
        if settings.broker_url.startswith(("redis://", "rediss://")):
            # max_connections: under gevent one process serves hundreds of requests at
            # once; redis-py's default pool stops at 100 and then fails the call.
            self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=0.5,
                                              socket_connect_timeout=0.5, max_connections=10_000)
            self._script = self.redis.register_script(_SLIDING_LOG)
        self._local: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _record(self, key_id: str, now: float) -> tuple[bool, int, float] | None:
        """(accepted, count in the window, seconds until a slot frees); None: unknown."""
        if self.redis is not None:
            try:
                accepted, count, reset = self._script(
                    keys=[f"{self.prefix}{key_id}"],
                    args=[repr(now), WINDOW, self.limit, f"{now!r}:{secrets.token_hex(4)}"],
                )
            except redis.RedisError as exc:
                log.warning("rate limiter unavailable (fail mode %s): %s",
                            "closed" if self.fail_closed else "open", exc)
                return None
            return bool(accepted), int(count), float(reset)
        with self._lock:
            stamps = self._local.setdefault(key_id, deque())
            while stamps and stamps[0] <= now - WINDOW:
                stamps.popleft()
            accepted = len(stamps) < self.limit
            if accepted:
                stamps.append(now)
            reset = stamps[0] + WINDOW - now if stamps else WINDOW
            count = len(stamps)
            if not stamps:
                del self._local[key_id]
        return accepted, count, reset

    def check(self, key_id: str) -> Verdict | None:
        """Count one submission; raise 429 past the limit (503 if failing closed). None
        when the limit is off, or Redis is away and the limiter fails open."""
        if self.limit <= 0:
            return None
        recorded = self._record(key_id, self.clock())
        if recorded is None:
            if self.fail_closed:
                raise ApiError(
                    503, "rate_limiter_unavailable",
                    "submissions cannot be metered right now; retry shortly",
                    headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
                )
            return None
        accepted, count, reset = recorded
        reset_in = max(1, math.ceil(reset))
        verdict = Verdict(self.limit, max(0, self.limit - count), reset_in)
        if not accepted:
            raise ApiError(
                429, "rate_limited",
                f"more than {self.limit} submissions in 60 seconds for this key; retry in "
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
