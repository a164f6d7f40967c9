"""The worker's loop: jobs join and leave the model's running engines between steps.

A broker message is only a wake-up. It starts this loop, which claims queued jobs of the
worker's model into free slots (`JobHandler.claim`: FOR UPDATE SKIP LOCKED, lane then
age, with a lease), admits them to the runner's engine for their task
(`service.models.engine`), and steps the engines. Every `admit_every` steps it claims
again, so a job submitted while others are hundreds of steps in starts at the next
claim, not after them. A job that finishes leaves the engine at once: its images are
decoded (VQ or VAE) and uploaded and it is committed `succeeded` on the `Finisher`'s
thread while the others keep stepping; its slot takes the next claim once its images
are decoded. When no job is running and none is queued the task returns (after the
finisher is done): the worker sleeps until the next message.

Per job: one `LeaseKeeper` renews the leases of the changing set of running jobs and
carries progress (and an understanding row's text so far), cancel requests and lost
leases; deadlines are checked every step; terminal states go through
`JobHandler.finish` (webhooks, batch counters and metrics follow from there). A SIGKILL
loses nothing: claimed jobs hold leases, and the dispatcher's sweeper requeues them once
those expire.

`run_to_completion=True` claims only when nothing runs and decodes inside the step: a
claimed batch runs to its end before the next claim (`bench/serve.py`'s baseline, on
the same engine).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import OperationalError

from service.core.logs import log_context
from service.core.storage import StorageError
from service.core.tables import Job
from service.lifecycle.status import JobStatus
from service.models.base import Canceled, ModelError, ModelRunner
from service.models.engine import Deferred, Engine
from service.workers.finisher import Finisher
from service.workers.handler import JobHandler, TransientError
from service.workers.lease import LeaseKeeper
from service.workers.outcomes import row_ended, store_row

log = logging.getLogger(__name__)


class WorkerLoop:
    def __init__(self, handler: JobHandler, runner: ModelRunner, slots: int,
                 admit_every: int = 4, defer_decode: bool = True,
                 run_to_completion: bool = False) -> None:
        self.x = handler
        self.runner = runner
        # False: finished rows' images are decoded inside the engine's step (bench/serve.py's
        # "inline" baseline); the finisher still stores them.
        self.defer_decode = defer_decode and not run_to_completion
        self.run_to_completion = run_to_completion
        self.slots = max(1, slots)
        self.admit_every = max(1, admit_every)
        self.engines: dict[str, Engine] = {}
        self.jobs: dict[str, Job] = {}  # running in an engine, by id
        self.started: dict[str, float] = {}  # monotonic admission time, for run_seconds
        # A job claimed before (it lost a worker) runs alone: it waits for the running rows
        # to finish, then runs as the engine's only row.
        self.waiting: Job | None = None
        self.solo: str | None = None
        self.stopping = False  # a warm shutdown: finish the running rows, claim no more
        self.finisher = Finisher(depth=self.slots)

    def stop(self) -> None:
        """Called on the worker's warm shutdown (any thread): stop claiming."""
        self.stopping = True

    # -- the loop ---------------------------------------------------------------------

    def run(self, job_id: str) -> None:
        x = self.x
        keeper = LeaseKeeper(x.sessions, x.worker_id, x.settings.lease_seconds, [], [],
                             x.events, x.settings.events_progress_seconds)
        with keeper:
            try:
                self._loop(keeper)
            except BaseException:
                # Whatever broke the loop (a database outage, a bug, a shutdown), the jobs
                # still in the engine go back to the queue now rather than at lease expiry.
                waiting = {self.waiting.id: self.waiting} if self.waiting else {}
                self.waiting = None
                self._release([*self.jobs, *waiting], keeper, waiting)
                raise
            finally:
                self.finisher.drain()  # finished rows are stored while their leases hold
        x.keep_draining()

    def _loop(self, keeper: LeaseKeeper) -> None:
        steps = 0
        while True:
            if self.waiting is not None and not self.jobs:
                # It may be what killed its last worker: the rows that finished before
                # it are committed first, so that a second crash takes only it down.
                self.finisher.drain()
                job, self.waiting = self.waiting, None
                self._admit([job], keeper)
                self.solo = job.id if job.id in self.jobs else None
            claimed = 0
            alone = self.waiting is not None or self.solo is not None
            due = not self.jobs or (steps % self.admit_every == 0 and not self.run_to_completion)
            if not alone and not self.stopping and due:
                claimed = self._fill(keeper)
            if not self.jobs and self.waiting is None:
                if claimed:
                    continue  # all claimed jobs ended at once (deadline, bad input)
                if self.finisher.held() and not self.stopping:
                    self.finisher.wait_release()  # its slot may take a queued job
                    continue
                return
            self._stops(keeper)
            if self.jobs:
                self._step(keeper)
            steps += 1

    def _engine(self, task: str) -> Engine:
        if task not in self.engines:
            engine = self.runner.open_engine(task, self.slots)
            if self.defer_decode and not self.finisher.inline:
                engine.defer = True  # finished rows' images are decoded on the finisher
            self.engines[task] = engine
        return self.engines[task]

    # -- joining ----------------------------------------------------------------------

    def _fill(self, keeper: LeaseKeeper) -> int:
        """Claim queued jobs into the free slots and admit them; returns how many claimed."""
        # A row whose images are still decoding on the finisher holds its slot: the
        # worker never computes for more than `--max-batch` jobs at once.
        free = self.slots - len(self.jobs) - self.finisher.held()
        if free <= 0:
            return 0
        try:
            claimed = self.x.claim(free)
        except OperationalError as exc:
            if not self.jobs:
                raise TransientError(f"database: {exc}") from exc
            log.warning("claiming failed (%s); the running jobs go on", exc)
            return 0
        if not claimed:
            return 0
        for job in claimed:  # renewed from now on: admission (prefill, image tower) takes time
            keeper.add(job.id, job.deadline_at)
        if claimed[0].attempts > 1:
            # Claimed before: it lost a worker, perhaps by killing it. It runs alone
            # (claim_next gives it no batch mates): the running rows finish first, and
            # nothing joins it (its lease is kept meanwhile).
            self.waiting = claimed[0]
        else:
            self._admit(claimed, keeper)
        return len(claimed)

    def _admit(self, claimed: list[Job], keeper: LeaseKeeper) -> None:
        engine = self._engine(claimed[0].task)  # claim_next returns one task's jobs
        items: list[tuple[str, Any]] = []
        by_id = {job.id: job for job in claimed}
        for job in claimed:
            try:
                items.append((job.id, self.x.request(job)))
            except ModelError as exc:
                self._refused(job.id, exc, keeper)
            except StorageError:
                self._release([job.id], keeper, by_id)
        refused = dict(engine.admit(items))
        for key, _ in items:
            if key in refused:
                self._refused(key, refused[key], keeper)
            else:
                self._row_started(by_id[key], keeper)

    def _refused(self, job_id: str, error: ModelError, keeper: LeaseKeeper) -> None:
        keeper.remove(job_id)
        try:
            self.x.finish(job_id, JobStatus.FAILED,
                           error={"code": error.code, "message": str(error)})
        except OperationalError as exc:
            log.warning("job %s: committing failed (%s); its lease will expire", job_id, exc)

    def _row_started(self, job: Job, keeper: LeaseKeeper) -> None:
        """The one place a job enters the engine (it is running from here on)."""
        self.jobs[job.id] = job
        self.started[job.id] = time.monotonic()
        with log_context(job_id=job.id, job_ids=None):  # a JSON log line names its job
            log.info("job %s joined the %s engine (%d running)", job.id, job.task, len(self.jobs))

    # -- stepping ---------------------------------------------------------------------

    def _stops(self, keeper: LeaseKeeper) -> None:
        """Cancel requests, passed deadlines and lost leases leave before the next step."""
        waiting = self.waiting
        if waiting is not None and keeper.should_stop(waiting.id):
            self.waiting = None
            keeper.remove(waiting.id)
            if waiting.id not in keeper.lost:
                self.x.complete(waiting, Canceled("canceled"), keeper, 0.0)
        for job_id in [j for j in self.jobs if keeper.should_stop(j)]:
            self.engines[self.jobs[job_id].task].drop(job_id)
            self._row_finished(job_id, Canceled("canceled"), keeper, len(self.jobs))

    def _step(self, keeper: LeaseKeeper) -> None:
        for task, engine in list(self.engines.items()):
            if not engine.active():
                continue
            stepping = engine.active()
            try:
                finished = engine.step()
            except Exception as exc:  # a runner bug must still end every job, not hang it
                log.exception("the %s engine failed a step", task)
                # Every job of the step, the ones that left the engine in it included.
                finished = [(k, ModelError(f"{type(exc).__name__}: {exc}")) for k in stepping]
                for key in engine.active():
                    engine.drop(key)
            running = len(engine.active()) + len(finished)
            for key, result in finished:
                self._row_finished(str(key), result, keeper, running)
            for key, (done, steps) in engine.progress().items():
                keeper.report_progress(str(key), done / steps, done, steps)
            for key, text in engine.texts().items():
                keeper.report_text(str(key), text)
            keeper.live.engine_previews(engine, self.x.settings.preview_every_steps)

    def _row_finished(self, job_id: str, result: Any, keeper: LeaseKeeper, running: int) -> None:
        """The one place a job leaves the engine with an outcome (a result, an error,
        `Canceled` for a cancel request or a passed deadline, or a `Deferred` whose images
        are still to decode). It is decoded, stored and committed on the finisher's
        thread, its lease renewed (and cancel requests heard) until then; its slot is free
        once it is decoded."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job_id == self.solo and isinstance(result, Deferred):
            # A retried job may be what killed its last worker: its decode, too, ends
            # before anything joins (nothing else runs now, so nothing waits on it).
            result = result.finish(job_id, keeper)
        if job_id in keeper.lost:
            self._forget(job_id, keeper)  # another worker owns it now
            return
        started = self.started[job_id]
        deferred = isinstance(result, Deferred)
        if deferred:
            self.finisher.hold(job_id)
        elapsed = None if deferred else row_ended(self.x, job, result, keeper, started, running)
        self._forget(job_id, keeper, renew=True)
        self.finisher.submit(job_id, lambda: store_row(
            self.x, self.finisher, job, result, keeper, started, running, elapsed))

    def _forget(self, job_id: str, keeper: LeaseKeeper, renew: bool = False) -> None:
        """The job is no longer running here; `renew`: keep its lease until it is stored."""
        if self.solo == job_id:
            self.solo = None
        self.jobs.pop(job_id, None)
        self.started.pop(job_id, None)
        if not renew:
            keeper.remove(job_id)

    def _release(self, job_ids: list[str], keeper: LeaseKeeper,
                 extra: dict[str, Job] | None = None) -> None:
        for job_id in job_ids:
            job = self.jobs.get(job_id) or (extra or {}).get(job_id)
            if job is not None and job.task in self.engines:
                self.engines[job.task].drop(job_id)
            self.x.release([job_id])
            self._forget(job_id, keeper)
