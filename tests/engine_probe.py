"""Run by tests/test_engine_invariance.py in a fresh process (its environment sets the thread
count): jobs through a runner's continuous engine, alone and joining crowds at different
steps and slots, printed as digests."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

from service.models.engine import run_batch


def drive(engine: Any, schedule: list[tuple[int, str, Any]], drop: dict[int, str]) -> dict:
    """Admit each (join step, key, request) at its step, in list order; drop keys at steps."""
    results: dict[str, Any] = {}
    pending, step = list(schedule), 0
    while pending or engine.active():
        joining = [(key, req) for at, key, req in pending if at <= step]
        pending = [item for item in pending if item[0] > step]
        assert not engine.admit(joining), "refused"
        if step in drop and drop[step] in engine.active():
            engine.drop(drop[step])
        results.update(engine.step())
        step += 1
    return results


def digest(result: Any) -> str:
    assert not isinstance(result, Exception), repr(result)
    data = b"".join(im.tobytes() for im in result.images) if hasattr(result, "images") \
        else result.text.encode()
    return hashlib.sha256(data).hexdigest()[:16]


def main() -> None:
    family, checkpoint, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    from PIL import Image

    from service.models.base import GenerateRequest, UnderstandRequest
    from service.models.runners import load_runner

    runner = load_runner(checkpoint, batch_invariant=True)
    flow = family == "janusflow"

    def request(prompt: str, i: int, seed: int, **kw: Any) -> GenerateRequest:
        extra = {"steps": 3 + i % 4} if flow else {"temperature": [1.0, 0.0, 0.7][i % 3]}
        guidance = [None, 1.0, 3.0][i % 3]
        return GenerateRequest(prompt, num_images=1 + i % 3, seed=seed, guidance=guidance,
                               **{**extra, **kw})

    out: dict[str, str] = {}
    for seed in (7, 8):
        # Seed 8's job has guidance 1: no unconditional rows at all.
        kind = {"steps": 6} if flow else {"temperature": 1.0}
        target = GenerateRequest("a red fox in the snow", num_images=2, seed=seed,
                                 guidance=None if seed == 7 else 1.0, **kind)
        engine = runner.open_engine("generate", 8)
        out[f"s{seed}-alone"] = digest(drive(engine, [(0, "t", target)], {})["t"])
        out[f"s{seed}-completion"] = digest(run_batch(runner, "generate", [target])[0])
        for n in (3, 5):
            others = [(i % 4, f"o{i}", request(f"prompt {i} with more words", i, 100 + i))
                      for i in range(n - 1)]
            for join in (0, 2):
                for slot in sorted({0, n - 1}):
                    schedule = others[:slot] + [(join, "t", target)] + others[slot:]
                    engine = runner.open_engine("generate", 8)
                    # o0 leaves early (its rows before the target's are compacted away).
                    result = drive(engine, schedule, {3: "o0"})["t"]
                    out[f"s{seed}-b{n}-j{join}@{slot}"] = digest(result)
    # Understanding, both families: alone, in a crowd (joining at step 1 in slot 2, a
    # neighbour dropped at step 2), and through the run-to-completion path.
    image = Image.new("RGB", (40, 24), (10, 200, 30))
    question = UnderstandRequest(image, "what is it?", seed=3, temperature=1.0,
                                 max_new_tokens=6)
    engine = runner.open_engine("understand", 8)
    out["text-alone"] = digest(drive(engine, [(0, "t", question)], {})["t"])
    out["text-completion"] = digest(run_batch(runner, "understand", [question])[0])
    crowd = [(i, f"q{i}", UnderstandRequest(image, f"q {i}?", seed=i, max_new_tokens=3 + i,
                                            temperature=[None, 0.0, 0.7, 1.2][i],
                                            top_p=[None, None, 0.8, None][i]))
             for i in range(4)]
    engine = runner.open_engine("understand", 8)
    result = drive(engine, crowd[:2] + [(1, "t", question)] + crowd[2:], {2: "q0"})["t"]
    out["text-b5-j1@2"] = digest(result)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
