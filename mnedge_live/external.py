"""Externally stored arrays: resource/datum and stream_resource/stream_datum pointing at HDF5 files.

Area-detector style: a resource names a file (``root`` + ``resource_path``, or a
``file://`` URI for stream resources) and a dataset; a datum names a frame
(``point_number`` or ``index``); a stream datum names a range of frames.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np

#: Dataset read when a resource does not name one (area detector's default).
DEFAULT_DATASET = "/entry/data/data"
#: Most remembered resources and datums (older ones are forgotten first).
MAX_ENTRIES = 200_000
#: Most bytes one stream datum may bring into memory (its frames are read at once).
MAX_READ_BYTES = 1 << 30


def _path_of_resource(res: dict) -> Path:
    return Path(res.get("root") or "/") / res["resource_path"]


def _path_of_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r}")
    return Path(parsed.path)


def _regular_file(path: Path) -> Path:
    """``path`` when it is a regular file (or a link to one); else ``ValueError``: opening a named pipe or a
    device a document names would block the service, or read without end."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file (a pipe, a device, a folder)"
        raise ValueError(f"{str(path)!r} {what}: not read")
    return path


class ExternalReader:
    """Remembers resources and datums and reads the frames they point at.

    The documents come from the network: before any frame is read, the dataset's
    shape is checked, so a datum pointing at a camera's image stack (or a stream
    datum at a whole run of them) is refused with the reason instead of being
    loaded into memory.

    Parameters
    ----------
    max_values : int
        Most values in one frame (a spectrum's channels).
    max_bytes : int
        Most bytes one read may bring into memory (:data:`MAX_READ_BYTES`).
    """

    def __init__(self, max_values: int = 65536, max_bytes: int = MAX_READ_BYTES) -> None:
        self.max_values = int(max_values)
        self.max_bytes = int(max_bytes)
        self.resources: dict[str, dict] = {}
        self.datums: dict[str, dict] = {}
        self.stream_resources: dict[str, dict] = {}

    @staticmethod
    def _bound(d: dict) -> None:
        while len(d) > MAX_ENTRIES:
            d.pop(next(iter(d)))

    def add_resource(self, doc: dict) -> None:
        """Remember a resource document."""
        self.resources[doc["uid"]] = doc
        self._bound(self.resources)

    def add_datum(self, doc: dict) -> None:
        """Remember a datum document."""
        self.datums[doc["datum_id"]] = doc
        self._bound(self.datums)

    def add_datum_page(self, doc: dict) -> None:
        """Remember every datum of a datum page."""
        kwargs = doc.get("datum_kwargs") or {}
        for i, did in enumerate(doc["datum_id"]):
            self.add_datum({"datum_id": did, "resource": doc["resource"],
                            "datum_kwargs": {k: v[i] for k, v in kwargs.items()}})

    def add_stream_resource(self, doc: dict) -> None:
        """Remember a stream_resource document."""
        self.stream_resources[doc["uid"]] = doc
        self._bound(self.stream_resources)

    def forget_run(self, run_uid: str) -> None:
        """Drop the resources and stream resources of the run ``run_uid`` (closed) and the datums of its
        resources: a closed run's frames are not read again, and 200,000 datums held 87 MB for good."""
        gone = {u for u, r in self.resources.items() if r.get("run_start") == run_uid}
        for u in gone:
            del self.resources[u]
        if gone:
            self.datums = {k: d for k, d in self.datums.items() if d.get("resource") not in gone}
        for u in [u for u, r in self.stream_resources.items() if r.get("run_start") == run_uid]:
            del self.stream_resources[u]

    def read_datum(self, datum_id: str) -> np.ndarray:
        """The frame a datum points at."""
        import h5py

        datum = self.datums.get(datum_id)
        if datum is None:
            raise KeyError(f"unknown datum {datum_id!r}")
        res = self.resources.get(datum["resource"])
        if res is None:
            raise KeyError(f"unknown resource {datum['resource']!r}")
        kw = datum.get("datum_kwargs") or {}
        index = int(kw.get("point_number", kw.get("index", 0)))
        dataset = (res.get("resource_kwargs") or {}).get("dataset", DEFAULT_DATASET)
        with h5py.File(_regular_file(_path_of_resource(res)), "r", swmr=True) as f:
            ds = f[dataset]
            self._check_size(ds, 1)
            return np.asarray(ds[index])

    def read_stream(self, doc: dict) -> np.ndarray:
        """The frames ``indices.start:indices.stop`` a stream datum points at."""
        import h5py

        sr = self.stream_resources[doc["stream_resource"]]
        params = sr.get("parameters") or {}
        dataset = params.get("dataset", DEFAULT_DATASET)
        i0, i1 = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        with h5py.File(_regular_file(_path_of_uri(sr["uri"])), "r", swmr=True) as f:
            ds = f[dataset]
            self._check_size(ds, max(i1 - i0, 0))
            block = np.asarray(ds[i0:i1])
        if block.shape[0] != i1 - i0:
            raise ValueError(f"file holds {block.shape[0]} of frames {i0}..{i1}")
        return block.reshape(i1 - i0, -1) if block.ndim > 2 else block

    def _check_size(self, ds, frames: int) -> None:
        """Refuse (``ValueError``) frames of ``ds`` larger than ``max_values``, or ``frames`` of them larger
        than ``max_bytes`` in all, before reading any."""
        values = int(np.prod(ds.shape[1:], dtype=np.int64)) if len(ds.shape) > 1 else 1
        if values > self.max_values:
            raise ValueError(f"dataset {ds.name!r} has frames of shape {tuple(ds.shape[1:])} ({values} values); "
                             f"at most {self.max_values} channels are accepted: not read")
        size = frames * values * ds.dtype.itemsize
        if size > self.max_bytes:
            raise ValueError(f"{frames} frames of dataset {ds.name!r} are {size / 2**20:.0f} MiB, more than the "
                             f"{self.max_bytes / 2**20:.0f} MiB one read may take: not read")
