"""Malformed requests get the documented 4xx in the one error shape, and leave nothing behind."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.helpers import IDLE, assert_error_shape, png_bytes, png_header_bomb


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


def gen(**input_: object) -> dict:
    return {"model": IDLE, "task": "generate", "input": {"prompt": "fox", **input_}}


def raw(text: str) -> dict:
    """A JSON body sent byte for byte: NaN, escapes, nesting a serializer won't make."""
    return {"data": text.encode(), "content_type": "application/json"}


DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in Python's json parser
NESTED_40 = "[" * 40 + "]" * 40  # parses, but past the documented depth limit (32)


def job_text(extra: str = "", prompt: str = '"fox"', task: str = "generate") -> str:
    return '{"model": "' + IDLE + '", "task": "' + task + '", "input": {"prompt": ' + prompt \
        + "}" + extra + "}"


def gen_raw(extra: str = "", prompt: str = '"fox"') -> dict:
    return raw(job_text(extra, prompt))


def meta_raw(value: str) -> dict:
    """A generate job whose metadata holds {"x": <value>}, the value as raw JSON text."""
    return gen_raw(', "metadata": {"x": ' + value + "}")


def und(**input_: object) -> dict:
    return {"model": IDLE, "task": "understand",
            "input": {"image": b64(png_bytes()), "question": "what?", **input_}}


SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "what?"}
ASSISTANT = {"role": "assistant", "content": "a fox"}


def conv(messages: object) -> dict:
    """An understand job in the conversation form."""
    return {"model": IDLE, "task": "understand",
            "input": {"image": b64(png_bytes()), "messages": messages}}


