"""The continuous text engine's incremental detokenization (`text_engine.detokenize`): after
every token the text so far is a prefix of the whole answer decoded at once, and once the
last character is whole it is that answer, with the tiny checkpoints' real tokenizers and
with a Llama-like one (byte-fallback pieces, a leading space dropped when a piece is first)."""

from __future__ import annotations

import random
from typing import Any

import pytest

pytest.importorskip("torch")

from service.models.ragged_engine import Row  # noqa: E402
from service.models.text_engine import detokenize  # noqa: E402

# Multi-byte characters (2, 3 and 4 bytes in UTF-8), spaces and punctuation.
TEXTS = [
    "a red cat 🐱 sits on the mat",
    "猫が好きです, and 狗 too — ça va? ½ € 𝄞",
    "🦊🦊 x 🇫🇷  spaced   out\n\nnew ¶",
    " leading and trailing ",
]


def _row() -> Row:
    return Row(job=None, rows=1, generator=None, started=0.0)


def _decode(tok: Any, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def _encode(tok: Any, text: str) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    return ids if isinstance(ids, list) else ids.ids  # transformers' or tokenizers'


def _feed(tok: Any, ids: list[int], every: int = 1, *, lossy: bool = True,
          valid: bool = False) -> str:
    """`ids` one by one into a row, its text asked for every `every` tokens (and at the
    end), checked against the whole decode each time; returns the last text.

    `lossy`: the tokenizer decodes invalid UTF-8 as Python's "replace" does (byte-level
    BPE), so a whole decode ending in a partial character still starts with every whole
    one before it. A byte-fallback decoder instead marks each byte of an invalid run:
    until the character is whole, the whole decode is no yardstick. `valid`: `ids` are a
    valid UTF-8 text's, cut anywhere: each text extends the one before."""
    live = _row()
    text = raw = ""
    for n, token in enumerate(ids, 1):
        live.out.append(token)
        if n % every and n < len(ids):
            continue
        full = _decode(tok, live.out)
        last, raw = raw, detokenize(tok, live)
        if lossy or not full.endswith("\ufffd"):
            assert full.startswith(raw), (live.out, raw, full)
            assert full.strip().startswith(raw.strip())
        if valid:
            assert raw.startswith(last)
        text = raw.strip()
        assert raw == detokenize(tok, live)  # asking again changes nothing
    full = _decode(tok, ids)
    if not full.endswith("\ufffd"):  # else its last character is not whole yet
        assert text == full.strip(), (ids, text, full)
    return text


def _valid(tok: Any) -> list[list[int]]:
    """Token streams of valid UTF-8 texts: the texts, and each character encoded alone
    (no merges across characters)."""
    return [_encode(tok, t) for t in TEXTS] \
        + [[i for t in TEXTS for ch in t for i in _encode(tok, ch)]]


def _random(tok: Any, vocab: int, seed: int) -> list[list[int]]:
    """Random ids, and random runs of the texts' own tokens (characters cut and mixed)."""
    rng = random.Random(seed)
    cases = [rng.choices(range(vocab), k=rng.randint(1, 60)) for _ in range(40)]
    pool = [i for t in TEXTS for i in _encode(tok, t)]
    return cases + [rng.choices(pool, k=rng.randint(1, 60)) for _ in range(40)]


@pytest.fixture(params=["janus-pro", "janusflow"])
def tiny_tokenizer(request: pytest.FixtureRequest) -> Any:
    """The tiny checkpoints' tokenizers, as their runners load them (transformers' fast
    tokenizer for Janus-Pro, a `tokenizers.Tokenizer` for JanusFlow)."""
    if request.param == "janus-pro":
        return request.getfixturevalue("pro").processor.tokenizer
    return request.getfixturevalue("flow").tokenizer


def test_tiny_tokenizers_split_characters_into_bytes(tiny_tokenizer: Any) -> None:
    # The streams below only test something if a character's bytes come as several tokens.
    ids = _encode(tiny_tokenizer, "🐱")
    assert len(ids) > 1 and _decode(tiny_tokenizer, ids[:1]).endswith("\ufffd")


@pytest.mark.parametrize("every", [1, 3])
def test_incremental_text_is_a_prefix_then_the_whole_answer(tiny_tokenizer: Any,
                                                            every: int) -> None:
    vocab = tiny_tokenizer.get_vocab_size() if hasattr(tiny_tokenizer, "get_vocab_size") \
        else len(tiny_tokenizer)
    for ids in _valid(tiny_tokenizer):
        _feed(tiny_tokenizer, ids, every, valid=True)
    for ids in _random(tiny_tokenizer, vocab, seed=every):
        _feed(tiny_tokenizer, ids, every)


def test_a_text_is_shown_once_its_character_is_whole(tiny_tokenizer: Any) -> None:
    ids = _encode(tiny_tokenizer, "ok 🐱")
    live = _row()
    shown = []
    for token in ids:
        live.out.append(token)
        shown.append(detokenize(tiny_tokenizer, live))
    assert shown[-1] == "ok 🐱"
    # While the cat's bytes come in, the text stays "ok " (never a replacement mark).
    assert all("\ufffd" not in s for s in shown) and shown.count("ok ") >= 3


def _llama_like() -> Any:
    """A Llama-style tokenizer (as DeepSeek's real ones): "▁" for a space, byte-fallback
    pieces <0xNN> for characters out of the vocabulary, and a decoder that drops the
    leading space of the first piece, so a piece decoded alone loses its space."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["▁"] + [chr(c) for c in range(33, 127)]
    merges = [("▁", "a"), ("▁", "c"), ("▁a", "n"), ("▁an", "d"), ("▁c", "a"), ("▁ca", "t")]
    pieces += ["".join(m) for m in merges]
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    return tok


def test_llama_like_tokenizer_keeps_spaces_and_byte_fallback_characters() -> None:
    tok = _llama_like()
    ids = _encode(tok, "a cat and 猫 🐱")
    assert "<0xF0>" in [tok.id_to_token(i) for i in ids]
    assert _decode(tok, ids[1:2]) == "cat"  # alone, a piece loses its space
    assert _feed(tok, ids, lossy=False, valid=True) == "a cat and 猫 🐱"
    for ids in _valid(tok):
        _feed(tok, ids, lossy=False, valid=True)
    for ids in _random(tok, tok.get_vocab_size(), seed=7):
        _feed(tok, ids, lossy=False)


def test_an_invalid_byte_run_is_decoded_as_a_whole_decode_does() -> None:
    # A byte-fallback decoder marks every byte of an invalid run, so the 猫 already shown
    # becomes three marks once a lone lead byte and a letter follow it.
    tok = _llama_like()
    byte = tok.token_to_id
    ids = [byte("▁a")] + [byte(f"<0x{b:02X}>") for b in "猫".encode()]
    live = _row()
    live.out += ids
    assert detokenize(tok, live) == "a猫"
    live.out.append(byte("<0xE3>"))
    assert detokenize(tok, live) == "a猫"  # the next character's first byte: it waits
    live.out.append(byte("x"))
    assert detokenize(tok, live) == _decode(tok, live.out) == "a\ufffd\ufffd\ufffd\ufffdx"
    live.out.append(byte("▁cat"))
    assert detokenize(tok, live) == _decode(tok, live.out)
