"""Tiny, randomly initialised checkpoints of the real architectures, written locally.

Tests and the offline demo cannot reach a model hub, so they load these instead. They
are saved with `save_pretrained` and read back with `from_pretrained`, i.e. exactly the
code path the published converted checkpoints (`deepseek-community/Janus-Pro-7B`) take;
only the sizes are small. Everything here is deterministic given `seed`.
"""

from __future__ import annotations

import os

from service.models.prompts import JANUS_FORMAT, JANUS_PRO_FORMAT
from service.models.tokens import ASSISTANT, BOI, BOS, EOI, EOS, IMAGE, PAD, USER

# The special tokens the converted Janus-Pro checkpoints carry; Janus-1.3B's tokenizer has
# no role tokens (its prompts spell `User:` / `Assistant:` out).
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI, USER, ASSISTANT]
JANUS_SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI]

# A small built-in corpus so the byte-level BPE learns some merges; content barely matters.
TOKENIZER_CORPUS = [
    "You are a helpful language and vision assistant.",
    "You are able to understand the visual content that the user provides,",
    "and assist the user with a variety of tasks using natural language.",
    "A photo of a cat sitting on a red chair in the sun.",
    "A watercolor painting of mountains at sunset, with a lake and pine trees.",
    "Describe this image in detail. What is in the picture? How many people are there?",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "a dog running under the rain, cinematic lighting, high detail, 4k",
]


def train_byte_bpe(vocab_size: int, special_tokens: list[str], bos: str):  # -> Tokenizer
    """A small byte-level BPE with the family's special tokens, BOS prepended like DeepSeek's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    # Like the DeepSeek vocabulary, the special tokens come after the learned pieces.
    tok.add_special_tokens(special_tokens)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


def _build_tokenizer(vocab_size: int, max_length: int, special_tokens: list[str]):
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(vocab_size, special_tokens, BOS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
        padding_side="left",
        # JanusProcessor reads tokenizer.image_token / boi_token / eoi_token.
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def write_tiny_checkpoint(
    family: str, out_dir: str, *, image_size: int = 384, seed: int = 0
) -> str:
    """Write a tiny random checkpoint of `family` into `out_dir` and return `out_dir`."""
    if family == "janusflow":
        from service.models.checkpoints.tiny_janusflow import write_tiny_janusflow

        return write_tiny_janusflow(out_dir, image_size=image_size, seed=seed)
    if family not in ("janus-pro", "janus"):
        raise ValueError(f"unknown model family {family!r}")
    if image_size % 16:
        # The VQ model downsamples 16x and the vision patches are 16 px.
        raise ValueError(f"image_size must be a multiple of 16, got {image_size}")
    if family == "janus":
        # Janus-1.3B is published in DeepSeek's original layout only.
        return write_tiny_original_checkpoint(
            out_dir, image_size=image_size, seed=seed, family="janus"
        )
    return _write_janus_vq(out_dir, image_size=image_size, seed=seed)


def _write_janus_vq(
    out_dir: str, *, image_size: int, seed: int, family: str = "janus-pro"
) -> str:
    import torch
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    hidden = 64
    num_image_tokens = (image_size // 16) ** 2
    # Room for a 384 px understanding prompt (576 image tokens + text) plus an answer.
    max_positions = 2048
    specials = JANUS_SPECIAL_TOKENS if family == "janus" else SPECIAL_TOKENS
    tokenizer = _build_tokenizer(vocab_size=400, max_length=max_positions, special_tokens=specials)
    ids = tokenizer.convert_tokens_to_ids
    text_vocab = -(-len(tokenizer) // 64) * 64  # cover every id, rounded up like real vocabs

    text_config = LlamaConfig(
        vocab_size=text_vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=ids(BOS),
        eos_token_id=ids(EOS),
        pad_token_id=ids(PAD),
    )
    vision_config = JanusVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=16,
        projection_dim=hidden,  # the aligner maps vision features into the LLM width
        depth=2,
        num_image_tokens=num_image_tokens,
    )
    vq_config = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=512,  # codebook size == generation head output size (same config)
        latent_channels=32,
        base_channels=32,  # GroupNorm uses 32 groups, so channels must be multiples of 32
        channel_multiplier=[1, 1, 2, 2, 4],  # 5 levels: the real 16x down/upsampling
        num_res_blocks=1,
        projection_dim=hidden,
        image_token_embed_dim=hidden,
        num_hidden_layers=2,
    )
    config = JanusConfig(
        text_config=text_config,
        vision_config=vision_config,
        vq_config=vq_config,
        image_token_id=ids(IMAGE),
    )

    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    # The converted checkpoints carry these; image `generate` reads pad and boi from here.
    gen = model.generation_config
    gen._from_model_config = False  # otherwise from_pretrained rebuilds it from config.json
    gen.bos_token_id = ids(BOS)
    gen.eos_token_id = ids(EOS)
    gen.pad_token_id = ids(PAD)
    gen.temperature = 1.0
    gen.guidance_scale = 5.0
    gen.generation_kwargs = {"boi_token_id": ids(BOI)}

    image_processor = JanusImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        min_size=14,
    )
    processor = JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=(JANUS_FORMAT if family == "janus" else JANUS_PRO_FORMAT).chat_template(),
        use_default_system_prompt=True,
        num_image_tokens=num_image_tokens,
    )

    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def write_tiny_original_checkpoint(
    out_dir: str, *, image_size: int = 384, seed: int = 0, family: str = "janus-pro"
) -> str:
    """The tiny janus-pro (or janus) checkpoint in DeepSeek's original layout.

    Exercises the original-layout loader: config.json with `model_type: multi_modality`,
    DeepSeek's weight names, and their tokenizer/processor files. For `janus` (Janus-1.3B)
    the tokenizer has no role tokens and the processor names the `deepseek_old` template,
    as the published Janus-1.3B files do.
    """
    import tempfile

    from service.models.checkpoints.export import export_original

    with tempfile.TemporaryDirectory() as tmp:
        _write_janus_vq(tmp, image_size=image_size, seed=seed, family=family)
        return export_original(tmp, out_dir, family=family)
