"""Noise of measured spectra, estimated on the measured points before any resampling."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mnedge_live.preprocessing.constants import WORK_STEP_EV
from mnedge_live.preprocessing.points import distinct_points, is_dense, point_spacing, row_median

#: A second difference within this share of a row's range of zero is "exactly straight": three points on
#: one line, as linear interpolation leaves them (text exports round to about 1e-6 of the range; noisy
#: measured points are that straight about once in a few hundred triples even at 60 dB).
STRAIGHT_TOLERANCE = 1e-5
#: Share of exactly straight triples from which the points are taken as linearly interpolated from coarser
#: ones (a spectrum exported on a finer grid than it was measured on): the median second difference is
#: then zero and says nothing of the noise, which is estimated on the original points instead.
INTERPOLATED_SHARE = 0.3
#: Fewest straight runs (segments between original points) to estimate the noise from.
MIN_SEGMENTS = 8
#: Largest share of equal neighbours (first differences exactly zero) of interpolated points: noisy points
#: interpolated have almost none, while integer counts and coarse digitizer levels repeat their values
#: (straight triples there are flat ones, not an interpolation).
MAX_EQUAL_SHARE = 0.1
#: Largest spread (interquartile range over median) of the distances between segments: an interpolation
#: has regular ones (at most 0.4 measured), repeated values give irregular ones (0.6-1.2).
MAX_SEGMENT_SPREAD = 0.5


class PointNoise(NamedTuple):
    """Noise of measured points: ``sigma`` per point, and the ``spacing`` (eV) of the points it is on.

    For points linearly interpolated from coarser ones, both are the original points' (the noise their
    interpolation spreads over several points); otherwise the points' own.  Arrays ``(B,)`` for rows.
    """

    sigma: float | np.ndarray
    spacing: float | np.ndarray


def measured_noise(energy: np.ndarray, intensity: np.ndarray, step: float = WORK_STEP_EV) -> float:
    """Noise sigma of a measured spectrum, as the white-noise sigma on the work axis it is equivalent to.

    Estimated on the measured points themselves (robust median of second
    differences), because resampling a coarser axis onto ``step`` by linear
    interpolation hides the noise from any estimate made afterwards (points
    handed over already interpolated: :func:`point_noise`).  Noise on points
    ``d`` apart carries ``d / step`` times the power per eV of white noise of
    the same sigma on the work axis, hence the scaling.

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
    pn = point_noise(e, y, point_spacing(e) if spacing is None else spacing)
    return on_work_axis(pn.sigma, pn.spacing, step)


def on_work_axis(sigma, spacing, step: float):
    """Per-point noise ``sigma`` of points ``spacing`` apart as the white-noise sigma on the work axis.

    Dense points are averaged per work step (``bin_dense``): their noise shrinks with the square root
    of the points per bin; coarse points keep theirs and carry it over ``spacing / step`` work points.
    """
    sp = np.asarray(spacing, np.float64)
    factor = np.where(is_dense(sp, step), sp / step, np.maximum(sp, step) / step)
    out = np.asarray(sigma, np.float64) * np.sqrt(factor)
    return float(out) if out.ndim == 0 else out


def second_difference_sigma(d2: np.ndarray):
    """Sigma of independent noise from the absolute second differences ``d2`` of its points (robust: their
    median over the last axis, 1.4826 / sqrt(6) of it, as a Gaussian's)."""
    return 1.4826 * row_median(d2) / math.sqrt(6.0)


def point_noise(e: np.ndarray, y: np.ndarray, spacing: float) -> PointNoise:
    """Noise sigma per measured point (robust median of second differences) and the spacing it is on.

    Points linearly interpolated from coarser ones (:data:`INTERPOLATED_SHARE` of them exactly straight)
    have no noise between the original points: there the noise is estimated from the changes of slope
    between the straight segments, which are the second differences of the original points
    (:func:`interpolated_noise`), and the spacing is theirs.

    Parameters
    ----------
    e : numpy.ndarray
        ``(N,)`` distinct ascending energies.
    y : numpy.ndarray
        ``(N,)`` or ``(B, N)`` intensities.
    spacing : float
        :func:`point_spacing` of ``e``.
    """
    if y.shape[-1] < 5:
        nan = np.full(y.shape[:-1], np.nan) if y.ndim > 1 else float("nan")
        return PointNoise(nan, np.full(y.shape[:-1], spacing) if y.ndim > 1 else spacing)
    d2 = np.abs(y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2])
    sigma = second_difference_sigma(d2)
    tol = STRAIGHT_TOLERANCE * np.ptp(y, axis=-1)
    straight = d2 <= np.asarray(tol)[..., None]
    equal = (y[..., 1:] == y[..., :-1]).mean(axis=-1)
    candidate = (straight.mean(axis=-1) >= INTERPOLATED_SHARE) & (equal <= MAX_EQUAL_SHARE)
    if not np.any(candidate):
        return PointNoise(sigma, np.full(y.shape[:-1], spacing) if y.ndim > 1 else spacing)
    rows = np.atleast_2d(y)
    flat = np.atleast_2d(straight)
    sig = np.array(np.atleast_1d(sigma), np.float64)
    sp = np.full(rows.shape[0], float(spacing))
    for r in np.flatnonzero(np.atleast_1d(candidate)):
        found = interpolated_noise(e, rows[r], flat[r])
        if found is not None:
            sig[r], sp[r] = found
    return PointNoise(sig, sp) if y.ndim > 1 else PointNoise(float(sig[0]), float(sp[0]))


def interpolated_noise(e: np.ndarray, y: np.ndarray, straight: np.ndarray) -> tuple[float, float] | None:
    """``(sigma, spacing)`` of the original points of a linearly interpolated spectrum, or None.

    ``straight[k]``: points ``k``, ``k + 1``, ``k + 2`` lie on one line.  Each run of straight triples is a
    segment between two original points; for segments ``s`` apart (centre to centre) the original
    points' second difference is ``s`` times the change of slope from one segment to the next.  None when
    fewer than :data:`MIN_SEGMENTS` segments follow each other, when their distances spread by more than
    :data:`MAX_SEGMENT_SPREAD` or when no noise is left (not an interpolation of noisy points: a noiseless
    spectrum's flat stretches, repeated values of counts, say): the caller keeps its plain estimate.
    """
    idx = np.flatnonzero(straight)
    if idx.size == 0:
        return None
    breaks = np.flatnonzero(np.diff(idx) > 1)
    first = np.r_[idx[0], idx[breaks + 1]]          # a run of straight triples first..last covers
    last = np.r_[idx[breaks], idx[-1]] + 2          # the points first..last + 2
    if first.size < MIN_SEGMENTS:
        return None
    slope = (y[last] - y[first]) / (e[last] - e[first])
    centre = 0.5 * (e[first] + e[last])
    apart = np.diff(centre)
    # neighbours: the next segment starts within two points of this one's end (one original point between)
    neighbours = (first[1:] - last[:-1]) <= 2
    if int(neighbours.sum()) < MIN_SEGMENTS - 1:
        return None
    apart = apart[neighbours]
    q1, med, q3 = np.percentile(apart, (25, 50, 75))
    if q3 - q1 > MAX_SEGMENT_SPREAD * med:
        return None
    sigma = 1.4826 * float(np.median(np.abs(np.diff(slope))[neighbours] * apart)) / math.sqrt(6.0)
    return (sigma, float(med)) if sigma > 0 else None
