"""Settings from the environment, validated once into one typed object."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .clock import SYSTEM, Clock

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


WORKER_METRICS_PORT = 9091  # the worker's /metrics, /health, /ready


class ConfigError(Exception):
    """A setting is missing or malformed; the process must not start."""


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _networks(env: dict[str, str], name: str) -> tuple[Network, ...]:
    parts = [part.strip() for part in env.get(name, "").split(",") if part.strip()]
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in parts)
    except ValueError as error:
        raise ConfigError(f"{name} must list addresses or networks (CIDR): {error}") from None


def clock_from_env(env: dict[str, str]) -> Clock:
    raw = env.get("FLAGMETER_CLOCK_OFFSET", "")
    if not raw:
        return SYSTEM
    try:
        return Clock(float(raw))
    except ValueError:
        raise ConfigError(f"FLAGMETER_CLOCK_OFFSET must be a number of seconds, got {raw!r}") from None


def _flag(env: dict[str, str], name: str) -> bool:
    return env.get(name, "").lower() in {"1", "true", "yes", "on"}


def database_url_from(env: dict[str, str]) -> str:
    """DATABASE_URL alone: all that the management commands (migrate, seed, tenant, prune) need."""
    if not env.get("DATABASE_URL"):
        raise ConfigError("missing required environment: DATABASE_URL")
    return env["DATABASE_URL"]


def log_level_from(env: dict[str, str]) -> str:
    return env.get("FLAGMETER_LOG_LEVEL", "INFO").upper()


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    redis_url: str
    admin_token: str
    port: int = 8080
    listen_host: str = "0.0.0.0"
    api_processes: int = 1
    worker_metrics_port: int = WORKER_METRICS_PORT
    rate_limit: int = 10000
    large_batches_in_flight: int = 8
    login_attempts: int = 10
    trusted_proxies: tuple[Network, ...] = ()
    log_level: str = "INFO"
    public_url: str = "http://localhost:8080"
    stream: str = "flagmeter:events"
    consumer_group: str = "flagmeter-workers"
    batch_size: int = 4000
    claim_idle_ms: int = 30000
    max_deliveries: int = 5
    db_pool_size: int = 10
    slack_webhook_url: str = ""
    allow_http_webhooks: bool = False
    allow_private_webhooks: bool = False
    alert_timeout_ms: int = 10_000
    alert_retry_base_ms: int = 30_000
    alert_max_attempts: int = 8
    access_log: bool = False
    clock: Clock = field(default=SYSTEM, compare=False)

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, dev: bool = False) -> Settings:
        env = dict(os.environ if env is None else env)
        missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not env.get(name)]
        if missing:
            raise ConfigError(f"missing required environment: {', '.join(missing)}")
        admin_token = env.get("FLAGMETER_ADMIN_TOKEN", "")
        if not admin_token:
            if not dev:
                raise ConfigError("FLAGMETER_ADMIN_TOKEN is required (or run with --dev)")
            admin_token = "dev-admin-token"
        elif len(admin_token) < 16 and not dev:
            raise ConfigError("FLAGMETER_ADMIN_TOKEN must be at least 16 characters")
        default: dict[str, Any] = {f.name: f.default for f in fields(cls)}  # the defaults, defined above
        port = _int(env, "PORT", default["port"], 1)
        return cls(
            database_url=env["DATABASE_URL"],
            redis_url=env["REDIS_URL"],
            admin_token=admin_token,
            port=port,
            listen_host=env.get("FLAGMETER_LISTEN_HOST") or default["listen_host"],
            api_processes=_int(env, "FLAGMETER_API_PROCESSES", os.cpu_count() or 1, 1),
            worker_metrics_port=_int(env, "FLAGMETER_WORKER_METRICS_PORT", default["worker_metrics_port"], 0),
            rate_limit=_int(env, "FLAGMETER_RATE_LIMIT", default["rate_limit"], 0),
            large_batches_in_flight=_int(
                env, "FLAGMETER_LARGE_BATCHES_IN_FLIGHT", default["large_batches_in_flight"], 1
            ),
            login_attempts=_int(env, "FLAGMETER_LOGIN_ATTEMPTS", default["login_attempts"], 1),
            trusted_proxies=_networks(env, "FLAGMETER_TRUSTED_PROXIES"),
            log_level=log_level_from(env),
            public_url=env.get("FLAGMETER_PUBLIC_URL", f"http://localhost:{port}").rstrip("/"),
            stream=env.get("FLAGMETER_STREAM", default["stream"]),
            consumer_group=env.get("FLAGMETER_CONSUMER_GROUP", default["consumer_group"]),
            batch_size=_int(env, "FLAGMETER_BATCH_SIZE", default["batch_size"], 1),
            claim_idle_ms=_int(env, "FLAGMETER_CLAIM_IDLE_MS", default["claim_idle_ms"], 100),
            max_deliveries=_int(env, "FLAGMETER_MAX_DELIVERIES", default["max_deliveries"], 1),
            db_pool_size=_int(env, "FLAGMETER_DB_POOL_SIZE", default["db_pool_size"], 1),
            slack_webhook_url=env.get("FLAGMETER_SLACK_WEBHOOK_URL", ""),
            allow_http_webhooks=_flag(env, "FLAGMETER_ALLOW_HTTP_WEBHOOKS"),
            allow_private_webhooks=_flag(env, "FLAGMETER_ALLOW_PRIVATE_WEBHOOKS"),
            alert_timeout_ms=_int(env, "FLAGMETER_ALERT_TIMEOUT_MS", default["alert_timeout_ms"], 100),
            alert_retry_base_ms=_int(env, "FLAGMETER_ALERT_RETRY_BASE_MS", default["alert_retry_base_ms"], 1),
            alert_max_attempts=_int(env, "FLAGMETER_ALERT_MAX_ATTEMPTS", default["alert_max_attempts"], 1),
            access_log=env.get("FLAGMETER_ACCESS_LOG", "") == "1",
            clock=clock_from_env(env),
        )
