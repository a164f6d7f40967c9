"""A body past the size limit is answered 413 in the path's error shape, never with a
connection reset: against the real server (gunicorn, gevent), with a body sent slowly
(longer than gunicorn's own 2 s keep-alive drain) or chunked, by http.client, requests
and the official openai client (service/api/middleware/bodylimit.py).
"""

from __future__ import annotations

import http.client
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI

from service.api.middleware.bodylimit import drain
from tests.helpers import IDLE, start_api

LIMIT = 64 * 1024  # job bodies and batch files alike, so a refused body is cheap to send
PIECE = 64 * 1024
# 20 MiB sent over seconds: past what gunicorn drains in its 2 s keep-alive (it then
# resets the connection), and past the 16 MiB an older fix drained.
SLOW_PIECES, PAUSE = 320, 0.01


@pytest.fixture(scope="module")
def live(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    api, base = start_api(settings, tmp_path_factory.mktemp("limits") / "api.log",
                          JANUS_MAX_BODY_BYTES=str(LIMIT), JANUS_BATCH_MAX_BYTES=str(LIMIT))
    yield base
    api.stop()


def _slowly(pieces: int) -> Iterator[bytes]:
    for _ in range(pieces):
        time.sleep(PAUSE)
        yield b" " * PIECE


def _raw_post(base: str, path: str, key: str, body: Any, headers: dict[str, str]
              ) -> tuple[int, dict[str, Any], str | None]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Connection")
    finally:
        conn.close()


def test_a_slow_body_over_the_limit_is_a_413_not_a_reset(live: str, api_key: str) -> None:
    size = SLOW_PIECES * PIECE
    status, body, _ = _raw_post(live, "/v1/jobs", api_key, _slowly(SLOW_PIECES),
                                {"Content-Length": str(size)})
    assert status == 413 and body["error"]["code"] == "body_too_large", body
    status, body, _ = _raw_post(live, "/openai/v1/images/generations", api_key,
                                _slowly(SLOW_PIECES), {"Content-Length": str(size)})
    assert status == 413 and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error"


def test_the_connection_serves_the_next_request_after_a_drained_413(
    live: str, api_key: str
) -> None:
    host, port = live.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", "/v1/jobs", body=b" " * (4 * LIMIT),
                     headers={"Authorization": f"Bearer {api_key}",
                              "Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 413 and json.loads(first.read())["error"]["code"] == \
            "body_too_large"
        conn.request("GET", "/healthz")  # the same socket: the body was read to its end
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_chunked_body_over_the_limit_is_a_413(live: str, api_key: str, settings) -> None:  # type: ignore[no-untyped-def]
    auth = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    # A valid JSON document padded past the limit: cut at the limit it would still parse.
    job = json.dumps({"model": IDLE, "task": "generate", "input": {"prompt": "x"}}).encode()

    def padded() -> Iterator[bytes]:
        yield job
        yield b" " * (2 * LIMIT)

    response = requests.post(f"{live}/v1/jobs", data=padded(), headers=auth, timeout=60)
    assert response.status_code == 413, response.text
    assert response.json() == {"error": {"code": "body_too_large", "message": response.json()[
        "error"]["message"]}}
    response = requests.post(f"{live}/openai/v1/images/generations", data=padded(),
                             headers=auth, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    # Within the limit a chunked body is read whole, as with a Content-Length.
    response = requests.post(f"{live}/v1/jobs", data=iter([job[:10], job[10:]]),
                             headers=auth, timeout=60)
    assert response.status_code == 202, response.text
    requests.post(f"{live}/v1/jobs/{response.json()['id']}/cancel", headers=auth, timeout=10)


class _SlowFile(io.RawIOBase):
    """A file the client reads in pieces, slowly; `sized` lets it say its length."""

    def __init__(self, size: int, sized: bool) -> None:
        self.left, self.size, self.sized = size, size, sized

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        time.sleep(PAUSE)
        n = min(len(buffer), self.left, PIECE)
        buffer[:n] = b" " * n
        self.left -= n
        return n

    def seekable(self) -> bool:
        return self.sized

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self.sized:
            raise io.UnsupportedOperation("seek")
        return self.size if whence == 2 else 0

    def tell(self) -> int:
        return 0


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_the_openai_client_gets_its_413(live: str, api_key: str, sized: bool) -> None:
    client = OpenAI(base_url=f"{live}/openai/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", _SlowFile(SLOW_PIECES * PIECE, sized)),
                            purpose="batch")
    assert caught.value.status_code == 413, caught.value
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "body_too_large"
    with pytest.raises(openai.APIStatusError) as prompt:
        client.images.generate(model=IDLE, prompt="x" * (2 * LIMIT))
    assert prompt.value.status_code == 413


def test_the_drain_stops_at_its_bounds() -> None:
    assert drain({"wsgi.input": io.BytesIO(b"x" * 1000)}, max_bytes=4096)
    assert not drain({"wsgi.input": io.BytesIO(b"x" * 10000)}, max_bytes=4096)
    assert not drain({"wsgi.input": io.BytesIO(b"x" * 10)}, seconds=0)
    assert drain({})
