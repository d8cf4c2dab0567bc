"""Finding the Mn L3 line and measuring the L2 line of each row (alignment and edge diagnostics)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mnedge_live.preprocessing.constants import (
    CENTROID_NOISE_SIGMA,
    L2_BAND_EV,
    L2_CENTROID_EV,
    L2_FLANK_MARGIN_SIGMA,
    L2_FLANK_REACH_EV,
    L2_OUTSIDE_MARGIN_REL,
    L2_OUTSIDE_MARGIN_SIGMA,
    L2_SEARCH_EV,
    L3_CENTROID_EV,
    L3_DROP_WINDOW_EV,
    MIN_EDGE_SNR,
    MN_SPACING_ACCEPTED_EV,
    MN_SPIN_ORBIT_EV,
    MN_SPIN_ORBIT_RANGE_EV,
    NOISE_FLOOR,
    STRAY_LINE_APART_EV,
    STRAY_LINE_NOISE_SIGMA,
    STRAY_LINE_WINDOWS_EV,
    WORK_STEP_EV,
)
from mnedge_live.preprocessing.filters import (
    correlate_rows,
    gauss_kernel,
    hold_outside,
    pad_edges,
    positions,
    smooth,
    smooth_many,
)


class EdgeSearch(NamedTuple):
    """What :func:`locate_l3` found in each row, every field ``(B,)``; see its Returns."""

    l3_pos: torch.Tensor
    edge_snr: torch.Tensor
    l2_pos: torch.Tensor
    l2_height: torch.Tensor
    noise: torch.Tensor
    l3_drop: torch.Tensor
    stray_line: torch.Tensor
    stray_line_ev: torch.Tensor
    second_stray_line: torch.Tensor


@functools.lru_cache(maxsize=8)
def _doublet_template(step: float) -> torch.Tensor:
    """Zero-mean, unit-norm L3/L2 template (two Gaussians :data:`MN_SPIN_ORBIT_EV` apart, L2 at half height) from 3 eV below L3."""
    t = torch.arange(-3.0, MN_SPIN_ORBIT_EV + 3.0 + 1e-6, step)
    g = torch.exp(-0.5 * (t / 0.8) ** 2) + 0.5 * torch.exp(-0.5 * ((t - MN_SPIN_ORBIT_EV) / 1.0) ** 2)
    g = g - g.mean()
    return g / g.norm()


@functools.lru_cache(maxsize=8)
def _score_noise_gain(step: float) -> float:
    """Std of the doublet score for unit white noise (its impulse response's norm)."""
    tmpl = _doublet_template(step)
    n = 4 * tmpl.numel() + int(40.0 / step)
    imp = torch.zeros(1, n, dtype=tmpl.dtype)
    imp[0, n // 2] = 1.0
    hp = smooth(imp, 0.3, step) - smooth(imp, 3.0, step)
    resp = F.conv1d(hp[:, None], tmpl.view(1, 1, -1), padding=tmpl.numel() - 1)
    return float(resp.norm())


@functools.lru_cache(maxsize=8)
def _bandpass_noise_gain(step: float, narrow: float, wide: float) -> float:
    """Std of ``smooth(narrow) - smooth(wide)`` for unit white noise (its impulse response's norm)."""
    n = 2 * int(8 * wide / step) + 1
    imp = torch.zeros(1, n, dtype=torch.float64)
    imp[0, n // 2] = 1.0
    return float((smooth(imp, narrow, step) - smooth(imp, wide, step)).norm())


@functools.lru_cache(maxsize=16)
def _offsets(half: int, device: torch.device) -> torch.Tensor:
    """``arange(-half, half + 1)`` (int64) on ``device``: the neighbourhood of a point."""
    return torch.arange(-half, half + 1, device=device)


#: Relative energy (eV) given to unmeasured points in the L2 analysis: below every window.
_NO_ENERGY = -1.0e6


def locate_l3(held: torch.Tensor, valid: torch.Tensor, first: torch.Tensor, last: torch.Tensor,
              step: float = WORK_STEP_EV, noise: torch.Tensor | None = None,
              window: tuple[torch.Tensor, torch.Tensor] | None = None, diagnostics: bool = True,
              all_valid: bool | None = None) -> EdgeSearch:
    """Find the L3 maximum (fractional index) of each row from the L3/L2 doublet.

    ``noise`` (B,), when given and finite, replaces the estimate made on the
    work axis (see :func:`measured_noise`).

    ``window`` (lowest, highest index, each ``(B,)``) is where a Mn L3 may be
    (:data:`L3_PLAUSIBLE_EV`). Where the strongest doublet lies outside it
    (another element's L2,3 edge in a wide window: Fe at +67 eV, Co at
    +138 eV), the strongest one inside that is a line of its own is taken
    instead: a doublet detected above the noise (:data:`MIN_EDGE_SNR`), at
    least 1 eV inside the window (not the flank of an edge beyond it), whose
    high-passed height exceeds everything else within 16 eV (L3 is the
    strongest line of its edge: neither the L2 of an L3 below the window nor a
    side lobe whose "L2" is an L3 above it qualifies, and such a lobe, the
    window's strongest doublet score when the other edge lies just beyond the
    window, does not hide a Mn edge further inside). Otherwise the
    strongest doublet stays, and the engine rejects it as not Mn L3.

    ``all_valid``: ``bool(valid.all())`` when the caller has it already.

    ``diagnostics=False`` finds the L3 maximum only (what training needs:
    the model input depends on nothing else): the noise is then estimated
    only for rows searched inside ``window``, and ``edge_snr``, ``l2_pos``,
    ``l2_height``, ``noise``, ``l3_drop`` and the stray lines come back NaN.

    Returns
    -------
    EdgeSearch, whose fields are:
    l3_pos : fractional index of the L3 maximum ``(B,)``
    edge_snr : L3 height in the high-passed spectrum over the high-pass noise ``(B,)``
    l2_pos : fractional index of the L2 line (NaN where not measured): its
        maximum, or the L3 maximum plus the distance between the L2 and L3
        line centroids (:func:`_line_centroid_spacing`), whichever is nearer
        Mn's spin-orbit splitting
    l2_height : the L2 line's maximum in the L2 band-pass over the L3 line's
        (NaN where L2 is not measured): about 0 where there is no L2 line
    noise : robust estimate of the point-to-point noise sigma ``(B,)``
    l3_drop : fall of the lightly smoothed spectrum within :data:`L3_DROP_WINDOW_EV`
        above the L3 maximum, over the line's high-passed height (:func:`_l3_drop`) ``(B,)``
    stray_line, stray_line_ev, second_stray_line : the strongest line where a Mn L2,3 edge has none,
        over the L3 line's high-passed height, its energy relative to the L3 maximum (eV), and the
        second strongest such line at least :data:`STRAY_LINE_APART_EV` from it (:func:`_stray_line`)
    """
    b, n = held.shape
    all_valid = bool(valid.all()) if all_valid is None else all_valid
    fine, broad = smooth_many(held, (0.3, L2_BAND_EV[1]), step)
    if not all_valid:
        # Past a row's window its smoothed values stay those at the window's ends, as for a row measured end to
        # end (whose filters pad by repeating its ends): a spectrum reads the same alone and among longer rows.
        fine, broad = hold_outside(fine, first, last), hold_outside(broad, first, last)
    hp = fine - broad
    tmpl = _doublet_template(step).to(held)
    m = tmpl.numel()
    lead = int(round(3.0 / step))
    # score[i] = correlation of the template with hp when L3 sits at index i.
    score = correlate_rows(pad_edges(hp, lead, m - lead - 1), tmpl)
    idx = positions(n, held.device)
    margin = int(1.0 / step)   # no L3 maximum within 1 eV of a window's ends
    if all_valid:   # every row measured end to end: the same window for all, two strips instead of a mask
        score[:, :margin] = -torch.inf
        score[:, max(n - margin, 0):] = -torch.inf
    else:
        inside = (idx >= (first + margin)[:, None]) & (idx <= (last - margin)[:, None])
        score = torch.where(inside, score, -torch.inf)
    gain = _score_noise_gain(step)
    # the noise of every row for the diagnostics; without them, only of the rows the window search asks for
    noise = row_noise(held, valid, noise) if diagnostics else noise

    def score_noise_of(rows: torch.Tensor) -> torch.Tensor:
        sigma = noise[rows] if diagnostics else row_noise(held[rows], valid[rows], _rows_of(noise, rows))
        return sigma * gain + 1e-12

    coarse = score.argmax(dim=1)
    if window is not None:
        coarse = _mn_window_doublet(score, hp, coarse, idx, window, step, score_noise_of)
    # Refine: the maximum of the lightly smoothed spectrum within +-1.5 eV
    # (read from the points of that window only; clamping repeats an end
    # point, which cannot change the first maximum's index).
    near = (coarse[:, None] + _offsets(int(round(1.5 / step)), held.device)).clamp(0, n - 1)
    cand = torch.gather(fine, 1, near)
    if not all_valid:
        cand = cand.masked_fill(~torch.gather(valid, 1, near), -torch.inf)
    k = torch.gather(near, 1, cand.argmax(dim=1, keepdim=True)).clamp(1, n - 2)
    ym, y0, yp = torch.gather(fine, 1, k + _offsets(1, held.device)).unbind(1)
    denom = ym - 2 * y0 + yp
    frac = torch.where(denom.abs() > 1e-12, 0.5 * (ym - yp) / denom, 0.0).clamp(-0.5, 0.5)
    l3_pos = k[:, 0] + frac
    if not diagnostics:
        nan = torch.full_like(l3_pos, torch.nan)
        return EdgeSearch(l3_pos, nan, nan, nan, nan, nan, nan, nan, nan)
    # Edge detection: the doublet score (a matched filter) over its response to
    # white noise of the estimated sigma.
    edge_snr = score.gather(1, coarse[:, None])[:, 0] / (noise * gain + 1e-12)
    # L2: the white line 7-16 eV above L3 (wider than Mn's range, so that other
    # edges show their own spacing) when Mn's L2 range is measured.  A broader
    # band-pass than for L3 (L2 is broader and weaker), and the maximum inside
    # Mn's range is kept unless one outside it is higher by more than
    # L2_OUTSIDE_MARGIN_SIGMA noise sigmas: noise and L3 fine structure must not
    # turn a Mn spectrum into "another element", while the L2 line of Fe, Cr,
    # ... (nothing at +11 eV) still shows its own spacing.
    # All of it reads the rows only from L3_CENTROID_EV[0] to L2_SEARCH_EV[1] around L3 (and one point
    # beyond each end for the local-maximum test): a window of fixed width gathered per row, so the
    # work does not grow with the measured span. ``pos``: row index of each window point (may lie
    # outside the row; such points are unmeasured).
    pos, bp = _l2_band_pass_window(fine, broad, l3_pos, step)
    bp_noise = noise * _bandpass_noise_gain(step, *L2_BAND_EV)
    in_row = (pos >= 0) & (pos <= n - 1)
    measured = in_row if all_valid else in_row & torch.gather(valid, 1, pos.clamp(0, n - 1))
    # Unmeasured points fall in no window (all windows lie above -5 eV).
    rel = torch.where(measured, (pos - l3_pos[:, None]) * step, _NO_ENERGY)
    searched = (rel >= L2_SEARCH_EV[0]) & (rel <= L2_SEARCH_EV[1])
    mn_range = searched & (rel >= MN_SPIN_ORBIT_RANGE_EV[0]) & (rel <= MN_SPIN_ORBIT_RANGE_EV[1])
    # Outside Mn's range only local maxima of the band-pass count (a slope at the
    # end of the search window, e.g. from plural scattering, is no line); a row's
    # first and last points are no maxima.
    peak = F.pad((bp[:, 1:-1] >= bp[:, :-2]) & (bp[:, 1:-1] >= bp[:, 2:]), (1, 1), value=False)
    peak = peak & (pos > 0) & (pos < n - 1)
    in_val, in_loc = torch.where(mn_range, bp, -torch.inf).max(dim=1)
    out_val, out_loc = torch.where(searched & ~mn_range & peak, bp, -torch.inf).max(dim=1)
    margin = torch.maximum(L2_OUTSIDE_MARGIN_SIGMA * bp_noise, L2_OUTSIDE_MARGIN_REL * in_val.clamp(min=0))
    outside = out_val > in_val + margin
    # where Mn's range holds no line, only the flank of one just outside it (within L2_FLANK_REACH_EV of
    # its ends), that line is the L2; not a line further out (an L3 plasmon replica 13-16 eV above L3 of a
    # thick sample beyond a flank at 12.4 eV). A flank at one end beside a line within reach of the other
    # would need the lower of the two lines to rise above the higher one's flank: not seen in the review.
    flank = ~torch.gather(peak, 1, in_loc[:, None])[:, 0]
    lo, hi = MN_SPIN_ORBIT_RANGE_EV
    beside = ((rel < lo) & (rel >= lo - L2_FLANK_REACH_EV)) | ((rel > hi) & (rel <= hi + L2_FLANK_REACH_EV))
    side_val, side_loc = torch.where(searched & peak & beside, bp, -torch.inf).max(dim=1)
    by_flank = flank & ~outside & (side_val > in_val + L2_FLANK_MARGIN_SIGMA * bp_noise)
    out_val, out_loc = torch.where(by_flank, side_val, out_val), torch.where(by_flank, side_loc, out_loc)
    outside = outside | by_flank
    l2_loc = torch.where(outside, out_loc, in_loc)
    # The spacing is measured between the maxima and between the line
    # centroids; the one nearer Mn's splitting counts.  Maxima are fooled by
    # mixed valences, centroids by plural-scattering replicas of L3 reaching
    # into the L2 window; another element's splitting shows in both.
    by_max = torch.gather(pos, 1, l2_loc[:, None])[:, 0].to(held.dtype)
    l2_window = (rel >= L2_CENTROID_EV[0]) & (rel <= L2_CENTROID_EV[1])
    by_centroid = l3_pos + _line_centroid_spacing(bp, bp_noise, rel, l2_window) / step
    nearer = (by_centroid - l3_pos - MN_SPIN_ORBIT_EV / step).abs() < (by_max - l3_pos - MN_SPIN_ORBIT_EV / step).abs()
    l2_at = torch.where(nearer, by_centroid, by_max)
    has_l2 = l2_measured(l3_pos, last, step)
    l2_pos = l2_at.masked_fill(~has_l2, torch.nan)
    # How strong the line taken for L2 is against L3 in the same band-pass (L3: its maximum within
    # +-0.5 eV of the L3 position): a single line, or an edge step without lines, has none.
    l3_val = torch.where(rel.abs() <= 0.5, bp, -torch.inf).amax(dim=1)
    l2_val = torch.where(outside, out_val, in_val)
    l2_height = torch.where(has_l2, l2_val / l3_val.clamp(min=1e-30), torch.nan)
    stray = _stray_line(hp, k, first, last, noise * _bandpass_noise_gain(step, 0.3, L2_BAND_EV[1]), step,
                        None if all_valid else valid)
    return EdgeSearch(l3_pos, edge_snr, l2_pos, l2_height, noise, _l3_drop(fine, hp, k, last, step), *stray)


def _stray_line(hp: torch.Tensor, k: torch.Tensor, first: torch.Tensor, last: torch.Tensor, hp_noise: torch.Tensor,
                step: float, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The strongest line of the high-passed rows ``hp`` in :data:`STRAY_LINE_WINDOWS_EV` around index ``k``.

    A Mn L2,3 edge has its lines within a few eV of L3 and of L2; below L3
    (the pre-edge) and past L2 it has none as strong as L3 (the other valences'
    L3 and L2 lines of a mixture lie at most 4.2 and 15.8 eV above the L3
    maximum, at +5 % of axis scale).  A periodic input (lines every few eV) or
    a window holding another element's doublet has them there.  Each local
    maximum of ``hp`` at measured points in those windows counts less
    :data:`STRAY_LINE_NOISE_SIGMA` noise sigmas ``hp_noise`` (B,), over the
    height of ``hp`` at ``k`` (B, 1).  One line stronger than half of L3 there
    is possible (a plural-scattering replica of L3 at t/lambda above 1, with two
    maxima up to about 4 eV apart when two valences' L3 lines are replicated);
    two lines :data:`STRAY_LINE_APART_EV` or more apart are a pattern (the
    engine's rule reads the second).

    Returns
    -------
    ratio : the strongest such line over L3's height ``(B,)``; 0 where there is none
    rel_ev : its energy relative to the L3 maximum (eV) ``(B,)``; NaN where there is none
    second : the strongest such line at least :data:`STRAY_LINE_APART_EV` from the first, over L3's height
    """
    n = hp.shape[1]
    offsets, rel, in_windows = _stray_line_span(step, hp.device)
    apart = int(round(STRAY_LINE_APART_EV / step))     # in whole points: no float rounding at the limit
    pos = k + offsets                                   # the span, one point more at each end
    around = torch.gather(hp, 1, pos.clamp(0, n - 1))
    mid, y0 = pos[:, 1:-1], around[:, 1:-1]
    # a local maximum needs both neighbours measured; a row's first and last points are none
    ok = in_windows & (mid > first[:, None]) & (mid < last[:, None])
    if valid is not None:
        ok &= torch.gather(valid, 1, mid.clamp(0, n - 1))
    peak = ok & (y0 >= around[:, :-2]) & (y0 >= around[:, 2:])
    value = torch.where(peak, y0 - STRAY_LINE_NOISE_SIGMA * hp_noise[:, None], -torch.inf)
    best, where = value.max(dim=1)
    at_best = rel[where]
    far = (positions(rel.numel(), hp.device)[None, :] - where[:, None]).abs() >= apart   # the span is contiguous
    second = torch.where(far, value, -torch.inf).amax(dim=1)
    height = torch.gather(hp, 1, k)[:, 0].clamp(min=1e-30)
    rel_ev = torch.where(best > 0, at_best.to(hp.dtype), torch.nan)
    return best.clamp(min=0.0) / height, rel_ev, second.clamp(min=0.0) / height


@functools.lru_cache(maxsize=8)
def _stray_line_span(step: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets (points) from L3 spanning :data:`STRAY_LINE_WINDOWS_EV` with one more at each end, the energies
    (eV) of the span without those ends, and which of them lie in the windows."""
    lo = int(round(STRAY_LINE_WINDOWS_EV[0][0] / step))
    hi = int(round(STRAY_LINE_WINDOWS_EV[1][1] / step))
    offsets = torch.arange(lo - 1, hi + 2, device=device)
    rel = offsets[1:-1].to(torch.float32) * step
    (a, b), (c, d) = STRAY_LINE_WINDOWS_EV
    return offsets, rel, ((rel >= a) & (rel <= b)) | ((rel >= c) & (rel <= d))


def _l3_drop(fine: torch.Tensor, hp: torch.Tensor, k: torch.Tensor, last: torch.Tensor, step: float) -> torch.Tensor:
    """How far the lightly smoothed rows ``fine`` fall within :data:`L3_DROP_WINDOW_EV` above index ``k`` ``(B, 1)``.

    The fall (the value at ``k`` minus the lowest measured value up to the
    window's end) over the high-passed height ``hp`` at ``k``; 0 where that
    height is not positive.  An L3 line falls into the trough before L2 (by
    more than its own high-passed height in the measured oxides); a rising
    slope or a step does not fall at all.
    """
    n = fine.shape[1]
    after = k + positions(int(round(L3_DROP_WINDOW_EV / step)) + 1, fine.device)[None, :]
    after = torch.minimum(after, last[:, None].clamp(min=0)).clamp(max=n - 1)   # measured points only
    top = torch.gather(fine, 1, k)[:, 0]
    drop = top - torch.gather(fine, 1, after).amin(dim=1)
    height = torch.gather(hp, 1, k)[:, 0]
    return torch.where(height > 0, drop / height.clamp(min=1e-30), 0.0)


def l2_measured(l3_pos: torch.Tensor, last: torch.Tensor, step: float = WORK_STEP_EV) -> torch.Tensor:
    """Boolean ``(B,)``: the measured window reaches past Mn's L2 range above the L3 position ``l3_pos``."""
    return (l3_pos + (MN_SPIN_ORBIT_RANGE_EV[1] + 0.5) / step) <= last


def row_noise(held: torch.Tensor, valid: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
    """Point-to-point noise sigma of each row ``(B,)``: ``given`` where finite, else estimated here.

    The estimate is the median absolute second difference of the measured
    (valid) points over ``sqrt(6)``, times 1.4826: robust against the lines
    themselves, which are smooth on the scale of three points.  The engine
    gives the measured-point estimate (:func:`~mnedge_live.preprocessing.measured_noise`),
    which resampling would hide.  Rows are scaled to a largest magnitude of 1
    (:func:`~mnedge_live.preprocessing.preprocess` does), and no sigma is taken
    below :data:`NOISE_FLOOR` of that: a row without noise has no edge to detect
    in its rounding errors.
    """
    given = given.to(held.dtype) if given is not None else None
    if given is not None and bool(torch.isfinite(given).all()):
        est = given
    else:
        d2 = (held[:, 2:] - 2 * held[:, 1:-1] + held[:, :-2]) / math.sqrt(6.0)
        d2 = torch.where(valid[:, 1:-1], d2.abs(), torch.nan)
        est = torch.nanmedian(d2, dim=1).values * 1.4826
        if given is not None:
            est = torch.where(torch.isfinite(given), given, est)
    return torch.nan_to_num(est, nan=0.0).clamp(min=NOISE_FLOOR)


def _rows_of(values: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else values[rows]


def _l2_band_pass_window(fine: torch.Tensor, broad: torch.Tensor, l3_pos: torch.Tensor,
                         step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L2 band-pass (``smooth(fine, ...) - broad``, the narrow width of :data:`L2_BAND_EV`) on a window per row.

    The window runs from ``L3_CENTROID_EV[0]`` to ``L2_SEARCH_EV[1]`` around
    each row's L3 position ``l3_pos``, one point more at each end.  Returns
    the row index of every window point ``(B, W)`` (it may lie outside the
    row: such values are meaningless and callers mask them) and the
    band-pass there, equal to the whole-row band-pass at the same indices up
    to rounding: gathering with clamped indices is the replicate padding of
    :func:`smooth`.
    """
    n = fine.shape[1]
    lo_ev, hi_ev = L3_CENTROID_EV[0], max(L2_SEARCH_EV[1], L2_CENTROID_EV[1])
    width = int(math.ceil((hi_ev - lo_ev) / step)) + 4
    first = torch.floor(l3_pos + lo_ev / step).long() - 1
    pos = first[:, None] + positions(width, fine.device)
    k = gauss_kernel(math.sqrt(L2_BAND_EV[0] ** 2 - 0.3**2) / step).to(fine).view(-1)  # Gaussians add in quadrature
    half = k.numel() // 2
    reach = (first[:, None] - half + positions(width + 2 * half, fine.device)).clamp(0, n - 1)
    narrow = correlate_rows(torch.gather(fine, 1, reach), k)
    return pos, narrow - torch.gather(broad, 1, pos.clamp(0, n - 1))


def _mn_window_doublet(score: torch.Tensor, hp: torch.Tensor, coarse: torch.Tensor, idx: torch.Tensor,
                       window: tuple[torch.Tensor, torch.Tensor], step: float,
                       score_noise_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Index of the doublet to align on: ``coarse``, or the strongest line inside ``window`` (see :func:`locate_l3`).

    ``score_noise_of(rows)`` gives the doublet score's noise sigma of those
    rows; it is asked only for the rows searched.
    """
    lo, hi = (w.to(idx.dtype) for w in window)
    outside = (coarse < lo) | (coarse > hi)
    if not bool(outside.any()):
        return coarse
    # Only the rows aligned outside the window are searched (usually a few of a batch).
    rows = outside.nonzero()[:, 0]
    score, hp, lo, hi = score[rows], hp[rows], lo[rows], hi[rows]
    noise = score_noise_of(rows)
    in_win = (idx >= lo[:, None]) & (idx <= hi[:, None])
    cand = torch.where(in_win, score, torch.full_like(score, -torch.inf)).argmax(dim=1)
    own_line = _own_line(score, hp, cand, idx, lo, hi, noise, step)
    retry = ~own_line
    if bool(retry.any()):
        # The strongest doublet in the window may be the flank or side lobe of a much stronger edge just
        # beyond it (Fe's L3 2-12 eV above, or Cr's L2 just inside, with an axis off by 20-30 eV): then the
        # strongest position that is a line of its own is taken, if one is.
        # Not where that line is the L2 of a stronger doublet below it (a Mn4+ L2 line as high as its L3 in
        # the high-pass, with noise: a Mn4+ spectrum was read as Mn2+, aligned on its L2).
        r = retry.nonzero()[:, 0]
        lines = in_win[r] & _strongest_within(hp[r], step)
        alt = torch.where(lines, score[r], torch.full_like(score[r], -torch.inf)).argmax(dim=1)
        alt_ok = (_own_line(score[r], hp[r], alt, idx, lo[r], hi[r], noise[r], step) & lines.any(dim=1)
                  & ~_l2_of_stronger_doublet(score[r], alt, idx, step))
        cand[r] = torch.where(alt_ok, alt, cand[r])
        own_line[r] = alt_ok
    out = coarse.clone()
    out[rows] = torch.where(own_line, cand, coarse[rows])
    return out


def _l2_of_stronger_doublet(score: torch.Tensor, cand: torch.Tensor, idx: torch.Tensor, step: float) -> torch.Tensor:
    """Whether a doublet scores higher than each row's candidate L3 index ``cand`` where the candidate would
    be its L2 line (:data:`MN_SPACING_ACCEPTED_EV` below it)."""
    rel = (idx - cand[:, None]) * step
    below = (rel >= -MN_SPACING_ACCEPTED_EV[1]) & (rel <= -MN_SPACING_ACCEPTED_EV[0])
    stronger = torch.where(below, score, torch.full_like(score, -torch.inf)).amax(dim=1)
    return stronger > score.gather(1, cand[:, None])[:, 0]


def _own_line(score: torch.Tensor, hp: torch.Tensor, cand: torch.Tensor, idx: torch.Tensor, lo: torch.Tensor,
              hi: torch.Tensor, noise: torch.Tensor, step: float) -> torch.Tensor:
    """Whether each row's candidate L3 index ``cand`` is a line of its own inside the window ``lo``..``hi``:
    at least 1 eV inside it, its doublet detected above the noise, and its high-passed height within
    1.5 eV above everything else within :data:`L2_SEARCH_EV` (see :func:`locate_l3`)."""
    margin = int(round(1.0 / step))
    interior = (cand >= lo + margin) & (cand <= hi - margin)
    detected = score.gather(1, cand[:, None])[:, 0] / noise >= MIN_EDGE_SNR  # False where the window is empty
    rel = ((idx - cand[:, None]) * step).abs()
    neg = torch.full_like(hp, -torch.inf)
    height = torch.where(rel <= 1.5, hp, neg).amax(dim=1)
    around = torch.where((rel > 1.5) & (rel <= L2_SEARCH_EV[1]), hp, neg).amax(dim=1)
    return interior & detected & (height > around)


def _strongest_within(hp: torch.Tensor, step: float) -> torch.Tensor:
    """``(B, N)``: where the high-passed spectrum's maximum within 1.5 eV exceeds its maximum 1.5 to
    :data:`L2_SEARCH_EV` [1] eV away on either side (the test of :func:`_own_line` at every index; the
    window ends count as unmeasured)."""
    near_pts, far_pts = int(round(1.5 / step)), int(round(L2_SEARCH_EV[1] / step))
    near = F.max_pool1d(hp[:, None], 2 * near_pts + 1, stride=1, padding=near_pts)[:, 0]
    width = far_pts - near_pts
    ring = F.max_pool1d(F.pad(hp[:, None], (far_pts, far_pts), value=-torch.inf), width, stride=1)[:, 0]
    n = hp.shape[1]
    left, right = ring[:, :n], ring[:, near_pts + 1 + far_pts:near_pts + 1 + far_pts + n]
    return near > torch.maximum(left, right)


def _line_centroid_spacing(bp: torch.Tensor, bp_noise: torch.Tensor, rel: torch.Tensor,
                           l2_window: torch.Tensor) -> torch.Tensor:
    """Distance (eV) between the centroids of the L2 and L3 lines; NaN where either shows nothing above the noise.

    Each centroid weighs the band-passed spectrum where it exceeds
    :data:`CENTROID_NOISE_SIGMA` noise sigmas: L3 within :data:`L3_CENTROID_EV`
    of the L3 maximum, L2 within ``l2_window``.  Spin-orbit splitting
    is a distance between line centroids, not maxima: in a Mn2+/Mn4+ mixture
    the L3 maximum is the Mn2+ line and the L2 maximum the Mn4+ line, whose
    chemical shift of 2-3.5 eV puts the maxima 13-14 eV apart, where Fe's
    13.1 eV lies; the centroids of the same mixture stay near 11 eV.

    Parameters
    ----------
    bp : torch.Tensor
        ``(B, N)`` band-passed spectra.
    bp_noise : torch.Tensor
        ``(B,)`` noise sigma of ``bp``.
    rel : torch.Tensor
        ``(B, N)`` energy relative to the L3 maximum (eV); :data:`_NO_ENERGY` at unmeasured points.
    l2_window : torch.Tensor
        ``(B, N)`` the points where the L2 line may lie (:data:`L2_CENTROID_EV`).
    """
    w = (bp - CENTROID_NOISE_SIGMA * bp_noise[:, None]).clamp(min=0.0)
    l3_window = (rel >= L3_CENTROID_EV[0]) & (rel <= L3_CENTROID_EV[1])
    w3 = torch.where(l3_window, w, 0.0)
    w2 = torch.where(l2_window, w, 0.0)
    s3, s2 = w3.sum(1), w2.sum(1)
    c3 = (w3 * rel).sum(1) / s3.clamp(min=1e-30)
    c2 = (w2 * rel).sum(1) / s2.clamp(min=1e-30)
    found = (s3 > 0) & (s2 > 0)
    return torch.where(found, c2 - c3, torch.full_like(c2, torch.nan))
