"""What the service's processes cost while a step runs: peak resident memory and CPU time, from /proc.

A role (api, worker, postgres, redis) is a root process and all its descendants, so `flagmeter api
--processes N` is measured as the sum over its N processes, and PostgreSQL's backends count toward it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """The root pid and every descendant alive now (or in `children`, one scan of /proc)."""
    children = _children_by_parent() if children is None else children
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pid_of_command(*parts: str) -> int:
    """The pid of the one process whose command line contains every one of `parts`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(part in cmdline for part in parts):
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one process running {parts}, found {found}")
    return found[0]


def _memory_bytes(pid: int) -> tuple[int, int]:
    """Resident set size and proportional set size (shared pages divided among their sharers)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


@dataclass(frozen=True)
class MemoryCgroup:
    """A process's memory cgroup (a container's: all its processes share it), v1 or v2."""

    path: Path
    usage_file: str  # v2 memory.current, v1 memory.usage_in_bytes: what the limit is held to
    inactive_key: str  # the page cache it could drop first, in memory.stat

    @classmethod
    def of(cls, pid: int) -> MemoryCgroup:
        lines = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
        if "memory" in lines:  # cgroup v1 (Docker's cgroupfs driver)
            return cls(
                CGROUP_ROOT / "memory" / lines["memory"].lstrip("/"),
                "memory.usage_in_bytes",
                "total_inactive_file",
            )
        return cls(CGROUP_ROOT / lines[""].lstrip("/"), "memory.current", "inactive_file")

    def read(self) -> tuple[int, int]:
        """Charged bytes, and the working set `docker stats` shows (charged less inactive page cache)."""
        try:
            charged = int((self.path / self.usage_file).read_text())
            stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            return 0, 0
        return charged, charged - int(stat.get(self.inactive_key, 0))


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _title(pid: int) -> str:
    """The process's command line (PostgreSQL's backends set theirs to what they are), shortened."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    return cmdline.strip()[:80]


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idle and iowait since boot (/proc/stat's first line)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    # guest time is already inside user time; count user..steal only.
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


@dataclass
class RoleUsage:
    peak_rss_bytes: int = 0  # the sum of the processes' RSS counts pages they share once per process
    peak_pss_bytes: int = 0
    peak_cgroup_bytes: int = 0  # the role's own cgroup (a container's), when it has one: charged
    peak_working_set_bytes: int = 0  # ... less its inactive page cache, as `docker stats` shows it
    cpu_seconds: float = 0.0


@dataclass
class ResourceSampler:
    """Samples every role's processes every `interval_s` in a thread: summed memory, and CPU time.

    CPU is the growth of each process's CPU time from the first to the last time it was seen, so a
    process that starts during the window counts from zero and one that ends keeps what it used up to
    the last sample before its end.
    """

    roles: dict[str, int]
    cgroups: dict[str, MemoryCgroup] = field(default_factory=dict)  # role: its own cgroup, if it has one
    interval_s: float = 0.5  # a sample costs ~20 ms of CPU (/proc scan, smaps_rollup per process)
    usage: dict[str, RoleUsage] = field(default_factory=dict)
    peak_service_rss_bytes: int = 0  # api + worker together, at the same instant
    peak_service_pss_bytes: int = 0
    peak_service_cgroup_bytes: int = 0
    peak_service_working_set_bytes: int = 0
    machine_busy_s: float = 0.0  # every core, every process: shows what else ran meanwhile
    _cpu_first: dict[str, dict[int, float]] = field(default_factory=dict)
    _cpu_last: dict[str, dict[int, float]] = field(default_factory=dict)
    _titles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss: dict[str, int] = {}
        pss: dict[str, int] = {}
        children = _children_by_parent()  # once per sample: scanning /proc is the sampler's main cost
        for role, root in self.roles.items():
            alive = [pid for pid in process_tree(root, children) if Path(f"/proc/{pid}").exists()]
            sizes = [_memory_bytes(pid) for pid in alive]
            rss[role] = sum(size[0] for size in sizes)
            usage = self.usage[role]
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, rss[role])
            pss[role] = sum(size[1] for size in sizes)
            usage.peak_pss_bytes = max(usage.peak_pss_bytes, pss[role])
            for pid in alive:
                cpu = _cpu_seconds(pid)
                if pid not in self._cpu_first[role]:
                    # the API's processes share its command line: name the supervisor
                    self._titles[pid] = ("(root) " if pid == root else "") + _title(pid)
                self._cpu_first[role].setdefault(pid, cpu)
                self._cpu_last[role][pid] = max(cpu, self._cpu_last[role].get(pid, 0.0))
        service = rss.get("api", 0) + rss.get("worker", 0)
        self.peak_service_rss_bytes = max(self.peak_service_rss_bytes, service)
        service_pss = pss.get("api", 0) + pss.get("worker", 0)
        self.peak_service_pss_bytes = max(self.peak_service_pss_bytes, service_pss)
        charged = {role: cgroup.read() for role, cgroup in self.cgroups.items()}
        for role, (size, working_set) in charged.items():
            usage = self.usage[role]
            usage.peak_cgroup_bytes = max(usage.peak_cgroup_bytes, size)
            usage.peak_working_set_bytes = max(usage.peak_working_set_bytes, working_set)
        api, worker = charged.get("api", (0, 0)), charged.get("worker", (0, 0))
        self.peak_service_cgroup_bytes = max(self.peak_service_cgroup_bytes, api[0] + worker[0])
        self.peak_service_working_set_bytes = max(self.peak_service_working_set_bytes, api[1] + worker[1])

    def processes(self) -> list[dict[str, object]]:
        """CPU seconds of every process seen in the window, by role, busiest first."""
        found = [
            {"role": role, "pid": pid, "title": self._titles.get(pid, "?"), "cpu_s": round(last - first, 3)}
            for role in self.roles
            for pid, last in self._cpu_last[role].items()
            if (first := self._cpu_first[role][pid]) < last
        ]
        return sorted(found, key=lambda p: -float(p["cpu_s"]))  # type: ignore[arg-type]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> ResourceSampler:
        self.usage = {role: RoleUsage() for role in self.roles}
        self._cpu_first = {role: {} for role in self.roles}
        self._cpu_last = {role: {} for role in self.roles}
        self.machine_busy_s = -machine_busy_seconds()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        self.machine_busy_s += machine_busy_seconds()
        for role in self.roles:
            first, last = self._cpu_first[role], self._cpu_last[role]
            self.usage[role].cpu_seconds = sum(last[pid] - first[pid] for pid in last)
