"""`make lint`, Python half: ruff (lint and format) over all Python, mypy --strict over the package.

The Ansible half is tests/ansible/test_ansible_lint.py; `make lint` runs both, `make test` runs it first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    done = subprocess.run(
        [str(BIN / "ruff"), "check", "src", "tests", "bench", "loadtest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:]


def test_mypy_strict_is_clean() -> None:
    done = subprocess.run([str(BIN / "mypy"), "src"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]


def test_ruff_format_is_clean() -> None:
    done = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", "src", "tests", "bench", "loadtest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:]
