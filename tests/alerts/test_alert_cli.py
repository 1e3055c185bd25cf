"""`flagmeter tenant thresholds`: show and set a tenant's alert thresholds from the shell."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def flagmeter(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagmeter.cli", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_thresholds_default_to_80_and_100_and_can_be_replaced(stack: Any) -> None:
    tenant, _ = stack.create_tenant()
    assert flagmeter(stack, "tenant", "thresholds", "--id", tenant).stdout == f"{tenant}\tthresholds=80,100\n"

    done = flagmeter(stack, "tenant", "thresholds", "--id", tenant, "--thresholds", "100,50,90")
    assert done.returncode == 0 and done.stdout == f"{tenant}\tthresholds=50,90,100\n"
    assert stack.request("GET", f"/v1/tenants/{tenant}")[1]["alert_thresholds"] == [50, 90, 100]
    assert flagmeter(stack, "tenant", "thresholds", "--id", tenant, "--thresholds", "").stdout.endswith(
        "=none\n"
    )


def test_bad_thresholds_and_unknown_tenants_are_refused(stack: Any) -> None:
    tenant, _ = stack.create_tenant()
    assert flagmeter(stack, "tenant", "thresholds", "--id", tenant, "--thresholds", "0,80").returncode == 2
    assert (
        flagmeter(stack, "tenant", "thresholds", "--id", "nobody-here", "--thresholds", "80").returncode == 1
    )
    assert flagmeter(stack, "tenant", "thresholds").returncode == 2
