"""Standard Webhooks signatures, checked with the independent `standardwebhooks` package,
and `janus-service keys rotate-secret`."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook, WebhookVerificationError

from service.core.settings import Settings
from service.core.tables import ApiKey
from service.keys.store import new_webhook_secret
from service.webhooks.signing import sign, signing_secrets, webhook_headers
from tests.helpers import CLI, settings_env


def test_known_vector() -> None:
    # The test vector published with the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    got = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_verify_with_the_reference_library() -> None:
    secret = new_webhook_secret()
    body = json.dumps({"type": "job.succeeded", "data": {"id": "job_1", "é": "ü"}},
                      ensure_ascii=False).encode()
    headers = webhook_headers([secret], "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers)["data"]["id"] == "job_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_2"})


def test_two_secrets_both_verify() -> None:
    new, old = new_webhook_secret(), new_webhook_secret()
    body = b'{"type":"job.started"}'
    headers = webhook_headers([new, old], "msg_1", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)
    Webhook(old).verify(body, headers)


def test_previous_secret_signs_only_within_grace() -> None:
    now = datetime.now(UTC)
    key = ApiKey(webhook_secret="whsec_new", previous_webhook_secret="whsec_old",
                 previous_secret_expires_at=now + timedelta(seconds=5))
    assert signing_secrets(key, now) == ["whsec_new", "whsec_old"]
    assert signing_secrets(key, now + timedelta(seconds=6)) == ["whsec_new"]
    key.previous_webhook_secret = None
    assert signing_secrets(key, now) == ["whsec_new"]


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "keys", *args],
        env=settings_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rotate_secret_cli(settings: Settings) -> None:
    name = f"rot-{time.time_ns()}"
    created = json.loads(_cli(settings, "create", "--name", name, "--json").stdout)
    engine = create_engine(settings.database_url)
    with Session(engine) as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.name == name))

    out = _cli(settings, "rotate-secret", "--key-id", key_id, "--json",
               JANUS_WEBHOOK_SECRET_GRACE_SECONDS="120")
    assert out.returncode == 0, out.stderr
    rotated = json.loads(out.stdout)  # stdout is exactly one JSON object
    assert set(rotated) == {"webhook_secret"}
    assert rotated["webhook_secret"].startswith("whsec_")
    assert rotated["webhook_secret"] != created["webhook_secret"]
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        assert row.webhook_secret == rotated["webhook_secret"]
        assert row.previous_webhook_secret == created["webhook_secret"]
        left = (row.previous_secret_expires_at - datetime.now(UTC)).total_seconds()
        assert 100 < left <= 120
        assert signing_secrets(row, datetime.now(UTC)) == [
            rotated["webhook_secret"], created["webhook_secret"]]

    by_name = _cli(settings, "rotate-secret", "--name", name)
    assert by_name.returncode == 0 and "whsec_" in by_name.stdout
    missing = _cli(settings, "rotate-secret", "--key-id", "key_nope")
    assert missing.returncode != 0 and "no active key" in missing.stderr
    assert _cli(settings, "rotate-secret").returncode != 0  # one of --key-id / --name
    engine.dispose()
