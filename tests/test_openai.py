"""The OpenAI-compatible face, driven by the official `openai` client against a live API
(`janus-service api` under gunicorn). No worker runs here: jobs go to the IDLE model,
and where a test needs a job to end, it ends it through the lifecycle as a worker
would. tests/test_openai_e2e.py runs the same face against a real worker.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI
from sqlalchemy import create_engine, func, select, update

from service.core.tables import Job, OpenAIBatch, utcnow
from service.lifecycle.hook import transition
from service.lifecycle.status import JobStatus
from service.openai import shapes
from tests.helpers import IDLE, TEST_IMAGE_SIZE, make_key, png_bytes, start_api, wait_for

DATA_URL = "data:image/png;base64,"
SIDE = f"{TEST_IMAGE_SIZE}x{TEST_IMAGE_SIZE}"


def data_url() -> str:
    import base64

    return DATA_URL + base64.b64encode(png_bytes()).decode()


@pytest.fixture(scope="module")
def live(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    # Batch files past 64 KiB are refused here, so the 413 is cheap to provoke. Jobs ended
    # by `finish` below announce no event: a waiter finds them at its once-a-heartbeat
    # check of the row, so the heartbeat is short.
    api, base = start_api(settings, tmp_path_factory.mktemp("openai") / "api.log",
                          JANUS_BATCH_MAX_BYTES="65536", JANUS_WEBHOOK_ALLOWLIST="127.0.0.1",
                          JANUS_EVENTS_HEARTBEAT_SECONDS="1")
    yield base
    api.stop()


@pytest.fixture(scope="module")
def oai(live: str, api_key: str) -> OpenAI:
    return OpenAI(base_url=f"{live}/openai/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def stranger(live: str, settings) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=f"{live}/openai/v1", api_key=make_key(settings, "stranger"),
                  max_retries=0)


@pytest.fixture(scope="module")
def engine(settings):  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database_url)
    yield engine
    engine.dispose()


def job_count(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Job))


def finish(engine, job_id: str, status: JobStatus, **values: Any) -> None:  # type: ignore[no-untyped-def]
    """End a queued job as a worker would: through the lifecycle's one transition."""
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        moved = transition(session=session, previous=JobStatus.QUEUED, where=[Job.id == job_id],
                           values={"status": status, "completed_at": utcnow(), **values})
        session.commit()
    assert moved, f"{job_id} was not queued"


def job_labelled(engine, label: str) -> str:  # type: ignore[no-untyped-def]
    """The id of the job whose metadata `user` is `label`, once the API created it."""
    def find() -> str | None:
        with engine.connect() as conn:
            return conn.scalar(select(Job.id).where(Job.metadata_["user"].as_string() == label))
    return wait_for(find, 60, 0.05, what=f"the job labelled {label}")


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def conforms(shape: type, obj: Any) -> None:
    """The live answer matches the model /openapi.json documents (extra fields refused)."""
    shape.model_validate(obj.to_dict() if hasattr(obj, "to_dict") else obj)


def assert_openai_error(exc: openai.APIStatusError, status: int, param: str | None = None,
                        code: str | None = None) -> dict[str, Any]:
    assert exc.status_code == status, (exc.status_code, exc.body)
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    conforms(shapes.OpenAIError, body)
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "requests" if status == 429
                             else "invalid_request_error")
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# -- models, keys ---------------------------------------------------------------------------

