"""Typed settings, read once from the environment (prefix JANUS_) and checked at start.

With nothing set, every backend falls back to an embedded default under
`data_dir` (SQLite, local-disk storage, a broker kept in SQLite) so the whole
service runs on a machine with no servers. Production points the three URLs
at Postgres, Redis and S3.
"""

from __future__ import annotations

import json
import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Settings that were removed, and why: set in an environment, they stop the process.
REMOVED = {
    "engine": "every job runs in the continuous engine (run-to-completion batches are gone)",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JANUS_", extra="ignore", frozen=False)

    data_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    # Prefix for every Redis key the broker writes: lets deployments (or test runs)
    # share one Redis without seeing each other's queues.
    broker_key_prefix: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    # Model id -> checkpoint path or hub id; the family comes from the checkpoint's config.json.
    models: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    public_url: str = "http://127.0.0.1:8000"
    secret_key: str = ""  # signs local-storage URLs; generated into data_dir when empty
    url_expiry_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)

    max_body_bytes: int = Field(24 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_wait_seconds: int = Field(60, ge=0, le=60)
    # /openai/v1 image generations and chat completions answer only once their job has
    # ended: the request is held at most this long, then answers 504 naming the job id
    # (the job keeps running). 0 answers 504 at once.
    openai_wait_seconds: int = Field(300, ge=0, le=3600)
    # Submissions (POST /v1/jobs, POST /v1/batches) per API key per minute; 0 = no limit.
    rate_limit_per_minute: int = Field(600, ge=0)
    # When the limiter's Redis is away: "open" lets submissions through, "closed"
    # answers 503 rate_limiter_unavailable.
    rate_limit_fail_mode: Literal["open", "closed"] = "open"

    # Finished jobs' stored inputs and outputs are deleted this long after the job
    # finished (the job object stays, marked `data_removed`); 0 keeps them forever.
    retention_seconds: int = Field(7 * 24 * 3600, ge=0)

    # Worker leases: a running job whose lease is not renewed for this long is
    # considered orphaned and handed back to the queue by the sweeper.
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    # The sweeper republishes a queued job this long after its last publish if the
    # model's broker queue is empty (its message was lost).
    republish_after_seconds: float = Field(30.0, gt=0)
    sweep_interval_seconds: float = Field(5.0, gt=0)
    worker_heartbeat_seconds: float = Field(10.0, gt=0)
    # Redis redelivers unacked messages after this; it must exceed the longest job
    # plus prefetch wait, or long jobs run twice (celery#5935).
    visibility_timeout_seconds: int = Field(6 * 3600, ge=60)
    publish_max_retries: int = Field(2, ge=0)

    # Bulk uploads (POST /v1/batches).
    batch_max_lines: int = Field(50_000, ge=1)
    batch_max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # Wake-up messages published per upload; each passes the baton while work remains.
    batch_wakeups: int = Field(64, ge=1)

    # Live job events (GET /v1/jobs/{id}/events, Prefer: wait): events kept per job
    # (the oldest go first), how long after the job ends they are kept, the least time
    # between two progress events of one job, and the heartbeat of an idle stream.
    events_max_len: int = Field(2000, ge=10, le=1_000_000)
    events_ttl_seconds: int = Field(3600, ge=1)
    events_progress_seconds: float = Field(0.25, ge=0)
    events_heartbeat_seconds: float = Field(15.0, gt=0, le=300)
    # A job that asked for `"preview": true` gets a small JPEG at most every this many
    # steps (Janus-Pro image tokens of 576; JanusFlow as often relative to its steps).
    preview_every_steps: int = Field(48, ge=1, le=10_000)

    webhook_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_allow_private: bool = False
    # Delivery (docs/WEBHOOKS.md). The schedule is the wait before each try,
    # comma-separated seconds (a string so it round-trips through the environment);
    # its length is the number of tries.
    webhook_retry_schedule: str = "0,5,300,1800,7200,18000,36000"
    webhook_max_age_seconds: float = Field(24 * 3600.0, gt=0)
    webhook_connect_timeout_seconds: float = Field(5.0, gt=0)
    webhook_timeout_seconds: float = Field(15.0, gt=0)
    webhook_secret_grace_seconds: float = Field(24 * 3600.0, ge=0)
    webhook_concurrency: int = Field(8, ge=1, le=256)
    webhook_poll_seconds: float = Field(1.0, gt=0)

    log_level: str = "INFO"
    # "json": one JSON object per log line (containers, log shippers); "text" for people.
    log_format: Literal["text", "json"] = "text"
    # Port of a worker's Prometheus endpoint (`worker --metrics-port` overrides); 0 = off.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # The SDXL VAE JanusFlow decodes with (a dir or hub id); a checkpoint's own vae/ wins.
    vae_path: str = Field("stabilityai/sdxl-vae", min_length=1)
    # One matrix product per row, so a job's bits do not depend on its batch (README,
    # "Reproducibility"). auto: on for JanusFlow CPU workers, off otherwise.
    batch_invariant: Literal["auto", "on", "off"] = "auto"
    # Removed: every job runs in the continuous engine. Set in an environment, it stops
    # the process (`_refuse_removed`) rather than being silently ignored.
    engine: str | None = None
    # The engine claims queued jobs into its free slots every this many decode steps.
    engine_admit_every: int = Field(4, ge=1, le=1000)
    # CUDA workers size their slots (at most --max-batch) to this share of the device's
    # free memory at start (docs/OPERATIONS.md, "Sizing").
    engine_memory_fraction: float = Field(0.85, gt=0, le=1)

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"JANUS_MODELS must be a JSON object: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError("JANUS_MODELS must be a JSON object of model id -> checkpoint")
        return value

    @field_validator("webhook_allowlist", mode="before")
    @classmethod
    def _parse_allowlist(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_retry_schedule(cls, value: str) -> str:
        _parse_schedule(value)
        return value

    @property
    def webhook_retry_delays(self) -> list[float]:
        return _parse_schedule(self.webhook_retry_schedule)

    @field_validator(*REMOVED)
    @classmethod
    def _refuse_removed(cls, value: Any, info: Any) -> Any:
        if value is not None:
            name = f"JANUS_{info.field_name.upper()}"
            raise ValueError(f"{name} is no longer read: {REMOVED[info.field_name]}; unset it")
        return value

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        data = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'janus.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{data / 'broker.db'}"
        if not self.storage_url:
            self.storage_url = f"file://{data / 'storage'}"
        if self.database_url.startswith("postgresql://") or self.database_url.startswith(
            "postgres://"
        ):
            # SQLAlchemy's bare postgresql:// means psycopg2; we ship psycopg 3.
            self.database_url = "postgresql+psycopg://" + self.database_url.split("://", 1)[1]
        if not self.storage_url.startswith(("file://", "s3://")):
            raise ValueError("JANUS_STORAGE_URL must be file:///dir or s3://bucket[/prefix]")
        for model_id in self.models:
            if not model_id or any(c not in _MODEL_ID_CHARS for c in model_id):
                raise ValueError(f"model id {model_id!r}: use lowercase letters, digits, . _ -")
        return self

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property
    def signing_key(self) -> bytes:
        if self.secret_key:
            return self.secret_key.encode()
        # Persisted so that the API's processes agree on it across restarts.
        path = self.data_dir / "secret_key"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()


_MODEL_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")


def _parse_schedule(value: str) -> list[float]:
    try:
        delays = [float(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"JANUS_WEBHOOK_RETRY_SCHEDULE: comma-separated seconds: {exc}") from exc
    if not delays or any(not (0 <= d < 10**7) for d in delays):
        raise ValueError("JANUS_WEBHOOK_RETRY_SCHEDULE: one or more non-negative seconds")
    return delays


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once; keyword overrides win (tests pass settings this way)."""
    return Settings(**overrides)
