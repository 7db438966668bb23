"""Service settings: one pydantic-settings class read from `ALLOCATOR_*` environment variables."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class Settings(BaseSettings):
    """Everything configurable about one replica (`ALLOCATOR_MODEL_DIR`, `ALLOCATOR_REDIS_URL`, …)."""

    model_config = SettingsConfigDict(env_prefix="ALLOCATOR_", extra="ignore", protected_namespaces=())

    model_dir: Path = Field(default=Path("models/default"), description="artifact directory (model.onnx, …)")
    redis_url: str | None = Field(default=None, description="redis://host:port/db; unset → in-process store")
    redis_prefix: str = Field(default="allocator", min_length=1, description="prefix of every Redis key/channel")
    admin_token: SecretStr | None = Field(default=None, description="bearer token for POST /budget; unset → disabled")
    max_batch: int = Field(default=10_000, gt=0, description="individuals per /allocate request (413 above)")
    # A decoded JSON body takes up to ~25× its size in Python objects (`[{},{},…]`), so the body limit, the
    # bytes held at once and the batches decoded at once together bound a replica's memory (each worker process:
    # 512 MiB of the pod's 1 GiB k8s limit).
    max_body_bytes: int = Field(default=6 * 2**20, gt=0, description="/allocate body limit in bytes (413 above)")
    max_small_body_bytes: int = Field(default=64 * 2**10, gt=0, description="body limit of every other route")
    max_held_body_bytes: int = Field(
        default=32 * 2**20, gt=0, description="request body bytes held at once by all requests (503 above)"
    )
    body_timeout_seconds: float = Field(default=10.0, gt=0.0, le=300.0, description="time to receive a body (408)")
    max_concurrent_batches: int = Field(
        default=1, gt=0, le=64, description="large /allocate bodies decoded and scored at once (the rest wait)"
    )
    max_concurrent_requests: int = Field(default=256, gt=0, description="connections+requests at once (503 above)")
    drain_seconds: float = Field(
        default=0.0, ge=0.0, le=60.0, description="after SIGTERM: keep serving (not ready, Connection: close) this long"
    )
    shutdown_timeout_seconds: int = Field(
        default=15, gt=0, le=300, description="then wait at most this long (s) for in-flight requests"
    )
    workers: int | None = Field(
        default=None, ge=1, le=64, description="worker processes; unset → the CPUs allowed (1 without Redis)"
    )
    threads: int | None = Field(
        default=None, ge=1, le=64, description="onnxruntime intra-op threads per worker; unset → CPUs ÷ workers"
    )
    log_level: str = Field(default="INFO")
    refresh_seconds: float = Field(default=5.0, gt=0.0, le=3600.0, description="λ* resync period from Redis")
    redis_timeout_seconds: float = Field(default=1.0, gt=0.0, le=60.0, description="Redis socket timeout")
    replica_id: str | None = Field(
        default=None,
        description="prefix of this process's name in campaign ledgers (then -pid-random); unset → host name",
    )
    campaign_tick_seconds: float = Field(
        default=0.2, gt=0.0, le=60.0, description="campaign spend report / refill period"
    )
    campaign_refresh_seconds: float = Field(default=1.0, gt=0.0, le=3600.0, description="campaign spec re-read period")
    slice_lease_seconds: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="a slice not renewed this long is reclaimed"
    )
    slice_seconds: float = Field(
        default=1.0, gt=0.0, le=3600.0, description="a slice holds about this much recent spend"
    )
    slice_min_share: float = Field(
        default=0.001, gt=0.0, le=1.0, description="smallest slice asked for, share of the budget"
    )
    slice_max_share: float = Field(
        default=0.5, gt=0.0, le=1.0, description="largest slice, share of what is left under the cap"
    )
    pace_seconds: float = Field(default=2.0, gt=0.0, le=3600.0, description="pacing controller period")
    serve_unknown_campaigns: bool = Field(
        default=False, description="serve campaigns with no budget the manifest's default λ (else 404)"
    )
    decision_log_capacity: int = Field(
        default=200_000, gt=0, description="decisions buffered in memory for the log; beyond it they are dropped"
    )
    decision_stream_maxlen: int = Field(
        default=20_000,
        gt=0,
        description="approximate length cap of each campaign's decision stream, in entries: one per /allocate "
        "request (all its decisions), so 20,000 entries hold 20M decisions at 1,000 rows per request",
    )
    decision_ship_rows: int = Field(default=5_000, gt=0, description="decisions per pipelined write to Redis")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {value!r}")
        return level

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {value!r}")
        return value

    @field_validator("admin_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError("admin_token must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _lease_covers_ticks(self) -> Settings:
        if self.slice_lease_seconds < 3 * self.campaign_tick_seconds:
            raise ValueError(
                f"slice_lease_seconds ({self.slice_lease_seconds}) must be at least 3 × campaign_tick_seconds "
                f"({self.campaign_tick_seconds}), or slices expire between renewals"
            )
        return self

    @property
    def log_level_number(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level]
