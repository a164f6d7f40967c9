"""The continuous-batching interface of a runner: rows join and leave between steps.

The engine is the only way a job runs. It owns a number of slots (one job each) and is
driven one step at a time by its caller (the worker's loop): between steps the caller
may `admit` new jobs, which join the rows already running, and `drop` jobs (cancel,
deadline, lost lease). `step()` advances every active row once and returns the jobs
that finished during that step; they have left and their slots are free at once.
Run-to-completion (`run_batch`: admit everything, step until empty, admit nothing on the
way) is a helper over the same engine, for tests and benchmark baselines; a warm-up
steps a few times (`step_a_few`).

Keys are the caller's (job ids); the engine never looks inside them. A job's result must
depend only on its own request and seed, never on which rows share its steps, its slot or
the step at which it joined (tested in tests/test_engine_invariance.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol

from PIL import Image

from service.models.base import Canceled, ModelError, NullControl, RunControl

Key = Hashable
Finished = list[tuple[Key, Any]]  # (key, GenerateResult | UnderstandResult | ModelError)


class Engine(Protocol):
    task: str
    slots: int
    defer: bool  # True: `step` may return a finished row as a `Deferred` to finish

    def admit(self, items: list[tuple[Key, Any]]) -> list[tuple[Key, ModelError]]:
        """Start these requests; returns the ones refused (bad input, no room) with why.

        Jobs admitted together are prefilled together before the next step."""
        ...

    def step(self) -> Finished:
        """Advance every active row by one step; returns the jobs that finished."""
        ...

    def drop(self, key: Key) -> bool:
        """Remove a job at once (its slot frees); False when it was not active."""
        ...

    def active(self) -> list[Key]: ...

    def free_slots(self) -> int: ...

    def progress(self) -> dict[Key, tuple[int, int]]:
        """Each active job's (steps done, steps in all); done < all while it is active."""
        ...

    def texts(self) -> dict[Key, str]:
        """The text so far of each active understanding row (empty for generation)."""
        ...

    def previews(self, every: int) -> dict[Key, Image.Image]:
        """A small image of the picture so far for each active row that asked for previews
        (`GenerateRequest.preview`), at most one per row every `every` steps. Read-only:
        a job's output is the same with or without them (service/models/preview.py)."""
        ...


class EngineBase:
    """Bookkeeping shared by the engines: slots, keys, and admission.

    `admit` is the same for every engine: a key already running (or repeated), a request
    of the other task, or one past the free slots is refused; `_prepare` checks and
    readies each of the others on its own (its failure refuses it alone, and it takes no
    slot); then `_start` starts the ready ones together (an engine whose jobs share a
    tower pass runs it once there) and they become rows."""

    request_type: type = object  # the request class of the engine's task
    defer = False  # True: `step` hands finished image rows out as `Deferred` (see there)

    def __init__(self, task: str, slots: int) -> None:
        if slots < 1:
            raise ValueError("an engine needs at least one slot")
        self.task = task
        self.slots = slots

    def admit(self, items: list[tuple[Key, Any]]) -> list[tuple[Key, ModelError]]:
        import torch

        taken, refused = self._room(items)
        ready: list[tuple[Key, Any]] = []
        with torch.inference_mode():
            for key, request in taken:
                if not isinstance(request, self.request_type):
                    kind = "a generation" if self.task == "generate" else "an understanding"
                    refused.append((key, ModelError(
                        f"not {kind} request: {type(request).__name__}")))
                elif full := self._full(len(ready)):
                    refused.append((key, full))
                else:
                    try:
                        ready.append((key, self._prepare(key, request)))
                    except Exception as e:
                        refused.append((key, failure(e)))
            rows = self._rows()
            started = self._start([prepared for _, prepared in ready]) if ready else []
            for (key, _), row in zip(ready, started, strict=True):
                if isinstance(row, BaseException):
                    refused.append((key, failure(row)))
                else:
                    rows[key] = row
        return refused

    def _prepare(self, key: Key, request: Any) -> Any:
        """One request, checked and readied on its own; raises to refuse it."""
        raise NotImplementedError

    def _start(self, ready: list[Any]) -> list[Any]:
        """The ready requests together -> each one's row (or the exception that refuses
        it), in order. By default `_prepare` made the row already."""
        return ready

    def active(self) -> list[Key]:
        return list(self._rows())

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._rows()))

    def texts(self) -> dict[Key, str]:
        return {}

    def previews(self, every: int) -> dict[Key, Image.Image]:
        return {}

    def _rows(self) -> dict[Key, Any]:
        raise NotImplementedError

    def _room(self, items: list[tuple[Key, Any]]) -> tuple[list, list[tuple[Key, ModelError]]]:
        """Split `items` into new keys and refusals of keys already running (or repeated)."""
        taken, refused, seen = [], [], set(self._rows())
        for key, request in items:
            if key in seen:
                refused.append((key, ModelError(f"{key!r} is already running in this engine")))
            else:
                seen.add(key)
                taken.append((key, request))
        return taken, refused

    def _full(self, pending: int = 0) -> ModelError | None:
        """Checked before each admission (`pending`: admitted in this call so far): a
        refused request takes no slot."""
        return None if self.free_slots() > pending else ModelError("no free slot in the engine")


