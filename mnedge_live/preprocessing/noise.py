"""Noise of measured spectra, estimated on the measured points before any resampling."""

from __future__ import annotations

import math

import numpy as np

from mnedge_live.preprocessing.constants import WORK_STEP_EV
from mnedge_live.preprocessing.points import distinct_points, is_dense, point_spacing, row_median


def measured_noise(energy: np.ndarray, intensity: np.ndarray, step: float = WORK_STEP_EV) -> float:
    """Noise sigma of a measured spectrum, as the white-noise sigma on the work axis it is equivalent to.

    Estimated on the measured points themselves (robust median of second
    differences), because resampling a coarser axis onto ``step`` by linear
    interpolation hides the noise from any estimate made afterwards.  Noise
    on points ``d`` apart carries ``d / step`` times the power per eV of
    white noise of the same sigma on the work axis, hence the scaling.

    Parameters
    ----------
    energy, intensity : numpy.ndarray
        One spectrum as measured (any order, repeats allowed).
    step : float
        Spacing of the work axis (eV).
    """
    e, y = distinct_points(np.asarray(energy, np.float64).ravel(), np.asarray(intensity, np.float64).ravel())
    return noise_of_points(e, y, step)


def noise_of_points(e: np.ndarray, y: np.ndarray, step: float, spacing: float | None = None):
    """:func:`measured_noise` on distinct ascending points; ``y`` may be ``(N,)`` or ``(B, N)``.

    ``spacing``: :func:`point_spacing` of ``e`` when the caller has it already.
    """
    if y.shape[-1] < 5:
        return np.full(y.shape[:-1], np.nan) if y.ndim > 1 else float("nan")
    d2 = np.abs(y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]) / math.sqrt(6.0)
    sigma = 1.4826 * row_median(d2)
    spacing = point_spacing(e) if spacing is None else spacing
    # Dense points are averaged per work step (bin_dense): their noise shrinks with
    # the square root of the points per bin; coarse points keep theirs and
    # carry it over spacing / step work points.
    out = sigma * math.sqrt(spacing / step if is_dense(spacing, step) else max(spacing, step) / step)
    return float(out) if y.ndim == 1 else out
