"""Returning freed heap memory between runs (the live service trims after every derived stop)."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from mnedge_live.memory import trim_heap


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc.so" not in str(ctypes.util.find_library("c")),
                    reason="malloc_trim is glibc's")
def test_trim_heap_returns_freed_holes_to_the_os():
    chunks = [bytearray(65536) for _ in range(4000)]  # ~256 MB of heap chunks (below the mmap threshold)
    del chunks[::2]  # free every other one: ~128 MB of holes that free() alone keeps
    before = _rss_mb()
    assert trim_heap() is True
    after = _rss_mb()
    assert after < before - 64, (before, after)
    assert len(chunks) == 2000


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc.so" not in str(ctypes.util.find_library("c")),
                    reason="mallopt is glibc's")
@pytest.mark.parametrize("tuned", [False, True])
def test_reuse_batch_memory_keeps_freed_batches_mapped(tuned):
    """Batch after batch of 100 MB: page faults every time by default, none once the heap keeps freed blocks."""
    import subprocess

    code = f"""
import resource
import numpy as np
from mnedge_live.memory import reuse_batch_memory
assert {tuned} is False or reuse_batch_memory() is True
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batch = [np.ones(5 << 20, np.float32) for _ in range(5)]   # five 20 MB tensors
    del batch
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[1:]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    later = int(out.stdout.split()[-1])
    if tuned:
        assert later < 50, later
    else:
        assert later > 500, later   # what the setting removes
