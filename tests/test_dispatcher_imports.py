"""The dispatcher process never imports Flask nor the API: what it shares with the
OpenAI routes (finished jobs -> OpenAI bodies, batch result files, the batch tick)
lives at the top of service/openai/, below the API; the routes are in its routes/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A fresh interpreter, so nothing another test imported can hide an import. image_size
# runs the one lazy import on the dispatcher's path (the model catalog, for a batch
# line's token estimate).
PROBE = """
import json, sys
import service.entry.dispatcher
from service.openai.render import image_size

image_size("no-such-model", {})
print(json.dumps(sorted(m for m in sys.modules if m == "flask" or m.startswith("flask.")
                        or m.startswith(("service.api", "service.openai.routes")))))
"""


def test_the_dispatcher_imports_neither_flask_nor_the_api_nor_the_openai_routes() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
