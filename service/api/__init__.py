"""The API's one factory: `create_app(settings=None)`."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from flask.json.provider import DefaultJSONProvider

from service.api.context import ModelInfo, Runtime, close_db
from service.api.errors import register_error_handlers
from service.api.middleware import guards
from service.api.middleware.auth import KeyCache
from service.api.middleware.bodylimit import BodyLimit
from service.api.middleware.metrics import ApiMetrics, add_run_time_collector, add_webhook_collector
from service.api.middleware.ratelimit import RateLimiter
from service.api.middleware.ratelimit import headers as rate_headers
from service.api.routes import (
    batches,
    console,
    deliveries,
    jobs,
    local_files,
    ops,
    served_models,
    streams,
)
from service.core.broker import make_celery, queue_depths
from service.core.db import make_db, make_sessionmaker
from service.core.events import announce_on_commit, event_log
from service.core.settings import Settings, load_settings
from service.core.storage import storage_from_settings
from service.keys.revocation import KeyVersion
from service.lifecycle.outbox import event_counts
from service.lifecycle.stats import RUN_SECONDS_BUCKETS, counts_by_model, run_seconds_histogram
from service.openai.routes import bp as openai_bp

log = logging.getLogger(__name__)


def model_catalog(settings: Settings) -> dict[str, ModelInfo]:
    """Model ids to family, tasks and defaults, read from config.json only (no torch here)."""
    from service.models import catalog

    out = {}
    for model_id, path in settings.models.items():
        try:
            family = catalog.family_of(path)
        except catalog.CheckpointError as exc:
            # The API may not see the workers' disks; the id is the best remaining clue.
            family = catalog.guess_family(model_id)
            log.warning("model %s: %s; assuming family %s", model_id, exc, family)
        out[model_id] = ModelInfo(
            model_id, family, catalog.tasks_of(family), catalog.defaults_of(family)
        )
    return out


class _Json(DefaultJSONProvider):
    sort_keys = False  # objects keep the order their fields are written in


class _App(Flask):
    url_map_class = guards.StrictMap  # no 308 redirects that merge `//` in paths
    json_provider_class = _Json


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = _App(__name__, static_folder=None)  # no /static route: nothing is served from disk
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    db = make_db(settings.database_url)
    rt = Runtime(
        settings=settings,
        db=db,
        sessions=make_sessionmaker(db),
        storage=storage_from_settings(settings),
        celery=make_celery(settings, publisher=True),
        models=model_catalog(settings),
        limiter=RateLimiter(settings),
        keys=KeyCache(KeyVersion(settings)),
        events=event_log(settings),
    )
    announce_on_commit(rt.sessions, rt.events)  # a cancel wakes the job's watchers
    app.extensions["janus"] = rt
    metrics = ApiMetrics()
    app.extensions["janus_metrics"] = metrics

    def _counts() -> dict[tuple[str, str], int]:
        with rt.sessions() as session:
            return counts_by_model(session=session)

    metrics.add_job_collector(
        _counts,
        lambda: queue_depths(rt.celery, list(rt.models)),
        lambda: list(rt.models),
    )

    def _webhook_counts() -> dict[tuple[str, str], int]:
        with rt.sessions() as session:
            return event_counts(session=session)

    add_webhook_collector(metrics, _webhook_counts)

    def _run_times() -> dict[tuple[str, str], list[float]]:
        with rt.sessions() as session:
            return run_seconds_histogram(session=session)

    add_run_time_collector(metrics, _run_times, RUN_SECONDS_BUCKETS)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    app.before_request(guards.check_url)  # after the timer, so refusals are observed too

    @app.after_request
    def _observe(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        for name, value in rate_headers(g.get("rate")).items():
            response.headers.setdefault(name, value)
        metrics.observe(
            request.method, route, response.status_code, g.get("started", time.perf_counter())
        )
        return response

    app.teardown_appcontext(close_db)
    register_error_handlers(app)
    blueprints = (jobs.bp, streams.bp, batches.bp, deliveries.bp, served_models.bp, ops.bp,
                  local_files.bp, console.bp, openai_bp)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    app.wsgi_app = BodyLimit(app.wsgi_app, settings)  # type: ignore[method-assign]
    return app
