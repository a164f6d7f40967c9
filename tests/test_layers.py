"""The folders are the architecture: no module imports a layer above its own.

    entry                          (cli, server, dev, migrate, dispatcher, batch client)
    openai.routes                  (the /openai/v1 routes, on top of the API's)
    api | workers | webhooks       (siblings; see ALLOWED for the few crossings)
    openai                         (OpenAI's bodies, rows and batch files, no Flask)
    keys                           (API keys and their revocation version)
    lifecycle                      (the only writer of job and batch status)
    core                           (settings, db, tables, storage, broker, ...)

`service.models` stands apart at the bottom: it imports nothing of the service's
layers, so it can be used (and tested) without Flask, Celery, SQL or S3.
Every import counts, lazy ones inside functions included. A subpackage named in ALLOWED
(`openai.routes`) is a layer of its own, not part of its parent's.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"

ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "lifecycle": {"core", "lifecycle"},
    "keys": {"core", "keys"},
    # No Flask and no service.api: the dispatcher imports it (test_dispatcher_imports).
    "openai": {"core", "lifecycle", "openai", "models"},
    # The API refuses unsafe webhook URLs at submit with the guard that delivery uses,
    # and reads model families and defaults from the model catalog (config.json only).
    "api": {"core", "lifecycle", "keys", "openai", "api", "webhooks", "models"},
    "openai.routes": {"core", "lifecycle", "openai", "api", "openai.routes"},
    "workers": {"core", "lifecycle", "workers", "models"},
    "webhooks": {"core", "lifecycle", "webhooks"},
    "entry": {"core", "lifecycle", "keys", "openai", "api", "workers", "webhooks", "entry",
              "models"},
    "models": {"models"},
}
# (module, imported module) pairs inside service.models that still reach out of it;
# to be emptied, never grown.
KNOWN_MODEL_EXCEPTIONS: set[tuple[str, str]] = set()
# (module, layer) pairs allowed above ALLOWED: the app factory registers the blueprint of
# the OpenAI routes, which are built on the API's own modules.
CROSSINGS: set[tuple[str, str]] = {("service.api", "openai.routes")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every `service.…` module `path` imports, at any depth of the syntax tree."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from service.x import y` may import the module service.x.y; a name that is
            # not a module lands in service.x's layer all the same.
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "service" or name.startswith("service.")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return next((n for n in (".".join(parts[1:3]), ".".join(parts[1:2])) if n in ALLOWED), None)


def test_every_module_belongs_to_a_layer() -> None:
    stray = [
        _module_name(p) for p in SERVICE.rglob("*.py")
        if _module_name(p) != "service" and layer_of(_module_name(p)) is None
    ]
    assert not stray, f"modules outside every layer: {stray}"


def test_no_module_imports_a_higher_layer() -> None:
    violations = []
    for path in sorted(SERVICE.rglob("*.py")):
        module = _module_name(path)
        own = layer_of(module)
        if own is None:
            continue
        for target in sorted(_imports(path, module)):
            other = layer_of(target)
            if other is None or other in ALLOWED[own]:
                continue
            if (module, target) in KNOWN_MODEL_EXCEPTIONS or (module, other) in CROSSINGS:
                continue
            violations.append(f"{module} ({own}) imports {target} ({other})")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = (
        "def f():\n    from service.api import create_app\n\n"
        "from ..lifecycle import hook\nfrom service import entry\n"
        "from service.openai import routes\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = _imports(path, "service.core.mod")
    assert {"service.api", "service.lifecycle", "service.entry"} <= found
    assert layer_of("service.openai.routes") in {layer_of(name) for name in found}


def _model_imports(path: Path) -> set[str]:
    """The `service.models…` modules a file imports, `from service.models import x` as
    `service.models.x`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("service.models")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service.models"):
            if node.module == "service.models":
                found |= {f"service.models.{a.name}" for a in node.names}
            else:
                found.add(node.module)  # type: ignore[arg-type]
    return found


def test_outside_the_workers_only_the_model_catalog_is_imported() -> None:
    # Everything but the catalog imports torch (or will); the API process never may.
    reaching = []
    for path in sorted(SERVICE.rglob("*.py")):
        module = _module_name(path)
        if layer_of(module) in ("models", "workers", "entry"):
            continue
        for target in sorted(_model_imports(path)):
            if target != "service.models.catalog":
                reaching.append(f"{module} imports {target}")
    assert not reaching, "\n".join(reaching)
