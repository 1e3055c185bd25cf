"""A fixed CPU-bound loop, timed before and after the bench: this VM's speed moves by +-20 % within an
hour, so results of two runs compare only beside their calibration times.

    python bench/calibrate.py
"""

from __future__ import annotations

import statistics
import timeit

STATEMENT = "sum(range(1000))"
LOOPS = 20_000
REPEATS = 5


def calibrate(loops: int = LOOPS, repeats: int = REPEATS) -> dict[str, float | str]:
    """Microseconds per `sum(range(1000))`: the fastest and the median of `repeats` runs of `loops`."""
    times = [t / loops * 1e6 for t in timeit.repeat(STATEMENT, repeat=repeats, number=loops)]
    return {
        "statement": STATEMENT,
        "loops": loops * repeats,
        "min_us": round(min(times), 2),
        "median_us": round(statistics.median(times), 2),
    }


def describe(result: dict[str, float | str]) -> str:
    return (
        f"calibration: {result['statement']} {result['min_us']} us (min) / {result['median_us']} us"
        f" (median) over {result['loops']} loops"
    )


if __name__ == "__main__":
    print(describe(calibrate()))
