"""Publishing a job id to Redis as Celery would, with one LPUSH on a kept connection.

`Celery.send_task` costs about 0.3 ms of CPU per message before the LPUSH (options
and routing, signals, argument reprs, kombu's envelope, and a new Redis client
object for every put), several times the LPUSH itself, on every submit. Our
messages never vary but for the job id and queue, so the API and the sweeper
(`make_celery(publisher=True)` on a Redis broker) write the same bytes directly:
Celery's task protocol 2 with a JSON body, in kombu's Redis envelope, pushed to the
queue's key (which kombu prefixes with `global_keyprefix` like any other key), with
service/core/resp.py's lean client.
Workers consume them with Celery, unchanged; `tests/test_publish.py` checks the
message against the one Celery itself writes, so an upgrade that changes the format
fails there rather than in production.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid

import redis

from service.core.resp import lean_redis

# Celery's embed part of a protocol-2 body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class RedisPublisher:
    """Job-id messages straight to the Redis queues (the publisher side only)."""

    def __init__(self, url: str, key_prefix: str, socket_timeout: float) -> None:
        # One LPUSH per submit: the lean client costs a tenth of redis-py's CPU, and has
        # no connection cap (under gevent one process serves hundreds at once).
        self.redis = lean_redis(url, timeout=socket_timeout)
        self.key_prefix = key_prefix
        self.reply_to = str(uuid.uuid4())  # Celery's per-process oid; nothing replies

    def message(self, task: str, task_id: str, queue: str) -> str:
        """What kombu's Redis transport stores for `send_task(task, args=[task_id], ...)`."""
        body = json.dumps([[task_id], {}, _EMBED])
        return json.dumps({
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
                "expires": None, "group": None, "group_index": None, "retries": 0,
                "timelimit": [None, None], "root_id": task_id, "parent_id": None,
                "argsrepr": repr([task_id]), "kwargsrepr": "{}",
                # Read per message: a process forked after this object was made names itself.
                "origin": f"gen{os.getpid()}@{socket.gethostname()}",
                "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id, "reply_to": self.reply_to, "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
            },
        })

    def depth(self, queue: str) -> int:
        """Messages waiting in `queue` (the key this publisher pushes to)."""
        return int(self.redis.llen(f"{self.key_prefix}{queue}"))

    def publish(
        self, task: str, jobs: list[tuple[str, str]], max_retries: int, deadline: float
    ) -> set[str]:
        """LPUSH each (task id, queue); returns the ids pushed. Retries a failed push up
        to `max_retries` times (0.3 s apart at most) while before `deadline` (monotonic)."""
        done: set[str] = set()
        for task_id, queue in jobs:
            for attempt in range(max_retries + 1):
                try:
                    self.redis.lpush(f"{self.key_prefix}{queue}",
                                     self.message(task, task_id, queue))
                    done.add(task_id)
                    break
                except (redis.RedisError, OSError):
                    if attempt == max_retries or time.monotonic() + 0.3 * attempt > deadline:
                        return done  # the broker is away: leave the rest to the sweeper
                    time.sleep(min(0.3 * attempt, max(0.0, deadline - time.monotonic())))
        return done
