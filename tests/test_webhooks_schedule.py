"""Retry schedule semantics: schedule[i] is the wait before try i+1, jittered, capped by age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.core.settings import Settings
from service.webhooks.delivery import JITTER, lease_seconds, next_attempt

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_default_schedule_is_seven_tries_over_about_seventeen_hours() -> None:
    settings = Settings()
    assert settings.webhook_retry_delays == [0, 5, 300, 1800, 7200, 18000, 36000]
    assert settings.webhook_max_age_seconds == 24 * 3600
    for attempt, wait in [(1, 5), (2, 300), (3, 1800), (6, 36000)]:
        at = next_attempt(attempt=attempt, created_at=NOW, now=NOW, settings=settings)
        assert at is not None
        assert wait * (1 - JITTER) <= (at - NOW).total_seconds() <= wait * (1 + JITTER)
    assert next_attempt(attempt=7, created_at=NOW, now=NOW, settings=settings) is None


def test_jitter_spreads_retries() -> None:
    settings = Settings(webhook_retry_schedule="0,100")
    waits = {next_attempt(attempt=1, created_at=NOW, now=NOW, settings=settings)
             for _ in range(20)}
    assert len(waits) > 10


def test_max_age_caps_the_schedule() -> None:
    settings = Settings(webhook_retry_schedule="0,60,60,60", webhook_max_age_seconds=100)
    assert next_attempt(attempt=1, created_at=NOW, now=NOW, settings=settings)
    later = NOW + timedelta(seconds=90)
    assert next_attempt(attempt=2, created_at=NOW, now=later, settings=settings) is None


def test_lease_outlasts_an_attempt() -> None:
    settings = Settings()
    assert lease_seconds(settings) > settings.webhook_timeout_seconds * 2


@pytest.mark.parametrize("bad", ["", "a,b", "5,-1", ","])
def test_bad_schedules_are_refused_at_start(bad: str) -> None:
    with pytest.raises(ValueError):
        Settings(webhook_retry_schedule=bad)