def test_models_list_and_retrieve(oai: OpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    models = oai.models.list()
    conforms(shapes.OpenAIModelList, {"object": "list",
                                       "data": [m.to_dict() for m in models.data]})
    assert {m.id for m in models.data} == set(settings.models)
    assert all(m.object == "model" and isinstance(m.created, int) for m in models.data)
    assert oai.models.retrieve(IDLE).id == IDLE
    with pytest.raises(openai.NotFoundError) as caught:
        oai.models.retrieve("gpt-nothing")
    assert_openai_error(caught.value, 404, "model", "model_not_found")


def test_a_wrong_key_is_an_authentication_error(live: str) -> None:
    client = OpenAI(base_url=f"{live}/openai/v1", api_key="jk_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert_openai_error(caught.value, 401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        client.images.generate(model=IDLE, prompt="x")
    # No key at all, and an unknown path: OpenAI's shape too.
    bare = requests.get(f"{live}/openai/v1/models", timeout=10)
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"


def test_unknown_paths_and_methods_answer_in_openai_shape(live: str, api_key: str) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    missing = requests.get(f"{live}/openai/v1/engines", headers=auth, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong = requests.put(f"{live}/openai/v1/models", headers=auth, timeout=10)
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == {"message", "type",
                                                                       "param", "code"}
    not_json = requests.post(f"{live}/openai/v1/images/generations", data="{nope",
                             headers={**auth, "Content-Type": "application/json"}, timeout=10)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"


# -- refusals: 400 naming the parameter, nothing stored -------------------------------------

def test_image_requests_are_checked_before_anything_is_stored(oai: OpenAI, engine) -> None:  # type: ignore[no-untyped-def]
    before = job_count(engine)
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"size": "1024x1024"}, "size"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"response_format": "svg"}, "response_format"),
        ({"extra_body": {"bogus": 1}}, "bogus"),
        ({"extra_body": {"steps": 10}}, "steps"),  # a JanusFlow knob on a Janus-Pro model
        ({"extra_body": {"seed": -1}}, "seed"),
        ({"background": "transparent"}, "background"),
        ({"prompt": ""}, "prompt"),
    ]
    for extra, param in refusals:
        kwargs = {"model": IDLE, "prompt": "a fox", **extra}
        with pytest.raises(openai.BadRequestError) as caught:
            oai.images.generate(**kwargs)
        error = assert_openai_error(caught.value, 400, param)
        if param == "size":
            assert SIDE in error["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        oai.images.generate(model="dall-e-3", prompt="a fox")
    assert_openai_error(missing.value, 404, "model", "model_not_found")
    assert job_count(engine) == before


def test_chat_requests_are_checked_before_anything_is_stored(oai: OpenAI, engine) -> None:  # type: ignore[no-untyped-def]
    image = {"type": "image_url", "image_url": {"url": data_url()}}
    text = {"type": "text", "text": "What is this?"}

    def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": list(parts)}]

    before = job_count(engine)
    refusals: list[tuple[dict[str, Any], str, str | None]] = [
        ({"messages": user(text, {"type": "image_url",
                                  "image_url": {"url": "https://example.com/cat.png"}})},
         "messages[0].content[1].image_url.url", "image_url_not_supported"),
        ({"messages": user(text, image, image)}, "messages[0].content[2].image_url.url", None),
        ({"messages": user(text)}, "messages", None),
        ({"messages": [*user(text, image), {"role": "assistant", "content": "hi"}]},
         "messages", None),
        ({"messages": user({"type": "image_url", "image_url": {"url": DATA_URL + "%%%"}})},
         "messages[0].content[0].image_url.url", "invalid_image"),
        ({"messages": user(text, {"type": "input_audio", "input_audio": {}})},
         "messages[0].content[1].type", None),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", None),
        ({"messages": user(text, image), "n": 2}, "n", None),
        ({"messages": user(text, image), "max_tokens": 0}, "max_tokens", None),
        ({"messages": user(text, image), "max_completion_tokens": 99999},
         "max_completion_tokens", None),
        ({"messages": user(text, image), "top_p": 2}, "top_p", None),
        ({"messages": user(text, image), "stream_options": {"include_usage": True}},
         "stream_options", None),
        ({"messages": user(text, image), "tools": [{"type": "function",
                                                     "function": {"name": "f"}}]}, "tools", None),
    ]
    for extra, param, code in refusals:
        with pytest.raises(openai.BadRequestError) as caught:
            oai.chat.completions.create(model=IDLE, **extra)
        assert_openai_error(caught.value, 400, param, code)
    assert job_count(engine) == before


# -- holding a request for its job ------------------------------------------------------------

def test_a_hold_past_its_bound_is_a_504_naming_the_job_and_is_not_retried(
    live: str, api_key: str, engine
) -> None:  # type: ignore[no-untyped-def]
    retrying = OpenAI(base_url=f"{live}/openai/v1", api_key=api_key)  # the default 2 retries
    before = job_count(engine)
    with pytest.raises(openai.InternalServerError) as caught:
        retrying.images.generate(model=IDLE, prompt="a slow fox",
                                 extra_headers={"Prefer": "wait=1"})
    error = assert_openai_error(caught.value, 504, code="job_timeout")
    job_id = caught.value.response.headers["x-janus-job-id"]
    assert job_id in error["message"]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert job_count(engine) == before + 1  # one job: the client did not resend
    auth = {"Authorization": f"Bearer {api_key}"}
    job = requests.get(f"{live}/v1/jobs/{job_id}", headers=auth, timeout=10).json()
    assert job["status"] == "queued" and job["task"] == "generate"


@pytest.mark.parametrize(("status", "error", "expected", "code"), [
    (JobStatus.FAILED, {"code": "model_error", "message": "boom"}, openai.InternalServerError,
     "model_error"),
    (JobStatus.FAILED, {"code": "invalid_input", "message": "too long"}, openai.BadRequestError,
     "invalid_input"),
    (JobStatus.CANCELED, None, openai.ConflictError, "job_canceled"),
])
def test_a_job_that_does_not_succeed_maps_to_the_clients_error(
    oai: OpenAI, engine, status, error, expected, code
) -> None:  # type: ignore[no-untyped-def]
    label = f"fail-{code}"
    thread, out = in_background(lambda: oai.images.generate(
        model=IDLE, prompt="doomed", user=label, extra_headers={"Prefer": "wait=120"}))
    job_id = job_labelled(engine, label)
    finish(engine, job_id, status, error=error)
    thread.join(120)
    caught = out.get("error")
    assert isinstance(caught, expected), out
    body = assert_openai_error(caught, caught.status_code, code=code)
    assert job_id in body["message"]
    assert caught.response.headers["x-should-retry"] == "false"


def test_a_streamed_chat_whose_job_fails_raises_in_the_stream(oai: OpenAI, engine) -> None:  # type: ignore[no-untyped-def]
    label = "stream-fails"

    def consume() -> list[Any]:
        stream = oai.chat.completions.create(
            model=IDLE, stream=True, user=label, extra_headers={"Prefer": "wait=120"},
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "hm?"},
                {"type": "image_url", "image_url": {"url": data_url()}}]}])
        return list(stream)

    thread, out = in_background(consume)
    finish(engine, job_labelled(engine, label), JobStatus.FAILED,
           error={"code": "out_of_memory", "message": "no room"})
    thread.join(120)
    assert isinstance(out.get("error"), openai.APIError), out
    assert "no room" in str(out["error"])


