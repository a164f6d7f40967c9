"""DeepSeek's original Janus layout: key mapping, in-memory load, one-time conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from service.models import catalog, runners
from service.models.base import GenerateRequest, UnderstandRequest
from service.models.catalog import CheckpointError
from service.models.checkpoints import convert, tiny
from service.models.engine import run_batch

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REQUESTS = [
    GenerateRequest("a red cat", num_images=2, seed=3),
    GenerateRequest("a dog", seed=4, guidance=2.0, temperature=0.0),
]
QUESTION = UnderstandRequest(
    Image.new("RGB", (48, 80), (200, 30, 30)),
    "What is it?",
    seed=5,
    temperature=1.0,
    max_new_tokens=8,
)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny.write_tiny_original_checkpoint(
        str(tmp_path_factory.mktemp("orig") / "tiny-original"), image_size=64, seed=0
    )


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: str):
    return runners.load_runner(tiny_checkpoint, model_id="tiny-janus-pro")


def _outputs(runner) -> tuple[list[list[bytes]], str]:  # type: ignore[no-untyped-def]
    images = [[im.tobytes() for im in r.images] for r in run_batch(runner, "generate", REQUESTS)]
    [answer] = run_batch(runner, "understand", [QUESTION])
    return images, answer.text


def test_known_names() -> None:
    w = torch.zeros(6, 2)
    state = {
        "language_model.model.layers.0.self_attn.q_proj.weight": w,
        "language_model.lm_head.weight": w,
        "vision_model.vision_tower.blocks.3.attn.qkv.weight": torch.arange(6.0)[:, None],
        "vision_model.vision_tower.pos_embed": torch.zeros(1, 4, 2),
        "vision_model.vision_tower.attn_pool.latent": w,
        "aligner.layers.2.bias": w,
        "gen_head.output_mlp_projector.weight": w,
        "gen_vision_model.encoder.mid.1.q.weight": w,
        "gen_vision_model.decoder.conv_blocks.0.res.1.conv1.weight": w,
        "gen_vision_model.decoder.conv_blocks.2.upsample.conv.bias": w,
        "gen_vision_model.quantize.codebook_used": w,
    }
    out, unused = convert.convert_state_dict(state)
    assert sorted(unused) == [
        "gen_vision_model.quantize.codebook_used",
        "vision_model.vision_tower.attn_pool.latent",
    ]
    layer = "model.vision_model.encoder.layers.3.self_attn."
    assert [out[f"{layer}{c}_proj.weight"].flatten().tolist() for c in "qkv"] == [
        [0.0, 1.0],
        [2.0, 3.0],
        [4.0, 5.0],
    ]
    assert out["model.vision_model.embeddings.position_embedding.weight"].shape == (4, 2)
    assert {
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight",
        "model.aligner.hidden_layers.0.bias",
        "model.generation_head.proj_out.weight",
        "model.vqmodel.encoder.mid.attn_1.q.weight",
        "model.vqmodel.decoder.up.0.block.1.conv1.weight",
        "model.vqmodel.decoder.up.2.upsample.conv.bias",
    } <= set(out)


def test_mapping_round_trips_every_weight(tiny_checkpoint: str) -> None:
    from service.models.janus_pro.loading import read_weights

    state = read_weights(tiny_checkpoint)
    back, unused = convert.convert_state_dict(convert.to_original(state))
    assert not unused and set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_original_layout_loads_and_matches(original: str, reference) -> None:
    assert (
        json.loads((Path(original) / "config.json").read_text())["model_type"] == "multi_modality"
    )
    assert catalog.family_of(original) == "janus-pro"
    runner = runners.load_runner(original, model_id="tiny-original")
    assert runner.family == "janus-pro"
    assert runner.defaults() == reference.defaults()
    # Same weights, same tokenizer and image processing: same images and text per seed.
    assert _outputs(runner) == _outputs(reference)


def test_convert_checkpoint(original: str, reference, tmp_path: Path) -> None:
    out = convert.convert_checkpoint(original, str(tmp_path / "converted"))
    assert catalog.family_of(out) == "janus-pro"
    runner = runners.load_runner(out, model_id="converted")
    assert _outputs(runner) == _outputs(reference)
    with pytest.raises(CheckpointError, match="not an original-layout"):
        convert.convert_checkpoint(out, str(tmp_path / "again"))


def test_original_without_weights_names_path_and_model(original: str, tmp_path: Path) -> None:
    broken = tmp_path / "no-weights"
    broken.mkdir()
    (broken / "config.json").write_text((Path(original) / "config.json").read_text())
    with pytest.raises(CheckpointError) as err:
        runners.load_runner(str(broken), model_id="janus-pro-7b-original")
    message = str(err.value)
    assert str(broken) in message and "janus-pro-7b-original" in message
    assert "no model.safetensors or pytorch_model.bin" in message


def test_original_with_a_missing_weight_fails_loudly(original: str, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "missing-head"
    shutil.copytree(original, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["gen_head.vision_head.weight"]
    save_file(state, str(broken / "model.safetensors"))
    # Not silently re-initialised at random: the load fails and names the weight.
    with pytest.raises(CheckpointError, match="model.generation_head.vision_head.weight"):
        runners.load_runner(str(broken), model_id="broken")
