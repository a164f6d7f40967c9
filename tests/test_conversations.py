"""Conversations (a system prompt and several turns) render as DeepSeek's SFT template,
per family, and an understanding result counts exactly the tokens its model used.

The expected prompts are written out from the reference's documented format
(`VLChatProcessor.apply_sft_template_for_multi_turn_prompts` with the `deepseek`
template of `janus/utils/conversation.py`: the system prompt and a blank line, then each
message stripped as `{role}: {content}`, a user turn ending "\\n\\n", an assistant turn
ending with the EOS string, then the open assistant turn), never built with the code under
test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from PIL import Image

from service.models.base import Turn, UnderstandRequest
from service.models.engine import run_batch
from service.models.prompts import JANUS_FORMAT, JANUS_PRO_FORMAT, JANUSFLOW_FORMAT
from tests.helpers import Control

torch = pytest.importorskip("torch")

SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
EOS = "<｜end▁of▁sentence｜>"
DIALOGUE = (
    Turn("system", "  Answer in one word. "),
    Turn("user", "Hello there"),
    Turn("assistant", " Hi. "),
    Turn("user", "What is this?\n", image=True),
    Turn("assistant", "A fox."),
    Turn("user", "What colour is it?"),
)
FORMATS = [(JANUS_PRO_FORMAT, "<|User|>", "<|Assistant|>"),
           (JANUS_FORMAT, "User", "Assistant"), (JANUSFLOW_FORMAT, "User", "Assistant")]


def expected_dialogue(user: str, assistant: str, system: str = "Answer in one word.") -> str:
    head = f"{system}\n\n" if system else ""
    return (f"{head}{user}: Hello there\n\n{assistant}: Hi.{EOS}"
            f"{user}: <image_placeholder>\nWhat is this?\n\n{assistant}: A fox.{EOS}"
            f"{user}: What colour is it?\n\n{assistant}:")


@pytest.mark.parametrize(("fmt", "user", "assistant"), FORMATS)
def test_a_conversation_renders_as_the_sft_template(fmt, user: str, assistant: str) -> None:
    assert fmt.understanding("", DIALOGUE) == expected_dialogue(user, assistant)
    # No system message: the processor's system prompt, as for a single question.
    assert fmt.understanding("", DIALOGUE[1:]) == expected_dialogue(user, assistant, SYSTEM)
    # An empty system message: no system prompt at all.
    blank = (Turn("system", ""), *DIALOGUE[1:])
    assert fmt.understanding("", blank) == expected_dialogue(user, assistant, "")


@pytest.mark.parametrize(("fmt", "user", "assistant"), FORMATS)
def test_one_user_turn_renders_as_the_single_question(fmt, user: str, assistant: str) -> None:
    single = f"{SYSTEM}\n\n{user}: <image_placeholder>\nWhat is this?\n\n{assistant}:"
    assert fmt.understanding("What is this?") == single
    assert fmt.understanding("", (Turn("user", "What is this?", image=True),)) == single
    # Unflagged, the image starts the first user turn.
    turns = (Turn("user", "One"), Turn("assistant", "Two"), Turn("user", "Three"))
    assert fmt.understanding("", turns) == (
        f"{SYSTEM}\n\n{user}: <image_placeholder>\nOne\n\n{assistant}: Two{EOS}"
        f"{user}: Three\n\n{assistant}:")


def _ids(runner, req: UnderstandRequest) -> list[int]:
    return runner.jobs.understanding_ids(req) if hasattr(runner, "jobs") \
        else runner.understanding_ids(req)


def _expected_ids(runner, text: str, expand: bool) -> list[int]:
    """`text` tokenized as the reference does (`tokenizer.encode(prompt)`, BOS first),
    its placeholder expanded when `expand` (`add_image_token`: BOI, one per patch, EOI)."""
    if hasattr(runner, "jobs"):
        tok = runner.processor.tokenizer
        ids, of, patches = tok.encode(text), tok.convert_tokens_to_ids, runner.num_image_tokens
    else:
        tok = runner.tokenizer
        ids, of, patches = tok.encode(text).ids, tok.token_to_id, \
            runner.model.config.und.num_patches
    if not expand:
        return ids
    at = ids.index(of("<image_placeholder>"))
    image = [of("<begin_of_image>")] + [of("<image_placeholder>")] * patches \
        + [of("<end_of_image>")]
    return ids[:at] + image + ids[at + 1:]


def _roles(name: str) -> tuple[str, str]:
    return ("<|User|>", "<|Assistant|>") if name == "pro" else ("User", "Assistant")


@pytest.mark.parametrize("name", ["pro", "flow"])
def test_the_runners_tokenize_the_rendered_conversation(name: str, request) -> None:
    runner = request.getfixturevalue(name)
    image = Image.new("RGB", (16, 16))
    # Control tokens in any message are removed, as from a question.
    smuggled = tuple(Turn(t.role, t.content.replace("fox", "fox<image_placeholder>"), t.image)
                     for t in DIALOGUE)
    ids = _ids(runner, UnderstandRequest(image, "", messages=smuggled))
    # Janus-Pro's ids come expanded; JanusFlow expands them in `understand.question`.
    assert ids == _expected_ids(runner, expected_dialogue(*_roles(name)), name == "pro")


@contextmanager
def eos_bias(head: torch.nn.Module, eos: int, bias: float) -> Iterator[None]:
    """Every step's end-of-sentence logit moved by `bias`: +: the answer ends at once,
    -: never (the token budget ends it)."""
    def hook(module, args, out):  # type: ignore[no-untyped-def]
        out = out.clone()
        out[..., eos] += bias
        return out

    handle = head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _usage(result) -> tuple[int | None, int | None, str | None]:
    return result.prompt_tokens, result.completion_tokens, result.finish_reason


def _engine_run(runner, req: UnderstandRequest):  # type: ignore[no-untyped-def]
    engine = runner.open_engine("understand", 2)
    assert engine.admit([("a", req)]) == []
    finished = []
    while not finished:
        finished = engine.step()
    [(key, result)] = finished
    assert key == "a"
    return result


def test_usage_counts_what_janus_pro_used(pro) -> None:
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    req = UnderstandRequest(image, "", seed=3, temperature=0.0, max_new_tokens=5,
                            messages=DIALOGUE)
    prompt = len(_expected_ids(pro, expected_dialogue(*_roles("pro")), expand=True))
    eos = pro.processor.tokenizer.eos_token_id
    for bias, expected in ((-1e4, (prompt, 5, "length")), (1e4, (prompt, 1, "stop"))):
        with eos_bias(pro.model.lm_head, eos, bias):
            [static] = run_batch(pro, "understand", [req], Control())
            continuous = _engine_run(pro, req)
        assert _usage(static) == _usage(continuous) == expected, bias
        assert static.text == continuous.text
        assert (static.text == "") == (bias > 0)  # the EOS is counted, never shown
    # A single question counts its own prompt.
    [one] = run_batch(pro, "understand",
                      [UnderstandRequest(image, "hi", max_new_tokens=2)], Control())
    single = f"{SYSTEM}\n\n<|User|>: <image_placeholder>\nhi\n\n<|Assistant|>:"
    assert one.prompt_tokens == len(_expected_ids(pro, single, expand=True))


def test_usage_counts_what_janusflow_used(flow) -> None:
    image = Image.new("RGB", (40, 24), (30, 200, 30))
    req = UnderstandRequest(image, "", seed=1, temperature=0.0, max_new_tokens=4,
                            messages=DIALOGUE)
    prompt = len(_expected_ids(flow, expected_dialogue(*_roles("flow")), expand=True))
    eos = flow.tokenizer.token_to_id(EOS)
    head = flow.model.language_model.get_output_embeddings()
    for bias, expected in ((-1e4, (prompt, 4, "length")), (1e4, (prompt, 1, "stop"))):
        with eos_bias(head, eos, bias):
            [result] = run_batch(flow, "understand", [req], Control())
        assert _usage(result) == expected, bias
        assert (result.text == "") == (bias > 0)
