"""Measured points as they arrive: distinct ascending energies and how densely they were sampled."""

from __future__ import annotations

import numpy as np


def checked_points(energy: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ascending points of one measured spectrum; ValueError on mismatched or non-finite input."""
    e = np.asarray(energy, dtype=np.float64).ravel()
    y = np.asarray(intensity, dtype=np.float64).ravel()
    if e.shape != y.shape:
        raise ValueError(f"energy has {e.size} points but intensity has {y.size}")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(y))):
        raise ValueError("spectrum contains NaN or inf")
    return distinct_points(e, y)


#: Largest magnitudes (any unit) that rows keep as they are; rows beyond are rescaled first
#: (:func:`rescale_extreme_rows`). Detector counts, drain currents in amperes (1e-15) and
#: electron counts of whole spectrum images (1e10) all lie inside.
SAFE_MAGNITUDE = (1e-20, 1e15)


def rescale_extreme_rows(y: np.ndarray, magnitude: np.ndarray | None = None) -> np.ndarray:
    """Rows whose largest magnitude lies outside :data:`SAFE_MAGNITUDE` divided by it; the others untouched.

    The readout does not depend on the intensity unit (the preprocessing
    brings every row to a largest magnitude of 1), but the steps before it do
    not survive every unit: the spike test multiplies neighbouring
    differences (overflow beyond about 1e154, 1e19 in float32) and the work
    rows are float32 (nothing beyond 3.4e38, nothing below 1e-45).  Values
    of 1e300 or 1e-300 would reach the network as inf or 0 and be refused
    for the wrong reason.  Rows inside the range are returned bit for bit.

    Parameters
    ----------
    y : numpy.ndarray
        ``(N,)`` or ``(B, N)`` finite intensities.
    magnitude : numpy.ndarray, optional
        Largest magnitude per row when the caller has it (float64).

    Returns
    -------
    numpy.ndarray
        ``y`` itself when no row is extreme, else a copy in ``y``'s float
        precision (float64 for integer rows).
    """
    if magnitude is None:
        magnitude = np.maximum(np.abs(y.max(axis=-1).astype(np.float64)), np.abs(y.min(axis=-1).astype(np.float64)))
    extreme = (magnitude < SAFE_MAGNITUDE[0]) | (magnitude > SAFE_MAGNITUDE[1])
    if not np.any(extreme):
        return y
    dtype = y.dtype if y.dtype.kind == "f" else np.float64
    scale = np.where(extreme & (magnitude > 0), magnitude, 1.0)
    return (y / np.expand_dims(scale, -1)).astype(dtype, copy=False)


#: Fewest measured points sharing a spectrum's exact maximum, and the least span (eV) between the
#: first and the last of them, for :func:`clipped_at_maximum`: a saturated detector or amplifier
#: holds the top of the L3 line flat over many points, while the top of a measured line, even
#: digitized with 8 bits, stays within one level over a few hundredths of an eV only.
CLIP_MIN_POINTS = 3
CLIP_MIN_SPAN_EV = 0.3


def clipped_at_maximum(e: np.ndarray, y: np.ndarray, top: np.ndarray | None = None) -> np.ndarray:
    """Rows whose largest value is held at :data:`CLIP_MIN_POINTS` or more consecutive measured points
    spanning :data:`CLIP_MIN_SPAN_EV` or more: clipped by a saturated detector or amplifier.

    Consecutive: separate peaks that happen to share the maximum (integer counts of a
    weak line, a periodic signal) are no flat top.

    Clipping flattens the L3 line; the four measured spectra with their top 20 % / 40 % cut read up
    to 0.2 / 0.5 off (benchmarks/RESULTS.md), so the engine flags such readouts ``clipped``.

    Parameters
    ----------
    e : numpy.ndarray
        ``(N,)`` distinct ascending energies.
    y : numpy.ndarray
        ``(N,)`` or ``(B, N)`` intensities on ``e``.
    top : numpy.ndarray, optional
        Largest value per row when the caller has it.

    Returns
    -------
    numpy.ndarray
        Boolean per row (0-d for one spectrum).
    """
    y2 = np.atleast_2d(y)
    hi = y2.max(axis=1) if top is None else np.atleast_1d(top)
    at_top = y2 == hi[:, None]
    count = at_top.sum(axis=1)
    first = at_top.argmax(axis=1)
    last = y2.shape[1] - 1 - at_top[:, ::-1].argmax(axis=1)
    out = (count >= CLIP_MIN_POINTS) & (e[last] - e[first] >= CLIP_MIN_SPAN_EV)
    gapped = np.flatnonzero(out & (count < last - first + 1))   # top points with gaps between them: their runs
    if gapped.size:
        r, c = np.nonzero(at_top[gapped])                        # the few top points of those rows, row by row
        start = np.flatnonzero(np.r_[True, (np.diff(c) != 1) | (np.diff(r) != 0)])
        stop = np.r_[start[1:], c.size] - 1
        long = (stop - start + 1 >= CLIP_MIN_POINTS) & (e[c[stop]] - e[c[start]] >= CLIP_MIN_SPAN_EV)
        out[gapped] = False
        out[gapped[r[start[long]]]] = True
    return out if np.ndim(y) == 2 else out[0]


#: How far (in median spacings of the points) the energies, in the order given, may go back against the
#: axis's direction: digitizers and encoders jitter by a fraction of a spacing, while a second scan
#: appended to the first, a return sweep or blocks out of order go back across the window.
OUT_OF_ORDER_SPACINGS = 2.0


def out_of_order(e: np.ndarray) -> bool:
    """Whether the energies ``e``, in the order given, go back against the axis's direction (ascending or
    descending, whichever they go back less against) by more than :data:`OUT_OF_ORDER_SPACINGS` median spacings.

    :func:`distinct_points` sorts such points and averages repeated energies, as for any other axis:
    right for repeated scans that agree, a blend where they do not (a second scan at another gain or
    offset), so the engine flags such readouts ``points_out_of_order``.
    """
    if e.size < 3:
        return False
    d = np.abs(np.diff(e))
    d = d[d > 0]
    if d.size == 0:
        return False
    back_up = float(np.max(np.maximum.accumulate(e) - e))        # below an earlier point of an ascending axis
    back_down = float(np.max(e - np.minimum.accumulate(e)))      # above an earlier point of a descending one
    return min(back_up, back_down) > OUT_OF_ORDER_SPACINGS * float(np.median(d))


def is_dense(spacing, step: float):
    """Two or more measured points per work step: they are averaged, not picked (:func:`bin_dense`); element-wise for arrays."""
    return spacing <= 0.5 * step * (1 + 1e-6)


def distinct_points(e: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct energies and the mean intensity at each (repeated energies averaged)."""
    if e.size >= 2 and bool(np.all(e[1:] > e[:-1])):
        return e, y  # already ascending and distinct (the usual case): no sort
    uniq, inverse = np.unique(e, return_inverse=True)
    if uniq.size < 2:
        raise ValueError("fewer than two distinct energies")
    return uniq, np.bincount(inverse, weights=y) / np.bincount(inverse)


def row_median(a: np.ndarray) -> np.ndarray:
    """Median along the last axis of finite values, exactly as :func:`numpy.median`, at about a third of its cost.

    ``numpy.median`` partitions around both middle elements of even-length
    rows, which costs as much as four single partitions; here one partition
    at the upper middle suffices, the lower middle being the largest value
    left of it.
    """
    n = a.shape[-1]
    mid = n // 2
    part = np.partition(a, mid, axis=-1)
    upper = part[..., mid]
    if n % 2:
        return upper
    return 0.5 * (upper + part[..., :mid].max(axis=-1))


def point_spacing(e: np.ndarray) -> float:
    """Median spacing (eV) of distinct ascending measured energies: how finely the spectrum was sampled."""
    return float(row_median(np.diff(e)))
