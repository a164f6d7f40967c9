"""`make run`: the whole service on one machine, as separate processes like production.

Uses whatever JANUS_* the environment sets; with nothing set, the embedded
defaults (SQLite, local files, a broker in SQLite) and, with no JANUS_MODELS,
a tiny random checkpoint written on first run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from service.core.settings import Settings

TINY_ID = "janus-pro-tiny"


def _tiny_models(settings: Settings) -> dict[str, str]:
    path = (settings.data_dir / "checkpoints" / TINY_ID).resolve()
    if not (path / "config.json").exists():
        from service.models.checkpoints.tiny import write_tiny_checkpoint

        write_tiny_checkpoint("janus-pro", str(path), image_size=384)
    banner = "=" * 78
    print(
        f"\n{banner}\n  JANUS_MODELS is not set: serving a TINY RANDOM checkpoint ({TINY_ID}).\n"
        "  Jobs really run (576-token generation, VQ decode, PNG upload), but images\n"
        "  are noise and answers are gibberish. Set JANUS_MODELS to serve real weights,\n"
        '  e.g. JANUS_MODELS=\'{"janus-pro-1b": "deepseek-community/Janus-Pro-1B"}\'\n'
        f"{banner}\n",
        flush=True,
    )
    return {TINY_ID: str(path)}


def _dev_key(settings: Settings, env: dict[str, str]) -> str:
    """One key per data dir, created once and reused across runs."""
    path = settings.data_dir / "dev-key.json"
    if path.exists():
        return json.loads(path.read_text())["key"]
    out = subprocess.run(
        [sys.executable, "-m", "service.entry.cli", "keys", "create", "--name", "dev", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    path.write_text(out.stdout)
    path.chmod(0o600)
    return json.loads(out.stdout)["key"]


def _wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a service process exited during start-up; see the log above")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not become ready in {timeout:.0f}s")


def run_dev(settings: Settings, port: int = 8000) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    models = settings.models or _tiny_models(settings)
    public_url = (
        settings.public_url if "JANUS_PUBLIC_URL" in os.environ else (f"http://127.0.0.1:{port}")
    )
    env = {
        **os.environ,
        "JANUS_MODELS": json.dumps(models),
        "JANUS_PUBLIC_URL": public_url,
        "JANUS_DATA_DIR": str(settings.data_dir.resolve()),
    }
    cli = [sys.executable, "-m", "service.entry.cli"]
    subprocess.run([*cli, "migrate"], env=env, check=True)
    key = _dev_key(settings, env)

    procs = [subprocess.Popen([*cli, "api", "--port", str(port), "--workers", "1"], env=env)]
    for model_id in models:
        procs.append(subprocess.Popen([*cli, "worker", "--model", model_id], env=env))
    procs.append(subprocess.Popen([*cli, "dispatcher"], env=env))

    def stop(*_args: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _wait_ready(f"http://127.0.0.1:{port}/readyz", procs)
    model = next(iter(models))
    print(
        f"""
Janus job service is up: {public_url}
  API key (dev):  {key}
  models:         {", ".join(models)}
  data:           {settings.data_dir.resolve()}
  web console:    {public_url}/console  (paste the key)

Try it:
  curl -s {public_url}/v1/jobs -H "Authorization: Bearer {key}" \\
       -H "Content-Type: application/json" -H "Prefer: wait=60" \\
       -d '{{"model": "{model}", "task": "generate",
            "input": {{"prompt": "a red fox in snow", "seed": 7}}}}'
  curl -s -H "Authorization: Bearer {key}" -H "Prefer: wait=60" {public_url}/v1/jobs/<id>

Ctrl-C stops everything.
""",
        flush=True,
    )
    while all(p.poll() is None for p in procs):
        time.sleep(1)
    print("a service process exited; stopping the others", file=sys.stderr)
    stop()
