"""Each family prompts, preprocesses and samples as DeepSeek's reference code does.

The expected prompts are written out here from the reference's documented format (the
`deepseek` conversation template of `janus/utils/conversation.py` with the roles that the
README and `demo/app*.py` put in their messages), tokenized with the checkpoint's own
tokenizer the way the reference does (`tokenizer.encode(prompt)`, BOS included), never
built with the code under test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from service.models import catalog, runners  # noqa: E402
from service.models.base import UnderstandRequest  # noqa: E402
from service.models.checkpoints import tiny  # noqa: E402
from service.models.engine import run_batch  # noqa: E402
from service.models.sampling import top_k_filter  # noqa: E402

PUBLISHED = Path(__file__).resolve().parent / "data" / "published"
SIZE = 64
BOS = "<｜begin▁of▁sentence｜>"
SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)


@pytest.fixture(scope="module")
def janus_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("tiny-janus-1.3b"))
    return tiny.write_tiny_checkpoint("janus", out, image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def janus(janus_checkpoint: str):
    return runners.load_runner(janus_checkpoint, model_id="tiny-janus-1.3b")




def _ask(question: str) -> UnderstandRequest:
    return UnderstandRequest(Image.new("RGB", (8, 8)), question)


def _encode(tokenizer, text: str) -> list[int]:
    """The reference's `tokenizer.encode(prompt)`: its post-processor adds BOS."""
    ids = tokenizer.encode(text) if hasattr(tokenizer, "encode") else None
    if hasattr(ids, "ids"):  # a `tokenizers.Tokenizer` (JanusFlow) returns an Encoding
        ids = ids.ids
    assert ids[0] == tokenizer_bos(tokenizer)
    return list(ids)


def tokenizer_bos(tokenizer) -> int:
    if hasattr(tokenizer, "bos_token_id"):
        return tokenizer.bos_token_id
    return tokenizer.token_to_id(BOS)


def _expand_image(ids: list[int], image: int, boi: int, eoi: int, n: int) -> list[int]:
    """The reference's `add_image_token`: the placeholder -> BOI, n image tokens, EOI."""
    at = ids.index(image)
    return ids[:at] + [boi] + [image] * n + [eoi] + ids[at + 1 :]


# -- families ----------------------------------------------------------------------------


def test_each_checkpoint_is_served_as_its_own_family(janus, pro, flow) -> None:
    assert (janus.family, pro.family, flow.family) == ("janus", "janus-pro", "janusflow")


@pytest.mark.parametrize(
    ("published", "family"),
    [
        ("Janus-1.3B", "janus"),
        ("Janus-1.3B@08b9a5d", "janus"),
        ("Janus-Pro-1B", "janus-pro"),
        ("Janus-Pro-7B", "janus-pro"),
    ],
)
def test_family_from_the_published_tokenizer_files(
    janus_checkpoint: str, published: str, family: str, tmp_path: Path
) -> None:
    # An original-layout directory carrying the published files of one model: its
    # tokenizer files, not the (shared) architecture, tell Janus-1.3B from Janus-Pro.
    directory = tmp_path / published
    directory.mkdir()
    shutil.copy(Path(janus_checkpoint) / "config.json", directory / "config.json")
    for file in (PUBLISHED / published).iterdir():
        shutil.copy(file, directory / file.name)
    assert catalog.family_of(str(directory)) == family


def test_published_special_tokens_are_read_as_published() -> None:
    pro = json.loads((PUBLISHED / "Janus-Pro-7B" / "special_tokens_map.json").read_text())
    assert "<|User|>" in pro["additional_special_tokens"]
    assert pro["bos_token"] == BOS
    plain = json.loads((PUBLISHED / "Janus-1.3B" / "special_tokens_map.json").read_text())
    assert "additional_special_tokens" not in plain


