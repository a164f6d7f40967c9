"""JanusFlowRunner on a tiny random checkpoint (64 px -> 8x8 latents -> 16 tokens), CPU only,
plus the published 1.3B layout checked on the meta device."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

import torch  # noqa: E402

from service.models import catalog, runners  # noqa: E402
from service.models.base import (  # noqa: E402
    Canceled,
    GenerateRequest,
    GenerateResult,
    InvalidInput,
    UnderstandRequest,
    UnderstandResult,
)
from service.models.catalog import CheckpointError  # noqa: E402
from service.models.checkpoints import tiny  # noqa: E402
from service.models.engine import run_batch  # noqa: E402
from tests.helpers import Control

DATA = Path(__file__).resolve().parent / "data"
SIZE = 64



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("tiny-janusflow"))
    return tiny.write_tiny_checkpoint("janusflow", out, image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def runner(checkpoint: str):
    return runners.load_runner(checkpoint, device="cpu", model_id="tiny-janusflow")


def _pixels(result) -> list[bytes]:
    assert isinstance(result, GenerateResult), result
    return [im.tobytes() for im in result.images]


# -- the published layout ------------------------------------------------------------------


def test_published_config_builds_every_published_parameter() -> None:
    from service.models.janusflow.config import parse_config
    from service.models.janusflow.load import build_model

    config = parse_config(json.loads((DATA / "janusflow-1.3b-config.json").read_text()))
    assert catalog.family_from_config(config.raw) == "janusflow"
    assert config.latent_grid(8) == (48, 24)  # SDXL VAE: 384 px -> 48x48 -> 576 tokens
    assert config.und.num_patches == 576 and config.und.depth == 24
    model = build_model(config, "meta")
    built = {name: list(t.shape) for name, t in model.state_dict().items()}
    listed = {}
    for line in (DATA / "janusflow-1.3b-params.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            listed[name] = json.loads(shape)
    assert sorted(set(built) - set(listed)) == [] and sorted(set(listed) - set(built)) == []
    assert {k: v for k, v in built.items() if listed[k] != v} == {}
    assert len(built) == 587
    assert sum(t.numel() for t in model.state_dict().values()) == 2_046_367_504
    assert model.language_model.config.hidden_size == 2048


def test_published_shape_runs_the_ode_on_meta() -> None:
    # Shapes only (meta tensors hold no data): 384 px -> 48x48 latents -> 24x24 tokens,
    # through the encoder, the Llama with and without the prefix cache, and the decoder.
    from service.models.janusflow.attention import ATTN_IMPLEMENTATION
    from service.models.janusflow.config import parse_config
    from service.models.janusflow.load import build_model
    from service.models.janusflow.sampler import FlowJob, FlowSampler

    config = parse_config(json.loads((DATA / "janusflow-1.3b-config.json").read_text()))
    model = build_model(config, "meta", ATTN_IMPLEMENTATION)
    for reuse in (True, False):
        sampler = FlowSampler(model, latent=48, grid=24, bos_id=0, pad_id=1, device="meta",
                              dtype=torch.float32, reuse_prefix_kv=reuse)
        jobs = [FlowJob([0] + [5] * 30, 2, 2, 2.0, 0), FlowJob([0, 7], 1, 1, 1.0, 1)]
        out = _ode(sampler, jobs)
        assert [tuple(z.shape) for z in out] == [(2, 4, 48, 48), (1, 4, 48, 48)]
    with torch.device("meta"):
        assert model.image_features(torch.zeros(1, 3, 384, 384)).shape == (1, 577, 2048)


def _ode(sampler, jobs: list) -> list:  # type: ignore[no-untyped-def]
    """Every job's final latents: the sampler's steps over jobs that start together."""
    for job in jobs:
        sampler.start(job)
    bos = sampler.bos_prefix() if any(j.unconditional for j in jobs) else None
    with torch.inference_mode():
        while active := [j for j in jobs if j.done < j.steps]:
            sampler.advance(active, bos)
    return [j.z for j in jobs]


# -- loading -------------------------------------------------------------------------------


def test_tiny_checkpoint_loads_through_the_registry(checkpoint: str, runner) -> None:
    from service.models.janusflow.runner import JanusFlowRunner

    assert catalog.family_of(checkpoint) == "janusflow"
    assert isinstance(runner, JanusFlowRunner)
    assert os.path.isdir(os.path.join(checkpoint, "vae"))
    assert runner.defaults()["generate"] == {
        "num_images": 1, "guidance": 2.0, "steps": 30, "image_size": SIZE
    }
    assert (runner.sampler.latent, runner.sampler.grid) == (SIZE // 8, SIZE // 16)


def test_vae_path_comes_from_the_settings(checkpoint: str, monkeypatch) -> None:
    from service.core.settings import Settings
    from service.models.janusflow.load import vae_source
    from service.models.janusflow.runner import JanusFlowRunner

    monkeypatch.setenv("JANUS_VAE_PATH", "/models/sdxl-vae")
    settings = Settings()
    assert settings.vae_path == "/models/sdxl-vae"
    # The worker hands the setting over; the runner itself reads no environment.
    options = runners.runner_options("janusflow", vae_path=settings.vae_path)
    assert JanusFlowRunner(checkpoint, **options).vae_path == "/models/sdxl-vae"
    assert JanusFlowRunner(checkpoint).vae_path == "stabilityai/sdxl-vae"
    # A checkpoint's own vae/ wins.
    assert vae_source(checkpoint, "/models/sdxl-vae") == os.path.join(checkpoint, "vae")


def test_weights_load_strictly_by_key_and_from_shards(checkpoint: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(os.path.join(checkpoint, "model.safetensors"))
    names = sorted(state)
    sharded = tmp_path / "sharded"
    shutil.copytree(checkpoint, sharded)
    os.remove(sharded / "model.safetensors")
    halves = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(sharded / file), metadata={"format": "pt"})
    index = {"weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    runners.load_runner(str(sharded))

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    state.pop("vision_gen_dec_aligner.bias")
    state["vision_gen_dec_aligner.extra"] = torch.zeros(1)
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        runners.load_runner(str(broken))
    assert "1 missing key(s): vision_gen_dec_aligner.bias" in str(e.value)
    assert "1 unexpected key(s): vision_gen_dec_aligner.extra" in str(e.value)


# -- generate ------------------------------------------------------------------------------


def test_generate_returns_rgb_images_of_the_image_size(runner) -> None:
    [result] = run_batch(runner, "generate",
                         [GenerateRequest("a red fox in snow", num_images=2, steps=3)])
    assert isinstance(result, GenerateResult)
    assert len(result.images) == 2
    assert all(im.mode == "RGB" and im.size == (SIZE, SIZE) for im in result.images)
    assert result.images[0].tobytes() != result.images[1].tobytes()


def test_same_seed_same_pixels_other_seed_other_pixels(runner) -> None:
    a, b, c = run_batch(runner, "generate", [
        GenerateRequest("a lighthouse", seed=5, steps=3),
        GenerateRequest("a lighthouse", seed=5, steps=3),
        GenerateRequest("a lighthouse", seed=6, steps=3),
    ])
    assert _pixels(a) == _pixels(b)
    assert _pixels(a) != _pixels(c)


def test_a_job_gives_the_same_images_alone_and_in_a_mixed_batch(runner) -> None:
    job = GenerateRequest("a cat on a red chair", num_images=2, seed=11, steps=4, guidance=3.0)
    [alone] = run_batch(runner, "generate", [job])
    batch = run_batch(runner, "generate", [
        GenerateRequest("a much longer prompt about mountains at sunset, with a lake", seed=1,
                        steps=6, guidance=1.0),
        job,
        GenerateRequest("dog", num_images=3, seed=2, steps=2),
    ])
    assert _pixels(batch[1]) == _pixels(alone)
    assert [len(r.images) for r in batch] == [1, 2, 3]


def test_cancel_between_steps_leaves_the_others_running(runner) -> None:
    control = Control(stop_index=1, after=3)
    results = run_batch(runner, "generate",
        [GenerateRequest("a tree", steps=8), GenerateRequest("a boat", steps=8)], control
    )
    assert isinstance(results[0], GenerateResult) and len(results[0].images) == 1
    assert isinstance(results[1], Canceled)
    assert control.asked[1] == 4  # once before start, then at each step boundary
    assert control.progress[0][-1] == 1.0
    assert max(control.progress[1]) < 1.0
    assert control.progress[0] == sorted(control.progress[0])


def test_bad_jobs_fail_alone(runner) -> None:
    results = run_batch(runner, "generate", [
        GenerateRequest("fine", steps=2),
        GenerateRequest("zero steps", steps=0),
        GenerateRequest("word " * 3000, steps=2),
    ])
    assert isinstance(results[0], GenerateResult)
    assert isinstance(results[1], InvalidInput) and isinstance(results[2], InvalidInput)


def test_upsample_to_1024_like_the_demo(runner, monkeypatch) -> None:
    monkeypatch.setattr(runner, "upsample_1024", True)
    assert runner.defaults()["generate"]["image_size"] == 1024
    [result] = run_batch(runner, "generate", [GenerateRequest("a kite", steps=1)])
    assert result.images[0].size == (1024, 1024)


def test_prefix_kv_reuse_matches_rerunning_the_prompt(runner) -> None:
    jobs = [
        GenerateRequest("a lighthouse on a cliff at night", num_images=2, seed=3, steps=5),
        GenerateRequest("snow", seed=4, steps=3, guidance=1.0),
    ]
    sampler = runner.sampler
    with_cache = _ode(sampler, [runner.flow_job(r) for r in jobs])
    sampler.reuse_prefix_kv = False
    try:
        without = _ode(sampler, [runner.flow_job(r) for r in jobs])
    finally:
        sampler.reuse_prefix_kv = True
    for i in range(len(jobs)):
        assert with_cache[i].shape == without[i].shape
        assert (with_cache[i] - without[i]).abs().max().item() < 1e-4


# -- understand ----------------------------------------------------------------------------


def test_understand_returns_text_deterministic_per_seed(runner) -> None:
    image = Image.new("RGB", (48, 80), (200, 30, 30))
    control = Control()
    a, b = run_batch(runner, "understand",
        [
            UnderstandRequest(image, "What is in the picture?", seed=3, max_new_tokens=6),
            UnderstandRequest(image, "What is in the picture?", seed=3, max_new_tokens=6),
        ],
        control,
    )
    assert isinstance(a, UnderstandResult) and isinstance(a.text, str)
    assert a.text == b.text
    assert a.stats["prompt_tokens"] > (SIZE // 16) ** 2
    assert control.progress[0][-1] == 1.0


def test_understand_cancel(runner) -> None:
    image = Image.new("RGB", (32, 32))
    control = Control(stop_index=0, after=2)
    [result] = run_batch(runner, "understand",
                         [UnderstandRequest(image, "hi", max_new_tokens=20)], control)
    assert isinstance(result, Canceled)


def test_warmup_steps_each_engine_a_little_and_decodes_once(runner, monkeypatch) -> None:
    engines: list = []
    open_engine, decode = runner.open_engine, runner.decode
    monkeypatch.setattr(runner, "open_engine",
                        lambda task, slots: engines.append(open_engine(task, slots))
                        or engines[-1])
    decoded: list = []
    monkeypatch.setattr(runner, "decode", lambda z: decoded.append(z.shape) or decode(z))
    runner.warmup()
    assert [(e.task, e.slots) for e in engines] == [
        ("understand", 1), ("understand", 2), ("generate", 1), ("generate", 2)]
    assert all(not e.active() for e in engines) and len(decoded) == 1
    assert decoded[0][0] == 1  # one image's latents through the VAE
