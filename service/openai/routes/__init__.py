"""The /openai/v1 routes, one blueprint (service.api's factory registers it).

blueprint (the blueprint, OpenAI's error shape, shared checks), translate (request
bodies -> our jobs), hold (submit a job and hold the request until it ends),
batch_lines (a batch file's lines -> checked jobs), and one module of routes per
resource: models, images, chat, files, batches.
"""

from service.openai.routes import batches, chat, files, images, models  # noqa: F401 - routes
from service.openai.routes.blueprint import bp

__all__ = ["bp"]
