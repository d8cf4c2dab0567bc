"""Live valence maps for the microscope room: the derived rows of spectrum images drawn as they arrive.

:class:`LiveMapWatcher` reads the documents of ``mnedge live`` services (the derived runs of
kind ``map``, stream :data:`~mnedge_live.derived.STREAM`) and keeps one
:class:`~mnedge_live.assembly.ValenceMaps` per spectrum image, of the scan shape of the source
run's start document when it was seen (it passes through the same proxy first), else grown to
the pixels that arrive (``pixel_fields`` runs). Every ``every_s`` seconds while
rows arrive, and once more at the run's stop, it writes the maps as the service writes its own
at stop (HDF5 and PNG, :meth:`~mnedge_live.assembly.ValenceMaps.write`), under
``mnedge_<source uid>_live``: an image viewer that reloads the PNG shows the map build up
during the scan. ``mnedge watch`` runs it on a 0MQ proxy.

Documents come from the network: one that cannot be read (a row without a pixel, a pixel
index that is not a whole number or lies beyond :data:`~mnedge_live.map_geometry.MAX_MAP_PIXELS`)
is counted in :attr:`LiveMapWatcher.skipped` with a logged reason, never raised.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import event_model

from mnedge_live.assembly import ValenceMaps, run_file_stem
from mnedge_live.derived import STREAM
from mnedge_live.map_geometry import (
    MAX_MAP_PIXELS,
    MAX_OPEN_MAP_BYTES,
    grown_extent,
    grown_maps,
    map_refusal,
    pixel_index,
    scan_shape,
)

log = logging.getLogger(__name__)

#: Source runs whose scan shape is kept until a service's derived start names them.
MAX_REMEMBERED_SHAPES = 64
#: Most spectrum images followed at once: the oldest whose stop never came is written as it is and dropped.
MAX_OPEN_MAPS = 64


@dataclass
class _LiveMap:
    """One spectrum image being read: its maps so far and when they were last written."""

    source_uid: str
    #: the scan's shape when the source start announced it (the map is made at the first row)
    shape: tuple[int, int] | None = None
    maps: ValenceMaps | None = None
    #: why no map is kept (the open maps would pass MAX_OPEN_MAP_BYTES); "" while one may be
    refused: str = ""
    pixels: int = 0
    dirty: bool = False
    written_at: float = -math.inf
    exit_status: str = ""   # the derived stop's, once it arrived ("" while the scan runs)
    extent: tuple[int, int] = (1, 1)   # rows and columns written: the scan's shape, or the pixels placed


class LiveMapWatcher(event_model.DocumentRouter):
    """Derived documents in, live HDF5/PNG maps out (one method per document type).

    Parameters
    ----------
    directory : str or Path
        Where the maps are written.
    every_s : float
        Shortest time between two writes of one map while rows arrive (its stop writes it at once).
    clock : callable
        Seconds, monotonic (a test may pass its own).

    Attributes
    ----------
    written : list of str
        Every file written, in order.
    finished : int
        Spectrum images whose stop arrived (and whose final maps were written).
    skipped : int
        Rows or documents that could not be placed, each logged with its reason.
    """

    def __init__(self, directory: str | Path, every_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.directory = Path(directory)
        self.every_s = float(every_s)
        self.clock = clock
        self.runs: dict[str, _LiveMap] = {}      # derived run uid -> its map
        self.streams: dict[str, str] = {}        # descriptor uid of the pixel stream -> derived run uid
        self.shapes: dict[str, tuple[int, int]] = {}   # source run uid -> its scan shape (recent runs)
        self.written: list[str] = []
        self.finished = 0
        self.skipped = 0

    def __call__(self, name: str, doc: dict):
        """Route one document; a document that cannot be read is counted and logged, never raised."""
        try:
            return super().__call__(name, doc)
        except Exception as exc:   # a malformed document from the network must not stop the watcher
            self.skipped += 1
            log.warning("%s document not read: %s: %s", name, type(exc).__name__, exc)
            return None

    def start(self, doc: dict) -> None:
        if not doc.get("mnedge_derived"):
            # a source run: its scan shape, as the service reads it, sizes the map once (growing it
            # row by row copied the whole map at every new row: quadratic in a large image's rows)
            shape = scan_shape(doc)
            if shape is not None:
                self.shapes[doc["uid"]] = shape
                while len(self.shapes) > MAX_REMEMBERED_SHAPES:   # runs no service reads as a map
                    del self.shapes[next(iter(self.shapes))]
        elif doc.get("mnedge_kind") == "map":
            source = str(doc.get("parent_uid", doc["uid"]))
            shape = self.shapes.pop(source, None)
            self.runs[doc["uid"]] = _LiveMap(source_uid=source, shape=shape, extent=shape or (1, 1))
            while len(self.runs) > MAX_OPEN_MAPS:   # maps whose stop never came: the oldest written and dropped
                oldest = next(iter(self.runs))
                log.warning("map %s: no stop after %d newer maps; written as it is and no longer followed",
                            self.runs[oldest].source_uid[:8], MAX_OPEN_MAPS)
                self._drop(oldest)

    def descriptor(self, doc: dict) -> None:
        if doc.get("name") == STREAM and doc.get("run_start") in self.runs:
            self.streams[doc["uid"]] = doc["run_start"]

    def event_page(self, doc: dict) -> None:
        uid = self.streams.get(doc.get("descriptor"))
        if uid is None:
            return   # another stream or run (a step scan's, the block readouts of map_bin, a source run)
        live = self.runs[uid]
        data = doc["data"]
        for i in range(len(doc["seq_num"])):
            self._place(live, {k: v[i] for k, v in data.items()})
        if live.dirty and self.clock() - live.written_at >= self.every_s:
            self._write(live, complete=False)

    def stop(self, doc: dict) -> None:
        live = self.runs.get(doc.get("run_start"))
        if live is None:
            return
        live.exit_status = str(doc.get("exit_status", ""))   # an aborted scan's map is whole, not complete
        self._drop(doc["run_start"], complete=True)
        self.finished += 1

    def _drop(self, uid: str, complete: bool = False) -> None:
        """Write the map of derived run ``uid`` (at its stop, or unfinished) and stop following it."""
        live = self.runs.pop(uid)
        self.streams = {d: u for d, u in self.streams.items() if u != uid}
        if complete or live.dirty:
            self._write(live, complete=complete)

    def close(self) -> None:
        """Write the maps of the images still open (the watcher stops before their stop document)."""
        for live in self.runs.values():
            if live.dirty:
                self._write(live, complete=False)
        self.runs.clear()
        self.streams.clear()

    def _place(self, live: _LiveMap, row: dict) -> None:
        """Put one row in its pixel, growing the map to it; a row that cannot be placed is skipped."""
        try:
            r, c = pixel_index(row.get("pixel_row")), pixel_index(row.get("pixel_col"))
        except (TypeError, ValueError) as exc:
            self.skipped += 1
            log.warning("row of map %s skipped: %s", live.source_uid[:8], exc)
            return
        if r < 0 or c < 0:   # the service's -1: a spectrum refused a pixel (its reason is in the row)
            self.skipped += 1
            log.warning("row of map %s skipped: no pixel (%d, %d): %s", live.source_uid[:8], r, c,
                        str(row.get("reason", ""))[:200])
            return
        seen = (max(live.extent[0], r + 1), max(live.extent[1], c + 1))   # the pixels', not the map's
        if seen[0] * seen[1] > MAX_MAP_PIXELS:
            self.skipped += 1
            log.warning("row of map %s skipped: pixel (%d, %d) would grow the map past %d pixels",
                        live.source_uid[:8], r, c, MAX_MAP_PIXELS)
            return
        if live.maps is None:
            shape = live.shape or (r + 1, c + 1)
            live.maps = ValenceMaps(shape) if self._room(live, shape) else None
        elif not (r < live.maps.shape[0] and c < live.maps.shape[1]):   # doubled ahead of the pixels
            shape = grown_extent(live.maps.shape, (r, c), seen)
            live.maps = grown_maps(live.maps, shape, exact=True) if self._room(live, shape) else None
        if live.maps is None:
            self.skipped += 1
            return
        live.maps.set_row((r, c), row)
        live.extent = seen
        live.pixels += 1
        live.dirty = True

    def _room(self, live: _LiveMap, shape: tuple[int, int]) -> bool:
        """Whether a map of ``shape`` for ``live`` (replacing its own) fits in :data:`MAX_OPEN_MAP_BYTES` with
        the other open maps; when not, ``live`` keeps none from then on (logged once, its rows skipped)."""
        if live.refused:
            return False
        held = sum(m.maps.nbytes for m in self.runs.values() if m.maps is not None and m is not live)
        live.refused = map_refusal(shape, held, MAX_OPEN_MAP_BYTES)
        if not live.refused:
            return True
        log.warning("map %s not kept: %s; its rows are skipped", live.source_uid[:8], live.refused)
        live.maps = None
        return False

    def _write(self, live: _LiveMap, complete: bool) -> None:
        """Write the map (HDF5 and PNG); a failed write is logged and counted, the watcher goes on."""
        live.written_at = self.clock()
        live.dirty = False
        if live.maps is None:   # no row placed, or the map was not kept
            return
        try:
            files = live.maps.cropped(live.extent).write(self.directory, run_file_stem(live.source_uid, "_live"),
                                    {"parent_uid": live.source_uid, "rows_read": live.pixels, "complete": complete,
                                     "exit_status": live.exit_status})
        except Exception as exc:
            self.skipped += 1
            log.warning("map %s not written: %s: %s", live.source_uid[:8], type(exc).__name__, exc)
            return
        self.written.extend(files)
