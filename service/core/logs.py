"""Log output: text for people, or one JSON object per line (`JANUS_LOG_FORMAT=json`).

A JSON line always has `ts`, `level`, `logger`, `msg` and `process`, plus `model`,
`worker_id` and `job_id` (one job) or `job_ids` (a batch) whenever the code that
logs runs on behalf of them, so a log pipeline can follow one job from the API
through the worker. The worker sets its model once per process
(`set_process_context`); the worker's loop and job handler scope a job id to the code
that admits or finishes it (`log_context`). Gunicorn's access and error logs use the same
format through `GunicornJsonLogger`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from gunicorn import glogging

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
CONTEXT_FIELDS = ("model", "worker_id", "job_id", "job_ids")

# Process-wide fields (the worker's model): a plain dict rather than a contextvar so
# that threads started later (lease keeper, heartbeat) carry them too; a new thread
# starts with an empty context.
_process_fields: dict[str, Any] = {}
# Fields of the task in progress (job ids), visible only to the code that set them.
_scoped_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "janus_log_fields", default=None
)
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def set_process_context(**fields: Any) -> None:
    """Fields every later line of this process carries (None values are ignored)."""
    _process_fields.update({k: v for k, v in fields.items() if v is not None})


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields the lines logged inside the block carry, on top of the enclosing ones."""
    token = _scoped_fields.set({**(_scoped_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _scoped_fields.reset(token)


def job_fields(job_ids: Sequence[str]) -> dict[str, Any]:
    """`job_id` when one job is in scope (the common case, and what people grep for),
    `job_ids` for a batch of several."""
    ids = list(job_ids)
    return {"job_id": ids[0]} if len(ids) == 1 else {"job_ids": ids}


class ContextFilter(logging.Filter):
    """Copies the context onto each record; on the handler, so propagated records get it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**_process_fields, **(_scoped_fields.get() or {})}.items():
            if not hasattr(record, key):  # an explicit extra= wins
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "process": record.process,
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out and not key.startswith("_"):
                out[key] = value
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            out["http"] = _access_fields(record.args)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    """The parts of gunicorn's access-log atoms worth querying on."""
    return {
        "method": atoms.get("m"),
        "path": atoms.get("U"),
        "query": atoms.get("q") or None,
        "status": _int_or_none(atoms.get("s")),
        "bytes": atoms.get("B"),
        "duration_ms": atoms.get("M"),
        "remote": atoms.get("h"),
        "user_agent": atoms.get("a"),
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def make_handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler()  # stderr, as before: stdout stays for command output
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    return handler


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger once per process (what `janus-service` calls at start)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper())
    if fmt == "json":
        # Python warnings otherwise go to stderr as bare multi-line text.
        logging.captureWarnings(True)


def adopt_library_logs() -> None:
    """Send transformers' records through the root handler, and drop progress bars.

    transformers logs through a stderr handler of its own that does not propagate, and
    draws tqdm bars while loading weights: both would be plain text among JSON lines.
    Only the worker calls this (it imports transformers anyway; the API never does).
    """
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()  # the hub's download bars too


class GunicornJsonLogger(glogging.Logger):
    """Gunicorn's logger with its error and access handlers switched to JSON lines."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonFormatter())
                    handler.addFilter(ContextFilter())
