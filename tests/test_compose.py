"""The compose deployment, checked without Docker (there is no engine here).

docker-compose.yml, docker-compose.cpu.yml and their merge are validated against the
Compose Specification's JSON schema (tests/data/compose-spec.json, see its ORIGIN note)
after the same ${...} interpolation compose does, with .env.example as the environment.
Then what a schema cannot know: every setting the code reads is documented and reaches
the containers, every command exists in our CLI, dependencies and Dockerfiles exist,
GPU workers reserve a GPU, and the entrypoint really execs.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service.core.settings import REMOVED, Settings
from service.entry.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FILES = {"main": ROOT / "docker-compose.yml", "cpu": ROOT / "docker-compose.cpu.yml"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")


# -- reading the files the way compose does -----------------------------------------------
class MissingVariable(Exception):
    pass


def read_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(values set, names documented); a commented-out `# NAME=default` documents NAME."""
    values: dict[str, str] = {}
    documented: set[str] = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if not match:
            continue
        documented.add(match[2])
        if not match[1]:
            raw = match[3].strip()
            quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
            values[match[2]] = raw[1:-1] if quoted else raw.split(" #")[0].strip()
    return values, documented


ENV, DOCUMENTED = read_env_file(ROOT / ".env.example")


def interpolate(text: str, env: dict[str, str], used: set[str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $$."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out.append(_expand(text[i + 2 : j - 1], env, used))
            i = j
        elif match := re.match(r"\$([A-Za-z_]\w*)", text[i:]):
            out.append(_expand(match[1], env, used))
            i += match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expand(body: str, env: dict[str, str], used: set[str] | None) -> str:
    name, op, arg = re.match(r"^(\w+)(:?[-?])?(.*)$", body, re.S).groups()  # type: ignore[union-attr]
    if used is not None:
        used.add(name)
    value = env.get(name)
    missing = value is None or (op is not None and op.startswith(":") and value == "")
    if not missing:
        return value  # type: ignore[return-value]
    if op in (":-", "-"):
        # The spec allows ${A:-${B}}, but docker-compose v1 cuts the default at the first
        # "}": keep the files to what every implementation reads the same way.
        if "${" in arg:
            raise ValueError(f"nested interpolation in ${{{body}}}")
        return interpolate(arg, env, used)
    raise MissingVariable(f"{name}: {arg or 'not set and no default'}")


def _walk(node: Any, env: dict[str, str], used: set[str] | None) -> Any:
    if isinstance(node, dict):
        return {k: _walk(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, env, used) for v in node]
    return interpolate(node, env, used) if isinstance(node, str) else node


def load(name: str, env: dict[str, str] | None = None, used: set[str] | None = None) -> dict:
    return _walk(yaml.safe_load(FILES[name].read_text()), ENV if env is None else env, used)


def merge(base: Any, over: Any, path: tuple[str, ...] = ()) -> Any:
    """Compose's merge of an override file: mappings merge, sequences append, commands replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge(base[k], v, (*path, k)) if k in base else v
                           for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, list):
        if path[-1] in ("command", "entrypoint") or path[-2:] == ("healthcheck", "test"):
            return over
        return base + [item for item in over if item not in base]
    return over


@functools.cache
def documents() -> dict[str, dict]:
    """The two files and their merge; tests that change a document copy it first."""
    docs = {name: load(name) for name in FILES}
    docs["merged"] = merge(docs["main"], docs["cpu"])
    return docs


def janus_services(doc: dict) -> dict[str, dict]:
    """Services that run our CLI (the others are stock images)."""
    return {name: svc for name, svc in doc["services"].items()
            if isinstance(svc.get("command"), list) and svc["command"][:1] == ["janus-service"]}


def enabled(doc: dict) -> dict[str, dict]:
    return {n: s for n, s in doc["services"].items() if not s.get("profiles")}


def seconds(duration: str) -> float:
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(\.\d+)?)(us|ms|s|m|h)", duration)
    return sum(float(number) * unit[suffix] for number, _, suffix in parts)


# -- the schema ---------------------------------------------------------------------------
def schema_errors(doc: dict) -> list[str]:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    checker = jsonschema.FormatChecker()
    checker.checks("duration")(lambda v: not isinstance(v, str) or bool(DURATION.match(v)))
    validator = jsonschema.Draft201909Validator(schema, format_checker=checker)
    errors = validator.iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("name", ["main", "cpu", "merged"])
def test_valid_against_the_compose_spec(name: str) -> None:
    errors = schema_errors(documents()[name])
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "path, value",
    [
        (("api", "healthcheck", "intervall"), "10s"),
        (("worker-janus-pro-7b", "deploy", "resources", "reservations", "devices", 0,
          "capability"), ["gpu"]),
        (("api", "depends_on", "migrate", "condition"), "service_done"),
        (("worker-janusflow", "stop_grace_period"), "ten minutes"),
        (("redis", "command", 2), True),  # what an unquoted `yes` becomes in YAML
    ],
)
def test_the_schema_check_catches_mistakes(path: tuple, value: Any) -> None:
    doc = copy.deepcopy(documents()["main"])
    node = doc["services"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(doc)


# -- environment --------------------------------------------------------------------------
def code_env_vars() -> set[str]:
    """JANUS_* the code reads: every Settings field, and every JANUS_ name in a string."""
    names = {f"JANUS_{field.upper()}" for field in Settings.model_fields if field not in REMOVED}
    for path in (ROOT / "service").rglob("*.py"):
        with tokenize.open(path) as fh:
            for token in tokenize.generate_tokens(fh.readline):
                if token.type == tokenize.STRING:
                    names |= set(re.findall(r"\bJANUS_[A-Z0-9_]*[A-Z0-9]\b", token.string))
    return names


def test_env_example_documents_every_variable_the_code_reads_and_no_other() -> None:
    assert sorted(code_env_vars() - DOCUMENTED) == []
    janus = {name for name in DOCUMENTED if name.startswith("JANUS_")}
    assert sorted(janus - code_env_vars()) == [], "a JANUS_ name no code reads (a typo?)"


def test_readme_configuration_table_documents_every_variable_the_code_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    in_table = set(re.findall(r"`(JANUS_[A-Z0-9_]+)`", "\n".join(rows)))
    assert sorted(code_env_vars() - in_table) == []


def test_every_compose_variable_is_documented_and_secrets_are_required() -> None:
    used: set[str] = set()
    for name in FILES:
        load(name, used=used)
    assert sorted(used - DOCUMENTED) == []
    for secret in ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "MINIO_ROOT_PASSWORD"):
        with pytest.raises(MissingVariable, match=secret):
            load("main", env={k: v for k, v in ENV.items() if k != secret})


def test_every_setting_reaches_the_service_containers() -> None:
    docs = documents()
    settings = {f"JANUS_{field.upper()}" for field in Settings.model_fields
                if field not in REMOVED}
    for name, service in janus_services(docs["main"]).items():
        if service["command"][1] in ("api", "worker", "dispatcher", "migrate"):
            assert sorted(settings - set(service["environment"])) == [], name
    # The CPU worker repeats the GPU workers' wiring; it must not drift from it.
    gpu = dict(docs["merged"]["services"]["worker-janus-pro-7b"]["environment"])
    cpu = dict(docs["merged"]["services"]["worker-janus-pro-tiny"]["environment"])
    for key in ("CUDA_VISIBLE_DEVICES", "HF_HOME", "HF_TOKEN", "OMP_NUM_THREADS", "JANUS_MODELS"):
        gpu.pop(key, None), cpu.pop(key, None)
    assert cpu == gpu


# -- services -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["main", "merged"])
def test_commands_exist_in_the_cli_and_workers_serve_configured_models(name: str) -> None:
    doc = documents()[name]
    served = set()
    for service_name, service in janus_services(doc).items():
        try:
            args = build_parser().parse_args(service["command"][1:])
        except SystemExit:
            pytest.fail(f"{service_name}: {service['command']} is not a janus-service command")
        if args.command == "worker":
            models = json.loads(service["environment"]["JANUS_MODELS"] or ENV["JANUS_MODELS"])
            assert args.model in models, f"{service_name} serves a model JANUS_MODELS lacks"
            if service_name in enabled(doc):
                served.add(args.model)
    models = enabled(doc)["api"]["environment"]["JANUS_MODELS"] or ENV["JANUS_MODELS"]
    assert served == set(json.loads(models)), "a configured model has no worker"


@pytest.mark.parametrize("name", ["main", "merged"])
def test_dependencies_and_healthchecks(name: str) -> None:
    doc = documents()[name]
    services = doc["services"]
    for needed in ("postgres", "redis", "minio", "api"):
        assert services[needed]["healthcheck"]["test"], needed
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for service_name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in services, f"{service_name} depends on unknown {target}"
            if condition["condition"] == "service_healthy":
                assert services[target].get("healthcheck"), f"{target} has no healthcheck"
            if condition["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not one-shot"
        for part in service.get("healthcheck", {}).get("test", []):
            if part.startswith("/app/"):
                assert (ROOT / part.removeprefix("/app/")).is_file(), part
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in doc["volumes"], volume
    for service_name, service in janus_services(doc).items():
        if service["command"][1] in ("api", "worker", "dispatcher"):
            migrate = service["depends_on"]["migrate"]["condition"]
            assert migrate == "service_completed_successfully", service_name


def test_gpu_workers_reserve_one_gpu_each_and_stop_warmly() -> None:
    main = documents()["main"]
    assert {"worker-janus-pro-7b", "worker-janusflow"} <= set(main["services"])
    workers = {n: s for n, s in janus_services(main).items() if s["command"][1] == "worker"}
    for name, worker in workers.items():
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        gpus = [d for d in devices if d["driver"] == "nvidia" and "gpu" in d["capabilities"]]
        assert len(gpus) == 1, name
        assert gpus[0].get("count") == 1 or len(gpus[0].get("device_ids", [])) == 1, name
        # The one reserved GPU is the container's index 0.
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0", name
        assert worker["command"][worker["command"].index("--device") + 1] == "cuda:0", name
        assert seconds(worker["stop_grace_period"]) >= 60, name
        cache = worker["environment"]["HF_HOME"]
        assert f"hf-cache:{cache}" in worker["volumes"], name


def test_cpu_override_serves_the_tiny_checkpoint_without_gpus() -> None:
    merged = documents()["merged"]
    assert {"worker-janus-pro-7b", "worker-janusflow"}.isdisjoint(enabled(merged))
    tiny = build_parser().parse_args(merged["services"]["tiny-checkpoint"]["command"][1:])
    worker = enabled(merged)["worker-janus-pro-tiny"]
    args = build_parser().parse_args(worker["command"][1:])
    assert (tiny.family, args.device) == ("janus-pro", "cpu")
    assert json.loads(worker["environment"]["JANUS_MODELS"])[args.model] == tiny.out_dir
    assert "deploy" not in worker
    assert worker["depends_on"]["tiny-checkpoint"]["condition"] == "service_completed_successfully"


# -- images -------------------------------------------------------------------------------
def dockerignore_allows(top: str) -> bool:
    allowed = True
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if pattern and not pattern.startswith("#") and "/" not in pattern.lstrip("!"):
            negated = pattern.startswith("!")
            if Path(top).match(pattern.lstrip("!")):
                allowed = negated
    return allowed


def test_dockerfiles_exist_and_copy_only_what_the_context_has() -> None:
    builds = [s["build"] for doc in documents().values() for s in doc["services"].values()
              if "build" in s]
    assert builds
    for build in builds:
        assert build["context"] == "."
        dockerfile = (ROOT / build["dockerfile"]).read_text()
        declared = set(re.findall(r"^ARG (\w+)", dockerfile, re.M))
        assert set(build.get("args", {})) <= declared, build
        for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
            *sources, _dest = [p for p in line.split() if not p.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source == "." or dockerignore_allows(source.split("/")[0]), source
        assert 'ENTRYPOINT ["/app/compose/entrypoint.sh"]' in dockerfile
    api = (ROOT / "compose/api.Dockerfile").read_text()
    worker = (ROOT / "compose/worker.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in api and "models" not in " ".join(re.findall(r"RUN .*", api))
    assert "requirements.py models" in worker
    base = re.search(r"ARG BASE_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime", worker)
    assert base, "the worker image starts from a CUDA runtime with cuDNN"
    assert f"whl/cu{base[1]}{base[2]}" in worker, "torch's CUDA build matches the base image"
    for top in ("service", "migrations", "pyproject.toml", "README.md", "compose"):
        assert dockerignore_allows(top), top
    for secret in (".env", ".git", ".venv", "var", "tests"):
        assert not dockerignore_allows(secret), secret


def test_entrypoint_execs_so_the_service_is_pid_1() -> None:
    entry = str(ROOT / "compose/entrypoint.sh")
    # `echo $$` in the exec'd shell prints the pid the entrypoint started with; had the
    # entrypoint run the command as a child instead, the pids would differ.
    child = subprocess.Popen(["sh", entry, "sh", "-c", "echo $$"], stdout=subprocess.PIPE,
                             text=True)
    assert child.communicate()[0].strip() == str(child.pid) and child.returncode == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    help_text = subprocess.run(["sh", entry, "worker", "--help"], capture_output=True, text=True,
                               env=env, check=True).stdout
    assert "--metrics-port" in help_text


def test_api_side_never_imports_torch() -> None:
    code = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None\n"
            "import service.entry.cli, service.api, service.entry.server, service.entry.dispatcher")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
