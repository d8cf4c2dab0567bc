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


def _path_of_resource(res: dict) -> Path:
    return Path(res.get("root") or "/") / res["resource_path"]


def _path_of_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r}")
    return Path(parsed.path)


class ExternalReader:
    """Remembers resources and datums and reads the frames they point at."""

    def __init__(self) -> None:
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
        with h5py.File(_path_of_resource(res), "r", swmr=True) as f:
            return np.asarray(f[dataset][index])

    def read_stream(self, doc: dict) -> np.ndarray:
        """The frames ``indices.start:indices.stop`` a stream datum points at."""
        import h5py

        sr = self.stream_resources[doc["stream_resource"]]
        params = sr.get("parameters") or {}
        dataset = params.get("dataset", DEFAULT_DATASET)
        i0, i1 = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        with h5py.File(_path_of_uri(sr["uri"]), "r", swmr=True) as f:
            block = np.asarray(f[dataset][i0:i1])
        if block.shape[0] != i1 - i0:
            raise ValueError(f"file holds {block.shape[0]} of frames {i0}..{i1}")
        return block.reshape(i1 - i0, -1) if block.ndim > 2 else block
