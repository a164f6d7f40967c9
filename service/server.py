"""Running the API under gunicorn (threads: `Prefer: wait` holds a request open)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from service.settings import Settings


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
        return create_app(self.settings)


def serve(settings: Settings, host: str, port: int, workers: int = 2, threads: int = 16) -> None:
    _Gunicorn(
        settings,
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "timeout": 120,
            "graceful_timeout": 30,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
        },
    ).run()