def test_a_conversation_reaches_the_job_turn_by_turn_with_the_workers_usage(
    oai: OpenAI, engine
) -> None:  # type: ignore[no-untyped-def]
    image = {"type": "image_url", "image_url": {"url": data_url()}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "developer", "content": [{"type": "text", "text": "No emojis."}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "assistant", "content": None},  # an empty turn says nothing
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, image]},
        {"role": "user", "content": "What is it?"},
    ]
    # What the job holds, and so what the worker renders with the chat template.
    turns = [{"role": "system", "content": "Be brief.\n\nNo emojis.", "image": False},
             {"role": "user", "content": "Hello", "image": False},
             {"role": "assistant", "content": "Hi.", "image": False},
             {"role": "user", "content": "Look:\nWhat is it?", "image": True}]
    output = {"text": "A square.", "seed": 1, "finish_reason": "length",
              "usage": {"prompt_tokens": 640, "completion_tokens": 4}}
    held = {"model": IDLE, "messages": messages, "extra_headers": {"Prefer": "wait=120"}}
    thread, out = in_background(lambda: oai.chat.completions.create(**held, user="turns"))
    streamed, chunks = in_background(lambda: list(oai.chat.completions.create(
        **held, user="turns-streamed", stream=True, stream_options={"include_usage": True})))
    for label, call in (("turns", thread), ("turns-streamed", streamed)):
        job_id = job_labelled(engine, label)
        with engine.connect() as conn:
            stored = conn.scalar(select(Job.input).where(Job.id == job_id))
        assert stored["messages"] == turns and "question" not in stored
        finish(engine, job_id, JobStatus.SUCCEEDED, output=output)
        call.join(120)
    answer = out["value"]
    assert answer.choices[0].message.content == "A square."
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens,
            answer.usage.total_tokens) == (640, 4, 644)
    last = chunks["value"][-1]
    assert last.choices == [] and (last.usage.prompt_tokens, last.usage.completion_tokens,
                                   last.usage.total_tokens) == (640, 4, 644)
    assert chunks["value"][-2].choices[0].finish_reason == "length"


