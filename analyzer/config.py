"""Settings: one frozen model, read from ANALYZER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from analyzer.catalogue import parse_duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYZER_", frozen=True, extra="ignore")

    # Kafka. No bootstrap: `serve` starts the bundled local broker (demo / development).
    kafka_bootstrap: str | None = None
    kafka_topics: Annotated[tuple[str, ...], NoDecode] = ("istio-logs",)
    kafka_group: str = "mesh-analyzer"
    kafka_client_id: str = "mesh-analyzer"
    kafka_max_records: int = Field(default=20000, ge=1, description="records per getmany batch (at most)")
    kafka_fetch_timeout: float = Field(default=0.5, gt=0, description="seconds getmany waits for data")
    kafka_request_timeout: float = Field(default=15.0, gt=0)
    kafka_session_timeout: float | None = Field(
        default=None, gt=0, description="seconds before a dead consumer's partitions move on (aiokafka: 10)"
    )
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    max_record_bytes: int = Field(default=1 << 20, ge=1024, description="larger records are rejected, counted")

    # Store.
    # A secret: a PostgreSQL DSN may carry a password (shown redacted, never in a repr or a log line).
    store_url: SecretStr = SecretStr("sqlite:///./analyzer.db")
    store_timeout: float = Field(default=10.0, gt=0, description="seconds any store call may take")
    # Reads (the API's pages, the metrics' counts) run on this many connections at once: one slow read does not
    # hold up the rest. PostgreSQL makes each when calls first overlap that far.
    store_readers: int = Field(default=4, ge=1, le=64, description="read connections per process")
    # Retention: settled incidents (quiet past resolve_after) older than this in stream time, with their aliases,
    # and silences expired longer ago than this, are deleted in small batches. 30d, 12h, seconds; 0 keeps all.
    retention: float = Field(default=30 * 86400.0, ge=0, description="e.g. 30d; 0 disables retention")
    retention_interval: float = Field(default=600.0, gt=0, description="seconds between retention passes")
    retention_batch: int = Field(default=500, ge=1, le=10_000, description="rows deleted per transaction")

    # Catalogue and incidents.
    patterns_dir: Path | None = None
    cluster: str = "default"
    allowed_lateness: float = Field(default=30.0, ge=0, description="seconds of out-of-order event time")
    max_keys_per_rule: int = Field(default=10_000, ge=1)
    startup_window: float = Field(default=60.0, gt=0, description="app-started-before-proxy window, seconds")
    # Errors of mesh components that no rule knows become `unclassified` incidents (info, never alerted).
    unclassified: bool = True
    unclassified_max_templates: int = Field(default=500, ge=1, description="live templates; beyond: overflow")

    # HTTP API.
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    api_token: SecretStr | None = None  # enables the write endpoints
    # Optional: when set, reads under /v1 need it too (or the write token); for an API exposed beyond the
    # cluster. /healthz, /readyz and /metrics stay open for probes and Prometheus.
    api_read_token: SecretStr | None = None
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    max_body_bytes: int = 64 * 1024
    # /v1/incidents/stream: open streams beyond this get 503; a stream polls the store at most once per
    # stream_min_interval seconds whatever its `interval` asks.
    max_streams: int = Field(default=100, ge=0, description="concurrent SSE streams; 0 refuses them all")
    stream_min_interval: float = Field(default=1.0, gt=0, le=60, description="seconds between a stream's polls")

    # Processes. role: `all` consumes, writes and serves the API in one process (the default); `ingest`
    # consumes and writes the store, serving only /healthz, /readyz and /metrics; `api` serves the HTTP API
    # from the store without consuming. workers > 0: a supervisor runs that many `ingest` processes in one
    # consumer group and one `api` process (README: "Scaling: workers and roles").
    role: Literal["all", "ingest", "api"] = "all"
    workers: int = Field(default=0, ge=0, le=64, description="ingest processes under a supervisor; 0: one process")
    # Set by the supervisor for its children: names the process in every log line (`process` field).
    process_name: str | None = None

    # `serve` without a bootstrap starts the bundled local broker; feed it the demo stream (make run).
    demo: bool = True

    # Logging.
    log_level: str = "info"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")

    @field_validator("kafka_topics", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("retention", "retention_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text in ("0", "off", "none"):
                return 0.0
            if text.replace(".", "", 1).isdigit():
                return float(text)
            return parse_duration(text)  # 30d, 12h, 90m, 30s
        return value

    @field_validator("kafka_topics")
    @classmethod
    def _some_topic(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one topic is required")
        return value
