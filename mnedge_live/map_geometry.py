"""Where the spectra of a spectrum image lie: the map's shape, each event's pixel, growing maps.

A spectrum image's pixels come either from the start document (its ``shape`` and ``snaking``,
one pixel per ``seq_num`` in bluesky's grid order) or from two pixel-index fields of each event
(``pixel_fields``), whose extent is only known as the pixels arrive.  This module answers, for
one run, which pixel an event belongs to or why it has none, and grows a map to hold a pixel
beyond it.  It is kept apart from :mod:`mnedge_live.callback` so that the document router only
routes, and so that these rules (limits, malformed start documents, growth by doubling) can be
read and tested on their own.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mnedge_live.assembly import ValenceMaps, grid_pixel

#: The callback's logger, not this module's: its warning (a scan shape too large for a map) is
#: logged under the same name as when the callback held this code, for log filters that select it.
log = logging.getLogger("mnedge_live.callback")

#: Most pixels of a spectrum image whose extent follows from its pixel-index fields
#: (``pixel_fields``): the map's nine layers of 4096 x 4096 pixels take about 1.2 GB.  A pixel whose
#: index would grow the map past this is rejected with the reason.
MAX_MAP_PIXELS = 4096 * 4096
#: Most memory the maps of all open spectrum images of one process may take together (bytes): one
#: 4096 x 4096 map (1.2 GB) and smaller ones.  A map is made at its first pixel, not when a start
#: document announces its shape; one that would pass this is not kept (its rows are still read).
MAX_OPEN_MAP_BYTES = 2 * 2**30

Pixel = tuple[int, int]


def scan_shape(start: dict) -> Pixel | None:
    """The grid scan's ``(rows, columns)`` from the start document; a line scan's ``(N,)`` is one row.

    None without a ``shape``, and, logged with the reason, for one that cannot give a map: not a list
    of positive whole numbers (``3.0`` from JSON and numpy integers are whole numbers), more than two
    axes, or more than :data:`MAX_MAP_PIXELS` pixels. Its spectra are then read out without a map,
    not lost with a run whose maps cannot be allocated.
    """
    shape = start.get("shape")
    if shape is None:
        return None
    try:
        dims = [pixel_index(v) for v in shape] if isinstance(shape, (list, tuple)) else None
    except (TypeError, ValueError, OverflowError):
        dims = None
    why = ("is not a list of positive whole numbers" if not dims or min(dims) < 1 else
           f"has {len(dims)} axes; a map has one or two" if len(dims) > 2 else
           f"is more than the {MAX_MAP_PIXELS} pixels a map may hold" if math.prod(dims) > MAX_MAP_PIXELS else "")
    if why:
        log.warning("run %s: scan shape %s %s: its spectra are read out without a map", start.get("uid"),
                    str(shape)[:60], why)
        return None
    return (1, dims[0]) if len(dims) == 1 else (dims[0], dims[1])


def pixel_index(value: object) -> int:
    """A pixel index read from an event field: a whole number (an integer, or a float that is one).

    Raises
    ------
    TypeError, ValueError
        A boolean, a string, or a number with a fractional part: taken as an index it would put
        the spectrum in a pixel it was not measured at (``int(2.7)`` is 2, ``int(True)`` is 1).
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise TypeError(f"{value!r} is not a whole number")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not math.isfinite(value) or value != math.floor(value):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


#: bluesky's ``hints["gridding"]`` of plans whose points follow the grid's order (``grid_scan``,
#: ``list_grid_scan``); ``spiral_square`` says ``"rectilinear_nonsequential"``: its shape is a grid's,
#: its order is not, so the event number cannot tell the pixel.
SEQUENTIAL_GRIDDING = "rectilinear"


