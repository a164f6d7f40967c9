"""The serving model: one real `janus-service api` process (gevent) holds hundreds of
`Prefer: wait` requests and event streams at once, answers /healthz and submissions
while they wait, and wakes every one of them when their jobs end. No timing thresholds:
"at once" is shown by Redis itself, which lists every waiter blocked in its XREAD."""

from __future__ import annotations

import threading

import pytest
import redis
import requests

from service.core.settings import Settings
from tests.helpers import IDLE, free_port, settings_env, wait_for

pytestmark = pytest.mark.slow

WAITERS, STREAMS, JOBS = 200, 50, 20


def _blocked_reads(settings: Settings) -> int:
    """Clients of this test's Redis db parked in a blocking XREAD right now."""
    client = redis.Redis.from_url(settings.broker_url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return sum(1 for c in client.client_list()
               if c.get("cmd") == "xread" and "b" in c.get("flags", "") and int(c["db"]) == db)


def test_hundreds_of_waiters_park_while_health_and_submissions_go_on(
    settings: Settings, spawn, auth
) -> None:
    port = free_port()
    spawn(["api", "--port", str(port), "--workers", "1"], env=settings_env(settings), name="api")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{base}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, 60, what="the API")
    body = {"model": IDLE, "task": "generate", "input": {"prompt": "p", "seed": 1}}
    jobs = [requests.post(f"{base}/v1/jobs", json=body, headers=auth, timeout=30).json()["id"]
            for _ in range(JOBS)]
    answers: dict[int, str] = {}
    streamed: dict[int, str] = {}

    def wait(n: int) -> None:
        response = requests.get(f"{base}/v1/jobs/{jobs[n % JOBS]}",
                                headers={**auth, "Prefer": "wait=60"}, timeout=120)
        answers[n] = response.json()["status"]

    def stream(n: int) -> None:
        with requests.get(f"{base}/v1/jobs/{jobs[n % JOBS]}/events", headers=auth,
                          stream=True, timeout=120) as response:
            last = ""
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    last = line[7:]
                if last == "completed" and line.startswith("data: "):
                    streamed[n] = line
                    return

    threads = [threading.Thread(target=wait, args=(n,)) for n in range(WAITERS)]
    threads += [threading.Thread(target=stream, args=(n,)) for n in range(STREAMS)]
    for thread in threads:
        thread.start()
    # Every waiter and every stream parked in Redis at the same moment, in one process.
    wait_for(lambda: _blocked_reads(settings) >= WAITERS + STREAMS, 120, interval=0.05,
             what=f"{WAITERS + STREAMS} parked readers")
    for _ in range(20):
        assert requests.get(f"{base}/healthz", timeout=30).status_code == 200
    extra = requests.post(f"{base}/v1/jobs", json=body, headers=auth, timeout=30)
    assert extra.status_code == 202 and not answers and not streamed
    for job_id in [*jobs, extra.json()["id"]]:
        requests.post(f"{base}/v1/jobs/{job_id}/cancel", headers=auth, timeout=30)
    for thread in threads:
        thread.join(150)
    assert sorted(answers) == list(range(WAITERS))
    assert set(answers.values()) == {"canceled"}
    assert sorted(streamed) == list(range(STREAMS))
    assert all('"status":"canceled"' in line for line in streamed.values())
