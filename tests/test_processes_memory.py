"""flagmeter.processes: glibc's mmap threshold fixed, so big blocks (a transaction's statement buffers)
go back to the system when freed instead of into the heap, whatever bigger block was freed before."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

# After an 8 MiB block is freed, glibc's dynamic threshold serves a 512 KiB block from the heap, unless
# the threshold is fixed: then from an mmap of its own (mallinfo2's hblks counts those).
PROBE = """
import ctypes, sys
from flagmeter.processes import keep_big_blocks_out_of_the_heap

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "fixed":
    assert keep_big_blocks_out_of_the_heap()
big = bytearray(8 * 1024 * 1024)
del big
before = libc.mallinfo2().hblks
block = bytearray(512 * 1024)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="not glibc 2.33 or later")
@pytest.mark.parametrize(("mode", "mapped"), [("fixed", "1"), ("glibc's default", "0")])
def test_a_big_block_is_mapped_on_its_own_only_with_the_threshold_fixed(mode: str, mapped: str) -> None:
    # glibc's own defaults: no threshold set through the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=60, env=env
    )
    assert done.stdout.strip() == mapped, done.stderr
