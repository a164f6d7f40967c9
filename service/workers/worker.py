"""`janus-service worker`: load one model, then consume that model's queue.

The model is loaded in this process before the consumer starts, and tasks run
in this same process (Celery's solo pool): nothing forks after CUDA is touched
(celery#3402), the model is loaded exactly once, and cancellation, deadlines
and progress are handled by the model loop rather than by killing a pool child.
If the process dies, its leases expire and the dispatcher's sweeper hands the
jobs to another worker; `task_reject_on_worker_lost` and late acks keep the
message too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from celery.signals import worker_shutting_down
from sqlalchemy import delete, update

from service.core.broker import make_celery, publish, queue_name
from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.events import announce_on_commit, event_log
from service.core.ids import new_id
from service.core.logs import adopt_library_logs, set_process_context
from service.core.settings import Settings
from service.core.storage import storage_from_settings
from service.core.tables import Worker, utcnow
from service.workers import worker_metrics
from service.workers.cancels import CancelWatch
from service.workers.handler import JobHandler
from service.workers.loop import WorkerLoop
from service.workers.tasks import register_tasks

log = logging.getLogger(__name__)


class WorkerStartError(RuntimeError):
    pass


def run_worker(
    settings: Settings,
    model_id: str,
    *,
    device: str = "cpu",
    max_batch: int = 1,
    hostname: str | None = None,
    loglevel: str = "INFO",
    metrics_port: int = 0,
    compile: bool | None = None,
    upsample_1024: bool = False,
) -> None:
    from service.models.catalog import CheckpointError, family_of
    from service.models.engine import size_slots
    from service.models.runners import load_runner, runner_options

    if model_id not in settings.models:
        raise WorkerStartError(
            f"model {model_id!r} is not in JANUS_MODELS (known: {sorted(settings.models)})"
        )
    set_process_context(model=model_id)  # every log line of this process names its model
    if settings.log_format == "json":
        adopt_library_logs()
    path = settings.models[model_id]
    started = time.monotonic()
    try:
        family = family_of(path)
        options = runner_options(
            family,
            compile=compile,
            upsample_1024=upsample_1024,
            vae_path=settings.vae_path,
            batch_invariant=settings.batch_invariant,
        )
        runner = load_runner(path, device=device, model_id=model_id, family=family, **options)
    except CheckpointError as exc:
        message = str(exc)
        if model_id not in message:
            message = f"model {model_id!r}: {message}"
        raise WorkerStartError(message) from exc
    loaded = time.monotonic()
    try:
        runner.warmup()
    except Exception as exc:  # it cannot serve: say so now, not on every job
        raise WorkerStartError(
            f"model {model_id!r}: warm-up failed: {type(exc).__name__}: {exc}") from exc
    load_seconds, warmup_seconds = loaded - started, time.monotonic() - loaded
    log.info("model %s loaded from %s on %s in %.1fs, warmed up in %.1fs", model_id, path,
             device, load_seconds, warmup_seconds)
    worker_metrics.record_load(model_id, device, load_seconds, warmup_seconds)
    worker_metrics.watch_device(model_id, device)
    if metrics_port:
        # Started once the model is in memory: a worker whose endpoint answers has loaded.
        try:
            worker_metrics.serve(metrics_port)
        except (OSError, OverflowError) as exc:
            raise WorkerStartError(f"cannot serve metrics on port {metrics_port}: {exc}") from exc

    host = hostname or socket.gethostname()
    worker_id = f"{model_id}@{host}:{os.getpid()}"
    set_process_context(worker_id=worker_id)
    db = make_db(settings.database_url)
    sessions = make_sessionmaker(db)
    handler = JobHandler(settings, sessions, storage_from_settings(settings), model_id,
                         worker_id)
    handler.events = event_log(settings)
    announce_on_commit(sessions, handler.events)  # started and terminal statuses
    CancelWatch(handler.events, worker_id).start()  # cancels pushed to this worker
    app = make_celery(settings)
    handler.wake = lambda: _wake(app, settings, model_id)
    slots, why = size_slots(runner, device, max_batch, settings.engine_memory_fraction)
    log.info("engine: %s; claims every %d steps", why, settings.engine_admit_every)
    loop = WorkerLoop(handler, runner, slots, settings.engine_admit_every)
    # A warm shutdown lets the running rows finish but admits nothing more; without
    # this the loop would keep claiming while anything is queued.
    worker_shutting_down.connect(lambda **_: loop.stop(), weak=False)
    register_tasks(app, loop)

    with session_scope(sessions) as session:
        session.merge(
            Worker(
                id=worker_id,
                model=model_id,
                hostname=host,
                device=device,
                max_batch=max_batch,
                started_at=utcnow(),
                heartbeat_at=utcnow(),
            )
        )
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat,
        args=(sessions, worker_id, settings, stop),
        daemon=True,
        name="worker-heartbeat",
    )
    beat.start()
    try:
        app.Worker(
            hostname=f"{model_id}@{host}",
            pool="solo",
            concurrency=1,
            queues=[queue_name(model_id)],
            loglevel=loglevel,
            without_gossip=True,
            without_mingle=True,
            quiet=settings.log_format == "json",  # no ASCII banner among JSON lines
        ).start()
    finally:
        stop.set()
        with session_scope(sessions) as session:
            session.execute(delete(Worker).where(Worker.id == worker_id))


def _heartbeat(sessions, worker_id: str, settings: Settings, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
    while not stop.wait(settings.worker_heartbeat_seconds):
        try:
            with session_scope(sessions) as session:
                session.execute(
                    update(Worker).where(Worker.id == worker_id).values(heartbeat_at=utcnow())
                )
        except Exception as exc:
            log.warning("worker heartbeat failed: %s", exc)


def _wake(app, settings: Settings, model_id: str) -> None:  # type: ignore[no-untyped-def]
    publish(app, [(new_id("wake"), model_id)], settings.publish_max_retries)