# (name, kwargs for client.open, expected status, expected error code)
CASES = [
    ("empty body", {"data": b"", "content_type": "application/json"}, 400, "invalid_json"),
    ("invalid json", {"data": b'{"model":', "content_type": "application/json"}, 400,
     "invalid_json"),
    ("json array", {"json": []}, 422, "validation_error"),
    ("text/plain", {"data": b"hello", "content_type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("missing model", {"json": {"task": "generate", "input": {"prompt": "x"}}}, 422,
     "validation_error"),
    ("missing task", {"json": {"model": IDLE, "input": {"prompt": "x"}}}, 422,
     "validation_error"),
    ("unknown task", {"json": {**gen(), "task": "paint"}}, 422, "validation_error"),
    ("unknown model", {"json": {**gen(), "model": "dall-e"}}, 422, "unknown_model"),
    ("missing input", {"json": {"model": IDLE, "task": "generate"}}, 422, "validation_error"),
    ("input not object", {"json": {**gen(), "input": "fox"}}, 422, "validation_error"),
    ("extra top-level field", {"json": {**gen(), "priority": 1}}, 422, "validation_error"),
    ("missing prompt", {"json": {**gen(), "input": {"num_images": 1}}}, 422,
     "validation_error"),
    ("empty prompt", {"json": gen(prompt="")}, 422, "validation_error"),
    ("blank prompt", {"json": gen(prompt="   ")}, 422, "validation_error"),
    ("prompt too long", {"json": gen(prompt="x" * 4001)}, 422, "validation_error"),
    ("num_images 0", {"json": gen(num_images=0)}, 422, "validation_error"),
    ("num_images 17", {"json": gen(num_images=17)}, 422, "validation_error"),
    ("num_images as string", {"json": gen(num_images="2")}, 422, "validation_error"),
    ("num_images fractional", {"json": gen(num_images=2.5)}, 422, "validation_error"),
    ("negative seed", {"json": gen(seed=-1)}, 422, "validation_error"),
    ("seed too large", {"json": gen(seed=2**64)}, 422, "validation_error"),
    ("guidance as string", {"json": gen(guidance="high")}, 422, "validation_error"),
    ("temperature zero", {"json": gen(temperature=0)}, 422, "validation_error"),
    ("steps on janus-pro", {"json": gen(steps=30)}, 422, "validation_error"),
    ("unknown input field", {"json": gen(negative_prompt="blur")}, 422, "validation_error"),
    ("webhook not http", {"json": {**gen(), "webhook": "ftp://example.com/x"}}, 422,
     "validation_error"),
    ("webhook with credentials", {"json": {**gen(), "webhook": "https://u:p@example.com/"}},
     422, "validation_error"),
    ("bad webhook event", {"json": {**gen(), "webhook_events": ["finished"]}}, 422,
     "validation_error"),
    ("metadata not object", {"json": {**gen(), "metadata": ["a"]}}, 422, "validation_error"),
    ("understand without image", {"json": {**und(), "input": {"question": "q"}}}, 422,
     "validation_error"),
    ("understand without question", {"json": {**und(), "input": {"image": b64(png_bytes())}}},
     422, "validation_error"),
    ("question and messages", {"json": und(messages=[USER])}, 422, "validation_error"),
    ("messages empty", {"json": conv([])}, 422, "validation_error"),
    ("messages not a list", {"json": conv(USER)}, 422, "validation_error"),
    ("message not an object", {"json": conv(["hi"])}, 422, "validation_error"),
    ("message of unknown role", {"json": conv([{"role": "tool", "content": "x"}])}, 422,
     "validation_error"),
    ("message with unknown field", {"json": conv([{**USER, "name": "bob"}])}, 422,
     "validation_error"),
    ("message content not a string", {"json": conv([{"role": "user", "content": ["x"]}])},
     422, "validation_error"),
    ("message image not a boolean", {"json": conv([{**USER, "image": "yes"}])}, 422,
     "validation_error"),
    ("messages ending with assistant", {"json": conv([USER, ASSISTANT])}, 422,
     "validation_error"),
    ("messages only a system prompt", {"json": conv([SYSTEM])}, 422, "validation_error"),
    ("system message not first", {"json": conv([USER, SYSTEM, USER])}, 422,
     "validation_error"),
    ("two user messages in a row", {"json": conv([USER, USER])}, 422, "validation_error"),
    ("starting with assistant", {"json": conv([ASSISTANT, USER])}, 422, "validation_error"),
    ("image on an assistant message",
     {"json": conv([USER, {**ASSISTANT, "image": True}, USER])}, 422, "validation_error"),
    ("image on the system message", {"json": conv([{**SYSTEM, "image": True}, USER])}, 422,
     "validation_error"),
    ("two image messages",
     {"json": conv([{**USER, "image": True}, ASSISTANT, {**USER, "image": True}])}, 422,
     "validation_error"),
    ("blank assistant message", {"json": conv([USER, {**ASSISTANT, "content": " "}, USER])},
     422, "validation_error"),
    ("too many messages", {"json": conv([USER, ASSISTANT] * 32 + [USER])}, 422,
     "validation_error"),
    ("message too long", {"json": conv([{**USER, "content": "x" * 4001}])}, 422,
     "validation_error"),
    ("conversation too long",
     {"json": conv([{**USER, "content": "x" * 4000}, {**ASSISTANT, "content": "y" * 4000}] * 2
                   + [{**USER, "content": "z"}])}, 422, "validation_error"),
    ("NUL in a message", {"json": conv([{**USER, "content": "what\x00?"}])}, 422,
     "validation_error"),
    ("lone surrogate in a message", {"json": conv([{**USER, "content": "\udc00"}])}, 422,
     "validation_error"),
    ("image not base64", {"json": und(image="not base64 at all!")}, 422, "invalid_image"),
    ("image not an image", {"json": und(image=b64(b"%PDF-1.4 hello"))}, 422, "invalid_image"),
    ("truncated png", {"json": und(image=b64(png_bytes((64, 64))[:60]))}, 422,
     "invalid_image"),
    ("decompression bomb", {"json": und(image=b64(png_header_bomb()))}, 422,
     "image_too_large"),
    ("gif not accepted", {"json": und(image="data:image/gif;base64," + b64(gif_bytes()))}, 422,
     "invalid_image"),
    ("max_new_tokens zero", {"json": und(max_new_tokens=0)}, 422, "validation_error"),
    ("top_p above one", {"json": und(top_p=1.5)}, 422, "validation_error"),
    ("multipart without job part", {"data": {"image": (io.BytesIO(png_bytes()), "a.png")},
                                    "content_type": "multipart/form-data"}, 422,
     "validation_error"),
    ("multipart without image part",
     {"data": {"job": json.dumps({"model": IDLE, "task": "understand",
                                  "input": {"question": "q"}})},
      "content_type": "multipart/form-data"}, 422, "validation_error"),
    ("multipart generate", {"data": {"job": json.dumps(gen()),
                                     "image": (io.BytesIO(png_bytes()), "a.png")},
                            "content_type": "multipart/form-data"}, 422, "validation_error"),
    ("bad Cancel-After", {"json": gen(), "headers": {"Cancel-After": "soon"}}, 422,
     "validation_error"),
    ("negative Cancel-After", {"json": gen(), "headers": {"Cancel-After": "-5"}}, 422,
     "validation_error"),
    ("Idempotency-Key too long", {"json": gen(), "headers": {"Idempotency-Key": "k" * 300}},
     422, "validation_error"),
    # What Postgres cannot store is refused before it gets there (docs/API.md, "Limits").
    ("NUL in prompt", {"json": gen(prompt="a\x00b")}, 422, "validation_error"),
    ("NUL in question", {"json": und(question="what\x00?")}, 422, "validation_error"),
    ("NUL in metadata value", {"json": {**gen(), "metadata": {"k": "a\x00"}}}, 422,
     "validation_error"),
    ("NUL in metadata key", {"json": {**gen(), "metadata": {"k\x00": "v"}}}, 422,
     "validation_error"),
    ("NUL in nested metadata", {"json": {**gen(), "metadata": {"k": [{"x": "\x00"}]}}}, 422,
     "validation_error"),
    ("NUL in model", {"json": {**gen(), "model": "janus\x00"}}, 422, "validation_error"),
    ("NUL in webhook", {"json": {**gen(), "webhook": "https://example.com/\x00"}}, 422,
     "validation_error"),
    ("NUL in multipart job part",
     {"data": {"job": json.dumps({"model": IDLE, "task": "understand",
                                  "input": {"question": "q\x00"}}),
               "image": (io.BytesIO(png_bytes()), "a.png")},
      "content_type": "multipart/form-data"}, 422, "validation_error"),
    ("NUL in Idempotency-Key", {"json": gen(), "headers": {"Idempotency-Key": "k\x00"}}, 422,
     "validation_error"),
    ("lone surrogate in prompt", {"json": gen(prompt="\ud800")}, 422, "validation_error"),
    ("lone surrogate in metadata key", gen_raw(', "metadata": {"\\udfff": 1}'), 422,
     "validation_error"),
    ("NaN in metadata", meta_raw("NaN"), 400, "invalid_json"),
    ("Infinity in metadata", meta_raw("Infinity"), 400, "invalid_json"),
    ("-Infinity in metadata", meta_raw("-Infinity"), 400, "invalid_json"),
    ("NaN as guidance", gen_raw(prompt='"fox", "guidance": NaN'), 400, "invalid_json"),
    ("1e999 overflows to infinity", meta_raw("1e999"), 400, "invalid_json"),
    ("integer of 5000 digits", meta_raw("9" * 5000), 400, "invalid_json"),
    ("NaN in multipart job part",
     {"data": {"job": job_text(', "metadata": {"x": NaN}', '"q"', "understand")
               .replace('"prompt"', '"question"'),
               "image": (io.BytesIO(png_bytes()), "a.png")},
      "content_type": "multipart/form-data"}, 400, "invalid_json"),
    ("body of 100,000 nested arrays", raw(DEEP), 422, "validation_error"),
    ("metadata value of 100,000 nested arrays", meta_raw(DEEP), 422, "validation_error"),
    ("input value of 100,000 nested arrays", gen_raw(prompt=DEEP), 422, "validation_error"),
    ("metadata nested 40 deep", meta_raw(NESTED_40), 422, "validation_error"),
    ("multipart job part of 100,000 nested arrays",
     {"data": {"job": DEEP, "image": (io.BytesIO(png_bytes()), "a.png")},
      "content_type": "multipart/form-data"}, 422, "validation_error"),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_submission(client, auth, side_effects, name, kwargs, status, code) -> None:
    before = side_effects()
    headers = {**auth, **kwargs.pop("headers", {})} if "headers" in kwargs else auth
    response = client.post("/v1/jobs", headers=headers, **dict(kwargs))
    error = assert_error_shape(response, status, code)
    if status == 422 and code == "validation_error":
        assert error["details"] and all("field" in d and "message" in d for d in error["details"])
    if "NUL" in name or "surrogate" in name:  # the refusal names the field it is about
        assert all("\x00" not in d["field"] for d in error["details"])
        assert any(("NUL" in d["message"]) or ("surrogate" in d["message"])
                   for d in error["details"])
    assert side_effects() == before


def test_validation_details_name_every_field(client, auth) -> None:
    response = client.post("/v1/jobs", json=gen(num_images=99, seed=-3, bogus=1), headers=auth)
    error = assert_error_shape(response, 422, "validation_error")
    fields = {d["field"] for d in error["details"]}
    assert fields == {"input.num_images", "input.seed", "input.bogus"}


def test_body_too_large(settings, auth, side_effects) -> None:
    from service.api import create_app

    small = create_app(settings.model_copy(update={"max_body_bytes": 4096})).test_client()
    before = side_effects()
    response = small.post("/v1/jobs", json=gen(prompt="x" * 3000, num_images=1) | {
        "metadata": {"pad": "y" * 3000}}, headers=auth)
    assert_error_shape(response, 413, "body_too_large")
    assert side_effects() == before


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("get", "/v1/nothing", 404, "not_found"),
    ("delete", "/v1/jobs", 405, "method_not_allowed"),
    ("get", "/v1/jobs/job_missing", 404, "not_found"),
    ("get", "/v1/jobs?limit=0", 422, "validation_error"),
    ("get", "/v1/jobs?status=done", 422, "validation_error"),
    ("get", "/v1/jobs?color=red", 422, "validation_error"),
    # A NUL in a URL: an id with one names nothing (404); a filter or cursor is refused (422).
    ("get", "/v1/jobs/job_%00x", 404, "not_found"),
    ("post", "/v1/jobs/job_%00x/cancel", 404, "not_found"),
    ("get", "/v1/jobs/job_%00x/webhook-deliveries", 404, "not_found"),
    ("get", "/v1/jobs?model=a%00b", 422, "validation_error"),
    ("get", "/v1/jobs?batch_id=%00", 422, "validation_error"),
    ("get", "/v1/jobs?after=job_%00", 422, "validation_error"),
    ("get", "/v1/jobs?status=%00", 422, "validation_error"),
    ("get", "/v1/jobs?%00=1", 422, "validation_error"),
    ("get", "/v1/batches/batch_%00x", 404, "not_found"),
    ("get", "/v1/batches/batch_%00x/results", 404, "not_found"),
    ("post", "/v1/batches/batch_%00x/cancel", 404, "not_found"),
    ("get", "/v1/batches?after=%00", 422, "validation_error"),
    ("get", "/v1/batches?limit=%00", 422, "validation_error"),
    ("get", "/v1/jobs?limit=1&after=" + "x" * 5000, 414, "uri_too_long"),
    ("get", "/v1/jobs//", 404, "not_found"),
])
def test_bad_reads(client, auth, side_effects, method, path, status, code) -> None:
    before = side_effects()
    error = assert_error_shape(getattr(client, method)(path, headers=auth), status, code)
    if code == "validation_error":
        assert error["details"] and all(d["field"] and d["message"] for d in error["details"])
    assert side_effects() == before


