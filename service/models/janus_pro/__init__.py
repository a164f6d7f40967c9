"""Janus-1.3B and Janus-Pro-1B/7B: transformers' Janus modules under our own batched decode
loops (`runner`), fed by `jobs` (prompts, validation), `decode`/`lm`/`sampling` (the loops),
and `loading` (both checkpoint layouts)."""
