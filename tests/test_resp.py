"""The lean Redis client (service/core/resp.py) against a real Redis: the three commands,
binary values, error replies, a connection the server dropped, a Redis that is away and
one that never answers; anything but a plain redis:// URL gets redis-py."""

from __future__ import annotations

import redis

from service.core.resp import LeanRedis, lean_redis
from tests.helpers import free_port
from tests.netfakes import SilentServer, TcpProxy


def _url_and_key(redis_url: str, name: str) -> tuple[LeanRedis, redis.Redis, str]:
    client = lean_redis(redis_url, timeout=2)
    assert isinstance(client, LeanRedis)
    return client, redis.Redis.from_url(redis_url), f"lean-test:{name}"


def test_get_set_lpush_as_redis_py_answers(redis_url) -> None:  # type: ignore[no-untyped-def]
    lean, real, key = _url_and_key(redis_url, "basic")
    real.delete(key, key + ":list")
    assert lean.get(key) is None
    value = b"two\r\nlines\x00and a NUL " + "é".encode()
    assert lean.set(key, value) is True
    assert lean.get(key) == value == real.get(key)
    assert lean.set(key, "other", nx=True) is None and real.get(key) == value
    assert lean.lpush(key + ":list", "a") == 1 and lean.lpush(key + ":list", b"b") == 2
    assert real.lrange(key + ":list", 0, -1) == [b"b", b"a"]
    real.delete(key, key + ":list")


def test_an_error_reply_is_a_response_error_and_the_connection_lives(redis_url) -> None:  # type: ignore[no-untyped-def]
    lean, real, key = _url_and_key(redis_url, "wrongtype")
    real.set(key, "a string")
    try:
        lean.lpush(key, "x")
    except redis.ResponseError as exc:
        assert "WRONGTYPE" in str(exc)
    else:
        raise AssertionError("no error")
    assert lean.get(key) == b"a string"
    real.delete(key)


def test_a_dropped_connection_is_replaced_without_an_error(redis_url) -> None:  # type: ignore[no-untyped-def]
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = TcpProxy(host, int(port))
    db = redis_url.rsplit("/", 1)[1]
    lean = lean_redis(f"redis://127.0.0.1:{proxy.port}/{db}", timeout=2)
    real = redis.Redis.from_url(redis_url)
    real.set("lean-test:restart", "v")
    assert lean.get("lean-test:restart") == b"v"
    proxy.cut()  # Redis "restarts": the pooled connection is closed under us
    proxy.restore()
    assert lean.get("lean-test:restart") == b"v"
    proxy.cut()


def test_away_and_silent_servers_raise_redis_errors() -> None:
    refused = LeanRedis("127.0.0.1", free_port(), timeout=0.5)
    try:
        refused.get("k")
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("no error")
    silent = SilentServer()
    try:
        LeanRedis("127.0.0.1", silent.port, timeout=0.3).lpush("k", "v")
    except redis.TimeoutError:
        pass
    else:
        raise AssertionError("no error")
    finally:
        silent.close()


def test_other_urls_get_redis_py() -> None:
    assert isinstance(lean_redis("redis://127.0.0.1:6379/2", 1), LeanRedis)
    for url in ("rediss://127.0.0.1:6379/0", "unix:///tmp/redis.sock",
                "redis://127.0.0.1:6379/0?health_check_interval=3"):
        assert isinstance(lean_redis(url, 1), redis.Redis), url
