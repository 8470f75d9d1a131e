"""The service's settings: one pydantic-settings class, built on demand, never at import.

Every field can come from the environment with the prefix ``THERMOLEDGER_`` (nested fields
with ``__``), e.g. ``THERMOLEDGER_DATABASE_URL=postgresql+psycopg://tl@db/thermoledger``.
`service.app.create_app` takes a `Settings` as an argument; tests build one directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MIN_BOOTSTRAP_TOKEN_CHARS", "Settings"]

#: Shortest operator token accepted: 32 characters of a random string is ≥ 128 bits.
MIN_BOOTSTRAP_TOKEN_CHARS = 32


def _default_database_url() -> str:
    # Imported here so that reading the settings module costs nothing and touches no disk;
    # the default file (and its directory) is only made when a Settings lacks a URL.
    from thermoledger.db.engine import default_sqlite_url

    return default_sqlite_url()


class Settings(BaseSettings):
    """Configuration of one service process.

    Attributes:
        database_url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``);
            default: the embedded SQLite file under the user's data directory.
        max_body_bytes: Largest request body accepted, bytes (413 beyond it).
        max_chunks_per_batch: Most chunks in one ingest batch (422 beyond it).
        max_samples_per_chunk: Most raw samples in one chunk (422 beyond it).
        compress_samples: zlib-compress raw sample blobs. Off by default: on 10 Hz power
            samples it saves about a third of the blob bytes (byte-shuffled float32/float64
            columns compress poorly) for ~0.3 µs of CPU per sample, the largest single cost of
            ingest; turn it on where disk matters more than ingest throughput.
        max_in_flight: Most requests inside one process at once; more wait in a queue (below
            the route thread pool and the database pool: 5 connections + 10 overflow).
        bootstrap_admin_token: Optional operator token (≥ 32 characters). A request bearing it
            may create projects and manage the tokens of any project; it cannot read or ingest.
        last_used_interval_s: A token's ``last_used_at`` is written at most this often, s (one
            write per token and interval instead of one per request).
        log_format: ``text`` for people, or ``json``: one object per line (`meters.logs`),
            request logs with their run id (`service.metrics`).
        metrics_token: When set, ``GET /metrics`` needs ``Authorization: Bearer <it>``;
            unset, the endpoint is open like ``/healthz``.
        max_unauthenticated_body_bytes: Largest body read from a request that carries no valid
            credentials (the login form), bytes; anything else is refused from its headers.
        body_timeout_s: The most time a request body may take to arrive, s (408 beyond it).
        header_timeout_s: The most time a client may take to send its request headers, s
            (the server's own read timeout; ``thermoledger-server serve``).
        earliest_time: Earliest time the service stores (run starts, filters, token expiry).
        latest_time: Latest time the service stores; later values are refused with 422.
        max_tag_filters: Most ``tag=`` filters in one listing query (422 beyond it).
        max_host_info_bytes: Largest ``host_info`` of one run, as compact JSON, bytes, after
            every merge (422 beyond it).
        session_max_age_s: How long a browser session lives, s (a token may expire sooner).
    """

    model_config = SettingsConfigDict(
        env_prefix="THERMOLEDGER_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = Field(default_factory=_default_database_url)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_chunks_per_batch: int = Field(default=2_000, gt=0)
    max_samples_per_chunk: int = Field(default=100_000, gt=0)
    compress_samples: bool = False
    max_in_flight: int = Field(default=15, gt=0)
    bootstrap_admin_token: SecretStr | None = None
    last_used_interval_s: float = Field(default=60.0, ge=0)
    log_format: Literal["text", "json"] = "text"
    metrics_token: SecretStr | None = None
    max_unauthenticated_body_bytes: int = Field(default=16 * 1024, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    earliest_time: AwareDatetime = datetime(2000, 1, 1, tzinfo=UTC)
    latest_time: AwareDatetime = datetime(2100, 1, 1, tzinfo=UTC)
    max_tag_filters: int = Field(default=16, gt=0)
    max_host_info_bytes: int = Field(default=64 * 1024, gt=0)
    session_max_age_s: float = Field(default=12 * 3600, gt=0)

    @field_validator("bootstrap_admin_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_BOOTSTRAP_TOKEN_CHARS:
            raise ValueError(
                f"bootstrap_admin_token must be at least {MIN_BOOTSTRAP_TOKEN_CHARS} characters"
            )
        return value

    @model_validator(mode="after")
    def _time_range(self) -> Settings:
        if self.earliest_time >= self.latest_time:
            raise ValueError("earliest_time must come before latest_time")
        return self
