"""JanusFlow end to end: API -> a real worker running the rectified-flow runner -> S3."""

from __future__ import annotations

import base64

import pytest

from tests.helpers import FLOW, TEST_IMAGE_SIZE, fetch_png, png_bytes, start_worker, wait_terminal

pytestmark = pytest.mark.slow


def test_janusflow_jobs_through_a_worker(client, auth, settings, spawn) -> None:
    models = {m["id"]: m for m in client.get("/v1/models", headers=auth).json["data"]}
    assert models[FLOW]["family"] == "janusflow"
    assert models[FLOW]["defaults"]["generate"]["steps"] == 30
    refused = client.post("/v1/jobs", headers=auth, json={
        "model": FLOW, "task": "generate", "input": {"prompt": "x", "temperature": 1.0}})
    assert refused.status_code == 422

    worker = start_worker(spawn, settings, model=FLOW, name="flow", max_batch=4)
    body = {"model": FLOW, "task": "generate",
            "input": {"prompt": "a red fox", "num_images": 2, "seed": 11, "steps": 4}}
    first = client.post("/v1/jobs", json=body, headers=auth).json
    again = client.post("/v1/jobs", json=body, headers=auth).json
    other = client.post("/v1/jobs", headers=auth, json={
        **body, "input": {**body["input"], "steps": 2, "guidance": 1.0, "seed": 12}}).json
    results = [wait_terminal(client, auth, job["id"]) for job in (first, again, other)]
    for result in results:
        assert result["status"] == "succeeded", result
        for meta in result["output"]["images"]:
            assert (meta["width"], meta["height"]) == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    pixels = [[fetch_png(m["url"]).tobytes() for m in r["output"]["images"]] for r in results]
    assert pixels[0] == pixels[1]  # same seed, same images, whatever the batch
    assert pixels[0] != pixels[2]

    image = base64.b64encode(png_bytes((40, 30), "green")).decode()
    ask = {"model": FLOW, "task": "understand",
           "input": {"image": image, "question": "colour?", "max_new_tokens": 6, "seed": 1}}
    longer = {**ask, "input": {**ask["input"], "max_new_tokens": 12}}
    jobs = [client.post("/v1/jobs", headers=auth, json=body).json for body in (ask, longer, ask)]
    answers = [wait_terminal(client, auth, job["id"]) for job in jobs]
    for answer in answers:
        assert answer["status"] == "succeeded" and isinstance(answer["output"]["text"], str)
        assert 1 <= answer["output"]["usage"]["completion_tokens"] <= 12
    assert answers[0]["output"]["text"] == answers[2]["output"]["text"]  # same seed
    # Understanding runs on the worker's continuous engine, not the run-to-completion path.
    log = worker.output()
    for job in jobs:
        assert f"job {job['id']} joined the understand engine" in log, log[-3000:]
    answer = answers[0]

    # The same question as a one-turn conversation is the same prompt, so the same answer;
    # earlier turns make the prompt longer, a short system prompt (it replaces DeepSeek's
    # long default) shorter.
    turn = {"role": "user", "content": "colour?"}
    one = {"image": image, "max_new_tokens": 6, "seed": 1, "messages": [turn]}
    longer = {**one, "messages": [turn, {"role": "assistant", "content": "Green."},
                                  {"role": "user", "content": "Sure?"}]}
    brief = {**one, "messages": [{"role": "system", "content": "Be brief."}, turn]}
    jobs = [client.post("/v1/jobs", headers=auth, json={
        "model": FLOW, "task": "understand", "input": data}).json
        for data in (one, longer, brief)]
    same, more, less = [wait_terminal(client, auth, job["id"]) for job in jobs]
    assert {same["status"], more["status"], less["status"]} == {"succeeded"}
    assert same["output"]["text"] == answer["output"]["text"]
    assert same["output"]["usage"] == answer["output"]["usage"]
    prompts = [job["output"]["usage"]["prompt_tokens"] for job in (less, answer, more)]
    assert prompts == sorted(set(prompts))
