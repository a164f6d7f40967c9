"""Property-based fuzzing: no input earns a 5xx.

1. schemathesis generates requests for every operation of the live app's own
   /openapi.json and checks `not_a_server_error` on each answer.
2. hypothesis builds hostile JSON as raw text (NUL, lone surrogates, NaN and the
   infinities, numbers past any float or 4,300 digits, deep nesting) and puts it
   into every JSON-taking place: a job body, its input and metadata, the multipart
   `job` part, JSONL lines, CSV cells, and a batch's `defaults` and `metadata` parts.

Bounded for CI: a few hundred schemathesis cases and ~50 examples per hostile-JSON
test, with no per-example deadline (Postgres timing varies on shared machines).
The app here is its own: one model (IDLE, never served), no rate limit and no
`Prefer: wait` hold, under an API key of its own, so nothing it creates reaches
other tests' workers or counts.
"""

from __future__ import annotations

import io
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.helpers import IDLE, make_key

FAST = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_app(settings):  # type: ignore[no-untyped-def]
    from service.api import create_app

    app = create_app(settings.model_copy(update={
        "models": {IDLE: settings.models[IDLE]},
        "rate_limit_per_minute": 0,
        "max_wait_seconds": 0,
        "openai_wait_seconds": 0,
    }))
    yield app
    app.extensions["janus"].db.dispose()


@pytest.fixture(scope="module")
def fuzz_auth(settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {make_key(settings, 'fuzz')}"}


@pytest.fixture(scope="module")
def api_schema(fuzz_app):  # type: ignore[no-untyped-def]
    """The schema the live app serves at /openapi.json, calling the app in-process."""
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)


def _operations() -> list[tuple[str, str]]:
    from service.api.schemas.openapi import openapi_document

    return [(method.upper(), path) for path, ops in openapi_document()["paths"].items()
            for method in ops]


# Every operation (/v1 and /openai/v1) x 25 cases: several hundred requests, in-process.
@pytest.mark.parametrize(("method", "path"), _operations(), ids=lambda v: str(v))
def test_openapi_operations_never_answer_5xx(api_schema, fuzz_auth, method, path) -> None:
    operation = api_schema[path][method]

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(headers={**(case.headers or {}), **fuzz_auth})
        case.validate_response(response, checks=[not_a_server_error])

    run()


# -- hostile JSON, as text --------------------------------------------------------------

_SCALARS = st.sampled_from([
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 5000, str(2**64), "1e-400",
    '"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '""',
    "null", "true", "0", "-0.0", '"\\\\"', '"fox"',
]) | st.text(max_size=20).map(json.dumps) | st.integers().map(str) | st.floats(
    allow_nan=False, allow_infinity=False).map(repr)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    keys = st.sampled_from(['"k"', '"\\u0000"', '"k\\ud800"', '"prompt"']) | st.text(
        max_size=8).map(json.dumps)
    return (st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
            | st.lists(st.tuples(keys, children), max_size=4).map(
                lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"))


JSON_TEXT = st.recursive(_SCALARS, _containers, max_leaves=12) | st.sampled_from(
    [_deep(33), _deep(1000), _deep(100_000), '{"a":' * 5000 + "1" + "}" * 5000])


def job_text(where: str, value: str) -> str:
    """A generate job for IDLE with `value` (raw JSON text) placed at `where`."""
    prompt = value if where == "prompt" else '"fox"'
    meta = f', "metadata": {{"x": {value}}}' if where == "metadata" else ""
    extra = f', "guidance": {value}' if where == "input" else ""
    return ('{"model": "' + IDLE + '", "task": "generate", "input": {"prompt": ' + prompt
            + extra + "}" + meta + "}")


PLACES = st.sampled_from(["prompt", "metadata", "input", "body"])


def _body(where: str, value: str) -> str:
    return value if where == "body" else job_text(where, value)


def assert_not_5xx(response, client, auth) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    body = response.get_json()
    if response.status_code >= 400:
        assert set(body) == {"error"} and body["error"]["code"]
    elif body and body.get("object") in ("job", "batch"):  # accepted: leave nothing queued
        kind = "jobs" if body["object"] == "job" else "batches"
        client.post(f"/v1/{kind}/{body['id']}/cancel", headers=auth)


@FAST
@given(where=PLACES, value=JSON_TEXT)
def test_hostile_json_job(fuzz_app, fuzz_auth, where, value) -> None:
    client = fuzz_app.test_client()
    response = client.post("/v1/jobs", data=_body(where, value).encode("utf-8", "surrogatepass"),
                           content_type="application/json", headers=fuzz_auth)
    assert_not_5xx(response, client, fuzz_auth)


@FAST
@given(where=PLACES, value=JSON_TEXT)
def test_hostile_json_multipart_job_part(fuzz_app, fuzz_auth, where, value) -> None:
    client = fuzz_app.test_client()
    text = _body(where, value).replace('"generate"', '"understand"').replace('"prompt"',
                                                                             '"question"')
    form = {"job": text, "image": (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "a.png")}
    response = client.post("/v1/jobs", data=form, content_type="multipart/form-data",
                           headers=fuzz_auth)
    assert_not_5xx(response, client, fuzz_auth)


def upload(client, auth, content: bytes, name: str, **parts):  # type: ignore[no-untyped-def]
    form = {"file": (io.BytesIO(content), name), **parts}
    return client.post("/v1/batches", data=form, content_type="multipart/form-data",
                       headers=auth)


@FAST
@given(where=PLACES, value=JSON_TEXT, part=st.sampled_from(["file", "defaults", "metadata"]))
def test_hostile_json_batch_jsonl(fuzz_app, fuzz_auth, where, value, part) -> None:
    client = fuzz_app.test_client()
    good = job_text("none", "")
    if part == "file":
        content, parts = (good + "\n" + _body(where, value)).encode("utf-8", "surrogatepass"), {}
    elif part == "defaults":
        content, parts = good.encode(), {"defaults": '{"metadata": {"x": ' + value + "}}"}
    else:
        content, parts = good.encode(), {"metadata": value}
    response = upload(client, fuzz_auth, content, "jobs.jsonl", **parts)
    assert_not_5xx(response, client, fuzz_auth)


CSV_CELL = st.text(max_size=30) | st.sampled_from(
    ["\x00", "a\x00b", "nan", "inf", "-inf", "1e999", "9" * 5000, "\ud800", '"', '""x', "\r"])


@FAST
@given(column=st.sampled_from(["prompt", "custom_id", "guidance", "seed", "num_images",
                               "metadata.tag", "model", "webhook", "steps"]),
       cell=CSV_CELL)
def test_hostile_csv_cells(fuzz_app, fuzz_auth, column, cell) -> None:
    client = fuzz_app.test_client()
    head = "prompt,model" if column in ("prompt", "model") else f"prompt,model,{column}"
    row = {"prompt": [cell, IDLE], "model": ["fox", cell]}.get(column, ["fox", IDLE, cell])
    quoted = ",".join('"' + c.replace('"', '""') + '"' for c in row)
    content = (head + "\n" + quoted + "\n").encode("utf-8", "surrogatepass")
    response = upload(client, fuzz_auth, content, "jobs.csv")
    assert_not_5xx(response, client, fuzz_auth)
