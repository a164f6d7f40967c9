"""The bad-input table for batch uploads and local-storage file URLs: what Postgres
cannot store (NUL, lone surrogates, NaN, deep nesting) in any part of an upload, and
file URLs an attacker would try, each get a documented 4xx and leave nothing behind."""

from __future__ import annotations

import io
import json
import time

import pytest

from tests.helpers import IDLE, assert_error_shape, png_bytes

DEEP = "[" * 100_000 + "]" * 100_000
GOOD = '{"model": "' + IDLE + '", "task": "generate", "input": {"prompt": "fox"}}'


def line(prompt: str = '"fox"', extra: str = "") -> str:
    """One JSONL line as raw text (escapes and NaN exactly as a client sent them)."""
    return '{"model": "' + IDLE + '", "task": "generate", "input": {"prompt": ' + prompt + "}" \
        + extra + "}"


def upload(client, auth, content: str, name: str = "jobs.jsonl", **parts):  # type: ignore[no-untyped-def]
    form = {"file": (io.BytesIO(content.encode()), name), **parts}
    return client.post("/v1/batches", data=form, headers=auth, content_type="multipart/form-data")


CSV_HEAD = "prompt,custom_id,model,guidance,metadata.tag\n"
# (name, file content, file name, other form parts); every one is a 422 validation_error.
UPLOADS = [
    ("jsonl: NUL in prompt", GOOD + "\n" + line('"a\\u0000b"'), "a.jsonl", {}),
    ("jsonl: NUL in metadata key", line(extra=', "metadata": {"k\\u0000": 1}'), "a.jsonl", {}),
    ("jsonl: NUL in metadata value", line(extra=', "metadata": {"k": "\\u0000"}'), "a.jsonl",
     {}),
    ("jsonl: NUL in custom_id", line(extra=', "custom_id": "c\\u0000"'), "a.jsonl", {}),
    ("jsonl: lone surrogate", line('"\\ud800"'), "a.jsonl", {}),
    ("jsonl: NaN in metadata", line(extra=', "metadata": {"k": NaN}'), "a.jsonl", {}),
    ("jsonl: Infinity", line(extra=', "metadata": {"k": -Infinity}'), "a.jsonl", {}),
    ("jsonl: line of 100,000 nested arrays", GOOD + "\n" + DEEP, "a.jsonl", {}),
    ("jsonl: metadata of 100,000 nested arrays", line(extra=', "metadata": {"k": ' + DEEP + "}"),
     "a.jsonl", {}),
    ("csv: NUL in prompt cell", CSV_HEAD + f"a\x00b,c1,{IDLE},,\n", "a.csv", {}),
    ("csv: NUL in metadata cell", CSV_HEAD + f"fox,c1,{IDLE},,t\x00\n", "a.csv", {}),
    ("csv: NUL in custom_id cell", CSV_HEAD + f"fox,c\x00,{IDLE},,\n", "a.csv", {}),
    ("csv: nan guidance", CSV_HEAD + f"fox,c1,{IDLE},nan,\n", "a.csv", {}),
    ("csv: inf guidance", CSV_HEAD + f"fox,c1,{IDLE},inf,\n", "a.csv", {}),
    ("csv: NUL in a column name", "prompt,metadata.t\x00\nfox,x\n", "a.csv",
     {"defaults": json.dumps({"model": IDLE})}),
    ("defaults: NUL", GOOD, "a.jsonl", {"defaults": '{"metadata": {"k": "\\u0000"}}'}),
    ("defaults: NaN", GOOD, "a.jsonl", {"defaults": '{"metadata": {"k": NaN}}'}),
    ("defaults: lone surrogate", GOOD, "a.jsonl", {"defaults": '{"input": {"prompt": "\\udc00"}}'}),
    ("defaults: 100,000 nested arrays", GOOD, "a.jsonl",
     {"defaults": '{"metadata": {"k": ' + DEEP + "}}"}),
    ("metadata part: NUL", GOOD, "a.jsonl", {"metadata": '{"k\\u0000": "v"}'}),
    ("metadata part: NaN", GOOD, "a.jsonl", {"metadata": '{"k": NaN}'}),
    ("metadata part: lone surrogate", GOOD, "a.jsonl", {"metadata": '{"k": "\\ud800"}'}),
    ("metadata part: 100,000 nested arrays", GOOD, "a.jsonl", {"metadata": DEEP}),
    ("metadata part: nested 40 deep", GOOD, "a.jsonl",
     {"metadata": '{"k": ' + "[" * 40 + "]" * 40 + "}"}),
    ("webhook part: NUL", GOOD, "a.jsonl", {"webhook": "https://example.com/\x00"}),
]


