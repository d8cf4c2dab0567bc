"""Lazy HDF5 datasets that name their file instead of holding it open, and the per-process cache of open files."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

#: Most HDF5 files the lazy arrays of HyperSpy images keep open in one process (:class:`HDF5Dataset`).
MAX_OPEN_HDF5 = 8
#: Those open files, least recently used first, by (path, version).
_HDF5_FILES: OrderedDict[tuple[str, tuple[int, int]], Any] = OrderedDict()
_HDF5_LOCK = threading.RLock()


class HDF5Dataset:
    """One HDF5 dataset as the source of a lazy Dask array: named by file and path, not held open.

    A Dask graph built on an h5py ``Dataset`` carries an open file into every
    copy of the graph: dask.distributed deserializes it by opening the file
    again, even for an in-process cluster, and the worker's task log keeps
    those handles until the cluster closes (``mnedge predict`` over many
    HyperSpy images held one open file per image until the end, past any
    :func:`release`).  This object pickles as its file name, dataset path and
    the file's version (modification time and size, so a rewritten file is
    opened afresh); each read takes the file from a per-process cache of at
    most :data:`MAX_OPEN_HDF5` open files (the least recently used is closed
    first), which :func:`release` empties for a file.  It offers what
    ``dask.array.from_array`` needs: ``shape``, ``dtype``, ``ndim`` and slicing.
    """

    def __init__(self, filename: str, name: str, shape: tuple[int, ...], dtype: Any,
                 version: tuple[int, int] = (0, 0)):
        self.filename = str(filename)
        self.name = str(name)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.version = (int(version[0]), int(version[1]))

    def __getitem__(self, key: Any) -> np.ndarray:
        with _HDF5_LOCK:   # h5py reads one at a time anyway; the lock also keeps the cache from closing a file in use
            return _hdf5_file(self.filename, self.version)[self.name][key]

    def __dask_tokenize__(self) -> tuple:
        return ("mnedge_live.readers.HDF5Dataset", self.filename, self.name, self.shape, self.dtype.str, self.version)

    def __repr__(self) -> str:
        return f"HDF5Dataset({self.filename!r}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"


def _hdf5_file(filename: str, version: tuple[int, int]) -> Any:
    """The open file from the cache (call with ``_HDF5_LOCK`` held), opened read-only on first use."""
    import h5py

    key = (filename, version)
    f = _HDF5_FILES.get(key)
    if f is not None and f.id.valid:
        _HDF5_FILES.move_to_end(key)
        return f
    hdf5_plugins()
    f = h5py.File(filename, "r")
    _HDF5_FILES[key] = f
    while len(_HDF5_FILES) > MAX_OPEN_HDF5:
        _, old = _HDF5_FILES.popitem(last=False)
        old.close()
    return f


def hdf5_plugins() -> None:
    """Register the compression filters of hdf5plugin (blosc, ...) when it is installed, as RosettaSciIO does."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass


def release(path: str | Path) -> None:
    """Close the HDF5 handles kept open for a lazily read HyperSpy file.

    The lazy arrays of this module's HyperSpy reader (:class:`HDF5Dataset`)
    keep files open in a per-process cache: this closes the file's entries.
    Files RosettaSciIO opened lazily itself (its reader is the fallback where
    this module's cannot be used) are registered there and closed only
    before writing to them again: a run over many files would keep one open
    file per file read, up to the process's limit ("Too many open files").
    It has no public way to close them, so this calls its registry's own
    closing function; a RosettaSciIO without that registry leaves nothing to
    close there.  Other formats hold no handle: a no-op.
    """
    filename = str(Path(path).resolve())
    with _HDF5_LOCK:
        for key in [k for k in _HDF5_FILES if k[0] == filename]:
            _HDF5_FILES.pop(key).close()
    try:
        from rsciio.hspy import _api
    except ImportError:  # pragma: no cover - rsciio is a dependency
        return
    close = getattr(_api, "_close_tracked_handles", None)
    if close is not None:
        close(str(path))