def checked_snaking(start: dict) -> tuple[tuple[bool, ...] | None, str]:
    """The start document's snaking (one bool per scan axis) and ``""``, or ``None`` and why it cannot be
    used: a malformed value leaves every grid pixel's position unknown (a string such as ``"yes"`` would
    otherwise reverse odd rows by its second character).

    ``grid_scan`` writes ``snaking``; ``list_grid_scan`` writes no ``snaking`` but ``snake_axes``, the
    ``repr`` of its argument: ``"True"`` (every axis but the first snakes), ``"False"``, or a list of
    motors, read by their names against the start document's ``motors``.
    """
    snaking = start.get("snaking")
    shape = start.get("shape")
    axes = len(shape) if isinstance(shape, (list, tuple)) else None
    if snaking is None and "snake_axes" in start:
        snaking = _snaking_from_snake_axes(start["snake_axes"], axes, start.get("motors"))
        if snaking is None:
            return None, (f"start document's snake_axes {str(start['snake_axes'])[:60]!r} does not say which "
                          "axes snake: the pixel's position in the grid is unknown")
    if snaking is None:
        return None, ""
    if isinstance(snaking, (list, tuple)) and all(isinstance(v, (bool, np.bool_)) for v in snaking):
        if axes is not None and len(snaking) != axes:
            return None, (f"start document's snaking {list(snaking)} has {len(snaking)} entries for a "
                          f"{axes}-axis shape: the pixel's position in the grid is unknown")
        return tuple(bool(v) for v in snaking), ""
    return None, (f"start document's snaking {str(snaking)[:60]!r} is not a list of booleans: "
                  "the pixel's position in the grid is unknown")


def _snaking_from_snake_axes(value: object, axes: int | None, motors: object) -> tuple[bool, ...] | None:
    """``list_grid_scan``'s ``snake_axes`` as one bool per axis; None where it cannot be told.

    A list (or set) of motors is read by the names in their reprs (``name='stage_x'``) against the start
    document's ``motors``; the first axis never snakes (bluesky ignores it there).
    """
    if isinstance(value, bool):
        value = repr(value)
    if not isinstance(value, str) or axes is None or axes < 1:
        return None
    text = value.strip()
    if text in ("False", "None", "[]", "()", "set()"):
        return (False,) * axes
    if text == "True":
        return (False,) + (True,) * (axes - 1)
    names = set(re.findall(r"name='([^']*)'", text))
    if (text[:1] in "[({" and text[-1:] in "])}" and names and isinstance(motors, (list, tuple))
            and len(motors) == axes and names <= set(map(str, motors))):
        return tuple(i > 0 and str(m) in names for i, m in enumerate(motors))
    return None


def placement_error(start: dict) -> str:
    """Why the event number cannot tell a pixel of this grid (``""`` when it can): the start document's
    ``hints["gridding"]`` says its points are not in the grid's order (``spiral_square``)."""
    hints = start.get("hints")
    gridding = hints.get("gridding") if isinstance(hints, dict) else None
    if gridding is None or gridding == SEQUENTIAL_GRIDDING:
        return ""
    return (f"the start document's gridding {str(gridding)[:60]!r} says the points are not in the grid's "
            "order: give pixel_fields (the events' row and column fields) to place them")


