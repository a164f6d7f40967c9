"""What reaches the real server (gunicorn) before or around the app: over-long request
lines, `//` paths and NUL bytes in URLs all get the one JSON error shape."""

from __future__ import annotations

import pytest
import requests

from tests.helpers import start_api


@pytest.fixture(scope="module")
def base(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("files")  # local files, served by the API
    proc, url = start_api(settings, tmp_path_factory.mktemp("api") / "api.log",
                          JANUS_STORAGE_URL=f"file://{root}")
    yield url
    proc.stop()


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/v1/jobs?after=" + "x" * 5000, 414, "uri_too_long"),  # the app's own limit
    ("/files/a.png?expires=" + "9" * 9000 + "&sig=x", 414, "uri_too_long"),  # gunicorn's
    ("/files//etc/passwd", 404, "not_found"),
    ("/files/%2Fetc%2Fpasswd", 404, "not_found"),
    ("/files/a%00b.png?expires=1&sig=x", 404, "not_found"),
    ("/files/jobs/a.png?expires=9999999999&sig=%C3%A9", 403, "forbidden"),
])
def test_edge_urls_get_json_errors(base, path, status, code) -> None:
    response = requests.get(base + path, timeout=10, allow_redirects=False)
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
