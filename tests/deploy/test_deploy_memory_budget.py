"""The memory budget on the 4 GB host, computed from the compose files so it cannot drift from them."""

from __future__ import annotations

import re

import pytest
from deploy_support import OBSERVABILITY_FILE, PRODUCTION_FILE, REPO, MemoryLimit, memory_limits

pytestmark = pytest.mark.docker

GB = 1000**3  # decimal GB: the stricter reading of every budget below
PRODUCTION_BUDGET = 1.1 * GB
OBSERVABILITY_BUDGET = 1.4 * GB
TOTAL_BUDGET = 2.5 * GB  # leaves >= 1.5 GB of 4 GB for Coolify's own containers and the OS
DOC = REPO / "docs/memory-budget.md"


@pytest.fixture(scope="module")
def production(docker_engine: None) -> list[MemoryLimit]:
    return memory_limits(PRODUCTION_FILE)


@pytest.fixture(scope="module")
def observability(docker_engine: None) -> list[MemoryLimit]:
    return memory_limits(OBSERVABILITY_FILE)


def test_production_stack_fits_its_budget(production: list[MemoryLimit]) -> None:
    assert sum(limit.total for limit in production) <= PRODUCTION_BUDGET


def test_observability_stack_fits_its_budget(observability: list[MemoryLimit]) -> None:
    assert sum(limit.total for limit in observability) <= OBSERVABILITY_BUDGET


def test_both_stacks_together_leave_room_for_coolify_and_the_os(
    production: list[MemoryLimit], observability: list[MemoryLimit]
) -> None:
    assert sum(limit.total for limit in production + observability) <= TOTAL_BUDGET


def test_budget_table_in_docs_matches_the_compose_files(
    production: list[MemoryLimit], observability: list[MemoryLimit]
) -> None:
    # Rows: | stack | service | mem_limit MiB | replicas | total MiB |
    rows = re.findall(
        r"^\|\s*(\S+)\s*\|\s*`?([\w-]+)`?\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|$", DOC.read_text(), re.M
    )
    documented = {(stack, service): (int(mib), int(n), int(total)) for stack, service, mib, n, total in rows}
    mib = 1024 * 1024
    actual = {
        (limit.compose_file, limit.service): (limit.mem_limit // mib, limit.replicas, limit.total // mib)
        for limit in production + observability
    }
    table = "\n".join(
        f"| {stack} | `{service}` | {mib_each} | {n} | {total} |"
        for (stack, service), (mib_each, n, total) in sorted(actual.items())
    )
    assert documented == actual, f"update the table in {DOC.relative_to(REPO)} to:\n{table}"
