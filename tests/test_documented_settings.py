"""The README's configuration table and limits say what the code does: a default written there gives the
same settings as leaving the variable unset, and the limits it names (the large-batch size, the dead
letters a starting worker looks through) are the code's."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from flagmeter.api.ingest import LARGE_BODY
from flagmeter.config import Settings
from flagmeter.stream import READABLE_SCAN

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


def test_the_readme_and_the_design_name_how_many_dead_letters_a_starting_worker_looks_through() -> None:
    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    counts = set(re.findall(r"the newest ([\d,]+) dead letters", README + design))
    assert counts == {f"{READABLE_SCAN:,}"}


def test_the_readme_documents_every_variable_the_settings_read() -> None:
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", README, re.MULTILINE))
    read = {item.metadata["env"] for item in fields(Settings) if "env" in item.metadata}
    assert read - documented == set(), "settings read from the environment but not in the README's table"
