"""Property-based fuzzing of the whole API from its own OpenAPI document: no input may produce a 5xx.

Runs the real schemathesis CLI against the running API, once as the admin and once with a tenant key.
`GET /ready` is left out: it takes no input, and its 503 is its documented answer whenever PostgreSQL
or Redis does not answer within 3 s (a disk stall on a busy CI host did that once); the readiness
contract is tested in test_api_contract.py and test_outages.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stacklib import ADMIN_TOKEN, Stack


@pytest.mark.slow
@pytest.mark.parametrize("who", ["admin", "tenant"])
def test_no_generated_request_gets_a_server_error(stack: Stack, who: str) -> None:
    _, key = stack.create_tenant()
    token = ADMIN_TOKEN if who == "admin" else key
    # An API of its own (its own stream, hence its own Redis keys): the fuzzer's many wrong sign-ins
    # from 127.0.0.1 must not shut other tests out of the dashboard, which counts them per address.
    api, url = stack.start_api(processes=1, FLAGMETER_STREAM=f"flagmeter:schemathesis:{who}")
    schemathesis = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--exclude-path",
            "/ready",
            "--header",
            f"Authorization: Bearer {token}",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )
    api.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
