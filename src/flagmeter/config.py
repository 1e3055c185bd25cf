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
    return (env.get("FLAGMETER_LOG_LEVEL") or "INFO").upper()


def setting(default: Any, env: str, minimum: int = 0) -> Any:
    """A field of Settings read from `env` (unset or empty: `default`); an integer must be >= `minimum`."""
    return field(default=default, metadata={"env": env, "minimum": minimum})


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    redis_url: str
    admin_token: str
    port: int = setting(8080, "PORT", 1)
    listen_host: str = setting("0.0.0.0", "FLAGMETER_LISTEN_HOST")
    api_processes: int = setting(os.cpu_count() or 1, "FLAGMETER_API_PROCESSES", 1)
    worker_metrics_port: int = setting(WORKER_METRICS_PORT, "FLAGMETER_WORKER_METRICS_PORT")
    rate_limit: int = setting(10000, "FLAGMETER_RATE_LIMIT")
    large_batches_in_flight: int = setting(8, "FLAGMETER_LARGE_BATCHES_IN_FLIGHT", 1)
    login_attempts: int = setting(10, "FLAGMETER_LOGIN_ATTEMPTS", 1)
    trusted_proxies: tuple[Network, ...] = setting((), "FLAGMETER_TRUSTED_PROXIES")
    log_level: str = "INFO"  # from_env: FLAGMETER_LOG_LEVEL (log_level_from)
    public_url: str = "http://localhost:8080"  # from_env: FLAGMETER_PUBLIC_URL, by default of PORT
    stream: str = setting("flagmeter:events", "FLAGMETER_STREAM")
    consumer_group: str = setting("flagmeter-workers", "FLAGMETER_CONSUMER_GROUP")
    batch_size: int = setting(4000, "FLAGMETER_BATCH_SIZE", 1)
    claim_idle_ms: int = setting(30000, "FLAGMETER_CLAIM_IDLE_MS", 100)
    max_deliveries: int = setting(5, "FLAGMETER_MAX_DELIVERIES", 1)
    db_pool_size: int = setting(10, "FLAGMETER_DB_POOL_SIZE", 1)
    slack_webhook_url: str = setting("", "FLAGMETER_SLACK_WEBHOOK_URL")
    allow_http_webhooks: bool = setting(False, "FLAGMETER_ALLOW_HTTP_WEBHOOKS")
    allow_private_webhooks: bool = setting(False, "FLAGMETER_ALLOW_PRIVATE_WEBHOOKS")
    alert_timeout_ms: int = setting(10_000, "FLAGMETER_ALERT_TIMEOUT_MS", 100)
    alert_retry_base_ms: int = setting(30_000, "FLAGMETER_ALERT_RETRY_BASE_MS", 1)
    alert_max_attempts: int = setting(8, "FLAGMETER_ALERT_MAX_ATTEMPTS", 1)
    access_log: bool = setting(False, "FLAGMETER_ACCESS_LOG")
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
        values = {
            item.name: _parse(env, item.metadata["env"], item.default, item.metadata["minimum"])
            for item in fields(cls)
            if "env" in item.metadata
        }
        public_url = env.get("FLAGMETER_PUBLIC_URL") or f"http://localhost:{values['port']}"
        return cls(
            database_url=env["DATABASE_URL"],
            redis_url=env["REDIS_URL"],
            admin_token=admin_token,
            log_level=log_level_from(env),
            public_url=public_url.rstrip("/"),
            clock=clock_from_env(env),
            **values,
        )


def _parse(env: dict[str, str], name: str, default: Any, minimum: int) -> Any:
    """`name`'s value, of its default's kind; unset or empty, the default."""
    if not env.get(name):
        return default
    if isinstance(default, bool):
        return _flag(env, name)
    if isinstance(default, int):
        return _int(env, name, default, minimum)
    if isinstance(default, tuple):
        return _networks(env, name)
    return env[name]
