"""Pure logic: settings parsing, ids, image checks, storage URL signing."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from service.core.ids import new_id
from service.core.images import ImageRejected, check_image, decode_base64_image
from service.core.settings import Settings
from service.core.storage import LocalStorage
from tests.helpers import png_bytes, png_header_bomb


def test_settings_defaults_are_embedded(tmp_path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.database_url.startswith("sqlite:///") and s.embedded
    assert s.broker_url.startswith("sqla+sqlite:///")
    assert s.storage_url == f"file://{tmp_path.resolve() / 'storage'}"


def test_settings_from_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("JANUS_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("JANUS_MODELS", '{"janus-pro-7b": "deepseek-community/Janus-Pro-7B"}')
    monkeypatch.setenv("JANUS_WEBHOOK_ALLOWLIST", "a.example, 10.0.0.5")
    s = Settings(data_dir=tmp_path)
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert s.models == {"janus-pro-7b": "deepseek-community/Janus-Pro-7B"}
    assert s.webhook_allowlist == ["a.example", "10.0.0.5"]


@pytest.mark.parametrize("env", [{"JANUS_MODELS": "not json"}, {"JANUS_MODELS": "[1]"},
                                 {"JANUS_MODELS": '{"Bad Id": "x"}'},
                                 {"JANUS_STORAGE_URL": "ftp://x"},
                                 {"JANUS_LEASE_SECONDS": "-1"}])
def test_settings_refuse_bad_values(monkeypatch, tmp_path, env) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path)


@pytest.mark.parametrize("value", ["static", "continuous"])
def test_a_removed_setting_set_in_the_environment_stops_the_process(monkeypatch, tmp_path,
                                                                     value) -> None:
    monkeypatch.setenv("JANUS_ENGINE", value)  # run-to-completion workers are gone
    with pytest.raises(ValidationError, match="JANUS_ENGINE is no longer read.*unset it"):
        Settings(data_dir=tmp_path)


def test_ids_sort_by_time() -> None:
    first = new_id("job")
    time.sleep(0.002)
    second = new_id("job")
    assert first.startswith("job_") and len(first) == 30 and first < second


def test_image_checks() -> None:
    ok = check_image(png_bytes((10, 7)), max_bytes=10_000, max_pixels=100)
    assert (ok.width, ok.height, ok.content_type) == (10, 7, "image/png")
    with pytest.raises(ImageRejected) as too_many:
        check_image(png_bytes((20, 20)), max_bytes=10_000, max_pixels=100)
    assert too_many.value.code == "image_too_large"
    with pytest.raises(ImageRejected):
        check_image(png_header_bomb(), max_bytes=10_000, max_pixels=4096 * 4096)
    with pytest.raises(ImageRejected):
        decode_base64_image("data:image/png,rawbytes", 1000)
    assert decode_base64_image("data:image/png;base64,aGk=", 1000) == b"hi"


def test_local_storage_urls_expire_and_resist_tampering(tmp_path) -> None:
    store = LocalStorage(tmp_path, "http://x", b"k")
    store.put("jobs/a/0.png", b"png", "image/png")
    assert store.get("jobs/a/0.png") == b"png" and store.list("jobs/") == ["jobs/a/0.png"]
    sig = store.sign("jobs/a/0.png", int(time.time()) + 60)
    assert store.verify("jobs/a/0.png", int(time.time()) + 60, sig)
    assert not store.verify("jobs/a/1.png", int(time.time()) + 60, sig)
    old = int(time.time()) - 1
    assert not store.verify("jobs/a/0.png", old, store.sign("jobs/a/0.png", old))
    with pytest.raises(Exception):  # noqa: B017
        store.put("../escape", b"x", "text/plain")