class Deferred:
    """A finished row whose last, heavy part (decoding its images: the VQ decoder, the VAE)
    has not run yet. An engine whose `defer` is True hands these out of `step` instead of
    decoding inside it, so its caller can finish them on another thread while the next
    steps run (the worker's finisher does). The row has left the engine either way (the
    worker still counts it against its slots until decoded). `finish` runs on the calling
    thread, under the caller's control: a stop before or between decode chunks gives
    `Canceled`, and progress goes on from the token loop's share to 1."""

    def __init__(self, work: Callable[[RunControl], Any]) -> None:
        self._work = work

    def finish(self, key: Key = 0, control: RunControl | None = None) -> Any:
        """The row's result (never raises: a failure is the job's `ModelError`)."""
        import torch

        try:
            with torch.inference_mode():  # per thread: the finisher's is not the engine's
                return self._work(_OneJob(key, control or NullControl()))
        except Exception as e:
            return failure(e)


class _OneJob:
    """The caller's control, addressed by the finishing row's key whatever index the
    runner's decode uses for it."""

    def __init__(self, key: Key, control: RunControl) -> None:
        self.key, self.control = key, control

    def should_stop(self, index: Any) -> bool:
        return self.control.should_stop(self.key)  # type: ignore[arg-type]

    def report_progress(self, index: Any, fraction: float, step: int | None = None,
                        steps: int | None = None) -> None:
        self.control.report_progress(self.key, fraction, step, steps)  # type: ignore[arg-type]

    def report_text(self, index: Any, text_so_far: str) -> None:
        self.control.report_text(self.key, text_so_far)


def finish(result: Any, key: Key = 0, control: RunControl | None = None) -> Any:
    """`result` as a finished job's outcome: a `Deferred` is finished here."""
    return result.finish(key, control) if isinstance(result, Deferred) else result


def failure(exc: BaseException) -> ModelError:
    """Any exception of one job, as that job's error."""
    import torch

    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        from service.models.base import OutOfMemory

        return OutOfMemory(str(exc).splitlines()[0] if str(exc) else "out of memory")
    return ModelError(str(exc) or type(exc).__name__)


def run_batch(runner: Any, task: str, batch: list[Any],
              control: RunControl | None = None) -> list[Any]:
    """One result (or `ModelError`) per request of `batch`, run to completion on a fresh
    engine of the runner with one slot per request (`run_to_completion`)."""
    if not batch:
        return []
    engine = runner.open_engine(task, len(batch))
    return run_to_completion(engine, batch, control or NullControl())


def step_a_few(engine: Engine, batch: list[Any], steps: int) -> None:
    """Admit `batch`, step it `steps` times and drop what still runs: a warm-up. Rows that
    finish in it leave undecoded."""
    engine.defer = True
    refused = engine.admit(list(enumerate(batch)))
    if refused:  # a warm-up request the runner refuses: it cannot serve
        raise refused[0][1]
    for _ in range(steps):
        if not engine.active():
            break
        engine.step()
    for key in engine.active():
        engine.drop(key)


def run_to_completion(engine: Engine, batch: list[Any], control: RunControl) -> list[Any]:
    """A batch run to completion on an engine: every job admitted at once and stepped until the
    last one leaves, under `control` (a stop before the start or between steps, progress,
    the text so far); nothing joins on the way. Indices of `batch` are the control's keys."""
    results: list[Any] = [None] * len(batch)
    items = []
    for i, request in enumerate(batch):
        if control.should_stop(i):
            results[i] = Canceled("canceled before start")
        else:
            items.append((i, request))
    for i, error in engine.admit(items):
        results[i] = error
    while engine.active():
        for i in engine.active():
            if control.should_stop(i):
                engine.drop(i)
                results[i] = Canceled("canceled")
        stepping = engine.active()
        try:
            finished = engine.step()
        except Exception as exc:  # a fault of the step as a whole: every job in it fails
            for i in engine.active():
                engine.drop(i)
            finished = [(i, failure(exc)) for i in stepping]
        for i, result in finished:
            result = results[i] = finish(result, i, control)  # type: ignore[index]
            if not isinstance(result, ModelError):  # an early end of sentence finishes too
                if isinstance(getattr(result, "text", None), str):
                    control.report_text(i, result.text)  # the whole answer, held-back bytes too
                control.report_progress(i, 1.0)  # type: ignore[arg-type]
        for i, (done, steps) in engine.progress().items():
            control.report_progress(i, done / steps, done, steps)  # type: ignore[arg-type]
        for i, text in engine.texts().items():
            control.report_text(i, text)
    return results


# A prompt budget for sizing only: longer prompts still run (the cache grows), they just
# were not counted when the slots were sized.
SIZING_PROMPT_TOKENS = 256


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Keys and values of one row at one position, every layer."""
    return layers * 2 * kv_heads * head_dim * dtype_bytes


def size_slots(runner: Any, device: str, cap: int, fraction: float) -> tuple[int, str]:
    """Slots for a continuous engine: `cap` (--max-batch), fewer on a CUDA device whose free
    memory at start (times `fraction`) holds fewer of the runner's per-slot estimate
    (`runner.slot_bytes()`, docs/OPERATIONS.md). Returns (slots, why)."""
    if not device.startswith("cuda"):
        return cap, f"{cap} slots (--max-batch; no device memory to size against)"
    import torch

    per_slot = getattr(runner, "slot_bytes", lambda: None)()
    if not per_slot:
        return cap, f"{cap} slots (--max-batch; the runner gives no per-slot estimate)"
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    fits = int(free * fraction // per_slot)
    slots = max(1, min(cap, fits))
    return slots, (f"{slots} slots: {free / 2**30:.1f} GiB free x {fraction} / "
                   f"{per_slot / 2**20:.0f} MiB per slot = {fits}, --max-batch {cap}")
