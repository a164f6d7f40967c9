"""Print the package's requirements (optionally with extras) from pyproject.toml.

The Dockerfiles install these in a layer of their own, before the source is copied,
so editing the code does not reinstall every dependency.
Usage: python requirements.py [EXTRA ...] > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    found = list(project["dependencies"])
    for extra in extras:
        found += project["optional-dependencies"][extra]
    return found


if __name__ == "__main__":
    here = Path(__file__).resolve().parent.parent
    print("\n".join(requirements(here / "pyproject.toml", sys.argv[1:])))
