"""Single-point spikes (cosmic rays, detector glitches): found on the measured points and repaired."""

from __future__ import annotations

import warnings

import numpy as np

#: A measured point is a spike (cosmic ray, detector glitch, digitizing slip) when it
#: stands above (or below) both neighbours by more than this many noise sigmas ...
SPIKE_NOISE_SIGMA = 10.0
#: ... and by more than this share of the spectrum's range ...
SPIKE_MIN_SHARE = 0.05
#: ... while the steps just beyond its neighbours are below this share of its own
#: (a line's flanks keep falling; a single bad point stands alone).
SPIKE_ISOLATION = 0.25
#: Points on either side whose second differences give a candidate's local noise (the global median
#: underrates the shot noise on the lines, where the counts are highest).
SPIKE_LOCAL_POINTS = 20
#: Largest gap (eV) to either neighbour at which a point can be called a spike: the
#: narrowest Mn L3 lines (about 0.4 eV FWHM) span three points or more up to here, on
#: coarser axes a true line can be a single point.
SPIKE_MAX_GAP_EV = 0.2


def find_spikes(e: np.ndarray, y: np.ndarray, noise) -> np.ndarray:
    """Single-point spikes of measured spectra (see :data:`SPIKE_NOISE_SIGMA` and the following).

    Parameters
    ----------
    e : numpy.ndarray
        ``(N,)`` distinct ascending energies.
    y : numpy.ndarray
        ``(N,)`` or ``(B, N)`` intensities on ``e``.
    noise : float or numpy.ndarray
        Noise sigma per row of each measured point (:func:`~mnedge_live.preprocessing.noise.point_noise`;
        not the work axis's equivalent, which is smaller for points finer than the work step).  A
        candidate must also stand out by :data:`SPIKE_NOISE_SIGMA` times the noise of the
        :data:`SPIKE_LOCAL_POINTS` points on either side of it (:func:`local_noise`).

    Returns
    -------
    numpy.ndarray
        Boolean, shaped like ``y``: the spikes.
    """
    y2 = np.atleast_2d(y)
    out = np.zeros(y2.shape, bool)
    if y2.shape[1] < 5:
        return out.reshape(y.shape)
    # With d the steps between points, point i stands out when the steps into and
    # out of it (d[i-1], d[i]) have opposite signs and are both large, while the
    # steps beyond (d[i-2], d[i+1]) are small.  Candidates by size first (rare),
    # the other tests only there.
    d = np.diff(y2, axis=1)
    ad = np.abs(d)
    sigma = np.atleast_1d(noise)
    floor = np.maximum(SPIKE_NOISE_SIGMA * np.where(np.isnan(sigma), np.inf, sigma),
                       SPIKE_MIN_SHARE * np.ptp(y2, axis=1))
    rise = np.minimum(ad[:, 1:-2], ad[:, 2:-1])          # centre i = column + 2
    rows, cols = np.nonzero(rise > floor[:, None])
    if rows.size:
        gap = np.diff(e)
        r = rise[rows, cols]
        keep = ((d[rows, cols + 1] * d[rows, cols + 2] < 0)
                & (np.maximum(ad[rows, cols], ad[rows, cols + 3]) < SPIKE_ISOLATION * r)
                & (np.maximum(gap[cols + 1], gap[cols + 2]) <= SPIKE_MAX_GAP_EV))
        rows, cols, r = rows[keep], cols[keep], r[keep]
        if rows.size:
            stands = r > SPIKE_NOISE_SIGMA * local_noise(y2, rows, cols + 2)
            out[rows[stands], cols[stands] + 2] = True
    return out.reshape(y.shape)


def local_noise(y: np.ndarray, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Noise sigma around points ``(rows, at)`` of ``y`` ``(B, N)``: the robust median of the second
    differences centred on the :data:`SPIKE_LOCAL_POINTS` points on either side of each, those touching it
    left out (0 where there are none)."""
    n = y.shape[1]
    centre = at[:, None] + np.arange(-SPIKE_LOCAL_POINTS, SPIKE_LOCAL_POINTS + 1)[None, :]
    usable = (centre >= 1) & (centre <= n - 2) & (np.abs(centre - at[:, None]) > 1)
    c = np.clip(centre, 1, n - 2)
    rr = rows[:, None]
    d2 = np.abs(y[rr, c + 1].astype(np.float64) - 2 * y[rr, c] + y[rr, c - 1])
    d2 = np.where(usable, d2, np.nan)
    with warnings.catch_warnings():   # a candidate without usable neighbours: NaN, taken as 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        sigma = 1.4826 * np.nanmedian(d2, axis=1) / np.sqrt(6.0)
    return np.nan_to_num(sigma, nan=0.0)


def remove_spikes(e: np.ndarray, y: np.ndarray, noise) -> tuple[np.ndarray, np.ndarray]:
    """Replace the spikes of :func:`find_spikes` by the mean of their neighbours.

    The engine does this on the measured points before resampling (a spike on
    a coarse axis would otherwise be spread over several work points) and
    flags every readout it touched, so a repair is never silent.

    Returns
    -------
    y : numpy.ndarray
        A copy with the spikes replaced (the input when there are none).
    count : numpy.ndarray
        Spikes per row (a 0-d array for a single spectrum).
    """
    spikes = find_spikes(e, y, noise)
    count = spikes.sum(axis=-1)
    if not spikes.any():
        return y, count
    y = np.array(y, dtype=np.result_type(y, np.float32), copy=True)
    rows, cols = np.nonzero(np.atleast_2d(spikes))
    y2 = np.atleast_2d(y)
    y2[rows, cols] = 0.5 * (y2[rows, cols - 1] + y2[rows, cols + 1])
    return y, count
