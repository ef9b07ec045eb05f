"""The one typed settings object. Nothing else in the package reads `os.environ`.

Values come from (highest first) CLI flags passed as keyword arguments, `AGENTTASKS_*`
environment variables, then the defaults here, which are chosen so `agenttasks serve` just works
on a fresh machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The default retry schedule; kept here rather than imported so settings stay light to load.
DEFAULT_SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200, 43200, 43200, 43200, 43200)


# Settings that `agenttasks gateway` or the client commands read, and `serve` does not (its
# --help lists all the others).
NOT_READ_BY_SERVE = frozenset({"upstream", "grpc_front_host", "grpc_front_port", "server", "api_key"})


class Settings(BaseSettings):
    """Server and client configuration. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="AGENTTASKS_", extra="ignore", validate_default=True)

    # --- storage ---
    db: str = Field(
        "agenttasks.db",
        description="The store: a SQLite file (created on first start) or a postgresql:// URL.",
    )

    # --- listening ---
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    http_host: str = Field("127.0.0.1", description="Address the REST gateway (Envoy) binds.")
    http_port: int = Field(8080, ge=0, le=65535, description="REST gateway port.")
    gateway: bool = Field(True, description="Start the Envoy REST gateway beside gRPC.")
    public_base_url: str = Field(
        "", description="Base of poll_url/cancel_url in Submit answers; default http://HTTP_HOST:HTTP_PORT."
    )
    shutdown_grace_seconds: float = Field(5.0, gt=0, description="How long SIGTERM waits for calls to finish.")
    drain_notice_seconds: float = Field(
        2.0,
        ge=0,
        description="After SIGTERM, how long new calls are refused with SHUTTING_DOWN before the server stops "
        "listening, so clients and load balancers move on cleanly. Ends early once no call came for 50 ms and "
        "with --no-gateway, a health checker (if one ever asked) has been answered NOT_SERVING.",
    )

    # --- `agenttasks gateway`: Envoy alone in front of several replicas ---
    upstream: str = Field("", description="The gRPC replicas `agenttasks gateway` serves, as HOST:PORT[,HOST:PORT...].")
    grpc_front_host: str = Field("127.0.0.1", description="Address `agenttasks gateway` binds for native gRPC.")
    grpc_front_port: int = Field(
        50050, ge=0, le=65535, description="Native gRPC port of `agenttasks gateway` (0 picks a free one)."
    )

    # --- observability (docs/operations.md) ---
    tracing: bool = Field(
        False,
        description="Send traces even when no OTEL_* variable asks for them (OTLP/HTTP, configured by the OTEL_* "
        "variables); needs the otel extra.",
    )

    # --- workers ---
    lease_seconds: float = Field(
        30.0, gt=0, description="A worker silent this long loses its tasks (they are requeued)."
    )
    sweep_seconds: float = Field(0.5, gt=0, description="How often expired leases and task deadlines are checked.")

    # --- webhooks ---
    webhook_allow: str = Field(
        "",
        description="Networks webhooks may reach although private (comma-separated CIDRs, e.g. 127.0.0.0/8).",
    )
    webhook_timeout_seconds: float = Field(15.0, gt=0, description="Time allowed for one delivery attempt.")
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [float(s) for s in DEFAULT_SCHEDULE],
        description="Seconds to wait after each failed attempt (JSON list); about three days by default.",
    )
    webhook_concurrency: int = Field(32, gt=0, description="Delivery attempts under way at once.")
    webhook_per_tenant: int = Field(4, gt=0, description="Delivery attempts of one tenant under way at once.")

    # --- auth ---
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret for JWTs; default: a secret generated and kept in the database."
    )
    jwt_public_key: str | None = Field(
        None, description="PEM public key (or a path to one) to verify RS256/ES256 JWTs instead of HS256."
    )
    jwt_issuer: str | None = Field(None, description="Required `iss` of JWTs, when set.")
    jwt_audience: str | None = Field(None, description="Required `aud` of JWTs, when set.")
    jwt_tenant_claim: str = Field("sub", description="JWT claim that names the tenant.")
    jwt_role_claim: str = Field("role", description="JWT claim that names the role (default client).")
    api_key_cache_seconds: float = Field(
        5.0, ge=0, description="How long a verified API key is trusted before it is looked up again."
    )
    jwt_leeway_seconds: int = Field(30, ge=0, description="Clock skew allowed on exp/nbf/iat.")

    # --- request limits ---
    max_message_bytes: int = Field(256 * 1024, gt=0, description="Largest task or client message (UTF-8).")
    max_metadata_bytes: int = Field(16 * 1024, gt=0, description="Largest metadata object as JSON.")
    max_metadata_depth: int = Field(8, gt=0, description="Deepest nesting of metadata.")
    max_timeout_seconds: int = Field(7 * 86400, gt=0, description="Largest timeout_override.")
    idempotency_ttl_seconds: int = Field(86400, ge=86400, description="How long client keys are remembered.")
    rate_limit_per_second: float = Field(
        1000.0, ge=0, description="Calls one credential may make per second on average, per server (0: no limit)."
    )
    rate_limit_burst: int = Field(2000, ge=1, description="Calls one credential may make at once, above that rate.")
    call_deadline_seconds: float = Field(
        30.0, ge=0, description="Longest a unary call may take on the server (0: no limit); then DEADLINE_EXCEEDED."
    )
    max_running_calls_per_tenant: int = Field(
        1,
        ge=0,
        description="While more than one tenant is calling, unary calls one tenant's clients (and, apart, its "
        "workers) may have running at once on one server; more wait their turn (0: no limit).",
    )
    max_waiting_calls_per_tenant: int = Field(
        1000, ge=0, description="Calls that may wait for a running slot, per tenant; more get TOO_MANY_CALLS."
    )
    max_time_share_per_tenant: float = Field(
        0.25,
        gt=0,
        le=1,
        description="While more than one tenant is calling, the share of one server's time a tenant with calls "
        "waiting may keep its running slots busy: after each call, its next waits out the rest (1: no pause).",
    )
    max_watches_per_credential: int = Field(
        1000, ge=0, description="Open WatchTask streams one credential may hold on one server (0: no cap)."
    )
    max_queued_per_tenant: int = Field(
        100_000, ge=0, description="Queued tasks one tenant may have over all its agents (0: no cap)."
    )

    # --- metrics (docs/operations.md) ---
    metrics_host: str = Field(
        "127.0.0.1", description="Address the Prometheus endpoints (/metrics, the gateway's /stats/prometheus) bind."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: off).")
    metrics_agent_series: int = Field(
        100,
        ge=0,
        description="Agents with per-agent metric series of their own (the busiest); the others are summed "
        "under agent_id _other, so the series stay bounded however many agents there are.",
    )
    gateway_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port where the REST gateway (Envoy) serves its own /stats/prometheus (0: off)."
    )

    # --- logs (docs/operations.md) ---
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text for a person, or json: one JSON object per line for a collector."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe line logged.")
    access_log: bool | None = Field(
        None, description="One log line per call, the server's and Envoy's (default: on with json, off with text)."
    )

    # --- client commands ---
    server: str = Field("127.0.0.1:50051", description="gRPC address the client commands call.")
    api_key: SecretStr | None = Field(None, description="API key (or JWT) the client commands send.")

    @field_validator("jwt_public_key")
    @classmethod
    def _load_key_file(cls, value: str | None) -> str | None:
        """Accept either the PEM text or a path to it, so the key can live in a mounted file."""
        if value and "-----BEGIN" not in value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ValueError(f"jwt_public_key: no PEM text and no file at {value}")
            return path.read_text()
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _check_cidrs(cls, value: str) -> str:
        """Fail at start, naming the bad entry, rather than at the first delivery."""
        from agenttasks.webhooks.ssrf import parse_allow  # the one parser of this setting

        parse_allow(value)
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[float]) -> list[float]:
        if not value or any(v < 0 for v in value):
            raise ValueError("webhook_retry_schedule: a non-empty list of seconds, none negative")
        return value

    @property
    def base_url(self) -> str:
        """Where clients reach the REST API, for links in answers."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}"
