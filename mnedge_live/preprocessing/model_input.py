"""The model input: aligned, background-free, normalized rows on the model grid (:func:`preprocess`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from mnedge_live.preprocessing.background import model_grid_constants, remove_background
from mnedge_live.preprocessing.constants import (
    L3_COVER_EV,
    L3_PLAUSIBLE_EV,
    L3_REFERENCE_EV,
    MODEL_GRID,
    WORK_STEP_EV,
)
from mnedge_live.preprocessing.edge_search import l2_measured, locate_l3
from mnedge_live.preprocessing.filters import correlate_rows, edge_hold, gauss_kernel, interp_rows
from mnedge_live.preprocessing.line_free_noise import correlated_noise


@dataclass
class Prepared:
    """Output of :func:`preprocess` for a batch.

    Attributes
    ----------
    x : torch.Tensor
        Model input ``(B, 2, len(MODEL_GRID))``.
    l3_ev : torch.Tensor
        Detected L3 maximum on the input's own axis (eV), ``(B,)``.
    shift_ev : torch.Tensor
        ``l3_ev - L3_REFERENCE_EV``: the coarse offset estimate, ``(B,)``.
    edge_snr : torch.Tensor
        Height of the L3 feature in the high-passed spectrum over its noise.
    l2_spacing_ev : torch.Tensor
        Detected L2-L3 distance (NaN where L2 is not measured).  This,
        ``edge_snr``, ``l2_height`` and ``psnr_db`` are NaN when
        :func:`preprocess` ran with ``diagnostics=False``.
    l2_height : torch.Tensor
        Height of the L2 line over the L3 line's, both in the band-pass that
        finds L2 (NaN where L2 is not measured).
    l2_covered, pre_edge_covered, post_edge_covered : torch.Tensor
        Booleans: the measured window reaches the L2 region / the pre-edge
        window / the post-edge window (without it the background is the
        pre-edge level, a constant: a background's slope stays in).
    l3_covered : torch.Tensor
        Boolean: the window reaches :data:`L3_COVER_EV` below and above L3.
    psnr_db : torch.Tensor
        Estimated PSNR (L3 height over the high-frequency noise), dB.
    background : torch.Tensor
        The background removed under the L3 maximum, in units of the L3
        line's height (the normalization): how far the line stands on a
        background the chord had to take away (an EELS power law of a dilute
        edge).  NaN with ``diagnostics=False``.
    l3_drop : torch.Tensor
        How far the lightly smoothed spectrum falls within
        :data:`~mnedge_live.preprocessing.constants.L3_DROP_WINDOW_EV` above the L3 maximum, in units of the L3
        line's high-passed height: an L3 line falls into the trough before L2,
        a rising slope or a step does not (0).  NaN with ``diagnostics=False``.
    dip_depth : torch.Tensor
        Deepest point of the background-free spectrum below zero on the
        measured model-grid points, in units of the L3 height (the
        normalization): lines that are dips (an inverted spectrum) show as
        a depth of several.  NaN with ``diagnostics=False``.
    stray_line : torch.Tensor
        The strongest line where a Mn L2,3 edge has none (below L3, past
        every L2), less a few noise sigmas, in units of the L3 line's
        high-passed height; 0 where none stands above the noise.  NaN with
        ``diagnostics=False``.
    stray_line_ev : torch.Tensor
        That line's energy relative to the L3 maximum (eV); NaN where there is none.
    second_stray_line : torch.Tensor
        The second strongest such line, at least :data:`STRAY_LINE_APART_EV`
        (4.5 eV) from the first, in the same units: one line there is possible
        (a plural-scattering replica of L3, with two maxima for a mixture), two
        are a pattern the engine refuses (:data:`MAX_SECOND_STRAY_LINE`).
    line_noise_ratio : torch.Tensor
        The noise at the lines' scale over the point-to-point noise, both
        measured where a Mn L2,3 edge has no lines
        (:func:`~mnedge_live.preprocessing.line_free_noise.correlated_noise`):
        about 1 (or below) for independent noise, several for noise correlated
        over several points.  NaN where the measured points are coarser than
        0.2 eV or too little of those stretches is measured, or with
        ``diagnostics=False``.
    line_psnr_db : torch.Tensor
        The L3 height over the noise at the lines' scale (dB).
    """

    x: torch.Tensor
    l3_ev: torch.Tensor
    shift_ev: torch.Tensor
    edge_snr: torch.Tensor
    l2_spacing_ev: torch.Tensor
    l2_height: torch.Tensor
    l2_covered: torch.Tensor
    pre_edge_covered: torch.Tensor
    post_edge_covered: torch.Tensor
    l3_covered: torch.Tensor
    psnr_db: torch.Tensor
    l3_drop: torch.Tensor
    dip_depth: torch.Tensor
    background: torch.Tensor
    stray_line: torch.Tensor
    stray_line_ev: torch.Tensor
    second_stray_line: torch.Tensor
    line_noise_ratio: torch.Tensor
    line_psnr_db: torch.Tensor


def preprocess(start: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None = None,
               step: float = WORK_STEP_EV, noise: torch.Tensor | None = None, diagnostics: bool = True,
               spacing: torch.Tensor | None = None) -> Prepared:
    """Turn a batch of uniformly sampled spectra into model input.

    Parameters
    ----------
    start : torch.Tensor
        ``(B,)`` energy of index 0 of each row (eV).
    values : torch.Tensor
        ``(B, N)`` intensities on ``start[b] + step * arange(N)``.
    valid : torch.Tensor, optional
        ``(B, N)`` bool: the measured (contiguous) window of each row; default all.
    step : float
        Axis spacing (eV); :data:`WORK_STEP_EV` for everything in this package.
    noise : torch.Tensor, optional
        ``(B,)`` noise sigma from the measured points (:func:`measured_noise`);
        NaN or None: estimated on the work axis.  Only the diagnostics
        (edge SNR, L2 search, PSNR) use it, never the model input.
        Intensities may be in any unit: each row is scaled to a largest
        magnitude of 1 before anything else.
    spacing : torch.Tensor, optional
        ``(B,)`` median spacing of each row's measured points (eV; default
        ``step``): the lag of the point-to-point noise the diagnostic
        ``line_noise_ratio`` compares with.
    diagnostics : bool
        Also measure the edge diagnostics (edge SNR, L2 spacing and height,
        PSNR), which the engine's rejection rules read.  Training needs the
        model input and the alignment only and passes False: the model input
        and ``l3_ev`` are the same, the diagnostics NaN, and the time of the
        noise estimate and the L2 analysis (a third of a synthetic batch's
        preprocessing) is saved.

    Returns
    -------
    Prepared
        Model input and the alignment diagnostics.
    """
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    # Rows in any unit (counts, or a drain current of 1e-12 A) are brought to
    # a largest magnitude of 1 first, in their own precision: the absolute
    # floors below (1e-12) must never be mistaken for the data's scale.
    all_valid = bool(valid.all())
    magnitude = (values.abs() if all_valid else torch.where(valid, values.abs(), 0.0)).amax(dim=1)
    magnitude = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
    values = (values / magnitude[:, None]).to(torch.float32)
    if noise is not None:
        noise = noise.to(magnitude.device) / magnitude
    b, n = values.shape
    start = start.to(values.device, torch.float64)
    held, first, last = edge_hold(values, valid, all_valid)
    window = ((L3_PLAUSIBLE_EV[0] - start) / step, (L3_PLAUSIBLE_EV[1] - start) / step)
    found = locate_l3(held, valid, first, last, step, noise, window=tuple(w.floor() for w in window),
                      diagnostics=diagnostics, all_valid=all_valid)
    l3_pos, edge_snr, l2_pos, l2_height, noise, l3_drop = found[:6]
    l3_ev = start + l3_pos.to(torch.float64) * step
    shift = l3_ev - L3_REFERENCE_EV
    # Model-grid energy g sits at index l3_pos + (g - L3_REFERENCE_EV) / step of the input row.
    c = model_grid_constants(values.device)
    pos = l3_pos[:, None] + c["rel_points"] * (WORK_STEP_EV / step)
    held_mask = (pos < first[:, None] - 1e-6) | (pos > last[:, None] + 1e-6)
    raw = interp_rows(held, pos)
    spec, pre_cov, post_cov = remove_background(raw, held_mask)
    # Normalize by the 0.3 eV-smoothed maximum within +-2 eV of L3 (smoothed
    # only there: the window lies far enough inside the grid that edge
    # padding never reaches it).
    k = gauss_kernel(0.3 / float(MODEL_GRID[1] - MODEL_GRID[0])).to(spec).view(-1)
    lo, hi = _l3_peak_window()
    half = k.numel() // 2
    peak = correlate_rows(spec[:, lo - half: hi + half], k).amax(dim=1)
    scale = peak.clamp(min=1e-12)
    spec = spec / scale[:, None]
    dip = (-torch.where(held_mask, torch.inf, spec).amin(dim=1) if diagnostics
           else torch.full_like(scale, torch.nan))
    i3 = _l3_index()
    background = ((raw[:, i3] - spec[:, i3] * scale) / scale if diagnostics
                  else torch.full_like(scale, torch.nan))
    x = torch.stack([spec, held_mask.to(torch.float32)], dim=1)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).clamp(-5.0, 5.0)
    l3_cov = (l3_pos - first >= L3_COVER_EV[0] / step) & (last - l3_pos >= L3_COVER_EV[1] / step)
    l2_cov = l2_measured(l3_pos, last, step)
    l2_spacing = (l2_pos - l3_pos) * step
    psnr = 20 * torch.log10(scale / (noise + 1e-12))
    if diagnostics:
        points = torch.full((b,), step, dtype=torch.float64) if spacing is None else spacing.to(torch.float64)
        line_sigma, line_ratio = correlated_noise(values, valid, l3_pos, step, points)
        line_ratio = line_ratio.to(torch.float32)
        line_psnr = (20 * torch.log10(scale.to(torch.float64) / (line_sigma + 1e-12))).to(torch.float32)
    else:
        line_ratio = line_psnr = torch.full_like(scale, torch.nan)
    return Prepared(x=x, l3_ev=l3_ev.to(torch.float32), shift_ev=shift.to(torch.float32), edge_snr=edge_snr,
                    l2_spacing_ev=l2_spacing, l2_height=l2_height.to(torch.float32), l2_covered=l2_cov,
                    pre_edge_covered=pre_cov, post_edge_covered=post_cov,
                    l3_covered=l3_cov, psnr_db=psnr, l3_drop=l3_drop.to(torch.float32), dip_depth=dip,
                    background=background, stray_line=found.stray_line.to(torch.float32),
                    stray_line_ev=found.stray_line_ev.to(torch.float32),
                    second_stray_line=found.second_stray_line.to(torch.float32), line_noise_ratio=line_ratio,
                    line_psnr_db=line_psnr)


@functools.lru_cache(maxsize=1)
def _l3_index() -> int:
    """Model-grid index of :data:`L3_REFERENCE_EV`, where the aligned L3 maximum sits."""
    return int(np.argmin(np.abs(MODEL_GRID - L3_REFERENCE_EV)))


@functools.lru_cache(maxsize=1)
def _l3_peak_window() -> tuple[int, int]:
    """Model-grid index range ``[lo, hi)`` within +-2 eV of L3, where the normalization peak is taken."""
    inside = np.flatnonzero(np.abs(MODEL_GRID - L3_REFERENCE_EV) <= 2.0)
    return int(inside[0]), int(inside[-1]) + 1
