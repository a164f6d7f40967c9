"""Request schemas. The same models validate requests and generate /openapi.json."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SEED_MAX = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _int_is_a_number(value: Any) -> Any:
    # strict mode refuses 5 for a float field; JSON clients mean 5.0.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class GenerateInput(_Strict):
    prompt: str = Field(min_length=1, max_length=4000)
    num_images: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    temperature: float | None = Field(None, gt=0.0, le=2.0, description="Janus / Janus-Pro")
    steps: int | None = Field(None, ge=1, le=100, description="JanusFlow")
    preview: bool = Field(False, description="send `preview` events (small JPEGs) while it runs")

    _floats = field_validator("guidance", "temperature", mode="before")(_int_is_a_number)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value


MAX_MESSAGES = 64
MAX_CONVERSATION_CHARS = 16000
MAX_MESSAGE_CHARS = 4000


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)
    image: bool = Field(False, description="the job's image goes at the start of this user "
                        "message (at most one; default: the first user message)")


class UnderstandInput(_Strict):
    image: str = Field(description="base64 or a data: URI (PNG, JPEG or WebP)", min_length=1)
    question: str | None = Field(None, min_length=1, max_length=4000,
                                 description="this, or `messages`")
    messages: list[Message] | None = Field(
        None, min_length=1, max_length=MAX_MESSAGES,
        description="a conversation instead of `question`: an optional system message "
        "first, then user and assistant messages in turn, ending with a user message")
    max_new_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)

    _floats = field_validator("temperature", "top_p", mode="before")(_int_is_a_number)

    @field_validator("messages")
    @classmethod
    def _a_conversation(cls, value: list[Message] | None) -> list[Message] | None:
        if value is None:
            return value
        if not any(m.image for m in value):  # stored explicit: the job says where it went
            carrier = next((m for m in value if m.role == "user"), None)
            if carrier is not None:
                carrier.image = True
        check_conversation(value)
        return value

    @model_validator(mode="after")
    def _question_or_messages(self) -> UnderstandInput:
        if (self.question is None) == (self.messages is None):
            raise ValueError("give exactly one of question and messages")
        return self


def check_conversation(messages: list[Message]) -> None:
    """The rules of `UnderstandInput.messages` (docs/API.md, "Conversations")."""
    if sum(len(m.content) for m in messages) > MAX_CONVERSATION_CHARS:
        raise ValueError(f"the messages' content is at most {MAX_CONVERSATION_CHARS} "
                         "characters in all")
    first = 1 if messages[0].role == "system" else 0  # the system message is optional
    for i, m in enumerate(messages[first:], start=first):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if m.role != expected:
            hint = " (a system message may only come first)" if m.role == "system" else ""
            raise ValueError(f"messages[{i}]: expected a {expected} message, got {m.role}{hint}")
        if m.image and m.role != "user":
            raise ValueError(f"messages[{i}]: only a user message can carry the image")
        if not m.content.strip() and not m.image:
            raise ValueError(f"messages[{i}]: content must not be blank")
    if messages[-1].role != "user":
        raise ValueError("the last message must be a user message")
    if first and messages[0].image:
        raise ValueError("messages[0]: only a user message can carry the image")
    if sum(m.image for m in messages) > 1:
        raise ValueError("only one message can carry the image")


class UnderstandUploadInput(UnderstandInput):
    """The multipart form: the image comes as a file part, not inside the JSON."""

    image: None = None  # type: ignore[assignment]


WebhookEvent = Literal["started", "completed"]


class JobCreate(_Strict):
    model: str = Field(min_length=1, max_length=100)
    task: Literal["generate", "understand"]
    input: dict[str, Any]
    webhook: str | None = Field(None, max_length=2048)
    webhook_events: list[WebhookEvent] | None = Field(None, max_length=2)
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Stripe-like bounds: metadata is a label, not a payload store.
        if value is None:
            return value
        if len(value) > 50:
            raise ValueError("metadata holds at most 50 keys")
        import json

        if len(json.dumps(value)) > 16384:
            raise ValueError("metadata is at most 16 KiB of JSON")
        return value


def input_model(task: str, multipart: bool = False) -> type[_Strict]:
    if task == "generate":
        return GenerateInput
    return UnderstandUploadInput if multipart else UnderstandInput


def error_details(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as [{"field": "input.num_images", "message": "..."}]."""
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"field": field, "message": message})
    return out
