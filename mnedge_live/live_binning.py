"""Live spatial binning: the mean spectrum of each ``K x K`` block of a spectrum image, as the scan fills it.

The live counterpart of ``mnedge predict --bin`` (:mod:`mnedge_live.image_binning`):
during a low-dose acquisition single pixels are often too noisy to read, while
the mean of ``K x K`` pixels has about ``20 log10(K)`` dB more PSNR.  The
callback hands every measured pixel to a :class:`BlockBinner`, which sums it
into its block and returns each block the moment its last pixel arrives; at
the end of the run the blocks still open (an aborted scan, an unknown map
extent) are handed over with the pixels they hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Block:
    """The mean spectrum of one block of pixels.

    Attributes
    ----------
    index : (int, int)
        Block row and column (pixel row and column divided by the factor).
    energy : numpy.ndarray
        The energy axis its pixels share (empty when ``pixels`` is 0).
    intensity : numpy.ndarray
        Mean of the pixels' intensities (empty when ``pixels`` is 0).
    pixels : int
        Pixels averaged; 0 when no pixel of the block had a finite spectrum.
    """

    index: tuple[int, int]
    energy: np.ndarray
    intensity: np.ndarray
    pixels: int


class BlockBinner:
    """Sums the pixels of a live spectrum image into ``factor x factor`` blocks.

    Parameters
    ----------
    factor : int
        Pixels per block side (>= 2).
    shape : (int, int) or None
        The map's extent in pixels, when the scan announces it: edge blocks
        are then complete with the pixels the map has there.  None: a block
        is complete at ``factor**2`` pixels; the rest come out of
        :meth:`remaining`.

    Attributes
    ----------
    skipped : int
        Pixels not added, each with a reason counted in :attr:`skip_reasons`
        (a repeated pixel, an energy axis unlike its block's, no finite spectrum): never
        dropped silently.  A pixel without a finite spectrum (NaN or inf values, or none at
        all) still completes its block, which is read from its other pixels: one dead pixel
        must not make the whole block's mean NaN.
    """

    def __init__(self, factor: int, shape: tuple[int, int] | None = None):
        if int(factor) != factor or factor < 2:
            raise ValueError(f"block factor must be a whole number >= 2, got {factor!r}")
        self.factor = int(factor)
        self.shape = shape
        self._open: dict[tuple[int, int], list] = {}   # index -> [energy, sum, pixels seen, pixels summed]
        self._done: set[tuple[int, int]] = set()
        self.skipped = 0
        self.skip_reasons: dict[str, int] = {}

    def binned_shape(self) -> tuple[int, int] | None:
        """Blocks per column and row of the announced map (None when its extent is unknown)."""
        if self.shape is None:
            return None
        return math.ceil(self.shape[0] / self.factor), math.ceil(self.shape[1] / self.factor)

    def block_size(self, index: tuple[int, int]) -> int:
        """Pixels that complete block ``index``."""
        k = self.factor
        if self.shape is None:
            return k * k
        rows = min(k, self.shape[0] - index[0] * k)
        cols = min(k, self.shape[1] - index[1] * k)
        if rows <= 0 or cols <= 0:   # beyond the announced map (pixel fields past the scan's shape): its extent
            return k * k             # there is unknown, as without a shape (it was 0: a block of its first pixel)
        return rows * cols

    def add(self, pixel: tuple[int, int], energy: np.ndarray | None,
            intensity: np.ndarray | None) -> list[Block]:
        """Add one pixel's spectrum; returns its block when this pixel completes it, else ``[]``.

        ``energy`` or ``intensity`` None: the pixel has no spectrum (it was rejected before its
        readout); like one with NaN or inf values it completes its block without being summed.
        """
        index = (int(pixel[0]) // self.factor, int(pixel[1]) // self.factor)
        if index in self._done:
            if self.shape is not None and (pixel[0] >= self.shape[0] or pixel[1] >= self.shape[1]):
                # a block across the edge of the announced map closed with the pixels the map has there
                return self._skip("pixel beyond the scan's announced shape, its block read out at the shape's edge")
            return self._skip("block already read out (repeated pixel)")
        entry = self._open.setdefault(index, [None, None, set(), 0])
        seen = entry[2]
        if tuple(pixel) in seen:
            return self._skip("pixel repeated within its block")
        y = None if intensity is None else np.asarray(intensity, np.float64)
        e = None if energy is None else np.asarray(energy, np.float64)
        if y is None or e is None:
            self._skip("no spectrum (rejected before readout)")
        elif not (np.isfinite(y).all() and np.isfinite(e).all()):
            self._skip("NaN or inf values")
        elif entry[0] is None:
            entry[0], entry[1], entry[3] = e, y.copy(), 1
        elif e.shape != entry[0].shape or not np.array_equal(e, entry[0]):
            self._skip("energy axis unlike the rest of its block")   # counted, and it still completes its block
        else:
            entry[1] += y
            entry[3] += 1
        seen.add(tuple(pixel))
        if len(seen) >= self.block_size(index):
            return [self._close(index)]
        return []

    def remaining(self) -> list[Block]:
        """Every block still open, with the pixels it holds (call at the end of the run)."""
        return [self._close(index) for index in sorted(self._open)]

    def _close(self, index: tuple[int, int]) -> Block:
        energy, total, _seen, summed = self._open.pop(index)
        self._done.add(index)
        if not summed:
            return Block(index, np.empty(0), np.empty(0), 0)
        return Block(index, energy, total / summed, summed)

    def _skip(self, reason: str) -> list[Block]:
        self.skipped += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
        return []
