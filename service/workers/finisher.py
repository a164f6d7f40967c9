"""Stores and commits the engine's finished rows on a thread of their own.

A finished row's slot is free the moment the engine returns it, but storing it (PNG
encoding, the upload, the terminal commit, its webhook outbox row) takes tens of
milliseconds of CPU and I/O. Done inline, that time stalls every other row of the
engine once per finishing job; here the engine steps on while it happens (as vLLM's
and TGI's servers detokenize and answer off the model loop).

A finished image row's decode (a `Deferred`) runs here too; the job holds its engine
slot (`hold`/`release`) until its images are decoded, so a worker computes for at most
`--max-batch` jobs at once. Work runs in submission order on one thread. The queue is
bounded: when storage falls behind, `submit` waits, so finished images cannot pile up
in memory. Nothing changes for faults: a job whose commit has not happened still holds
its lease (the caller stops renewing it only once its work is done), so a SIGKILL here
loses nothing either.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_STOP = object()


class Finisher:
    def __init__(self, depth: int, inline: bool = False) -> None:
        self.inline = inline  # store on the caller's thread (bench/finisher.py's baseline)
        self._work: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._idle = threading.Condition()
        self._held: set[str] = set()  # jobs whose work still holds their engine slot

    def submit(self, job_id: str, work: Callable[[], None]) -> None:
        """Run `work` (the job's store-and-commit) after the work submitted before it."""
        if self.inline:
            self._do(job_id, work)
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="engine-finisher",
                                            daemon=True)
            self._thread.start()
        with self._idle:
            self._pending += 1
        self._work.put((job_id, work))  # waits while the queue is full: backpressure

    def hold(self, job_id: str) -> None:
        """`job_id`'s work still computes for it (its images decode): it keeps its slot
        until `release`."""
        with self._idle:
            self._held.add(job_id)

    def release(self, job_id: str) -> None:
        with self._idle:
            self._held.discard(job_id)
            self._idle.notify_all()

    def held(self) -> int:
        with self._idle:
            return len(self._held)

    def wait_release(self, timeout: float = 1.0) -> None:
        """Until one held job is released (or `timeout` s pass)."""
        with self._idle:
            held = len(self._held)
            self._idle.wait_for(lambda: len(self._held) < held, timeout=timeout)

    def pending(self) -> int:
        with self._idle:
            return self._pending

    def drain(self) -> None:
        """Wait until every submitted job is stored and committed (or has given up)."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def close(self) -> None:
        self.drain()
        if self._thread is not None and self._thread.is_alive():
            self._work.put(_STOP)
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is _STOP:
                return
            try:
                self._do(*item)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    @staticmethod
    def _do(job_id: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # its lease expires and the sweeper requeues it
            log.exception("job %s: storing its outcome failed", job_id)
