"""Spatial binning of spectrum images: trade map resolution for signal-to-noise ratio.

Low-dose EELS spectrum images often hold pixels too noisy for a valence
readout (the engine flags them ``low_psnr`` or rejects them as no Mn edge).
Averaging ``k x k`` neighbouring pixels into one spectrum raises the PSNR by
about ``20 log10(k)`` dB (``k`` = 4: +12 dB) at ``k`` times coarser maps, the
usual first step of spectrum-image analysis (HyperSpy's ``rebin``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mnedge_live.readers import SpectrumImage


def bin_pixels(image: SpectrumImage, factor: int) -> SpectrumImage:
    """Average ``factor x factor`` blocks of pixels into one spectrum each, lazily.

    Parameters
    ----------
    image : SpectrumImage
        The spectrum image; its data may be a Dask or a NumPy array.
    factor : int
        Pixels per block side (>= 1).  Along an axis shorter than ``factor``
        (a line scan's single row) the block spans the whole axis.

    Returns
    -------
    SpectrumImage
        The binned image, ``ceil(rows / factor) x ceil(cols / factor)``
        pixels on the same energy axis, in float32 unless the image holds
        float64 (or 32-bit integers), which stays float64: intensities may be
        in any unit, and beyond float32's 3.4e38 the means would overflow to
        inf; ``factor`` 1 returns ``image`` itself.
        Blocks at the right and bottom edges that the image does not fill
        average the pixels they hold, so every pixel counts in exactly one
        binned spectrum and none is dropped.  A non-finite value in any pixel
        makes its block's channel non-finite, which the engine then rejects
        with its reason, rather than hiding a bad pixel in a silent average.

    Raises
    ------
    ValueError
        ``factor`` below 1.
    """
    import dask.array as da

    if int(factor) != factor or factor < 1:
        raise ValueError(f"bin factor must be a whole number >= 1, got {factor!r}")
    factor = int(factor)
    if factor == 1:
        return image
    rows, cols = image.shape
    fr, fc = min(factor, rows), min(factor, cols)
    out_rows, out_cols = math.ceil(rows / fr), math.ceil(cols / fc)
    x: Any = image.data if isinstance(image.data, da.Array) else da.from_array(np.asarray(image.data))
    pad = ((0, out_rows * fr - rows), (0, out_cols * fc - cols), (0, 0))
    if pad[0][1] or pad[1][1]:
        x = da.pad(x, pad, mode="constant", constant_values=0)
    x = x.rechunk((_block_chunk(x.chunks[0][0], fr), _block_chunk(x.chunks[1][0], fc), -1))
    summed = da.coarsen(np.sum, x, {0: fr, 1: fc}, dtype=np.float64)  # float64 sums, no float64 copy of the input
    counts = np.outer(np.minimum(fr, rows - fr * np.arange(out_rows)),
                      np.minimum(fc, cols - fc * np.arange(out_cols))).astype(np.float64)
    mean = (summed / counts[:, :, None]).astype(np.result_type(image.data.dtype, np.float32))
    return SpectrumImage(image.file, image.index, image.energy, mean)


def _block_chunk(stored: int, factor: int, least: int = 64) -> int:
    """Chunk length for binning by ``factor``: whole blocks and whole stored chunks, at least about ``least``.

    A multiple of both the stored chunk (no stored chunk is read and
    decompressed for two tasks) and the factor (no block is cut), grown to
    about ``least`` pixels: a 256 x 256 HyperSpy image stored in 21 x 21
    blocks, binned by 4, took 2.5 s on a local Dask cluster in 20-pixel
    chunks (1,132 tasks) and 0.9 s in 84-pixel ones (202 tasks).
    """
    step = math.lcm(max(int(stored), 1), factor)
    if step > 8 * max(int(stored), factor):   # stored chunks of awkward size: whole blocks only
        step = factor * max(1, round(stored / factor))
    return step * max(1, math.ceil(least / step))
