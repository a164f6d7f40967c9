"""Janus-1.3B end to end: a tiny original-layout checkpoint written by the CLI, served by a
real worker as its own family (DeepSeek's plain `User`/`Assistant` prompt format)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    CLI,
    TEST_IMAGE_SIZE,
    fetch_png,
    png_bytes,
    settings_env,
    start_worker,
    wait_terminal,
)

pytestmark = pytest.mark.slow

MODEL = "janus-1.3b"


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("ckpt") / "janus-1.3b-tiny"
    subprocess.run(
        [*CLI, "tiny-checkpoint", "--family", "janus",
         "--image-size", str(TEST_IMAGE_SIZE), str(out)],
        check=True, timeout=300,
    )
    return str(out)


def test_janus_1_3b_jobs_through_a_worker(settings, auth, spawn, janus_dir: str) -> None:
    from service.api import create_app

    config = (Path(janus_dir) / "config.json").read_text()
    assert '"multi_modality"' in config  # DeepSeek's original layout, as published
    own = settings.model_copy(update={"models": {**settings.models, MODEL: janus_dir}})
    client = create_app(own).test_client()
    models = {m["id"]: m for m in client.get("/v1/models", headers=auth).json["data"]}
    assert models[MODEL]["family"] == "janus"
    assert models[MODEL]["defaults"]["understand"]["top_k"] == 50

    start_worker(spawn, own, model=MODEL, name="janus", env=settings_env(own), max_batch=2)
    body = {"model": MODEL, "task": "generate",
            "input": {"prompt": "a red fox", "num_images": 2, "seed": 5}}
    first = client.post("/v1/jobs", json=body, headers=auth).json
    again = client.post("/v1/jobs", json=body, headers=auth).json
    image = base64.b64encode(png_bytes((30, 50), "blue")).decode()
    ask = client.post("/v1/jobs", headers=auth, json={
        "model": MODEL, "task": "understand",
        "input": {"image": image, "question": "colour?", "max_new_tokens": 5, "seed": 2}}).json
    results = [wait_terminal(client, auth, job["id"]) for job in (first, again, ask)]
    assert all(r["status"] == "succeeded" for r in results), results
    pixels = [[fetch_png(m["url"]).tobytes() for m in r["output"]["images"]] for r in results[:2]]
    assert pixels[0] == pixels[1] and len(pixels[0]) == 2
    assert isinstance(results[2]["output"]["text"], str)
