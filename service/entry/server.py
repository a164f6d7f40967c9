"""Running the API under gunicorn, gevent workers by default.

`Prefer: wait` and the event streams hold a request open for up to a minute or
more. Under gevent each open request is a greenlet parked on a socket (Redis
XREAD BLOCK, the client's connection), not an OS thread, so one process holds
thousands of them while /healthz and submissions are served in between; psycopg
and redis-py cooperate once gevent has patched the standard library, which the
gevent worker does before the app is built. `gthread` remains for comparison
(docs/OPERATIONS.md, "Serving model").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from service.core.settings import Settings

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # type: ignore[no-untyped-def]
        from service.api import create_app

        # Built in each gunicorn worker after fork: engines and pools are per process.
        app = create_app(self.settings)
        if self.options.get("worker_class") == "gevent":
            _check_cooperative()
        return app


def _check_cooperative() -> None:
    """psycopg picks its wait function at import: imported before gevent patched the
    standard library, every query would block the whole process."""
    import psycopg.waiting

    if psycopg.waiting.wait.__name__ == "wait_c":
        log.warning("psycopg was imported before gevent patched the standard library: "
                    "database calls block every request of this process")


def _metrics_dir() -> tuple[str, bool]:
    """An empty directory for prometheus_client's multiprocess mode; (path, made here).

    Each gunicorn worker counts the requests it serves, so /metrics answered by one
    worker would show a fraction of the traffic. In multiprocess mode every worker
    writes its counters to files here and a scrape sums them. Files left by an
    earlier run would add its counts to this one, so the directory is emptied first.
    It must be in the environment before any process imports prometheus_client: the
    master sets it here, and the workers inherit it when they fork.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="janus-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        return path, True
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    return path, False


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # drops a dead worker's live-gauge files


# gunicorn answers what it cannot parse (an over-long request line, a bad header) before
# the app runs, with an HTML page. Clients are promised one JSON error shape.
_GUNICORN_CODES = {400: "bad_request", 414: "uri_too_long", 417: "expectation_failed",
                   431: "headers_too_large", 501: "not_implemented"}


def _json_write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    code = _GUNICORN_CODES.get(status_int, "internal_error" if status_int >= 500 else "bad_request")
    body = json.dumps({"error": {"code": code, "message": (mesg or reason)[:500]}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin1") + body)


def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int = 2,
    threads: int = 16,
    worker_class: str = "gevent",
    connections: int = 1000,
) -> None:
    metrics_dir, made_here = _metrics_dir()
    gunicorn_util.write_error = _json_write_error  # set before the workers fork
    json_logs = {"logger_class": "service.core.logs.GunicornJsonLogger"}

    def on_exit(_server: Any) -> None:
        if made_here:  # an operator's own directory is left alone
            shutil.rmtree(metrics_dir, ignore_errors=True)

    _Gunicorn(
        settings,
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,  # gthread only
            "worker_class": worker_class,
            "worker_connections": connections,  # gevent: open requests per process
            "timeout": 120,
            "graceful_timeout": 30,
            # gunicorn's maximum; the app answers its own JSON 414 past 4096 characters
            # (service/api/middleware/guards.py), and _json_write_error covers what is longer still.
            "limit_request_line": 8190,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            **(json_logs if settings.log_format == "json" else {}),
            "child_exit": _child_exit,
            "on_exit": on_exit,
        },
    ).run()
