"""JanusProRunner on a tiny random checkpoint (64 px -> 16 image tokens), CPU only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from service.models import catalog, runners
from service.models.base import (
    Canceled,
    GenerateRequest,
    GenerateResult,
    InvalidInput,
    UnderstandRequest,
    UnderstandResult,
)
from service.models.catalog import CheckpointError
from service.models.checkpoints import tiny
from service.models.engine import run_batch
from tests.helpers import Control

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny.write_tiny_checkpoint(
        "janus-pro", str(tmp_path_factory.mktemp("tiny-janus-pro")), image_size=64, seed=0
    )


@pytest.fixture(scope="module")
def runner(checkpoint: str):
    return runners.load_runner(checkpoint, device="cpu", model_id="tiny-janus-pro")


def _pixels(result: GenerateResult) -> list[bytes]:
    return [im.tobytes() for im in result.images]


def _image() -> Image.Image:
    return Image.new("RGB", (48, 80), (200, 30, 30))


def test_checkpoint_layout(checkpoint: str) -> None:
    from transformers import GenerationConfig, JanusConfig, JanusProcessor

    assert catalog.family_of(checkpoint) == "janus-pro"
    config = JanusConfig.from_pretrained(checkpoint)
    tok = JanusProcessor.from_pretrained(checkpoint).tokenizer
    assert tok.convert_tokens_to_ids(tiny.IMAGE) == config.image_token_id
    assert len(tok) <= config.text_config.vocab_size
    assert config.vq_config.num_embeddings == 512  # generation head size == codebook size
    gen = GenerationConfig.from_pretrained(checkpoint)
    assert gen.generation_kwargs["boi_token_id"] == tok.convert_tokens_to_ids(tiny.BOI)
    assert gen.pad_token_id == tok.pad_token_id


def test_loaded_runner(runner) -> None:
    assert runner.family == "janus-pro"
    assert runner.num_image_tokens == 16
    defaults = runner.defaults()
    assert defaults["generate"]["image_size"] == 64
    assert defaults["understand"] == catalog.defaults_of("janus-pro")["understand"]


def test_vq_decoder_is_channels_last_and_draws_what_nchw_draws(runner) -> None:
    """On CPU the VQ weights are stored channels-last (oneDNN's layout, ~1.14-1.3x faster
    decode, bench/decode_layout.py); the pixels are an NCHW decode's up to float rounding."""
    import copy

    import torch

    vq = runner.model.model.vqmodel
    convs = [m for m in vq.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         for m in convs)
    assert not all(m.weight.is_contiguous() for m in convs)
    nchw = copy.deepcopy(vq).to(memory_format=torch.contiguous_format)
    codes = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = runner.model.decode_image_tokens(codes)
        reference = nchw.decode(codes).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_generate_images(runner) -> None:
    control = Control()
    [result] = run_batch(runner, "generate",
                         [GenerateRequest("a red cat", num_images=5, seed=3)], control)
    assert isinstance(result, GenerateResult)
    assert len(result.images) == 5  # two decode chunks (4 + 1)
    assert all(im.mode == "RGB" and im.size == (64, 64) for im in result.images)
    progress = control.progress[0]
    assert len(progress) >= 16
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)


def test_generate_seeded(runner) -> None:
    def run(seed: int) -> list[bytes]:
        [r] = run_batch(runner, "generate",
                        [GenerateRequest("a lake at sunset", num_images=2, seed=seed)])
        return _pixels(r)

    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_generate_mixed_batch(runner) -> None:
    batch = [
        GenerateRequest("a dog", num_images=2, seed=1, guidance=3.0, temperature=0.7),
        # Guidance 1 (no CFG) and greedy; a smuggled placeholder token is stripped.
        GenerateRequest("<image_placeholder> mountains", seed=2, guidance=1.0, temperature=0.0),
    ]
    results = run_batch(runner, "generate", batch)
    assert [len(r.images) for r in results] == [2, 1]
    # Batch neighbours do not change a job's output.
    [alone] = run_batch(runner, "generate", [batch[0]])
    assert _pixels(alone) == _pixels(results[0])


