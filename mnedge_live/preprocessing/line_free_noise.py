"""Noise correlated over several points, measured where a Mn L2,3 edge has no lines.

The noise estimate of the measured points (:mod:`~mnedge_live.preprocessing.noise`) compares each
point with its neighbours: right for detector noise that is independent from point to point, the
noise the model was trained on.  Noise correlated over several points (a smoothed export, a CCD's
point spread, a spectrum digitized from a smoothed figure) hardly changes from one point to the next,
so that estimate misses it, while at the scale of the lines (0.5-1 eV) it looks like fine structure:
measured spectra with such noise at a point-to-point PSNR of 25-30 dB read up to 0.7 off with nothing
flagged (benchmarks/RESULTS.md, 2026-12-07).

Here second differences ``y[i - L] - 2 y[i] + y[i + L]`` are measured in the stretches where a Mn
L2,3 edge has no lines (:data:`~mnedge_live.preprocessing.constants.STRAY_LINE_WINDOWS_EV`: below
L3, past L2), at the lag of the measured points and at lags of 0.3 and 0.6 eV.  Independent noise
gives the same sigma at every lag; noise correlated over more than the points' spacing gives more
at 0.3 eV than at the points' spacing; a smooth signal there (a plural-scattering replica, a line's
tail, a saturated edge) grows with the lag squared, which the two long lags separate from the noise.
"""

from __future__ import annotations

import torch

from mnedge_live.preprocessing.constants import STRAY_LINE_WINDOWS_EV

#: The lines' fine scale (eV): the lag at which the noise is compared with the point-to-point noise; at
#: twice the lag a smooth signal's second difference is 16 times larger (lag^4 in the variance) and the
#: noise's no larger.  Lags of 0.5 / 1 eV left 9 % of synthetic spectra and two of the four measured
#: files (windows from 4-6 eV below L3 to 20 eV above it) too little to measure, and a smooth signal's
#: higher orders flagged 4 of 1,500 synthetic spectra (benchmarks/RESULTS.md).
LINE_LAG_EV = 0.3
#: Largest spacing (eV) of the measured points for which the comparison is made: coarser points leave
#: too few of them within the lines' scale to tell correlated noise from independent noise.
MAX_SPACING_EV = 0.2
#: Fewest second differences (per lag, both stretches together) to measure from; fewer: NaN.
MIN_DIFFERENCES = 10


def _line_free(valid: torch.Tensor, l3_pos: torch.Tensor, step: float) -> torch.Tensor:
    """``(B, N)`` bool: measured points inside a line-free stretch around each row's L3."""
    rel = (torch.arange(valid.shape[1], device=valid.device, dtype=l3_pos.dtype)[None, :] - l3_pos[:, None]) * step
    free = torch.zeros(valid.shape, dtype=torch.bool, device=valid.device)
    for a, z in STRAY_LINE_WINDOWS_EV:
        free |= (rel >= a) & (rel <= z)
    return free & valid


def _lag_sigma(values: torch.Tensor, free: torch.Tensor, lag: int) -> torch.Tensor:
    """RMS / sqrt(6) of the second differences at ``lag`` points whose three points are all ``free`` (float64
    ``(B,)``; NaN with fewer than :data:`MIN_DIFFERENCES`).  The stretches lie more than 20 eV apart: a
    stencil with both ends free lies inside one."""
    b, n = values.shape
    if n <= 2 * lag:
        return torch.full((b,), torch.nan, dtype=torch.float64, device=values.device)
    inside = free[:, :n - 2 * lag] & free[:, lag:n - lag] & free[:, 2 * lag:]
    d2 = values[:, :n - 2 * lag] - 2 * values[:, lag:n - lag] + values[:, 2 * lag:]
    count = inside.sum(dim=1)
    ms = (d2.square() * inside).sum(dim=1).to(torch.float64) / count.clamp(min=1)
    return torch.where(count >= MIN_DIFFERENCES, (ms / 6.0).sqrt(), torch.nan)


def correlated_noise(values: torch.Tensor, valid: torch.Tensor, l3_pos: torch.Tensor, step: float,
                     spacing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise at the lines' scale and its ratio to the point-to-point noise, per row, in the line-free stretches.

    Parameters
    ----------
    values : torch.Tensor
        ``(B, N)`` rows on the uniform work axis.
    valid : torch.Tensor
        ``(B, N)`` bool, the measured points of each row.
    l3_pos : torch.Tensor
        ``(B,)`` fractional index of the L3 maximum (:func:`~mnedge_live.preprocessing.edge_search.locate_l3`).
    step : float
        Work-axis spacing (eV).
    spacing : torch.Tensor
        ``(B,)`` median spacing of each row's measured points (eV).

    Returns
    -------
    sigma : torch.Tensor
        ``(B,)`` float64: the noise sigma at :data:`LINE_LAG_EV`, less what grows like a smooth signal
        from there to twice the lag (``sigma_a^2 - (sigma_b^2 - sigma_a^2) / 15`` for lags ``a`` and
        ``b = 2 a``, floored at 0).
    ratio : torch.Tensor
        ``(B,)`` float64: ``sigma`` over the sigma at the measured points' own spacing: about 1 (or
        below) for independent noise, several for noise correlated over several points.  NaN where the
        points are coarser than :data:`MAX_SPACING_EV` or too little of the stretches is measured.
    """
    free = _line_free(valid, l3_pos, step)
    line = max(1, int(round(LINE_LAG_EV / step)))
    sig_line = _lag_sigma(values, free, line)
    sig_signal = _lag_sigma(values, free, 2 * line)
    sigma = (sig_line ** 2 - (sig_signal ** 2 - sig_line ** 2) / 15.0).clamp(min=0.0).sqrt()
    fine = spacing <= MAX_SPACING_EV + 1e-9
    # the points' own lag, rounded up: on points 0.105-0.15 eV apart a lag of one work step (0.1 eV) reads
    # the interpolation between them, too smooth (independent noise gave ratios of 1.4-1.8: a review)
    own = torch.clamp(torch.ceil(spacing.to(torch.float64) / step - 1e-6), min=1).to(torch.int64)
    lags = set(own[fine].tolist())
    point = torch.full_like(sigma, torch.nan)
    for lag in lags:
        at = _lag_sigma(values, free, lag)
        point = at if len(lags) == 1 else torch.where(own == lag, at, point)
    ratio = torch.where(fine, sigma / (point + 1e-30), torch.nan)
    return sigma, ratio