# -- prompts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "user", "assistant"),
    [("pro", "<|User|>", "<|Assistant|>"), ("janus", "User", "Assistant")],
)
def test_janus_prompts_are_deepseeks(
    name: str, user: str, assistant: str, janus, pro
) -> None:
    runner = {"pro": pro, "janus": janus}[name]
    tok = runner.processor.tokenizer
    ids = tok.convert_tokens_to_ids
    # README / demo generation: system_prompt="", then the image start tag.
    expected = f"{user}: a red fox in snow\n\n{assistant}:<begin_of_image>"
    assert runner.jobs.generation_ids("  a red fox in snow ") == _encode(tok, expected)
    # Understanding: the processor's system prompt, "<image_placeholder>\n{question}".
    question = f"{SYSTEM}\n\n{user}: <image_placeholder>\nWhat is this?\n\n{assistant}:"
    expected_ids = _expand_image(
        _encode(tok, question),
        ids("<image_placeholder>"),
        ids("<begin_of_image>"),
        ids("<end_of_image>"),
        runner.num_image_tokens,
    )
    assert runner.jobs.understanding_ids(_ask("What is this?")) == expected_ids
    [job] = runner.jobs.text_jobs([UnderstandRequest(Image.new("RGB", (40, 24)), "What is this?")],
                                  runner.defaults()["understand"])
    assert job.ids == expected_ids and job.embeds.shape[0] == len(expected_ids)


def test_janus_1_3b_never_sees_janus_pro_role_tokens(janus) -> None:
    text = janus.processor.tokenizer.decode(janus.jobs.understanding_ids(_ask("hi")))
    assert "<|User|>" not in text and "\n\nUser: <begin_of_image>" in text
    assert text.endswith("\nhi\n\nAssistant:") and "<|Assistant|>" not in text


def test_janusflow_prompts_are_deepseeks(flow) -> None:
    tok = flow.tokenizer
    # README: roles "User"/"Assistant", system_prompt="", then <｜begin▁of▁generation｜>,
    # whose embedding the reference drops (`inputs_embeds[:, :-1, :]`).
    expected = _encode(tok, "User: a red fox\n\nAssistant:<｜begin▁of▁generation｜>")
    assert flow.generation_ids("a red fox") == expected[:-1]
    question = f"{SYSTEM}\n\nUser: <image_placeholder>\nWhat is this?\n\nAssistant:"
    assert flow.understanding_ids(_ask("What is this?")) == _encode(tok, question)


# -- sampling defaults -------------------------------------------------------------------


@pytest.mark.parametrize("family", ["janus", "janus-pro", "janusflow"])
def test_understanding_defaults_are_the_demos(family: str) -> None:
    understand = catalog.defaults_of(family)["understand"]
    assert understand == {"max_new_tokens": 512, "temperature": 0.1, "top_p": 0.95, "top_k": 50}


def test_generation_defaults_are_the_demos() -> None:
    for family in ("janus", "janus-pro"):
        generate = catalog.defaults_of(family)["generate"]
        assert (generate["guidance"], generate["temperature"]) == (5.0, 1.0)
    flow = catalog.defaults_of("janusflow")["generate"]
    assert (flow["guidance"], flow["steps"]) == (2.0, 30)


def test_top_k_filter_is_transformers_top_k() -> None:
    from transformers.generation.logits_process import TopKLogitsWarper

    scores = torch.randn(3, 300, generator=torch.Generator().manual_seed(0))
    scores[1, 5] = scores[1, 6] = 9.0  # a tie at the top
    ours = top_k_filter(scores.clone(), torch.tensor([[50], [1], [0]]))
    assert torch.equal(ours[0], TopKLogitsWarper(50)(None, scores[:1].clone())[0])
    assert torch.equal(ours[1], TopKLogitsWarper(1)(None, scores[1:2].clone())[0])
    assert torch.equal(ours[2], scores[2])  # k = 0: no filter


def test_janus_understanding_samples_with_top_k(pro, monkeypatch) -> None:
    # top_k 1 leaves one token per step: sampling then must give the greedy answer.
    defaults = pro.defaults()
    defaults["understand"]["top_k"] = 1
    monkeypatch.setattr(pro, "defaults", lambda: defaults)
    image = Image.new("RGB", (40, 24), (10, 200, 30))
    greedy = UnderstandRequest(image, "hi", seed=1, temperature=0.0, max_new_tokens=8)
    sampled = UnderstandRequest(image, "hi", seed=2, temperature=5.0, top_p=1.0,
                                max_new_tokens=8)
    out = run_batch(pro, "understand", [greedy, sampled])
    assert out[0].text == out[1].text
    assert out[0].completion_tokens == out[1].completion_tokens


