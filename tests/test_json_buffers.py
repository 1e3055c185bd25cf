"""orjson's answers are right-sized: the bytes `dumps` returns hold about their length, not a buffer
reserved ahead. From orjson 3.12 a 550-id answer of 25 KB keeps ~128 KB, and a process with batches in
flight holds several of them (the 202 answers, the stream appends): ~5 MB more API memory under
batches (docs/performance.md). pyproject.toml keeps orjson below 3.12 for this; a version that brings
the reservation back fails here, so re-measure before lifting the bound."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest


@pytest.mark.parametrize("ids", [1, 550, 4000])
def test_dumps_holds_about_what_it_wrote(ids: int) -> None:
    answer = {"accepted": ids, "ids": [f"run-1-{i}" for i in range(ids)], "duplicates": [], "rejected": []}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        written = orjson.dumps(answer)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= 2 * len(written) + 2048, f"{len(written)} bytes written, {held} held"
