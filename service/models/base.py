"""The model runner interface: load once, warm up, open an engine per task.

A runner knows nothing of Flask, Celery, SQL or object storage. Jobs run only in its
engines (`service.models.engine`): the worker admits plain requests, steps, and gets
one result (or one `ModelError`) per request, so that one job's failure or cancellation
never sinks its neighbours.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from PIL import Image

if TYPE_CHECKING:
    from service.models.engine import Engine


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    num_images: int = 1
    seed: int = 0
    guidance: float | None = None  # None: the runner's default
    temperature: float | None = None  # Janus / Janus-Pro
    steps: int | None = None  # JanusFlow
    preview: bool = False  # the engine may hand out previews of this job (never alters it)


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as the API validated it."""

    role: str  # "system" | "user" | "assistant"
    content: str
    image: bool = False  # the job's image goes at the start of this (user) turn


@dataclass(frozen=True)
class UnderstandRequest:
    image: Image.Image  # already decoded and validated, RGB
    question: str  # the single-question form; unused when `messages` is given
    seed: int = 0
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    # The conversation form: system prompt (optional, first), then user/assistant turns
    # ending with a user turn, exactly one of them carrying the image. Empty: `question`.
    messages: tuple[Turn, ...] = ()


@dataclass
class GenerateResult:
    images: list[Image.Image]
    # Free-form numbers the worker may record (e.g. decode steps, seconds).
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnderstandResult:
    text: str
    stats: dict[str, Any] = field(default_factory=dict)
    # Exact counts, stored as the job's `output.usage`: the prompt as the model consumed
    # it (image placeholder expanded to its patches) and the tokens it sampled, the
    # end-of-sentence token included when the answer ended on one.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop" (end of sentence) | "length" (token budget)


class ModelError(Exception):
    """A failure that belongs to one job; `code` becomes the job's error code."""

    code = "model_error"


class Canceled(ModelError):
    """The control asked this request to stop at a step boundary."""

    code = "canceled"


class InvalidInput(ModelError):
    """The input passed API validation but the model cannot take it (e.g. too long)."""

    code = "invalid_input"


class OutOfMemory(ModelError):
    code = "out_of_memory"


class RunControl(Protocol):
    """What a runner asks of its caller between steps. Indices are batch positions (or,
    from the continuous engine's loop, job keys)."""

    def should_stop(self, index: int) -> bool: ...

    def report_progress(
        self, index: int, fraction: float, step: int | None = None, steps: int | None = None
    ) -> None: ...

    def report_text(self, index: Any, text_so_far: str) -> None:
        """The answer decoded so far (an understanding row, each step): for live watchers."""
        ...


class NullControl:
    def should_stop(self, index: int) -> bool:
        return False

    def report_progress(
        self, index: int, fraction: float, step: int | None = None, steps: int | None = None
    ) -> None:
        return None

    def report_text(self, index: Any, text_so_far: str) -> None:
        return None


# Engine steps a warm-up runs per batch (`ModelRunner.warmup`).
WARMUP_STEPS = 3


class ModelRunner(ABC):
    """One loaded model. Construct cheaply; `load()` does the heavy work once."""

    family: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("understand", "generate")

    def __init__(self, path: str, device: str = "cpu") -> None:
        self.path = path
        self.device = device

    @abstractmethod
    def load(self) -> None:
        """Read weights from `self.path` onto `self.device`. Raises on a bad path."""

    def warmup(self) -> None:
        """A few steps of each engine over the shapes real jobs bring (one row and several,
        prompts of different lengths, sampled and greedy rows), then one image decode:
        every kernel has run, and every compiled function compiled, before the first job.
        Not whole jobs: a 576-token image at real size takes minutes on a CPU."""
        from service.models.engine import step_a_few

        image = Image.new("RGB", (32, 32))
        batches = {
            "understand": [
                [UnderstandRequest(image, "hi", max_new_tokens=8)],
                [UnderstandRequest(image, "hi", max_new_tokens=8),
                 UnderstandRequest(image, "a longer question about it", temperature=0.0)],
            ],
            "generate": [
                [GenerateRequest("warm-up", guidance=1.0)],  # a single row
                [GenerateRequest("warm-up", seed=1),
                 GenerateRequest("a longer warm-up prompt", seed=2, temperature=0.0)],
            ],
        }
        for task, requests in batches.items():
            for batch in requests:
                step_a_few(self.open_engine(task, len(batch)), batch, WARMUP_STEPS)
        self.warm_decode()

    @abstractmethod
    def warm_decode(self) -> None:
        """Decode one image from made-up tokens or latents (the VQ decoder, the VAE)."""

    @abstractmethod
    def defaults(self) -> dict[str, dict[str, Any]]:
        """Per-task defaults, e.g. {"generate": {"guidance": 5.0, ...}, "understand": {...}}."""

    @abstractmethod
    def open_engine(self, task: str, slots: int) -> Engine:
        """A continuous-batching engine for `task` with `slots` slots (`service.models.engine`)."""
