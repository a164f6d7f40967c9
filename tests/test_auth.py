"""Key revocation is immediate: the next request on every API process is 401."""

from __future__ import annotations

import json
import subprocess

import pytest
import redis
import requests

from service.api import create_app
from service.api.middleware import auth
from service.keys.revocation import KeyVersion
from tests.helpers import CLI, free_port, make_key, settings_env, wait_for


def _revoke(settings, key_id: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([*CLI, "keys", "revoke", "--key-id", key_id],
                          env=settings_env(settings), capture_output=True, text=True)


def _create(settings, name: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    env = settings_env(settings)
    key = json.loads(subprocess.run([*CLI, "keys", "create", "--name", name, "--json"], env=env,
                                    capture_output=True, text=True, check=True).stdout)["key"]
    listed = json.loads(subprocess.run([*CLI, "keys", "list", "--json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    (key_id,) = [k["id"] for k in listed if k["name"] == name]
    return key, key_id


@pytest.mark.slow
def test_revoke_is_refused_by_the_next_request_on_every_api_process(settings, spawn) -> None:
    key, key_id = _create(settings, "revoked-everywhere")
    bases = []
    for n in range(2):
        port = free_port()
        proc = spawn(["api", "--port", str(port), "--workers", "1"], env=settings_env(settings),
                     name=f"api-{n}")
        base = f"http://127.0.0.1:{port}"

        def up(proc=proc, base=base) -> bool:  # type: ignore[no-untyped-def]
            assert proc.alive(), proc.output()
            try:
                return requests.get(f"{base}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(up, 60, what=f"api {n}")
        bases.append(base)
    headers = {"Authorization": f"Bearer {key}"}
    for base in bases:  # each process now holds the key in its cache
        for _ in range(2):
            assert requests.get(f"{base}/v1/jobs", headers=headers, timeout=10).status_code == 200
    revoked = _revoke(settings, key_id)
    assert revoked.returncode == 0 and "warning" not in revoked.stderr, revoked.stderr
    for base in bases:
        r = requests.get(f"{base}/v1/jobs", headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"


@pytest.fixture()
def lookups(monkeypatch):  # type: ignore[no-untyped-def]
    """Counts the database lookups of keys."""
    calls: list[str] = []
    real = auth.find_key

    def counted(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["key"])
        return real(**kwargs)

    monkeypatch.setattr(auth, "find_key", counted)
    return calls


def test_the_cache_holds_until_a_revocation(settings, lookups) -> None:
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {make_key(settings, 'cached')}"}
    for _ in range(3):
        assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert len(lookups) == 1  # one database lookup, then the cache
    assert KeyVersion(settings).bump()  # any revocation, of any key
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert len(lookups) == 2  # looked up again: it might have been this key


def test_without_a_version_nothing_is_cached(settings, lookups, tmp_path) -> None:
    """Redis away (or no Redis broker): every request reads the key from the database,
    so a revocation still counts at once."""
    port = free_port()  # nothing listens there
    away = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})
    client = create_app(away).test_client()
    key = make_key(settings, "uncached")
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert len(lookups) == 3
    listed = json.loads(subprocess.run([*CLI, "keys", "list", "--json"],
                                       env=settings_env(settings), capture_output=True,
                                       text=True, check=True).stdout)
    (key_id,) = [k["id"] for k in listed if k["name"] == "uncached"]
    warned = _revoke(away, key_id)  # the CLI cannot reach Redis either: it says so
    assert warned.returncode == 0 and "warning" in warned.stderr, warned.stderr
    assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_a_lost_version_is_a_new_version(settings) -> None:
    """Redis restarted empty: the version is recreated at random, never the old value."""
    versions = KeyVersion(settings)
    before = versions.read()
    assert before is not None and versions.read() == before
    redis.Redis.from_url(settings.broker_url).delete(versions.name)
    after = versions.read()
    assert after is not None and after != before
