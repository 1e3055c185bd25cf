"""The service's one source of "now": event stamps, billing periods, alert decisions, partitions.

Production runs on the system clock. Tests pin "today" with `FLAGMETER_CLOCK_OFFSET` (seconds
added to the system clock): every process of a stack gets the same offset, so they agree on the
time as exactly as their system clocks do, and time runs on at its real rate from the pinned day.
Durations inside one process (timeouts, backoff) use `time.monotonic()` and are not business time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Clock:
    offset_s: float = 0.0

    def now_ms(self) -> int:
        return int((time.time() + self.offset_s) * 1000)

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.offset_s, UTC)

    @classmethod
    def pinned(cls, moment: datetime) -> Clock:
        """A clock that reads `moment` now and runs on from there."""
        return cls(moment.timestamp() - time.time())


SYSTEM = Clock()


def rfc3339(moment: datetime) -> str:
    """The one way FlagMeter writes a time: UTC, `Z`, microseconds only when there are some."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
