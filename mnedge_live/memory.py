"""Returning freed heap memory to the operating system between runs.

A live service decodes and encodes megabytes of short-lived message buffers
per run.  glibc's allocator keeps much of that freed memory in its arenas,
so the resident size of a long-running service creeps up run after run
(measured: about 0.5 MB per run) although nothing is leaked: ``malloc_trim``
hands it back.  Dask's workers do the same for the same reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Give freed heap memory back to the operating system.

    Returns
    -------
    bool
        True where glibc's ``malloc_trim`` ran (it then returns memory when it can).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        trim(0)
    except Exception:  # never let housekeeping take the service down
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
