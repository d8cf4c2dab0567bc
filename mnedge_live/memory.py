"""The C heap: returning freed memory between runs, and keeping it between large batches.

A live service decodes and encodes megabytes of short-lived message buffers
per run.  glibc's allocator keeps much of that freed memory in its arenas,
so the resident size of a long-running service creeps up run after run
(measured: about 0.5 MB per run) although nothing is leaked: ``malloc_trim``
hands it back (:func:`trim_heap`).  Dask's workers do the same for the same
reason.

Synthesizing training data is the opposite case: every batch allocates and
frees the same tens of megabytes of tensors, and glibc hands large blocks
back to the operating system when they are freed, so the next batch
page-faults them in again.  :func:`reuse_batch_memory` keeps them
(the training command does this; the live service does not).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _glibc_function(name: str):
    """A glibc function by name, or None where the C library has none (musl, macOS, Windows)."""
    return getattr(_libc(), name, None)


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: the largest mmap threshold glibc accepts on 64-bit systems
_MMAP_THRESHOLD_MAX = 32 << 20


def reuse_batch_memory(keep_bytes: int = 1 << 30) -> bool:
    """Let freed batch-sized blocks stay in the heap, so the next batch reuses them without page faults.

    glibc serves blocks above its mmap threshold (128 KiB, growing with use
    up to 32 MiB) by fresh mappings and trims freed memory above twice that
    threshold from the heap's top; a batch of 4,096 synthetic spectra holds
    blocks of 3-35 MB, which are then page-faulted in anew for every batch.
    Setting the mmap threshold to its maximum and keeping up to
    ``keep_bytes`` of freed memory measured 18.6-19.6k -> 21.0-21.2k
    spectra/s for the training stream on the 2-core CPU
    (benchmarks/RESULTS.md).  The cost is resident memory that stays at its
    peak (``trim_heap`` still hands it back on request).  It changes the
    whole process's allocator, so entry points call it, never an import.

    Returns
    -------
    bool
        True where glibc's ``mallopt`` accepted the settings.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    try:
        return all(mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, int(keep_bytes)),
            (_M_TOP_PAD, 64 << 20)))
    except Exception:  # never let housekeeping take a run down
        log.debug("mallopt failed", exc_info=True)
        return False


def trim_heap() -> bool:
    """Give freed heap memory back to the operating system.

    Returns
    -------
    bool
        True where glibc's ``malloc_trim`` ran (it then returns memory when it can).
    """
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    try:
        trim(0)
    except Exception:  # never let housekeeping take the service down
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
