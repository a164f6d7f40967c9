"""Whether a kept connection's socket has something to read, without waiting.

Used to check pooled connections (Postgres in service/core/db.py, Redis in
service/core/resp.py) before reuse: a server that closed its end (a restart, a proxy
cut) leaves the idle socket readable. A zero-timeout poll answers in about a
microsecond. Under gevent (the API's default worker) `select.poll` is replaced by a
cooperative one that costs 15 times as much and may switch greenlets; a zero
timeout never blocks, so the original system call is used.
"""

from __future__ import annotations

import select
import sys
from typing import Any


def _poll_class() -> Any:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return select.poll


def readable(fd: int) -> bool:
    """True if `fd` has data or EOF waiting (or cannot be polled: treat it as suspect)."""
    try:
        poller = _poll_class()()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
