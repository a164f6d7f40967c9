"""OpenAI request bodies -> our job bodies, checked by the same `check_job` as /v1.

Used by the synchronous endpoints and by every line of a batch file, so a request is
accepted or refused the same way wherever it comes from. Refusals are OpenAIError
400s naming OpenAI's parameter (`n`, `messages[0].content[1].image_url.url`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.api.context import runtime
from service.api.errors import ApiError
from service.api.parsing.submit import CheckedJob, check_job
from service.api.schemas.inputs import MAX_CONVERSATION_CHARS, MAX_MESSAGE_CHARS, MAX_MESSAGES
from service.openai.records import RESPONSE_FORMAT_KEY
from service.openai.render import image_size
from service.openai.routes.blueprint import OpenAIError, bad_request, model_info

# Janus knobs a client passes as extra body fields (`extra_body` in the openai client).
IMAGE_EXTRAS = ("seed", "guidance", "temperature", "steps")
# Accepted and ignored: they describe OpenAI's models or accounts, not ours.
IMAGE_IGNORED = {"quality", "style", "moderation", "output_compression"}
CHAT_IGNORED = {"store", "service_tier", "prompt_cache_key", "parallel_tool_calls"}
# Accepted only at a value that asks for nothing we cannot do.
IMAGE_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "stream": (False,), "partial_images": (0,), "output_format": ("png",),
    "background": ("auto", "opaque"),
}
CHAT_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "n": (1,), "logprobs": (False,), "top_logprobs": (0,), "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0), "tools": ([],), "tool_choice": ("none", "auto"),
    "response_format": ({"type": "text"},), "modalities": (["text"],), "stop": ([],),
}
LABELS = ("user", "safety_identifier")  # kept in the job's metadata
DEFAULT_QUESTION = "Describe this image."


@dataclass
class ImageRequest:
    job: CheckedJob
    response_format: str  # url | b64_json


@dataclass
class ChatRequest:
    job: CheckedJob
    stream: bool
    include_usage: bool


def _known(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise bad_request(f"Unrecognized request argument supplied: {str(name)[:100]}", name)


def _defaults_only(body: dict[str, Any], rules: dict[str, tuple[Any, ...]]) -> None:
    for name, values in rules.items():
        value = body.get(name)
        if value is not None and not any(value == v and type(value) is type(v) for v in values):
            shown = ", ".join(repr(v) for v in values)
            raise bad_request(f"{name} is not supported here except as {shown}", name)


def _labels(body: dict[str, Any]) -> dict[str, Any]:
    metadata = {}
    for name in LABELS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 512:
            raise bad_request(f"{name} must be a string of at most 512 characters", name)
        metadata[name] = value
    return metadata


def api_error_param(exc: ApiError, names: dict[str, str]) -> str | None:
    """The OpenAI parameter a check_job refusal is about (`input.num_images` -> `n`)."""
    details = exc.details if isinstance(exc.details, list) else []
    field = details[0].get("field") if details and isinstance(details[0], dict) else None
    if not isinstance(field, str):
        return None
    return names.get(field, names.get(field.split(".")[0] + "." + field.split(".")[-1], field))


def _check(job: dict[str, Any], names: dict[str, str]) -> CheckedJob:
    """check_job, its refusals in OpenAI's terms (param names, 404 for a model)."""
    rt = runtime()
    try:
        return check_job(job, rt.models, rt.settings)
    except ApiError as exc:
        if exc.code == "unknown_model":
            raise OpenAIError(404, f"The model `{job.get('model')}` does not exist.",
                              param="model", code="model_not_found") from exc
        param = api_error_param(exc, names)
        details = exc.details if isinstance(exc.details, list) else []
        message = details[0].get("message", exc.message) if details else exc.message
        raise bad_request(f"{param}: {message}" if param else str(message), param,
                          "invalid_value" if exc.code == "validation_error" else exc.code) from exc


def image_request(body: dict[str, Any]) -> ImageRequest:
    """POST /images/generations (or a batch line's body) -> a generate job."""
    _known(body, {"model", "prompt", "n", "size", "response_format", *LABELS, *IMAGE_EXTRAS,
                  *IMAGE_IGNORED, *IMAGE_DEFAULT_ONLY})
    _defaults_only(body, IMAGE_DEFAULT_ONLY)
    info = model_info(body.get("model"))
    if "generate" not in info.tasks:
        raise bad_request(f"model {info.id} does not generate images", "model")
    response_format = body.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise bad_request("response_format must be url or b64_json", "response_format")
    side = image_size(info.id, runtime().settings.models)
    size = body.get("size")
    if size is not None and size not in ("auto", f"{side}x{side}"):
        raise bad_request(f"size {str(size)[:40]!r} is not supported by {info.id}: it makes "
                          f"{side}x{side} images; use {side}x{side} or auto", "size")
    data: dict[str, Any] = {"prompt": body.get("prompt")}
    if body.get("n") is not None:
        data["num_images"] = body["n"]
    data.update({k: body[k] for k in IMAGE_EXTRAS if body.get(k) is not None})
    metadata = _labels(body)
    if response_format == "b64_json":
        metadata[RESPONSE_FORMAT_KEY] = "b64_json"
    job = {"model": info.id, "task": "generate", "input": data, "metadata": metadata}
    names = {"input.prompt": "prompt", "input.num_images": "n", "input": "prompt"}
    names.update({f"input.{k}": k for k in IMAGE_EXTRAS})
    return ImageRequest(_check(job, names), response_format)


