"""End to end through the OpenAI-compatible face: the official `openai` client -> a live
API -> Postgres/Redis -> a real `janus-service worker` (tiny Janus-Pro checkpoint) -> S3.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI
from PIL import Image

from service.core.events import event_log
from service.openai import shapes
from tests.helpers import (
    CLI,
    TEST_IMAGE_SIZE,
    TINY,
    Proc,
    fetch_png,
    png_bytes,
    settings_env,
    start_api,
    start_worker,
)

pytestmark = pytest.mark.slow
EOS = "<｜end▁of▁sentence｜>"


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A live API and one worker serving TINY, shared by this module's tests."""
    logs: Path = tmp_path_factory.mktemp("openai-e2e")
    procs: list[Proc] = []

    def spawn(args: list[str], env: dict[str, str] | None = None, name: str = "proc",
              cli: list[str] = CLI) -> Proc:
        proc = Proc(args, env or settings_env(settings), logs / f"{name}-{len(procs)}.log", cli)
        procs.append(proc)
        return proc

    api, base = start_api(settings, logs / "api.log")
    procs.append(api)
    start_worker(spawn, settings)
    # Its tick finishes OpenAI batches nobody reads (service/openai/batch_tick.py).
    spawn(["dispatcher"], settings_env(settings, JANUS_SWEEP_INTERVAL_SECONDS="0.5"),
          "dispatcher")
    yield base
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def oai(stack: str, api_key: str) -> OpenAI:
    return OpenAI(base_url=f"{stack}/openai/v1", api_key=api_key, max_retries=0, timeout=300)


def picture() -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(png_bytes((48, 40), "blue")).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, picture()]}]


def test_images_generate_as_urls_and_as_base64(oai: OpenAI) -> None:
    by_url = oai.images.generate(model=TINY, prompt="a red fox in snow", n=2,
                                 size=f"{TEST_IMAGE_SIZE}x{TEST_IMAGE_SIZE}",
                                 extra_body={"seed": 7})
    assert isinstance(by_url.created, int) and len(by_url.data) == 2
    shapes.ImagesResponse.model_validate(by_url.to_dict())
    fetched = [fetch_png(item.url) for item in by_url.data]
    assert all(img.size == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE) for img in fetched)
    assert all(item.revised_prompt is None and item.b64_json is None for item in by_url.data)

    inline = oai.images.generate(model=TINY, prompt="a red fox in snow", n=2, size="auto",
                                 response_format="b64_json", extra_body={"seed": 7})
    decoded = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in inline.data]
    assert all(img.format == "PNG" for img in decoded)
    # The same seed through either format: the same pixels (one model path, one job each).
    assert [img.tobytes() for img in decoded] == [img.tobytes() for img in fetched]


