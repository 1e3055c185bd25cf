"""Settings from the environment: each variable read into its field, defaults when unset or empty, and
a clear ConfigError (the process does not start) for what is missing or malformed."""

from __future__ import annotations

import ipaddress
from dataclasses import fields
from typing import Any

import pytest

from flagmeter.config import ConfigError, Settings

REQUIRED = {
    "DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/db",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "FLAGMETER_ADMIN_TOKEN": "x" * 24,
}
TABLE = [item for item in fields(Settings) if "env" in item.metadata]


def a_value_for(default: Any, minimum: int) -> tuple[str, Any]:
    """A valid value other than the default, as written in the environment and as read."""
    if isinstance(default, bool):
        return "true", not default
    if isinstance(default, int):
        return str(max(minimum, default) + 7), max(minimum, default) + 7
    if isinstance(default, tuple):
        return "10.0.0.0/8, 192.168.1.7", (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.168.1.7"),
        )
    return "set-in-env", "set-in-env"


def test_unset_or_empty_variables_give_the_fields_defaults() -> None:
    unset = Settings.from_env(REQUIRED)
    for item in TABLE:
        assert getattr(unset, item.name) == item.default, item.name
    assert Settings.from_env({**REQUIRED, **{item.metadata["env"]: "" for item in TABLE}}) == unset


@pytest.mark.parametrize("item", TABLE, ids=[item.metadata["env"] for item in TABLE])
def test_each_variable_is_read_into_its_field(item: Any) -> None:
    raw, expected = a_value_for(item.default, item.metadata["minimum"])
    assert getattr(Settings.from_env({**REQUIRED, item.metadata["env"]: raw}), item.name) == expected


@pytest.mark.parametrize(
    "item", [i for i in TABLE if type(i.default) is int], ids=lambda i: i.metadata["env"]
)
def test_an_integer_setting_refuses_words_and_values_below_its_minimum(item: Any) -> None:
    name, minimum = item.metadata["env"], item.metadata["minimum"]
    with pytest.raises(ConfigError, match=f"{name} must be an integer"):
        Settings.from_env({**REQUIRED, name: "many"})
    with pytest.raises(ConfigError, match=f"{name} must be >= {minimum}"):
        Settings.from_env({**REQUIRED, name: str(minimum - 1)})


def test_a_flag_is_on_for_the_usual_words_only() -> None:
    for word, on in [("1", True), ("yes", True), ("ON", True), ("0", False), ("no", False)]:
        assert Settings.from_env({**REQUIRED, "FLAGMETER_ACCESS_LOG": word}).access_log is on


def test_the_public_url_follows_the_port_unless_set() -> None:
    assert Settings.from_env({**REQUIRED, "PORT": "9000"}).public_url == "http://localhost:9000"
    given = {**REQUIRED, "PORT": "9000", "FLAGMETER_PUBLIC_URL": "https://meter.example/"}
    assert Settings.from_env(given).public_url == "https://meter.example"


def test_trusted_proxies_refuse_what_is_not_an_address() -> None:
    with pytest.raises(ConfigError, match="FLAGMETER_TRUSTED_PROXIES must list"):
        Settings.from_env({**REQUIRED, "FLAGMETER_TRUSTED_PROXIES": "10.0.0.0/8, proxy.internal"})


def test_the_urls_and_an_admin_token_of_16_characters_are_required() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL, REDIS_URL"):
        Settings.from_env({"FLAGMETER_ADMIN_TOKEN": "x" * 24})
    with pytest.raises(ConfigError, match="FLAGMETER_ADMIN_TOKEN is required"):
        Settings.from_env({**REQUIRED, "FLAGMETER_ADMIN_TOKEN": ""})
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Settings.from_env({**REQUIRED, "FLAGMETER_ADMIN_TOKEN": "short"})
    assert (
        Settings.from_env({**REQUIRED, "FLAGMETER_ADMIN_TOKEN": ""}, dev=True).admin_token
        == "dev-admin-token"
    )


def test_the_log_level_is_upper_cased() -> None:
    assert Settings.from_env({**REQUIRED, "FLAGMETER_LOG_LEVEL": "debug"}).log_level == "DEBUG"
