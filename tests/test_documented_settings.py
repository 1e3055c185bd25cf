"""The README's configuration table and limits say what the code does: a default written there gives the
same settings as leaving the variable unset, and the large-batch size it names is the API's."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from flagmeter.api.ingest import LARGE_BODY
from flagmeter.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
REQUIRED = {
    "DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/db",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "FLAGMETER_ADMIN_TOKEN": "x" * 24,
}
# | `NAME` | `default` ... | meaning |   (a default that is not one literal, "CPU count" or
# `http://localhost:$PORT`, is skipped)
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| `([^`]*)`", re.MULTILINE)


def test_every_literal_default_in_the_readme_is_the_codes_default() -> None:
    documented = {name: value for name, value in ROW.findall(README) if "$" not in value}
    assert len(documented) >= 15, "the configuration table was not found"
    unset = Settings.from_env(REQUIRED)
    wrong = {
        name: value
        for name, value in documented.items()
        if name not in REQUIRED and Settings.from_env({**REQUIRED, name: value}) != unset
    }
    assert not wrong, f"README defaults that differ from the code's: {wrong}"


def test_the_readme_names_the_apis_large_batch_size() -> None:
    sizes = set(re.findall(r"over (\d+) KiB", README))
    assert sizes == {str(LARGE_BODY // 1024)}


def test_the_readme_documents_every_variable_the_settings_read() -> None:
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", README, re.MULTILINE))
    read = {item.metadata["env"] for item in fields(Settings) if "env" in item.metadata}
    assert read - documented == set(), "settings read from the environment but not in the README's table"
