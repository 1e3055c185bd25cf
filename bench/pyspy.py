"""py-spy around a benchmark step, and the functions that dominate its samples.

py-spy's raw format is one collapsed stack per line, `frame;frame;...;leaf count`, each frame
`function (file:line)`. Self time is the leaf's share of samples; inclusive time counts a function once
per stack it appears in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE_NUMBER = re.compile(r":\d+\)$")


def py_spy_binary() -> str:
    found = shutil.which("py-spy", path=sysconfig.get_path("scripts")) or shutil.which("py-spy")
    if not found:
        raise SystemExit(f"py-spy not found: {sys.executable} -m pip install py-spy")
    return found


@dataclass
class Recording:
    role: str
    output: Path
    process: subprocess.Popen[bytes]

    def finish(self, timeout_s: float) -> None:
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait()


def record(role: str, pid: int, seconds: int, output: Path) -> Recording:
    """Sample `pid` and its subprocesses for `seconds` without pausing them (--nonblocking)."""
    command = [
        py_spy_binary(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
        "--rate", "200", "--duration", str(seconds), "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    log = output.with_suffix(".log").open("wb")
    return Recording(role, output, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))


def _frame_name(frame: str) -> str:
    return _LINE_NUMBER.sub(")", frame.strip())


@dataclass(frozen=True)
class Hotspots:
    samples: int
    self_pct: list[tuple[str, float]]
    inclusive_pct: list[tuple[str, float]]


def hotspots(collapsed: Path, top: int = 15) -> Hotspots:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        # py-spy's --subprocesses puts a "process ..." pseudo-frame first; it is not code.
        frames = [frame for frame in frames if not frame.startswith("process ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    return Hotspots(total, share(own), share(inclusive))
