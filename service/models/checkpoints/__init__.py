"""Checkpoint files rather than serving: the original <-> transformers layout conversion
(`convert`, `export`) and the tiny random checkpoints tests and `make run` load (`tiny`)."""
