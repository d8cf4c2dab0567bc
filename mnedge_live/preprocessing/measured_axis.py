"""Measured spectra on any axis brought onto the uniform work axis the preprocessing runs on."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from mnedge_live.preprocessing.constants import WORK_STEP_EV
from mnedge_live.preprocessing.noise import on_work_axis, point_noise
from mnedge_live.preprocessing.points import checked_points, clipped_at_maximum, is_dense, point_spacing
from mnedge_live.preprocessing.spikes import remove_spikes


def to_uniform(energy: np.ndarray, intensity: np.ndarray, step: float = WORK_STEP_EV) -> tuple[float, np.ndarray]:
    """Resample one measured spectrum onto a uniform ascending axis.

    Parameters
    ----------
    energy, intensity : numpy.ndarray
        One spectrum on any axis: any spacing, ascending or descending,
        repeated energies allowed (their intensities are averaged).
    step : float
        Spacing of the uniform axis (eV).

    Returns
    -------
    start : float
        Energy of the first uniform point.
    values : numpy.ndarray
        Linear interpolation of the spectrum on ``start + step * arange(n)``.

    Raises
    ------
    ValueError
        On non-finite values, mismatched shapes or fewer than two distinct energies.
    """
    return _uniform_from_points(*checked_points(energy, intensity), step)


def _uniform_from_points(uniq: np.ndarray, mean: np.ndarray, step: float,
                         spacing: float | None = None) -> tuple[float, np.ndarray]:
    """Distinct ascending points onto ``uniq[0] + step * arange(n)``: binned if dense (:func:`bin_dense`), then linear interpolation."""
    n = int(math.floor((uniq[-1] - uniq[0]) / step + 1e-9)) + 1
    grid = uniq[0] + step * np.arange(n)
    e, y = bin_dense(uniq, mean, step, spacing)
    return float(uniq[0]), np.interp(grid, e, y)


#: Distance (eV) between neighbouring measured points beyond which the work points between them are
#: marked as bridged (:func:`bridged_points`): interpolated over more than the width of a Mn line.
WIDE_GAP_EV = 1.5


def bridged_points(e: np.ndarray, start: float, n: int, step: float = WORK_STEP_EV,
                   wide: float = WIDE_GAP_EV) -> np.ndarray:
    """Work points that lie inside a gap of more than ``wide`` eV between measured points.

    Linear interpolation bridges such a gap with a straight line, so a line
    maximum or shoulder inside it is lost; the engine flags readouts where this
    happens on the L3 or L2 line (sparse digitized spectra).

    Parameters
    ----------
    e : numpy.ndarray
        ``(N,)`` distinct ascending measured energies.
    start : float
        Energy of work point 0.
    n : int
        Number of work points, on ``start + step * arange(n)``.
    step : float
        Work-axis spacing (eV).
    wide : float
        Gap (eV) above which points are bridged.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` bool.
    """
    out = np.zeros(n, bool)
    k = np.flatnonzero(np.diff(e) > wide)
    if k.size:
        lo = np.floor((e[k] - start) / step + 1e-9).astype(np.int64) + 1   # first work point past the gap's start
        hi = np.ceil((e[k + 1] - start) / step - 1e-9).astype(np.int64)    # first work point at or past its end
        edges = np.zeros(n + 1, np.int64)
        np.add.at(edges, np.clip(lo, 0, n), 1)
        np.add.at(edges, np.clip(hi, 0, n), -1)
        out = np.cumsum(edges[:n]) > 0
    return out


def bin_dense(e: np.ndarray, y: np.ndarray, step: float = WORK_STEP_EV,
              spacing: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average measured points that are denser than the work axis, one bin per work point.

    Interpolating a 0.01 eV axis (monochromated EELS, fine XAS steps) at
    0.1 eV would pick one point in ten and keep its full noise; averaging the
    points nearest each work point keeps all the counts (noise down by the
    square root of the points per bin).  Each bin is placed at the mean
    energy of its points, so the later interpolation has no half-bin shift.
    Axes with fewer than two points per work step are returned unchanged.

    Parameters
    ----------
    e : numpy.ndarray
        ``(N,)`` distinct ascending energies.
    y : numpy.ndarray
        ``(N,)`` or ``(B, N)`` intensities on ``e``.
    step : float
        Work-axis spacing (eV).
    spacing : float, optional
        :func:`point_spacing` of ``e`` when the caller has it already.

    Returns
    -------
    e_bin, y_bin : numpy.ndarray
        Bin energies ``(M,)`` and mean intensities ``(M,)`` or ``(B, M)``.
    """
    if e.size < 3 or not is_dense(point_spacing(e) if spacing is None else spacing, step):
        return e, y
    nearest = np.floor((e - e[0]) / step + 0.5).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, nearest[1:] != nearest[:-1]])
    counts = np.diff(np.r_[starts, e.size])
    return np.add.reduceat(e, starts) / counts, np.add.reduceat(y, starts, axis=-1) / counts


class Resampled(NamedTuple):
    """Measured spectra on the work axis, with what the measured points told about them.

    Returned by :func:`resample_measured` (one spectrum: ``noise`` a float,
    ``spikes`` an int, ``clipped`` a bool) and :func:`resample_shared_axis` (rows: ``(B,)`` arrays).
    """

    start: float          #: energy of the first work-axis point (eV)
    values: np.ndarray    #: intensities on ``start + step * arange(n)``
    noise: float | np.ndarray   #: noise sigma of the measured points, as on the work axis (:func:`measured_noise`)
    spikes: int | np.ndarray    #: spikes replaced before resampling (:func:`remove_spikes`)
    spacing: float | np.ndarray  #: median spacing of the distinct measured points (eV); of the points they were
    #: interpolated from when they were handed over linearly interpolated (:func:`point_noise`), per row for rows
    bridged: np.ndarray   #: ``(n,)`` work points inside a wide gap of measured points (:func:`bridged_points`)
    clipped: bool | np.ndarray  #: the maximum is held flat over several points (:func:`clipped_at_maximum`)
    padded: int = 0       #: zero-padding points set aside before resampling (the engine's ``zero_padding``)
    out_of_order: bool | np.ndarray = False  #: the energies went back across the window (:func:`out_of_order`)


def resample_shared_axis(energy: np.ndarray, intensities: np.ndarray, step: float = WORK_STEP_EV,
                         top: np.ndarray | None = None) -> Resampled:
    """:func:`resample_measured` for many spectra on one strictly ascending axis, vectorized.

    The pixels of a spectrum image share their energy axis; resampling them
    as one matrix costs one interpolation plan instead of one per spectrum.

    Parameters
    ----------
    energy : numpy.ndarray
        ``(N,)`` strictly ascending, finite.
    intensities : numpy.ndarray
        ``(B, N)`` finite.
    step : float
        Work-axis spacing (eV).
    top : numpy.ndarray, optional
        ``(B,)`` largest value of each row when the caller has it.

    Returns
    -------
    Resampled
        ``values`` ``(B, n)`` as :func:`to_uniform` gives row by row, ``noise``,
        ``spikes`` and ``clipped`` ``(B,)``.
    """
    e = np.asarray(energy, np.float64)
    spacing = point_spacing(e)
    # float32 rows (spectrum images) stay float32: the model reads float32, and
    # half the memory traffic is most of the cost of these whole-matrix passes
    y = np.asarray(intensities)
    y = y if y.dtype == np.float32 else y.astype(np.float64, copy=False)
    pn = point_noise(e, y, spacing)
    noise = on_work_axis(pn.sigma, pn.spacing, step)
    clipped = clipped_at_maximum(e, y, top)
    y, spikes = remove_spikes(e, y, pn.sigma)   # per measured point, not the work axis's equivalent
    n = int(math.floor((e[-1] - e[0]) / step + 1e-9)) + 1
    grid = e[0] + step * np.arange(n)
    start = float(e[0])
    e, y = bin_dense(e, y, step, spacing)
    k = np.clip(np.searchsorted(e, grid, side="right") - 1, 0, e.size - 2)
    t = np.clip((grid - e[k]) / (e[k + 1] - e[k]), 0.0, 1.0).astype(y.dtype)
    values = y[:, k] * (1 - t) + y[:, k + 1] * t
    return Resampled(start, values, noise, spikes, np.maximum(spacing, pn.spacing),
                     bridged_points(np.asarray(energy, np.float64), start, n, step), clipped)


def resample_measured(energy: np.ndarray, intensity: np.ndarray, step: float = WORK_STEP_EV) -> Resampled:
    """:func:`measured_noise`, :func:`remove_spikes` and :func:`to_uniform` of one spectrum in one pass.

    Returns the uniform row, the noise sigma of the measured points, the
    number of spikes replaced, the points' spacing and the bridged work points (:class:`Resampled`).
    """
    uniq, mean = checked_points(energy, intensity)
    spacing = point_spacing(uniq)
    pn = point_noise(uniq, mean, spacing)
    noise = on_work_axis(pn.sigma, pn.spacing, step)
    clipped = bool(clipped_at_maximum(uniq, mean))
    mean, spikes = remove_spikes(uniq, mean, pn.sigma)   # per measured point, not the work axis's equivalent
    start, values = _uniform_from_points(uniq, mean, step, spacing)
    return Resampled(start, values, noise, int(spikes), max(spacing, pn.spacing),
                     bridged_points(uniq, start, len(values), step), clipped)


def pack(spectra: list[tuple[np.ndarray, np.ndarray]], step: float = WORK_STEP_EV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring measured spectra (each ``(energy, intensity)``) onto padded uniform rows for :func:`preprocess`.

    Raises ``ValueError`` for a spectrum :func:`to_uniform` refuses; callers
    that must answer each spectrum individually call :func:`to_uniform` first.
    """
    rows = [to_uniform(e, y, step) for e, y in spectra]
    values, valid = pad_rows([v for _, v in rows])
    start = torch.tensor([s for s, _ in rows], dtype=torch.float64)
    return start, torch.from_numpy(values), torch.from_numpy(valid)


def pad_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Uniform rows of different lengths as one zero-padded float32 matrix and its ``valid`` mask."""
    n = max(len(v) for v in rows)
    values = np.zeros((len(rows), n), np.float32)
    valid = np.zeros((len(rows), n), bool)
    for i, v in enumerate(rows):
        values[i, : len(v)] = v
        valid[i, : len(v)] = True
    return values, valid
