"""Run by tests/test_models_invariance.py in a fresh process (its environment picks the CPU
kernels and thread count): one job alone and inside batches, printed as digests."""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from service.models.engine import run_batch


def main() -> None:
    family, checkpoint, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    from PIL import Image

    from service.models.base import GenerateRequest, UnderstandRequest
    from service.models.runners import load_runner

    runner = load_runner(checkpoint)
    extra = {"steps": 4} if family == "janusflow" else {}

    def digest(result) -> str:  # type: ignore[no-untyped-def]
        data = b"".join(im.tobytes() for im in result.images) if hasattr(result, "images") \
            else result.text.encode()
        return hashlib.sha256(data).hexdigest()[:16]

    out: dict[str, str] = {}
    for seed in (7, 8):
        target = GenerateRequest("a red fox in the snow", num_images=2, seed=seed, **extra)
        out[f"s{seed}-alone"] = digest(run_batch(runner, "generate", [target])[0])
        for n in (3, 5, 8):
            others = [
                GenerateRequest(f"prompt {i} with more words", num_images=1 + i % 3,
                                seed=100 + i, **extra)
                for i in range(n - 1)
            ]
            for slot in sorted({0, n // 2, n - 1}):
                batch = others[:slot] + [target] + others[slot:]
                out[f"s{seed}-b{n}@{slot}"] = digest(run_batch(runner, "generate", batch)[slot])
    image = Image.new("RGB", (40, 24), (10, 200, 30))
    question = UnderstandRequest(image, "what is it?", seed=3, temperature=1.0, max_new_tokens=6)
    out["text-alone"] = digest(run_batch(runner, "understand", [question])[0])
    crowd = [UnderstandRequest(image, f"q {i}?", seed=i, max_new_tokens=3 + i) for i in range(4)]
    out["text-b5@2"] = digest(run_batch(runner, "understand",
                                        crowd[:2] + [question] + crowd[2:])[2])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