def _parts(content: Any, where: str) -> list[tuple[str, Any, str]]:
    """(kind, value, param) for a message's content: a string or a list of parts."""
    if isinstance(content, str):
        return [("text", content, f"{where}.content")]
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content parts",
                          f"{where}.content")
    out = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise bad_request("a content part must be an object", param)
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(("text", part["text"], f"{param}.text"))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise bad_request("image_url.url must be a string", f"{param}.image_url.url")
            out.append(("image", url, f"{param}.image_url.url"))
        else:
            raise bad_request(f"content parts of type {str(kind)[:40]!r} are not supported: "
                              "use text and image_url", f"{param}.type")
    return out


def _image_url(url: str, param: str) -> str:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise bad_request("this service fetches nothing from the internet: send the image "
                          "inline as a data: URL (data:image/png;base64,...)", param,
                          "image_url_not_supported")
    if scheme != "data":
        raise bad_request("image_url.url must be a data: URL (data:image/png;base64,...)",
                          param)
    return url


def conversation(messages: Any) -> tuple[list[dict[str, Any]], str, str]:
    """(our `messages`, image data URL, the image's param) from OpenAI chat messages.

    System and developer messages become the one system message, first; consecutive
    messages of one role become one turn (the template alternates user and assistant);
    the image starts the user turn whose message carried it. An empty last user turn
    asks DEFAULT_QUESTION.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []  # {"role", "content", "image"?}, merged
    images = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request("a message must be an object", where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad_request(f"role {str(role)[:40]!r} is not supported: use system, "
                              "developer, user or assistant", f"{where}.role")
        if message.get("tool_calls"):
            raise bad_request("tool calls are not supported", f"{where}.tool_calls")
        content = message.get("content")
        parts = [] if content is None and role == "assistant" else _parts(content, where)
        text = "\n".join(value for kind, value, _ in parts if kind == "text").strip()
        if len(text) > MAX_MESSAGE_CHARS:
            raise bad_request(f"a message's text is at most {MAX_MESSAGE_CHARS} characters",
                              f"{where}.content")
        carries = False
        for kind, value, param in parts:
            if kind == "image":
                if role != "user":
                    raise bad_request("images belong in user messages", param)
                images.append((value, param))
                carries = True
        if role in ("system", "developer"):
            if text:  # an empty one keeps DeepSeek's default system prompt
                system.append(text)
            continue
        if not text and not carries and not (role == "user" and i == len(messages) - 1):
            continue  # an empty turn says nothing; an empty last one asks DEFAULT_QUESTION
        if turns and turns[-1]["role"] == role:
            last = turns[-1]
            last["content"] = "\n".join(t for t in (last["content"], text) if t)
            last["image"] = last["image"] or carries
        else:
            if not turns and role != "user":
                raise bad_request("the conversation must start with a user message "
                                  "(after any system messages)", where)
            turns.append({"role": role, "content": text, "image": carries})
    if not turns or turns[-1]["role"] != "user":
        raise bad_request("the last message must be a user message", "messages")
    if not images:
        raise bad_request("this model answers questions about an image: include one "
                          "image_url part (a data: URL) in a user message", "messages")
    if len(images) > 1:
        raise bad_request(f"this model takes one image per conversation; got {len(images)}",
                          images[1][1])
    if not turns[-1]["content"]:
        turns[-1]["content"] = DEFAULT_QUESTION
    out = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    out += turns
    if len(out) > MAX_MESSAGES:
        raise bad_request(f"at most {MAX_MESSAGES} turns (consecutive messages of one role "
                          "count once; system messages once)", "messages")
    if any(len(m["content"]) > MAX_MESSAGE_CHARS for m in out) or \
            sum(len(m["content"]) for m in out) > MAX_CONVERSATION_CHARS:
        raise bad_request(f"the conversation's text is at most {MAX_CONVERSATION_CHARS} "
                          f"characters, {MAX_MESSAGE_CHARS} a turn", "messages")
    url, param = images[0]
    return out, _image_url(url, param), param


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """POST /chat/completions (or a batch line's body) -> an understand job."""
    _known(body, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                  "top_p", "seed", "stream", "stream_options", "metadata", *LABELS,
                  *CHAT_IGNORED, *CHAT_DEFAULT_ONLY})
    _defaults_only(body, CHAT_DEFAULT_ONLY)
    info = model_info(body.get("model"))
    if "understand" not in info.tasks:
        raise bad_request(f"model {info.id} does not answer questions about images", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    if options is not None and (not isinstance(options, dict)
                                or not isinstance(options.get("include_usage", False), bool)):
        raise bad_request("stream_options must be {\"include_usage\": bool}", "stream_options")
    turns, image, image_param = conversation(body.get("messages"))
    max_param = ("max_completion_tokens" if body.get("max_completion_tokens") is not None
                 else "max_tokens")
    data: dict[str, Any] = {"image": image, "messages": turns}
    for ours, theirs in (("max_new_tokens", max_param), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("seed", "seed")):
        if body.get(theirs) is not None:
            data[ours] = body[theirs]
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad_request("metadata must be an object of strings", "metadata")
    job = {"model": info.id, "task": "understand", "input": data,
           "metadata": {**(metadata or {}), **_labels(body)}}
    names = {"input.image": image_param, "input.messages": "messages",
             "input.max_new_tokens": max_param, "input.temperature": "temperature",
             "input.top_p": "top_p", "input.seed": "seed", "input": "messages"}
    return ChatRequest(_check(job, names), bool(stream),
                       bool((options or {}).get("include_usage")))
