"""OpenAI's wire format under /openai/v1, on top of the same jobs, queue, workers and
storage as /v1 (docs/API.md, "OpenAI-compatible face").

errors (OpenAI's error shape), blueprint (the routes' blueprint and shared checks),
translate (request bodies -> our jobs), render (stream chunks, a job's OpenAIError),
jobs (submit and wait), batch_lines (a batch file's lines -> checked jobs), and one
module of routes per resource: models, images, chat, files, batches. What the
dispatcher needs too (finished jobs -> OpenAI bodies, batch result files, the batch
tick) is in service/openai_wire, which imports no Flask.
"""

from service.api.openai import batches, chat, files, images, models  # noqa: F401 - routes
from service.api.openai.blueprint import bp

__all__ = ["bp"]