def grown_extent(shape: Pixel, pixel: Pixel, seen: Pixel) -> Pixel:
    """The shape a map of ``shape`` grows to for ``pixel``, given ``seen``, the rows and columns of the
    pixels accepted so far: each axis the pixel lies beyond is doubled or taken to the pixel, whichever
    is more.  Where doubling would pass :data:`MAX_MAP_PIXELS`, each axis is sized from the pixels seen
    instead (an axis doubled earlier may shrink back to them), the growing one doubled as far as that
    leaves room for: the map never passes the limit the pixels themselves are held to.

    Doubling copies the layers a few times per scan instead of once per new row (a raster of pixel
    fields grew its map row by row: 1,024 copies for 1,024 rows, the last of a large map taking 0.2 s
    each); the map is cut back to the pixels seen when it is written (:meth:`ValenceMaps.cropped`).
    """
    doubled = tuple(size if p < size else max(p + 1, 2 * size) for size, p in zip(shape, pixel))
    if doubled[0] * doubled[1] <= MAX_MAP_PIXELS:
        return doubled
    rows, cols = max(seen[0], pixel[0] + 1), max(seen[1], pixel[1] + 1)
    if pixel[0] >= shape[0]:
        rows = max(rows, min(2 * shape[0], MAX_MAP_PIXELS // cols))
    if pixel[1] >= shape[1]:
        cols = max(cols, min(2 * shape[1], MAX_MAP_PIXELS // rows))
    return rows, cols


def map_refusal(shape: tuple[int, int], held: int, limit: int = MAX_OPEN_MAP_BYTES) -> str:
    """'' when maps of ``shape`` fit beside ``held`` bytes of open maps within ``limit`` bytes; else why not."""
    need = ValenceMaps.bytes_for(shape)
    if held + need <= limit:
        return ""
    return (f"a {shape[0]} x {shape[1]} map ({need / 2**20:.0f} MiB) with the open maps ({held / 2**20:.0f} MiB) "
            f"would pass {limit / 2**30:g} GiB")


def grown_maps(maps: ValenceMaps, extent: Pixel, exact: bool = False) -> ValenceMaps:
    """A copy of ``maps`` of at least ``extent`` ``(rows, columns)`` (pixel-index fields, unknown extent);
    ``exact``: of ``extent`` itself, cut where ``maps`` is larger (room beyond the pixels seen, see
    :func:`grown_extent`)."""
    shape = tuple(extent) if exact else (max(maps.shape[0], extent[0]), max(maps.shape[1], extent[1]))
    new = ValenceMaps(shape)
    rows, cols = min(shape[0], maps.shape[0]), min(shape[1], maps.shape[1])
    for k, v in maps.layers.items():
        new.layers[k][:rows, :cols] = v[:rows, :cols]
    new.rejected[:rows, :cols] = maps.rejected[:rows, :cols]
    return new


@dataclass
class MapGeometry:
    """The geometry of one run's spectrum image.

    Attributes
    ----------
    shape : (int, int) or None
        Scan shape ``(rows, columns)`` from the start document, for grid pixels (:func:`scan_shape`).
    snaking : tuple of bool or None
        The start document's ``snaking``, checked once (:func:`checked_snaking`) ...
    snaking_error : str
        ... or why the event number cannot place a grid pixel (``""`` when it can): a snaking that cannot
        be used, or points not in the grid's order (:func:`placement_error`).
    extent : (int, int)
        Rows and columns the map needs for the pixels accepted so far (``pixel_fields``); starts
        at ``shape`` (or ``(0, 0)`` without one).
    """

    shape: Pixel | None = None
    snaking: tuple[bool, ...] | None = None
    snaking_error: str = ""
    extent: Pixel = (0, 0)

    @classmethod
    def from_start(cls, start: dict) -> MapGeometry:
        """The geometry a start document announces (logs, as :func:`scan_shape`, a shape too large for a map)."""
        shape = scan_shape(start)
        snaking, snaking_error = checked_snaking(start)
        return cls(shape=shape, snaking=snaking, snaking_error=placement_error(start) or snaking_error,
                   extent=shape or (0, 0))

    def pixel(self, seq: int, row: dict, pixel_fields: Sequence[str] | None) -> tuple[Pixel | None, str]:
        """The pixel of event ``seq`` with data ``row`` and ``""``, or None and why it has none.

        With ``pixel_fields`` (row and column field) the pixel is read from the event and, when
        accepted, widens :attr:`extent`; without, it follows from ``seq`` and the scan shape.
        """
        if pixel_fields:
            rf, cf = pixel_fields
            try:
                r, c = pixel_index(row[rf]), pixel_index(row[cf])
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                return None, f"no valid pixel index in fields {rf!r}, {cf!r}: {exc}"
            if r < 0 or c < 0:
                return None, f"pixel index ({r}, {c}) is negative"
            rows, cols = max(self.extent[0], r + 1), max(self.extent[1], c + 1)
            if rows * cols > MAX_MAP_PIXELS:
                return None, (f"pixel index ({r}, {c}) would grow the map to {rows} x {cols} pixels, "
                              f"more than the {MAX_MAP_PIXELS} accepted")
            self.extent = (rows, cols)
            return (r, c), ""
        shape = self.shape
        if shape and self.snaking_error:
            return None, self.snaking_error
        pix = grid_pixel(seq, shape, self.snaking) if shape else None
        if pix is None:
            return None, f"seq_num {seq} is outside the scan shape {shape}"
        return pix, ""