def test_conversations_the_template_cannot_take_are_refused(oai: OpenAI, engine) -> None:  # type: ignore[no-untyped-def]
    image = {"type": "image_url", "image_url": {"url": data_url()}}
    before = job_count(engine)
    refusals = [
        ([{"role": "assistant", "content": "Hi."}, {"role": "user", "content": [image]}],
         "messages[0]"),
        ([{"role": "user", "content": [image, {"type": "text", "text": "x" * 4001}]}],
         "messages[0].content"),
        ([{"role": "user", "content": [image]}, *[{"role": r, "content": "x" * 3000}
                                                  for r in ("assistant", "user") * 3]],
         "messages"),
        ([{"role": "user", "content": [image]}, *[{"role": r, "content": "x"}
                                                  for r in ("assistant", "user") * 32]],
         "messages"),
    ]
    for messages, param in refusals:
        with pytest.raises(openai.BadRequestError) as caught:
            oai.chat.completions.create(model=IDLE, messages=messages)
        assert_openai_error(caught.value, 400, param)
    assert job_count(engine) == before


# -- files -------------------------------------------------------------------------------------

def image_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/images/generations",
            "body": {"model": IDLE, "prompt": f"prompt {custom_id}", **body}}


def chat_line(custom_id: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": [{"type": "text", "text": f"q {custom_id}"},
                                             {"type": "image_url",
                                              "image_url": {"url": data_url()}}]}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": IDLE, "messages": messages, **body}}