def test_janusflow_understanding_samples_as_the_demos_generate(flow) -> None:
    """DeepSeek's JanusFlow demo: `torch.manual_seed(seed)`, then the Llama's `generate`
    on the prompt embeddings (transformers' temperature, top-k 50, top-p, then
    `torch.multinomial`). Our engine draws from a generator of the job's own: the same
    tokens, greedy, at the defaults and hotter. (The two forward passes differ only in
    rounding: transformers' Llama against `lm.LeanLM` over the same weights.)"""
    from service.models.janusflow.config import BOS as FLOW_BOS
    from service.models.janusflow.config import EOS as FLOW_EOS
    from service.models.janusflow.understand import question, text_jobs

    image = Image.new("RGB", (48, 80), (200, 30, 30))
    requests = [UnderstandRequest(image, "What is in the picture?", seed=s, temperature=t,
                                  top_p=p, max_new_tokens=12)
                for s, t, p in ((1, 0.0, None), (2, None, None), (3, 1.0, None), (4, 1.3, 0.8))]
    top_k = flow.defaults()["understand"]["top_k"]
    answers = run_batch(flow, "understand", requests)
    for request, answer in zip(requests, answers, strict=True):
        with torch.inference_mode():
            [job] = text_jobs(flow, [question(flow, request)])
            sampled = job.temperature > 0
            extra = {"temperature": job.temperature, "top_p": job.top_p, "top_k": top_k} \
                if sampled else {}
            torch.manual_seed(request.seed)
            out = flow.model.language_model.generate(
                inputs_embeds=job.embeds[None], attention_mask=torch.ones(1, len(job.ids),
                                                                           dtype=torch.long),
                max_new_tokens=job.max_new_tokens, do_sample=sampled,
                pad_token_id=flow.ids[FLOW_EOS], bos_token_id=flow.ids[FLOW_BOS],
                eos_token_id=flow.ids[FLOW_EOS], **extra)
        expected = flow.tokenizer.decode(out[0].tolist(), skip_special_tokens=True).strip()
        assert answer.text == expected, request


# -- pixels ----------------------------------------------------------------------------


def test_janus_pixels_truncate_like_the_reference() -> None:
    from service.models.janus_pro.runner import to_pil

    dec = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(3)) * 2.2 - 1.1
    # demo/app_januspro.py `unpack`: np.clip((dec + 1) / 2 * 255, 0, 255) into uint8.
    reference = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    reference[:, :, :] = np.clip((dec.numpy() + 1) / 2 * 255, 0, 255)
    ours = np.stack([np.asarray(im) for im in to_pil(dec)])
    assert np.array_equal(ours, reference)
    assert not np.array_equal(ours, np.clip((dec.numpy() + 1) / 2 * 255, 0, 255).round())


def test_janusflow_pixels_truncate_like_the_demo() -> None:
    from service.models.janusflow.sampler import decode_latents

    pixels = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2.4 - 1.2

    class Decoded:
        sample = pixels

    class Vae:  # the VAE's decode is not what is under test here
        dtype = torch.float32
        config = type("Config", (), {"scaling_factor": 1.0})

        def decode(self, z):
            return Decoded

    [image] = decode_latents(Vae(), torch.zeros(1, 4, 1, 1))
    # demo/app_janusflow.py: clip_(-1, 1), ((x + 1) / 2. * 255).astype(np.uint8)
    x = pixels.clamp(-1, 1).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.asarray(image), ((x + 1) / 2.0 * 255).astype(np.uint8)[0])


def test_janusflow_background_is_the_mean_in_8_bits(tmp_path: Path) -> None:
    from service.models.janusflow.load import read_image_settings

    def settings(**values):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(values))
        return read_image_settings(str(tmp_path), 384)

    # VLMImageProcessor: tuple(int(x * 255) for x in image_mean); background_color unread.
    assert settings(image_mean=[0.5] * 3, background_color=[0, 0, 0]).background == (127,) * 3
    clip = [0.48145466, 0.4578275, 0.40821073]
    assert settings(image_mean=clip).background == (122, 116, 104)
    assert settings(image_mean=None).background == (127, 127, 127)
    assert settings(image_mean=clip, do_normalize=False).normalize is False


def test_a_model_id_alone_guesses_its_family() -> None:
    # Only used when the API cannot read the checkpoint the workers load.
    assert [catalog.guess_family(m) for m in (
        "janus-1.3b", "janus-pro-1b", "janus-pro-7b", "janusflow-1.3b", "my-model"
    )] == ["janus", "janus-pro", "janus-pro", "janusflow", "janus-pro"]
