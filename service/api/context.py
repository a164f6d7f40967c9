"""Per-app runtime (database, storage, broker) and the one-session-per-request rule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery
from flask import current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api.middleware.ratelimit import RateLimiter
from service.core.events import EventLog
from service.core.settings import Settings
from service.core.storage import Storage

if TYPE_CHECKING:  # auth reads the runtime
    from service.api.middleware.auth import KeyCache, Principal

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    id: str
    family: str
    tasks: tuple[str, ...]
    defaults: dict[str, Any]


@dataclass
class Runtime:
    settings: Settings
    db: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery
    models: dict[str, ModelInfo]
    limiter: RateLimiter
    keys: KeyCache
    events: EventLog  # live job events


def runtime() -> Runtime:
    return current_app.extensions["janus"]


def db() -> Session:
    """The request's session, opened on first use and closed on teardown."""
    if "db" not in g:
        g.db = runtime().sessions()
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    """Roll back whatever the request left open and hand the connection back.

    After a database outage the connection may be dead: closing must not raise
    (it would turn the request's 503 into a 500); the pool's pre-ping replaces it.
    """
    session = g.pop("db", None)
    if session is not None:
        try:
            session.close()
        except Exception:  # noqa: BLE001 - already answering; a dead connection is expected
            log.warning("closing a failed session", exc_info=True)


def current_key() -> Principal:
    return g.api_key