def test_generate_too_long_prompt(runner) -> None:
    results = run_batch(runner, "generate",
                        [GenerateRequest("word " * 5000), GenerateRequest("ok")])
    assert isinstance(results[0], InvalidInput)
    assert isinstance(results[1], GenerateResult)


def test_cancel_before_start(runner) -> None:
    results = run_batch(runner, "generate",
                        [GenerateRequest("a"), GenerateRequest("b")], Control(stop_index=1))
    assert isinstance(results[0], GenerateResult)
    assert isinstance(results[1], Canceled)


def test_cancel_mid_generation(runner) -> None:
    control = Control(stop_index=1, after=5)  # stops at an image-token step
    results = run_batch(runner, "generate",
                        [GenerateRequest("a", num_images=2), GenerateRequest("b")], control)
    assert isinstance(results[0], GenerateResult) and len(results[0].images) == 2
    assert isinstance(results[1], Canceled)
    # Asked once before the job, then once per step: the 6th ask is the 5th step.
    assert control.asked[1] == 6 and len(control.progress[1]) == 4


def test_understand(runner) -> None:
    def run(seed: int, control: Control | None = None) -> str:
        req = UnderstandRequest(
            _image(), "What is in the picture?", seed=seed, temperature=1.0, max_new_tokens=12
        )
        [r] = run_batch(runner, "understand", [req], control)
        assert isinstance(r, UnderstandResult), r
        assert isinstance(r.text, str)
        assert 1 <= r.stats["new_tokens"] <= 12
        return r.text

    control = Control()
    first = run(5, control)
    assert run(5) == first
    assert control.progress[0][-1] == pytest.approx(1.0)


def test_understand_cancel_mid_run(runner) -> None:
    control = Control(stop_index=1, after=3)
    batch = [UnderstandRequest(_image(), "Describe it.", max_new_tokens=8)] * 2
    results = run_batch(runner, "understand", batch, control)
    assert isinstance(results[0], UnderstandResult)
    assert isinstance(results[1], Canceled)
    assert len(control.progress[1]) == 2


def test_missing_checkpoint(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(CheckpointError) as err:
        runners.load_runner(missing, model_id="janus-pro-7b")
    assert missing in str(err.value) and "janus-pro-7b" in str(err.value)


def _config_dir(tmp_path: Path, name: str, config: dict) -> str:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_family_of_other_layouts(tmp_path: Path) -> None:
    flow = _config_dir(
        tmp_path,
        "flow",
        {
            "model_type": "multi_modality",
            "vision_gen_enc_config": {"cls": "ShallowUViTEncoder"},
            "vision_gen_dec_config": {"cls": "ShallowUViTDecoder"},
        },
    )
    assert catalog.family_of(flow) == "janusflow"
    original = _config_dir(
        tmp_path, "orig", {"model_type": "multi_modality", "gen_vision_config": {"cls": "VQ-16"}}
    )
    # No tokenizer files to tell Janus-1.3B from Janus-Pro by: taken as Janus-Pro.
    assert catalog.family_of(original) == "janus-pro"
    assert catalog.is_original_layout(catalog.read_config(original))
    # Original-layout checkpoints load through the converter; this one has no weights.
    with pytest.raises(CheckpointError, match="no model.safetensors") as err:
        runners.load_runner(original, model_id="janus-orig")
    assert original in str(err.value) and "janus-orig" in str(err.value)
    unknown = _config_dir(tmp_path, "llama", {"model_type": "llama"})
    with pytest.raises(CheckpointError, match="llama"):
        catalog.family_of(unknown)


def test_static_family_facts() -> None:
    assert catalog.tasks_of("janus-pro") == ("understand", "generate")
    assert catalog.defaults_of("janusflow")["generate"]["steps"] == 30
    with pytest.raises(CheckpointError):
        catalog.defaults_of("nope")
    with pytest.raises(ValueError, match="unknown model family"):
        tiny.write_tiny_checkpoint("nope", "/nonexistent")