def test_unexpected_error_is_a_json_500(settings) -> None:
    from service.api import create_app

    app = create_app(settings)

    @app.get("/boom")
    def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    error = assert_error_shape(response, 500, "internal_error")
    assert "secret" not in error["message"]


def test_rate_limit_is_a_429_with_retry_after(settings, side_effects) -> None:
    from service.api import create_app
    from tests.helpers import make_key

    limited = create_app(settings.model_copy(update={"rate_limit_per_minute": 3})).test_client()
    auth = {"Authorization": f"Bearer {make_key(settings, 'limited')}"}
    import time

    if 60 - time.time() % 60 < 3:  # stay inside one one-minute window
        time.sleep(60 - time.time() % 60 + 0.1)
    codes = []
    for _ in range(3):
        r = limited.post("/v1/jobs", json=gen(), headers=auth)
        codes.append(r.status_code)
        assert int(r.headers["X-RateLimit-Limit"]) == 3
        limited.post(f"/v1/jobs/{r.json['id']}/cancel", headers=auth)
    assert codes == [202, 202, 202]
    before = side_effects()
    refused = limited.post("/v1/jobs", json=gen(), headers=auth)
    error = assert_error_shape(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 and "3" in error["message"]
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert side_effects() == before
    other = {"Authorization": f"Bearer {make_key(settings, 'unlimited')}"}
    ok = limited.post("/v1/jobs", json=gen(), headers=other)  # limits are per key
    assert ok.status_code == 202
    limited.post(f"/v1/jobs/{ok.json['id']}/cancel", headers=other)
