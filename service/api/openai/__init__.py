"""OpenAI's wire format under /openai/v1, on top of the same jobs, queue, workers and
storage as /v1 (docs/API.md, "OpenAI-compatible face").

errors (OpenAI's error shape), blueprint (the routes' blueprint and shared checks),
translate (request bodies -> our jobs), render (jobs -> OpenAI objects), jobs (submit
and wait), and one module of routes per resource: models, images, chat, files, batches.
"""

from service.api.openai import batches, chat, files, images, models  # noqa: F401 - routes
from service.api.openai.blueprint import bp

__all__ = ["bp"]
