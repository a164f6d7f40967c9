"""The embedded default (SQLite, local files, a broker in SQLite), run as real processes
through the CLI exactly as `make run` does, driven over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time

import pytest
import requests
from PIL import Image

from tests.helpers import CLI, TEST_IMAGE_SIZE, free_port, png_bytes, wait_for

pytestmark = pytest.mark.slow


def test_embedded_end_to_end(tmp_path, tiny_checkpoint, spawn) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    env.update(JANUS_DATA_DIR=str(tmp_path / "var"), JANUS_PUBLIC_URL=f"http://127.0.0.1:{port}",
               JANUS_MODELS=json.dumps({"tiny": tiny_checkpoint}), OMP_NUM_THREADS="1",
               JANUS_SWEEP_INTERVAL_SECONDS="1")
    cli = list(CLI)
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
    out = subprocess.run([*cli, "keys", "create", "--name", "t", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    created = json.loads(out)  # --json prints the object and nothing else
    assert set(created) == {"key", "webhook_secret"}
    assert created["webhook_secret"].startswith("whsec_")
    auth = {"Authorization": f"Bearer {created['key']}"}

    api = spawn(["api", "--port", str(port), "--workers", "1"], env=env, name="api")
    spawn(["worker", "--model", "tiny"], env=env, name="worker")
    spawn(["dispatcher"], env=env, name="dispatcher")
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert api.alive(), api.output()
        try:
            return requests.get(f"{base}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, 60, what="embedded API")
    models = requests.get(f"{base}/v1/models", headers=auth, timeout=5).json()["data"]
    assert [m["id"] for m in models] == ["tiny"]

    job = requests.post(f"{base}/v1/jobs", headers=auth, timeout=10, json={
        "model": "tiny", "task": "generate", "input": {"prompt": "fox", "num_images": 2}}).json()
    image = base64.b64encode(png_bytes()).decode()
    ask = requests.post(f"{base}/v1/jobs", headers=auth, timeout=10, json={
        "model": "tiny", "task": "understand",
        "input": {"image": image, "question": "what?", "max_new_tokens": 8}}).json()

    def finished(job_id: str) -> dict:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            data = requests.get(f"{base}/v1/jobs/{job_id}", timeout=30,
                                headers={**auth, "Prefer": "wait=20"}).json()
            if data["status"] not in ("queued", "running"):
                return data
        raise AssertionError(data)

    done = finished(job["id"])
    assert done["status"] == "succeeded", done
    for meta in done["output"]["images"]:
        assert meta["url"].startswith(f"{base}/files/")
        got = requests.get(meta["url"], timeout=10)
        assert got.status_code == 200 and got.headers["Content-Type"] == "image/png"
        img = Image.open(io.BytesIO(got.content))
        assert img.size == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE) == (meta["width"], meta["height"])
        tampered = requests.get(meta["url"].replace("sig=", "sig=0"), timeout=10)
        assert tampered.status_code == 403 and tampered.json()["error"]["code"] == "forbidden"
    answer = finished(ask["id"])
    assert answer["status"] == "succeeded" and isinstance(answer["output"]["text"], str)

    removed = requests.delete(f"{base}/v1/jobs/{job['id']}", headers=auth, timeout=10)
    assert removed.status_code == 200 and removed.json()["data_removed"] is True
    assert all("url" not in meta for meta in removed.json()["output"]["images"])
    gone = requests.get(done["output"]["images"][0]["url"], timeout=10)
    assert gone.status_code == 404

    # The OpenAI-compatible face on SQLite and local files: a streamed answer (the live
    # events come from the SQL event log) and a batch file run to its output file.
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/openai/v1", api_key=created["key"], max_retries=0)
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]}]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, seed=1,
                                                 max_tokens=6, stream=True))
    # The job's own finish: the random tiny model usually talks until its budget of 6.
    job_id = chunks[-1].id.removeprefix("chatcmpl-")
    job = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10,
                       headers={"Authorization": f"Bearer {created['key']}"}).json()
    assert chunks[-1].choices[0].finish_reason == job["output"]["finish_reason"]
    assert job["output"]["usage"]["completion_tokens"] == 6 or \
        job["output"]["finish_reason"] == "stop"
    line = {"custom_id": "one", "method": "POST", "url": "/v1/images/generations",
            "body": {"model": "tiny", "prompt": "a fox", "response_format": "b64_json"}}
    source = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=source.id, completion_window="24h",
                                  endpoint="/v1/images/generations")
    # Only the file list is watched: the dispatcher's tick finishes the batch unread.
    output = wait_for(lambda: next((f.id for f in client.files.list(purpose="batch_output")
                                    if f.filename == f"{batch.id}_output.jsonl"), None),
                      180, 0.5, what="the OpenAI batch's output file")
    [result] = [json.loads(x) for x in client.files.content(output).text.splitlines()]
    png = base64.b64decode(result["response"]["body"]["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).size == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id == output


def test_embedded_dispatcher_expires_data(tmp_path, tiny_checkpoint, spawn) -> None:
    """The dispatcher's retention sweep on SQLite and local files, as `make run` runs it."""
    from service.api import create_app
    from service.core.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    env.update(JANUS_DATA_DIR=str(tmp_path / "var"), JANUS_RETENTION_SECONDS="1",
               JANUS_MODELS=json.dumps({"idle": tiny_checkpoint}),
               JANUS_SWEEP_INTERVAL_SECONDS="0.5")
    subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True)
    key = json.loads(subprocess.run([*CLI, "keys", "create", "--name", "t", "--json"], env=env,
                                    check=True, capture_output=True, text=True).stdout)["key"]
    auth = {"Authorization": f"Bearer {key}"}
    api = create_app(Settings(data_dir=tmp_path / "var", models={"idle": tiny_checkpoint},
                              retention_seconds=1)).test_client()
    image = base64.b64encode(png_bytes()).decode()
    ask = api.post("/v1/jobs", headers=auth, json={
        "model": "idle", "task": "understand",
        "input": {"image": image, "question": "what?"}}).json
    stored = tmp_path / "var" / "storage" / "inputs" / ask["id"]
    assert stored.is_dir()
    assert api.post(f"/v1/jobs/{ask['id']}/cancel", headers=auth).json["status"] == "canceled"
    spawn(["dispatcher"], env=env, name="dispatcher")

    def removed() -> dict | None:
        job = api.get(f"/v1/jobs/{ask['id']}", headers=auth).json
        return job if job["data_removed"] else None

    after = wait_for(removed, 60, interval=0.3, what="the dispatcher to remove the job's data")
    assert after["status"] == "canceled" and "url" not in after["input"]["image"]
    assert not stored.exists()
