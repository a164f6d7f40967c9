"""An OpenAI batch input file (JSONL of `{"custom_id", "method", "url", "body"}`) read into
checked jobs, or the list of what is wrong with it, line by line, as OpenAI reports it.

Each body goes through the endpoint's own translation and `check_job`, so a line is
accepted exactly when the same request sent alone would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.api.parsing.batch_upload import MAX_LISTED_ERRORS, Line
from service.api.parsing.bodies import loads, text_problems
from service.api.parsing.submit import CheckedJob
from service.openai.routes.blueprint import OpenAIError
from service.openai.routes.translate import chat_request, image_request


def _image_job(body: dict[str, Any]) -> CheckedJob:
    return image_request(body).job


def _chat_job(body: dict[str, Any]) -> CheckedJob:
    if body.get("stream"):
        raise OpenAIError(400, "stream is not supported in batch requests", param="stream")
    return chat_request(body).job


ENDPOINTS: dict[str, Callable[[dict[str, Any]], CheckedJob]] = {
    "/v1/images/generations": _image_job,
    "/v1/chat/completions": _chat_job,
}
LINE_KEYS = {"custom_id", "method", "url", "body"}
MAX_CUSTOM_ID = 200  # jobs.custom_id


@dataclass
class Parsed:
    lines: list[Line] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _error(code: str, message: str, line: int | None, param: str | None = None
           ) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(record: Any, number: int, endpoint: str, seen: dict[str, int]
                ) -> Line | dict[str, Any]:
    if not isinstance(record, dict):
        return _error("invalid_json_line", "each line must be a JSON object", number)
    problems = text_problems(record)
    if problems:
        first = problems[0]
        return _error("invalid_request", f"{first['field']}: {first['message']}", number,
                      first["field"])
    unknown = sorted(set(record) - LINE_KEYS)
    if unknown:
        return _error("invalid_request", f"unknown field {unknown[0][:100]!r}", number,
                      unknown[0][:100])
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        return _error("invalid_custom_id", f"custom_id must be a string of 1 to "
                      f"{MAX_CUSTOM_ID} characters", number, "custom_id")
    if custom_id in seen:
        return _error("duplicate_custom_id", f"custom_id {custom_id!r} is also on line "
                      f"{seen[custom_id]}", number, "custom_id")
    seen[custom_id] = number
    if record.get("method") != "POST":
        return _error("invalid_method", "method must be POST", number, "method")
    url = record.get("url")
    if url != endpoint:
        known = isinstance(url, str) and url in ENDPOINTS
        return _error("mismatched_endpoint" if known else "invalid_url",
                      f"url must be the batch's endpoint {endpoint}", number, "url")
    body = record.get("body")
    if not isinstance(body, dict):
        return _error("invalid_request", "body must be a JSON object", number, "body")
    try:
        job = ENDPOINTS[endpoint](body)
    except OpenAIError as exc:
        param = f"body.{exc.param}" if exc.param else "body"
        return _error(exc.code or "invalid_request", exc.message, number, param)
    return Line(number, custom_id, job)


def parse_lines(data: bytes, endpoint: str, max_lines: int) -> Parsed:
    """Every line checked; `errors` (at most MAX_LISTED_ERRORS) empty when all are good."""
    parsed = Parsed()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        parsed.errors.append(_error("invalid_file", f"the file is not UTF-8: {exc}", None))
        return parsed
    raw_lines = [(n, raw) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not raw_lines:
        parsed.errors.append(_error("empty_file", "the input file holds no requests", None))
        return parsed
    if len(raw_lines) > max_lines:
        parsed.errors.append(_error("too_many_requests", f"{len(raw_lines)} requests; at "
                                    f"most {max_lines} per batch", None))
        return parsed
    seen: dict[str, int] = {}
    for number, raw in raw_lines:
        try:
            record = loads(raw)
        except ValueError as exc:
            outcome: Line | dict[str, Any] = _error(
                "invalid_json_line", f"line {number} is not valid JSON: {exc}", number)
        else:
            outcome = _check_line(record, number, endpoint, seen)
        if isinstance(outcome, Line):
            parsed.lines.append(outcome)
        elif len(parsed.errors) < MAX_LISTED_ERRORS:
            parsed.errors.append(outcome)
    return parsed
