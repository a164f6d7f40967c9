"""The outbox consumer: claim due events, attempt one delivery each, record every try.

Claiming is one short transaction: due rows are locked with `FOR UPDATE SKIP
LOCKED`, marked `delivering`, and their `next_attempt_at` is pushed forward by
a lease longer than any HTTP attempt can take. Another dispatcher's claim skips
the locked rows, and after commit they are simply not due. If the process dies
mid-attempt, the lease runs out and any dispatcher takes the event again.

Recording is fenced on the attempt number taken at claim time, so a dispatcher
that outlived its lease (it should not: the lease exceeds the HTTP timeout)
adds its delivery row but cannot overwrite a newer claim's outcome.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.settings import Settings
from service.core.storage import Storage
from service.core.tables import ApiKey, WebhookDelivery, WebhookEvent, utcnow
from service.lifecycle.views import iso, with_fresh_urls
from service.webhooks import ssrf
from service.webhooks.signing import signing_secrets, webhook_headers
from service.webhooks.transport import TransportError, post

log = logging.getLogger(__name__)

JITTER = 0.2  # each wait is stretched or shrunk by up to 20%, so retries do not stampede
ERROR_EXCERPT = 300  # characters of a failing receiver's body kept in the log


@dataclass(frozen=True)
class Claimed:
    id: str
    type: str
    url: str
    payload: dict[str, Any]
    attempt: int  # 1-based number of this try, also the fencing token
    created_at: datetime
    secrets: list[str]


@dataclass(frozen=True)
class Outcome:
    status: str  # the event's new status: succeeded | pending (retry) | failed (given up)
    status_code: int | None
    error: str | None
    duration_ms: float
    next_attempt_at: datetime | None


def lease_seconds(settings: Settings) -> float:
    """How long a claim keeps other dispatchers off an event.

    The HTTP exchange is bounded by the total timeout; twice that plus 2 s also
    covers the DNS lookup and presigning around it (32 s with the defaults).
    """
    return 2 * settings.webhook_timeout_seconds + 2.0


def claim_due(
    *, session: Session, settings: Settings, limit: int, now: datetime | None = None
) -> list[Claimed]:
    """Take up to `limit` due events for this process (the caller commits)."""
    now = now or utcnow()
    rows = session.execute(
        select(WebhookEvent, ApiKey)
        .join(ApiKey, ApiKey.id == WebhookEvent.api_key_id)
        .where(
            WebhookEvent.status.in_(("pending", "delivering")),
            WebhookEvent.next_attempt_at <= now,
        )
        .order_by(WebhookEvent.next_attempt_at)
        .limit(limit)
        # Lock only the events: locking keys too would make dispatchers skip
        # every event of a key that another dispatcher is claiming for.
        .with_for_update(of=WebhookEvent, skip_locked=True)
    ).all()
    lease_until = now + timedelta(seconds=lease_seconds(settings))
    claimed = []
    for event, key in rows:
        event.status = "delivering"
        event.attempts = (event.attempts or 0) + 1
        event.next_attempt_at = lease_until
        claimed.append(
            Claimed(
                event.id,
                event.type,
                event.url,
                dict(event.payload),
                event.attempts,
                event.created_at,
                signing_secrets(key, now),
            )
        )
    return claimed


def next_attempt(
    *, attempt: int, created_at: datetime, now: datetime, settings: Settings
) -> datetime | None:
    """When to try again after failed try number `attempt`, or None to give up.

    `schedule[i]` is the wait before try i+1 (so schedule[0], normally 0, is the
    first try, made as soon as the event is committed); there are
    len(schedule) tries at most, and none later than max age after the event.
    """
    delays = settings.webhook_retry_delays
    if attempt >= len(delays):
        return None
    wait = delays[attempt] * random.uniform(1 - JITTER, 1 + JITTER)
    at = now + timedelta(seconds=wait)
    if at > created_at + timedelta(seconds=settings.webhook_max_age_seconds):
        return None
    return at


def render_body(claimed: Claimed, storage: Storage, settings: Settings) -> bytes:
    """The posted JSON: the outbox snapshot with storage keys turned into fresh URLs.

    Generic over event kinds: a batch object has no blobs and passes through as is.
    """
    payload = claimed.payload
    data = payload.get("data")
    if isinstance(data, dict):
        data = with_fresh_urls(data, storage, settings.url_expiry_seconds)
    body = {
        "type": payload.get("type") or claimed.type,
        "timestamp": payload.get("timestamp") or iso(claimed.created_at),
        "data": data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text[:ERROR_EXCERPT] + ("…" if len(text) > ERROR_EXCERPT else "")


def attempt(
    claimed: Claimed,
    *,
    settings: Settings,
    storage: Storage,
    resolver: ssrf.Resolver | None = None,
    ca_certs: str | None = None,
) -> Outcome:
    """Make one try. Never raises: every failure becomes an outcome to record."""
    started = time.monotonic()
    status_code: int | None = None
    final = False  # True: do not retry whatever the schedule says
    error: str | None
    try:
        target = ssrf.parse_url(claimed.url)
    except ssrf.UnsafeWebhookURL as exc:  # cannot get better by waiting
        target, error, final = None, f"refused: {exc}", True
    if target is not None:
        try:
            addresses = ssrf.resolve_target(target, settings, resolver or socket.getaddrinfo)
            body = render_body(claimed, storage, settings)
            headers = webhook_headers(claimed.secrets, claimed.id, int(time.time()), body)
            answer = post(
                target,
                addresses,
                body,
                headers,
                connect_timeout=settings.webhook_connect_timeout_seconds,
                total_timeout=settings.webhook_timeout_seconds,
                ca_certs=ca_certs,
            )
            status_code = answer.status
            if 200 <= answer.status < 300:
                error = None
            elif answer.status == 410:
                error, final = "410 Gone: the receiver asked not to be sent this again", True
            elif 300 <= answer.status < 400:
                error = f"redirect to {answer.location!r} not followed"
            else:
                excerpt = _excerpt(answer.body)
                error = f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else "")
        except ssrf.UnsafeWebhookURL as exc:  # DNS may change back: retry on schedule
            error = f"refused: {exc}"
        except TransportError as exc:
            error = str(exc)
        except Exception as exc:  # a storage or encoding fault must not kill the pool thread
            log.exception("webhook %s: unexpected error", claimed.id)
            error = f"internal error: {type(exc).__name__}: {exc}"
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    now = utcnow()
    if error is None:
        return Outcome("succeeded", status_code, None, duration_ms, None)
    retry_at = None if final else next_attempt(
        attempt=claimed.attempt, created_at=claimed.created_at, now=now, settings=settings
    )
    status = "pending" if retry_at is not None else "failed"
    return Outcome(status, status_code, error, duration_ms, retry_at)


def record(
    *, session: Session, claimed: Claimed, outcome: Outcome, attempted_at: datetime
) -> bool:
    """Log the try and move the event on; False if a newer claim owns the event now."""
    session.add(
        WebhookDelivery(
            event_id=claimed.id,
            attempted_at=attempted_at,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=outcome.duration_ms,
            next_attempt_at=outcome.next_attempt_at,
        )
    )
    result = session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.id == claimed.id,
            WebhookEvent.attempts == claimed.attempt,
            WebhookEvent.status == "delivering",
        )
        .values(status=outcome.status, next_attempt_at=outcome.next_attempt_at)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
