"""Previews of the picture forming (tiny checkpoints, CPU): the engines hand them out for
the rows that asked, paced, and a job's output is the same with previews on or off."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from service.models.base import GenerateRequest, GenerateResult
from service.models.preview import PREVIEW_PIXELS, due, flow_every
from service.workers.live import LiveReporter

pytest.importorskip("torch")




def _run(engine: Any, items: list[tuple[str, GenerateRequest]], every: int | None):
    """Admit `items`, step to the end; with `every`, take previews after each step.
    Returns the results and the previews as (key, step done, image)."""
    assert engine.admit(items) == []
    results: dict[str, Any] = {}
    shots: list[tuple[str, int, Image.Image]] = []
    while engine.active():
        for key, result in engine.step():
            results[key] = result
        if every is not None:
            progress = engine.progress()
            shots += [(k, progress[k][0], im) for k, im in engine.previews(every).items()]
    return results, shots


def _pixels(result: GenerateResult) -> list[bytes]:
    assert isinstance(result, GenerateResult), result
    return [im.tobytes() for im in result.images]


def _requests(preview: bool) -> list[tuple[str, GenerateRequest]]:
    return [("a", GenerateRequest("a red cat", num_images=2, seed=3, preview=preview)),
            ("b", GenerateRequest("a dog", seed=5, temperature=0.7))]


@pytest.mark.parametrize("family", ["pro", "flow"])
def test_previews_for_the_rows_that_asked_and_outputs_unchanged(family, request) -> None:
    runner = request.getfixturevalue(family)
    every = 4
    on, shots = _run(runner.open_engine("generate", 4), _requests(True), every)
    off, none = _run(runner.open_engine("generate", 4), _requests(False), every)
    assert none == []  # nobody asked
    assert {k for k, _, _ in shots} == {"a"}
    steps = runner.num_image_tokens if family == "pro" else runner.defaults()["generate"]["steps"]
    pace = every if family == "pro" else flow_every(every, steps)
    assert [s for _, s, _ in shots] == list(range(pace, steps, pace))
    for _, _, image in shots:
        assert image.mode == "RGB" and max(image.size) <= PREVIEW_PIXELS
    for key in ("a", "b"):
        assert _pixels(on[key]) == _pixels(off[key])


def test_janus_pro_preview_is_grey_where_no_token_yet(pro) -> None:
    engine = pro.open_engine("generate", 1)
    _, shots = _run(engine, [("a", GenerateRequest("a cat", seed=1, preview=True))],
                    pro.num_image_tokens // 2)
    (_, step, image), = shots
    assert step == pro.num_image_tokens // 2
    width, height = image.size
    bottom = image.crop((0, height * 3 // 4, width, height)).getcolors(maxcolors=4)
    assert bottom == [(width * (height - height * 3 // 4), (127, 127, 127))]


def test_pacing() -> None:
    assert [d for d in range(12) if due(d, 0, 4, 12)] == [4, 5, 6, 7, 8, 9, 10, 11]
    assert not due(8, 4, 8, 12) and due(8, 4, 4, 12) and not due(12, 0, 4, 12)
    assert flow_every(48, 30) == 2 and flow_every(1, 30) == 1 and flow_every(576, 30) == 30


class _Log:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict]] = []

    def emit(self, job_id: str, name: str, data: dict) -> None:
        self.sent.append((job_id, name, data))


def test_reporter_sends_a_small_inline_jpeg() -> None:
    log = _Log()
    LiveReporter(log, 0.0).preview("j1", Image.new("RGB", (96, 96), (200, 10, 10)), 48, 577)  # type: ignore[arg-type]
    (job_id, name, data), = log.sent
    assert (job_id, name, data["step"], data["steps"]) == ("j1", "preview", 48, 577)
    assert data["content_type"] == "image/jpeg"
    image = Image.open(io.BytesIO(base64.b64decode(data["b64_json"])))
    assert image.format == "JPEG" and image.size == (96, 96)
    LiveReporter(None, 0.0).preview("j1", image, 1, 2)  # no event log: nothing, no error


# -- a real worker and the event stream --------------------------------------------------
@pytest.mark.slow
def test_a_worker_streams_previews_only_to_jobs_that_asked(client, auth, settings, spawn) -> None:
    from tests.helpers import TINY, settings_env, start_worker
    from tests.test_streams import collect

    start_worker(spawn, settings, env=settings_env(settings, JANUS_PREVIEW_EVERY_STEPS="4"))
    for preview in (True, False):
        body = {"model": TINY, "task": "generate",
                "input": {"prompt": "a fox", "seed": 7, "preview": preview}}
        job_id = client.post("/v1/jobs", json=body, headers=auth).json["id"]
        events = collect(client, f"/v1/jobs/{job_id}/events", auth)
        job = events[-1][2]
        assert job["status"] == "succeeded", job
        assert job["input"].get("preview", False) is preview  # stored only when true
        shots = [e[2] for e in events if e[1] == "preview"]
        if preview:
            assert shots and all(s["content_type"] == "image/jpeg" for s in shots)
            assert [s["step"] for s in shots] == sorted(s["step"] for s in shots)
            decoded = Image.open(io.BytesIO(base64.b64decode(shots[0]["b64_json"])))
            assert decoded.format == "JPEG" and max(decoded.size) <= PREVIEW_PIXELS
        else:
            assert shots == []


def test_a_failing_preview_is_skipped_not_the_jobs_failure(caplog) -> None:
    class Broken:
        def previews(self, every: int) -> dict:
            raise RuntimeError("VQ decode failed")

        def progress(self) -> dict:
            return {}

    LiveReporter(_Log(), 0.0).engine_previews(Broken(), 4)  # type: ignore[arg-type]
    assert "previews failed" in caplog.text
    log = _Log()

    class One(Broken):
        def previews(self, every: int) -> dict:
            return {"j": Image.new("RGB", (8, 8))}

        def progress(self) -> dict:
            return {"j": (8, 577)}

    LiveReporter(log, 0.0).engine_previews(One(), 4)  # type: ignore[arg-type]
    assert [(j, n, d["step"], d["steps"]) for j, n, d in log.sent] == [("j", "preview", 8, 577)]


def test_preview_is_a_documented_boolean_of_generate_input(client, auth) -> None:
    from tests.helpers import IDLE, assert_error_shape

    spec = client.get("/openapi.json").json
    field = spec["components"]["schemas"]["GenerateInput"]["properties"]["preview"]
    assert field["type"] == "boolean" and field["default"] is False
    for bad in ("yes", 1, None):
        body = {"model": IDLE, "task": "generate", "input": {"prompt": "p", "preview": bad}}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert_error_shape(response, 422, "validation_error")
        assert response.json["error"]["details"][0]["field"] == "input.preview"
