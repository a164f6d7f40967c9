"""The API process never imports model code: only the torch-free catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Built in a fresh interpreter, so nothing another test imported can hide an import.
PROBE = """
import json, sys
from service.api import create_app
from service.core.settings import Settings

settings = Settings(data_dir=sys.argv[1], models=json.loads(sys.argv[2]))
app = create_app(settings)
assert app.test_client().get("/healthz").status_code == 200
heavy = ("torch", "transformers", "diffusers", "service.models.janus_pro",
         "service.models.janusflow", "service.models.checkpoints", "service.models.runners",
         "service.models.base")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy
                        or any(m == h or m.startswith(h + ".") for h in heavy))))
"""


def test_create_app_imports_no_model_family_nor_torch(
    tmp_path: Path, tiny_checkpoint: str, flow_checkpoint: str
) -> None:
    models = {"janus-pro-tiny": tiny_checkpoint, "janusflow-tiny": flow_checkpoint}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), json.dumps(models)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_catalog_alone_is_torch_free() -> None:
    code = (
        "import sys, service.models.catalog as c; c.defaults_of('janus-pro'); "
        "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