def test_chat_completion_and_its_stream_give_the_same_answer(oai: OpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    params = {"model": TINY, "messages": ask("What is in the picture?"), "seed": 3,
              "max_tokens": 12, "temperature": 1.0}
    answer = oai.chat.completions.create(**params)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-job_")
    assert answer.model == TINY
    shapes.ChatCompletion.model_validate(answer.to_dict())
    [choice] = answer.choices
    assert choice.message.role == "assistant"
    text = choice.message.content
    assert isinstance(text, str) and text.strip()
    # The worker's counts: an answer that ran to its budget sampled all 12 tokens.
    assert 1 <= answer.usage.completion_tokens <= 12
    if choice.finish_reason == "length":
        assert answer.usage.completion_tokens == 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    chunks = list(oai.chat.completions.create(**params, stream=True,
                                              stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    for c in chunks:
        shapes.ChatCompletionChunk.model_validate(c.to_dict())
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # same seed, same job inputs: the same answer
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == choice.finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == answer.usage
    # The deltas are the worker's token events, read from the job's live event channel.
    job_id = chunks[0].id.removeprefix("chatcmpl-")
    tokens = [e.data["text"] for e in event_log(settings).read(job_id, None, 0)
              if e.kind == "token"]
    assert tokens and [c.choices[0].delta.content for c in chunks[1:-2]] == tokens



def test_a_conversation_runs_as_turns_and_usage_counts_the_models_tokens(
    oai: OpenAI, stack: str, api_key: str, pro
) -> None:  # type: ignore[no-untyped-def]
    turns = [{"role": "system", "content": "Answer briefly."},
             {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
             *ask("And this?")]
    again = oai.chat.completions.create(model=TINY, messages=turns, max_completion_tokens=4,
                                        seed=5)
    assert again.choices[0].message.content.strip()
    job_id = again.id.removeprefix("chatcmpl-")
    job = requests.get(f"{stack}/v1/jobs/{job_id}", timeout=10,
                       headers={"Authorization": f"Bearer {api_key}"}).json()
    assert [(m["role"], m["content"], m["image"]) for m in job["input"]["messages"]] == [
        ("system", "Answer briefly.", False), ("user", "Hello", False),
        ("assistant", "Hi.", False), ("user", "And this?", True)]
    # The prompt the model consumed, written from DeepSeek's template and tokenized with
    # the checkpoint's own tokenizer: the placeholder becomes BOI, one per patch, EOI.
    prompt = ("Answer briefly.\n\n<|User|>: Hello\n\n<|Assistant|>: Hi." + EOS
              + "<|User|>: <image_placeholder>\nAnd this?\n\n<|Assistant|>:")
    expected = len(pro.processor.tokenizer.encode(prompt)) - 1 + pro.num_image_tokens + 2
    usage = job["output"]["usage"]
    assert usage["prompt_tokens"] == again.usage.prompt_tokens == expected
    assert usage["completion_tokens"] == again.usage.completion_tokens
    assert again.choices[0].finish_reason == job["output"]["finish_reason"]
    assert 1 <= usage["completion_tokens"] <= 4
    if job["output"]["finish_reason"] == "length":
        assert usage["completion_tokens"] == 4

    # Our own /v1 conversation form runs the same way: the same job, the same answer.
    image = base64.b64encode(png_bytes((48, 40), "blue")).decode()
    body = {"model": TINY, "task": "understand", "input": {
        "image": image, "seed": 5, "max_new_tokens": 4, "messages": job["input"]["messages"]}}
    ours = requests.post(f"{stack}/v1/jobs", json=body, timeout=90, headers={
        "Authorization": f"Bearer {api_key}", "Prefer": "wait=60"}).json()
    assert ours["status"] == "succeeded", ours
    assert ours["output"]["text"] == job["output"]["text"]
    assert ours["output"]["usage"] == usage


def _poll(client: OpenAI, batch_id: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


def _output_file(client: OpenAI, batch_id: str, timeout: float = 240) -> str:
    """The batch's output file id, watching only the file list (never the batch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in client.files.list(purpose="batch_output"):
            if item.filename == f"{batch_id}_output.jsonl":
                return item.id
        time.sleep(0.5)
    raise AssertionError(f"no output file for batch {batch_id}")


def _lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_batch_files_run_to_completed_with_openai_result_lines(
    oai: OpenAI, stack: str, api_key: str
) -> None:
    image_lines = [
        {"custom_id": "fox", "method": "POST", "url": "/v1/images/generations",
         "body": {"model": TINY, "prompt": "a fox", "seed": 1}},
        {"custom_id": "cat", "method": "POST", "url": "/v1/images/generations",
         "body": {"model": TINY, "prompt": "a cat", "seed": 2, "response_format": "b64_json"}},
    ]
    data = "".join(json.dumps(line) + "\n" for line in image_lines).encode()
    source = oai.files.create(file=("images.jsonl", io.BytesIO(data)), purpose="batch")
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h", metadata={"run": "e2e"})
    chat = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": TINY, "messages": ask(f"question {i}"), "max_tokens": 6,
                      "seed": i}} for i in range(2)]
    chat_source = oai.files.create(
        file=("chat.jsonl", io.BytesIO("".join(json.dumps(c) + "\n" for c in chat).encode())),
        purpose="batch")
    chat_batch = oai.batches.create(input_file_id=chat_source.id,
                                    endpoint="/v1/chat/completions", completion_window="24h")

    done = _poll(oai, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (2, 2, 0)
    assert done.error_file_id is None and done.completed_at >= done.created_at
    shapes.OpenAIBatch.model_validate(done.to_dict())
    fox, cat = _lines(oai, done.output_file_id)
    for line in (fox, cat):
        shapes.BatchResultLine.model_validate(line)
        shapes.ImagesResponse.model_validate(line["response"]["body"])
    assert (fox["custom_id"], cat["custom_id"]) == ("fox", "cat")
    assert fox["response"]["status_code"] == 200 and fox["error"] is None
    assert fetch_png(fox["response"]["body"]["data"][0]["url"]).size == (TEST_IMAGE_SIZE,
                                                                          TEST_IMAGE_SIZE)
    png = base64.b64decode(cat["response"]["body"]["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    # The same batch on /v1, and each line's request_id is its job there.
    auth = {"Authorization": f"Bearer {api_key}"}
    ours = requests.get(f"{stack}/v1/batches/{batch.id}", headers=auth, timeout=10).json()
    assert ours["status"] == "completed" and ours["counts"]["succeeded"] == 2
    job = requests.get(f"{stack}/v1/jobs/{fox['response']['request_id']}", headers=auth,
                       timeout=10).json()
    assert job["custom_id"] == "fox" and job["batch_id"] == batch.id

    # Nobody reads the chat batch: the dispatcher's tick writes its file all the same.
    output = _output_file(oai, chat_batch.id)
    lines = _lines(oai, output)
    assert [line["custom_id"] for line in lines] == ["q0", "q1"]
    for line in lines:
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == TINY
        assert isinstance(body["choices"][0]["message"]["content"], str)
    answered = oai.batches.retrieve(chat_batch.id)
    assert answered.status == "completed" and answered.output_file_id == output
