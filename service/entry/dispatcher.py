"""`janus-service dispatcher`: the CPU process for webhook delivery and housekeeping
(the sweeper, and the tick that moves OpenAI batches on with nobody reading them)."""

from __future__ import annotations

import logging
import signal
import threading

from service.core.broker import make_celery
from service.core.db import make_db, make_sessionmaker
from service.core.events import announce_on_commit, event_log
from service.core.settings import Settings
from service.core.storage import storage_from_settings
from service.openai.batch_tick import start_ticker
from service.webhooks.consumer import start_webhook_runner
from service.workers.sweeper import sweep_once

log = logging.getLogger(__name__)

# How long a stopping dispatcher waits for batch files being written (compose gives it
# 30 s in all); an unfinished write is rolled back and redone by the next dispatcher.
BATCH_FILES_GRACE_SECONDS = 20


def run_dispatcher(settings: Settings, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    sessions = make_sessionmaker(make_db(settings.database_url))
    announce_on_commit(sessions, event_log(settings))  # the sweeper's cancels and failures
    celery = make_celery(settings, publisher=True)  # the sweeper only publishes
    storage = storage_from_settings(settings)
    webhooks = start_webhook_runner(settings, sessions, stop)
    # OpenAI batches expire and get their result files with nobody reading them.
    batches = start_ticker(sessions=sessions, storage=storage, settings=settings, stop=stop)
    log.info("dispatcher started; sweeping every %.1fs", settings.sweep_interval_seconds)
    while not stop.is_set():
        try:
            sweep_once(sessions=sessions, celery=celery, settings=settings, storage=storage)
        except Exception:  # a DB or broker blip must not end the loop
            log.exception("sweep failed")
        stop.wait(settings.sweep_interval_seconds)
    webhooks.join()  # lets in-flight deliveries finish and be recorded
    batches.join(BATCH_FILES_GRACE_SECONDS)  # files cut short are written again next start
    log.info("dispatcher stopped")