@pytest.mark.parametrize(("name", "content", "filename", "parts"), UPLOADS,
                         ids=[u[0] for u in UPLOADS])
def test_bad_upload(client, auth, side_effects, name, content, filename, parts) -> None:
    before = side_effects()
    response = upload(client, auth, content, filename, **parts)
    error = assert_error_shape(response, 422, "validation_error")
    assert error["details"] and all(d["field"] and d["message"] for d in error["details"])
    assert all("\x00" not in d["field"] for d in error["details"])
    assert side_effects() == before


def test_a_clean_upload_still_passes(client, auth, side_effects) -> None:
    """The control: the same shapes without the bad values are accepted."""
    before = side_effects()
    response = upload(client, auth, GOOD + "\n" + line(extra=', "metadata": {"k": [[1.5]]}'),
                      metadata='{"k": "v"}')
    assert response.status_code == 202, response.json
    assert side_effects()[:2] == (before[0] + 2, before[1] + 1)
    client.post(f"/v1/batches/{response.json['id']}/cancel", headers=auth)


@pytest.fixture(scope="module")
def files(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    """An app on local-disk storage (embedded mode), holding one stored file."""
    from service.api import create_app

    root = tmp_path_factory.mktemp("files")
    (root.parent / "secret.txt").write_text("outside the storage root")
    app = create_app(settings.model_copy(update={"storage_url": f"file://{root}"}))
    storage = app.extensions["janus"].storage
    storage.put("jobs/job_x/0.png", png_bytes(), "image/png")
    return app.test_client(), storage


def signed(storage, key: str, expires: int | None = None) -> str:  # type: ignore[no-untyped-def]
    expires = expires or int(time.time()) + 600
    return f"expires={expires}&sig={storage.sign(key, expires)}"


FILE_URLS = [
    # (name, path built from the storage, status, code)
    ("non-ASCII sig", lambda s: "/files/jobs/job_x/0.png?expires=9999999999&sig=%C3%A9",
     403, "forbidden"),
    ("expires of 90 digits", lambda s: "/files/jobs/job_x/0.png?expires=" + "9" * 90 + "&sig=a",
     403, "forbidden"),
    ("expires of 5000 digits",
     lambda s: "/files/jobs/job_x/0.png?expires=" + "9" * 5000 + "&sig=a", 414, "uri_too_long"),
    ("signed ../", lambda s: "/files/jobs/../../secret.txt?" + signed(s, "jobs/../../secret.txt"),
     404, "not_found"),
    ("signed %2e%2e", lambda s: "/files/jobs/%2e%2e/%2e%2e/secret.txt?"
     + signed(s, "jobs/../../secret.txt"), 404, "not_found"),
    ("signed NUL", lambda s: "/files/jobs/a%00b.png?" + signed(s, "jobs/a\x00b.png"), 404,
     "not_found"),
    ("double slash", lambda s: "/files//etc/passwd", 404, "not_found"),
    ("encoded slash", lambda s: "/files/%2Fetc%2Fpasswd", 404, "not_found"),
    ("signed empty segment", lambda s: "/files/jobs//0.png?" + signed(s, "jobs//0.png"), 404,
     "not_found"),
    ("expired", lambda s: "/files/jobs/job_x/0.png?" + signed(s, "jobs/job_x/0.png", 1000), 403,
     "forbidden"),
]


@pytest.mark.parametrize(("name", "path", "status", "code"), FILE_URLS,
                         ids=[f[0] for f in FILE_URLS])
def test_bad_file_url(files, name, path, status, code) -> None:
    client, storage = files
    response = client.get(path(storage))
    assert "Location" not in response.headers  # never a redirect to another path
    assert_error_shape(response, status, code)


def test_a_signed_file_url_serves_the_file(files) -> None:
    client, storage = files
    response = client.get("/files/jobs/job_x/0.png?" + signed(storage, "jobs/job_x/0.png"))
    assert response.status_code == 200 and response.data == png_bytes()
