"""The rate limiter: a sliding 60 s window (no 2x burst across an edge), in Redis and in
process, and its outage mode (fail open or closed)."""

from __future__ import annotations

import random
import uuid

import pytest
from sqlalchemy import create_engine, func, select

from service.api.errors import ApiError
from service.api.middleware.ratelimit import RateLimiter
from service.core.tables import Job
from tests.helpers import IDLE, free_port, make_key


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limiter(settings, backend: str, limit: int, clock: Clock) -> RateLimiter:  # type: ignore[no-untyped-def]
    update = {"rate_limit_per_minute": limit,
              "broker_key_prefix": f"rl{uuid.uuid4().hex[:8]}:"}
    if backend == "local":
        update["broker_url"] = "sqla+sqlite:///:memory:"
    return RateLimiter(settings.model_copy(update=update), clock=clock)


def _try(limiter: RateLimiter, key: str = "k") -> int | None:
    """None if accepted, else the Retry-After of the 429."""
    try:
        limiter.check(key)
    except ApiError as exc:
        assert exc.status == 429 and exc.code == "rate_limited"
        return int(exc.headers["Retry-After"])
    return None


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_no_double_burst_across_a_minute_edge(settings, backend: str) -> None:
    clock = Clock(1_000_000 * 60 + 59.0)  # one second before a fixed window's edge
    limiter = _limiter(settings, backend, 3, clock)
    for offset in (0.0, 0.5, 0.9):
        clock.now = 1_000_000 * 60 + 59.0 + offset
        assert _try(limiter) is None
    clock.now = 1_000_000 * 60 + 60.1  # a new fixed window would have allowed 3 more here
    assert _try(limiter) == 59  # the first leaves the window at +119.0
    assert _try(limiter, "other") is None  # per key
    clock.now = 1_000_000 * 60 + 118.9
    assert _try(limiter) == 1
    clock.now = 1_000_000 * 60 + 119.1  # the first has left; the other two have not
    verdict = limiter.check("k")
    assert verdict is not None and verdict.remaining == 0 and verdict.limit == 3
    assert _try(limiter) is not None


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_never_more_than_the_limit_in_any_sixty_seconds(settings, backend: str) -> None:
    clock = Clock(5_000_000.0)
    limiter = _limiter(settings, backend, 5, clock)
    rng = random.Random(13)
    accepted: list[float] = []
    for _ in range(400):
        clock.now += rng.choice([0.01, 0.5, 3.0, 11.0, 29.0])
        if _try(limiter) is None:
            accepted.append(clock.now)
    # Exact: a request is refused only when the 60 s before it already hold 5.
    for i, t in enumerate(accepted):
        assert sum(1 for u in accepted[: i + 1] if u > t - 60) <= 5
    assert len(accepted) > 50  # it does let traffic through at the allowed rate


def test_fail_open_and_fail_closed_when_redis_is_away(settings) -> None:
    away = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0",
                                       "rate_limit_per_minute": 1})
    assert RateLimiter(away).check("k") is None  # open (the default): let through
    closed = RateLimiter(away.model_copy(update={"rate_limit_fail_mode": "closed"}))
    with pytest.raises(ApiError) as refused:
        closed.check("k")
    assert refused.value.status == 503 and refused.value.code == "rate_limiter_unavailable"
    assert int(refused.value.headers["Retry-After"]) >= 1


def test_fail_closed_submission_is_a_503_and_stores_nothing(settings) -> None:
    from service.api import create_app

    away = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0",
                                       "rate_limit_fail_mode": "closed"})
    api = create_app(away).test_client()
    auth = {"Authorization": f"Bearer {make_key(settings, 'fail-closed')}"}
    engine = create_engine(settings.database_url)

    def jobs() -> int:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Job))

    before = jobs()
    r = api.post("/v1/jobs", json={"model": IDLE, "task": "generate",
                                   "input": {"prompt": "unmetered"}}, headers=auth)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert set(r.json) == {"error"}
    assert r.json["error"]["code"] == "rate_limiter_unavailable" and r.json["error"]["message"]
    assert jobs() == before
    assert api.get("/v1/jobs?limit=1", headers=auth).status_code == 200  # reads unaffected
    engine.dispose()
