"""The API's direct publish writes the message Celery itself writes (core/fastpublish.py)."""

from __future__ import annotations

import json
import uuid

import redis

from service.core.broker import make_celery, publish, queue_name
from service.core.settings import Settings

# Differ per process or per message by design; everything else must be equal.
_VARIES = {("headers", "origin"), ("properties", "reply_to"), ("properties", "delivery_tag")}


def _strip(raw: bytes) -> dict:
    message = json.loads(raw)
    for part, name in _VARIES:
        assert message[part].pop(name)
    return message


def test_direct_publish_matches_celery_send_task(redis_url: str, tmp_path) -> None:
    prefix = f"pub{uuid.uuid4().hex[:6]}:"
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, broker_key_prefix=prefix)
    by_celery = make_celery(settings)  # the workers' app: Celery's own send_task
    direct = make_celery(settings, publisher=True)
    assert getattr(direct, "janus_publisher", None) is not None
    assert getattr(by_celery, "janus_publisher", None) is None

    assert publish(by_celery, [("job_celery", "m1")], 0) == []
    assert publish(direct, [("job_direct", "m1")], 0) == []
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(f"{prefix}{queue_name('m1')}", 0, -1)
        assert len(raw) == 2  # the same key: the prefix is applied alike
        direct_msg, celery_msg = (_strip(r) for r in raw)  # LPUSH: newest first
        assert celery_msg["headers"]["id"] == "job_celery"
        # The body is base64 of JSON: compared decoded, then the rest as is.
        swap = json.dumps(_body(celery_msg)).replace("job_celery", "job_direct")
        assert json.loads(swap) == _body(direct_msg)
        swapped = json.loads(json.dumps(celery_msg).replace("job_celery", "job_direct"))
        assert {**swapped, "body": None} == {**direct_msg, "body": None}
    finally:
        client.delete(*client.keys(f"{prefix}*"))


def _body(message: dict) -> object:
    import base64

    return json.loads(base64.b64decode(message["body"]))


def test_direct_publish_reports_what_a_dead_broker_did_not_take(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:9/0")
    assert publish(make_celery(settings, publisher=True), [("a", "m"), ("b", "m")], 1) == [
        "a", "b"]