def jsonl(lines: list[Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client: OpenAI, lines: list[Any], name: str = "in.jsonl") -> Any:
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def test_files_upload_read_list_download_delete_and_tenancy(
    oai: OpenAI, stranger: OpenAI
) -> None:
    data = jsonl([image_line("a"), image_line("b")])
    created = oai.files.create(file=("two.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.id.startswith("file-") and created.object == "file"
    conforms(shapes.FileObject, created)
    assert (created.bytes, created.filename, created.purpose) == (len(data), "two.jsonl",
                                                                  "batch")
    assert oai.files.retrieve(created.id).bytes == len(data)
    assert oai.files.content(created.id).content == data
    assert created.id in [f.id for f in oai.files.list(purpose="batch")]
    assert created.id not in [f.id for f in stranger.files.list()]
    for call in (stranger.files.retrieve, stranger.files.content, stranger.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(created.id)
        assert_openai_error(caught.value, 404)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.create(input_file_id=created.id, endpoint="/v1/images/generations",
                                completion_window="24h")

    with pytest.raises(openai.BadRequestError) as purpose:
        oai.files.create(file=("x.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert_openai_error(purpose.value, 400, "purpose")
    with pytest.raises(openai.APIStatusError) as large:  # read to its end, then refused
        oai.files.create(file=("big.jsonl", io.BytesIO(b"{}\n" * 30000)), purpose="batch")
    assert_openai_error(large.value, 413)

    deleted = oai.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    conforms(shapes.FileDeleted, deleted)
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(created.id)


# -- batches -----------------------------------------------------------------------------------

def test_a_batch_with_bad_lines_fails_validation_listing_them(oai: OpenAI, engine) -> None:  # type: ignore[no-untyped-def]
    before = job_count(engine)
    source = upload(oai, [image_line("ok"), image_line("zero", n=0),
                          {**image_line("elsewhere"), "url": "/v1/chat/completions"},
                          image_line("ok"), "not an object"])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h")
    assert batch.status == "failed" and batch.failed_at
    conforms(shapes.OpenAIBatch, batch)
    assert batch.request_counts.total == 0
    errors = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert errors == [(2, "invalid_value", "body.n"), (3, "mismatched_endpoint", "url"),
                      (4, "duplicate_custom_id", "custom_id"), (5, "invalid_json_line", None)]
    assert oai.batches.retrieve(batch.id).status == "failed"
    assert job_count(engine) == before  # nothing enqueued

    for bad, param in (({"endpoint": "/v1/embeddings"}, "endpoint"),
                       ({"completion_window": "1h"}, "completion_window"),
                       ({"metadata": {"k": "v" * 600}}, "metadata"),
                       ({"extra_body": {"webhook": "http://169.254.169.254/x"}}, "webhook")):
        kwargs = {"input_file_id": source.id, "endpoint": "/v1/images/generations",
                  "completion_window": "24h", **bad}
        with pytest.raises(openai.BadRequestError) as caught:
            oai.batches.create(**kwargs)
        assert_openai_error(caught.value, 400, param)
    with pytest.raises(openai.NotFoundError):
        oai.batches.create(input_file_id="file-nope", endpoint="/v1/images/generations",
                           completion_window="24h")


def result_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_cancel_a_batch_tenancy_and_the_shared_v1_view(
    oai: OpenAI, stranger: OpenAI, live: str, api_key: str
) -> None:
    source = upload(oai, [image_line(f"c{i}") for i in range(3)])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h", metadata={"project": "cancel"},
                               extra_body={"webhook": "http://127.0.0.1:9/hooks"})
    assert batch.status == "in_progress" and batch.request_counts.total == 3
    conforms(shapes.OpenAIBatch, batch)
    assert batch.metadata == {"project": "cancel"}
    ours = requests.get(f"{live}/v1/batches/{batch.id}", timeout=10,
                        headers={"Authorization": f"Bearer {api_key}"}).json()
    assert ours["counts"]["queued"] == 3 and ours["metadata"] == {"project": "cancel"}
    assert ours["webhook"] == "http://127.0.0.1:9/hooks"
    assert batch.id in [b.id for b in oai.batches.list()]
    assert batch.id not in [b.id for b in stranger.batches.list()]
    for call in (stranger.batches.retrieve, stranger.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            call(batch.id)

    canceled = oai.batches.cancel(batch.id)
    assert canceled.status == "cancelled" and canceled.cancelling_at and canceled.cancelled_at
    assert canceled.output_file_id is None
    conforms(shapes.OpenAIBatch, canceled)
    assert (canceled.request_counts.completed, canceled.request_counts.failed) == (0, 3)
    lines = result_lines(oai, canceled.error_file_id)
    assert [line["custom_id"] for line in lines] == ["c0", "c1", "c2"]
    assert {line["error"]["code"] for line in lines} == {"batch_cancelled"}
    for line in lines:
        conforms(shapes.BatchResultLine, line)
    assert all(line["response"] is None and line["id"].startswith("batch_req_")
               for line in lines)
    assert oai.files.retrieve(canceled.error_file_id).purpose == "batch_output"
    again = oai.batches.cancel(batch.id)
    assert again.status == "cancelled" and again.error_file_id == canceled.error_file_id


def test_a_batch_past_its_completion_window_expires(oai: OpenAI, engine) -> None:  # type: ignore[no-untyped-def]
    source = upload(oai, [image_line("late")])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h")
    assert batch.expires_at - batch.created_at == 24 * 3600
    with engine.begin() as conn:
        conn.execute(update(OpenAIBatch).where(OpenAIBatch.id == batch.id)
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    expired = oai.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at
    [line] = result_lines(oai, expired.error_file_id)
    assert line["custom_id"] == "late" and line["error"]["code"] == "batch_expired"


def test_a_finished_chat_batch_writes_openai_result_lines(oai: OpenAI, engine) -> None:  # type: ignore[no-untyped-def]
    source = upload(oai, [chat_line("yes", max_tokens=8), chat_line("no"), chat_line("more")])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    with engine.connect() as conn:
        ids = conn.execute(select(Job.custom_id, Job.id, Job.input)
                           .where(Job.batch_id == batch.id)).all()
    jobs = {row.custom_id: row for row in ids}
    assert jobs["yes"].input["max_new_tokens"] == 8
    assert jobs["yes"].input["messages"] == [{"role": "user", "content": "q yes",
                                              "image": True}]
    # A worker's output carries its exact counts; "more" is a row from before it did.
    finish(engine, jobs["yes"].id, JobStatus.SUCCEEDED, output={
        "text": "a red square", "seed": 1, "finish_reason": "length",
        "usage": {"prompt_tokens": 611, "completion_tokens": 8}})
    assert oai.batches.retrieve(batch.id).status == "in_progress"
    finish(engine, jobs["no"].id, JobStatus.FAILED,
           error={"code": "invalid_input", "message": "the question is too long"})
    finish(engine, jobs["more"].id, JobStatus.SUCCEEDED, output={"text": "red", "seed": 2})
    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at and done.finalizing_at
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (3, 2, 1)
    conforms(shapes.OpenAIBatch, done)
    output = result_lines(oai, done.output_file_id)
    for line in output:
        conforms(shapes.BatchResultLine, line)
        conforms(shapes.ChatCompletion, line["response"]["body"])
    assert [line["custom_id"] for line in output] == ["yes", "more"]
    first = output[0]["response"]
    assert first["status_code"] == 200 and first["request_id"] == jobs["yes"].id
    assert first["body"]["object"] == "chat.completion"
    assert first["body"]["choices"][0]["message"]["content"] == "a red square"
    assert first["body"]["usage"] == {"prompt_tokens": 611, "completion_tokens": 8,
                                      "total_tokens": 619}
    assert first["body"]["choices"][0]["finish_reason"] == "length"
    more = output[1]["response"]["body"]
    # The estimate: "red" is about one token, "q more" two after the image's.
    assert more["usage"]["completion_tokens"] == 1 and more["usage"]["prompt_tokens"] > 2
    assert more["choices"][0]["finish_reason"] == "stop"
    [error] = result_lines(oai, done.error_file_id)
    assert error["custom_id"] == "no" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "invalid_input"
    assert oai.batches.retrieve(batch.id).output_file_id == done.output_file_id  # written once


# -- in-process: the rate limit and an outage, through the same client -------------------------

def in_process_client(app, key: str) -> OpenAI:  # type: ignore[no-untyped-def]
    import httpx2

    return OpenAI(base_url="http://testserver/openai/v1", api_key=key, max_retries=0,
                  http_client=httpx2.Client(transport=httpx2.WSGITransport(app=app)))


def test_rate_limit_is_a_rate_limit_error(settings) -> None:  # type: ignore[no-untyped-def]
    from service.api import create_app

    app = create_app(settings.model_copy(update={"rate_limit_per_minute": 1}))
    client = in_process_client(app, make_key(settings, "limited"))
    with pytest.raises(openai.BadRequestError):  # counted, then refused for its endpoint
        client.batches.create(input_file_id="file-x", endpoint="/v1/nope",
                              completion_window="24h")
    with pytest.raises(openai.RateLimitError) as caught:
        client.batches.create(input_file_id="file-x", endpoint="/v1/nope",
                              completion_window="24h")
    assert_openai_error(caught.value, 429, code="rate_limit_exceeded")
    assert int(caught.value.response.headers["Retry-After"]) > 0
    app.extensions["janus"].db.dispose()


def test_a_database_outage_is_a_503_in_openai_shape(settings, api_key) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import make_url

    from service.api import create_app
    from tests.netfakes import TcpProxy

    url = make_url(settings.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = create_app(settings.model_copy(update={"database_url": proxied}))
    client = in_process_client(app, api_key)
    assert client.models.list().data
    proxy.cut()
    with pytest.raises(openai.InternalServerError) as caught:
        client.files.list()
    assert_openai_error(caught.value, 503, code="database_unavailable")
    assert int(caught.value.response.headers["Retry-After"]) > 0
    app.extensions["janus"].db.dispose()


def test_openai_messages_become_template_turns() -> None:
    from service.openai.routes.translate import DEFAULT_QUESTION, conversation

    url = data_url()
    image = {"type": "image_url", "image_url": {"url": url}}
    turns, got, param = conversation([
        {"role": "system", "content": ""},  # empty: DeepSeek's default stays
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "  "},  # empty: dropped
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [image]},
    ])
    assert (got, param) == (url, "messages[4].content[0].image_url.url")
    assert turns == [{"role": "user", "content": "Hi", "image": False},
                     {"role": "assistant", "content": "Hello.", "image": False},
                     {"role": "user", "content": DEFAULT_QUESTION, "image": True}]
