"""The engine's rejection rules: what makes a spectrum unreadable, each with the reason it is refused.

Input checks (:func:`check_axis`, :func:`check_and_resample`) refuse what cannot be
preprocessed at all; :class:`RowChecks` applies the rules on the preprocessing's
diagnostics and the out-of-distribution score.  Every rule words its reason, so a
rejection is never silent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from mnedge_live.engine.ood import OodScore
from mnedge_live.preprocessing import (
    ANALYSIS_WINDOW_EV,
    L3_COVER_EV,
    L3_DROP_WINDOW_EV,
    L3_PLAUSIBLE_EV,
    MAX_DIP_DEPTH,
    MAX_SECOND_STRAY_LINE,
    MIN_EDGE_SNR,
    MIN_L2_HEIGHT,
    MIN_L3_DROP,
    MN_SPACING_ACCEPTED_EV,
    WORK_STEP_EV,
    Resampled,
    resample_measured,
    rescale_extreme_rows,
)
from mnedge_live.preprocessing.noise import second_difference_sigma
from mnedge_live.preprocessing.points import out_of_order, point_spacing

#: Fewest measured points accepted.
MIN_POINTS = 16
#: Narrowest energy span accepted (eV): L3 with its 2 eV surroundings, at least.
MIN_SPAN_EV = 6.0
#: Rejection reason (before its numbers) of a spectrum whose edge does not rise above the noise.
NO_EDGE_REASON = "no edge detectable above the noise"


#: Median point spacing (eV) above which an axis is refused: the Mn L3 line is 1-3 eV wide. Up to
#: 0.5 eV the measured spectra read as on a fine axis, at 0.75-1 eV they drift by up to 0.2
#: (``coarse_axis`` flag beyond the trained spacing, engine/core.py); a survey spectrum in 10 eV steps held 14-16 points in
#: the Mn region and was refused for whatever rule its few points broke.
MAX_POINT_SPACING_EV = 2.0


#: Fewest exact zeros at an end of a spectrum that can be padding (:func:`zero_padding`).
MIN_PADDING_POINTS = 3
#: Measured points after a run of zeros whose mean and slope tell a level from a line's flank
#: (:func:`zero_padding`; their noise from three times as many).
PADDING_NEIGHBOURS = 10
#: How many standard errors the mean of the measured values next to a run of zeros must stand off zero for
#: the zeros to be padding: a file filled out with zeros where nothing was measured (a window widened to a
#: common range) jumps from 0 to its pre-edge level, while a spectrum whose background-free level is zero
#: stays there within its noise (the sigma from the points' median second difference).  The first value alone
#: against 5 median differences missed padding next to a level of 0.27 of the L3 height at 25 dB (a review:
#: 140 of 800 synthetic spectra at 20-30 dB, 488 at 10-15 dB; benchmarks/RESULTS.md).
PADDING_JUMP = 5.0
#: ... unless the value next to the zeros lies more than this many sigmas under half their mean, or the
#: straight line through them comes back to within this many of its standard errors of zero at the last
#: zero: a line's flank rising from a background-free zero (low counts near a lone line rise 1, 2, 4 ...
#: counts from the zeros), not a level.
PADDING_FLANK = 2.0
#: ... and by at least this share of the spectrum's range: a smaller jump is a level of zero within
#: rounding (a background-subtracted spectrum), which the pre-edge chord may read as measured.
PADDING_MIN_SHARE = 0.02


def zero_padding(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points of a spectrum that are zero padding, not measured values (boolean mask over ``e``).

    A run of at least :data:`MIN_PADDING_POINTS` exact zeros at the low or high end of the axis,
    next to measured values none of which is zero, whose mean stands off zero by :data:`PADDING_JUMP`
    standard errors and :data:`PADDING_MIN_SHARE` of the range, and which are no line's flank rising
    from zero (:data:`PADDING_FLANK`).  Read as measured, such zeros
    inside the pre-edge window pulled the background chord down: the four measured spectra with
    zeros filled in below their first point read up to 0.9 off, unflagged (benchmarks/RESULTS.md).

    Parameters
    ----------
    e, y : numpy.ndarray
        ``(N,)`` finite energies (any order) and intensities.
    """
    pad = np.zeros(e.size, bool)
    order = np.argsort(e, kind="stable")
    ys = y[order]
    nonzero = np.flatnonzero(ys != 0)
    if nonzero.size <= PADDING_NEIGHBOURS:
        return pad
    low, high = int(nonzero[0]), int(ys.size - 1 - nonzero[-1])   # zeros below / above the measured values
    least = PADDING_MIN_SHARE * float(np.ptp(ys.astype(np.float64)))
    if low >= MIN_PADDING_POINTS and _jumps_off_zero(ys[low:], least):
        pad[order[:low]] = True
    if high >= MIN_PADDING_POINTS and _jumps_off_zero(ys[: ys.size - high][::-1], least):
        pad[order[ys.size - high:]] = True
    return pad


def _jumps_off_zero(measured: np.ndarray, least: float) -> bool:
    """The values next to a run of zeros (``measured`` from the run outwards) are a level off zero: none of the
    first :data:`PADDING_NEIGHBOURS` + 1 is zero (low counts have zeros among their measured values: 1,009 of
    1,024 Poisson rows of a few counts were taken for padded without this condition), their mean exceeds
    ``least`` and :data:`PADDING_JUMP` standard errors, and their straight line does not come back to zero at the
    last zero (:data:`PADDING_FLANK`).  Sigma: of independent noise, from the median second difference."""
    near = measured[: PADDING_NEIGHBOURS + 1].astype(np.float64)
    if np.any(near == 0):
        return False
    n = near.size
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0   # centred; the last zero at -(n + 1) / 2
    level = float(near.mean())
    # the noise from the second differences of up to three times as many points: ten first differences
    # alone misjudged it by a factor of 4 in one draw of 20 (a level at 23 dB read as at 36 dB)
    wide = measured[: 3 * PADDING_NEIGHBOURS + 1].astype(np.float64)
    sigma = float(second_difference_sigma(np.abs(wide[2:] - 2 * wide[1:-1] + wide[:-2])))
    if abs(level) <= max(least, PADDING_JUMP * sigma / math.sqrt(n)):
        return False
    if abs(near[0]) < 0.5 * abs(level) - PADDING_FLANK * sigma:   # rising from the zeros to a line beyond
        return False
    x0 = -(n + 1) / 2.0
    at_zero = level + float(x @ near) / float(x @ x) * x0
    return abs(at_zero) > PADDING_FLANK * sigma * math.sqrt(1.0 / n + x0 * x0 / float(x @ x))


def _at_the_ends_note(e: np.ndarray, bad: np.ndarray) -> str:
    """What to do where the non-finite values ``bad`` fill only the ends of the axis ``e`` (else '')."""
    run = bad[np.argsort(e, kind="stable")]
    first, last = np.argmin(run), run.size - np.argmin(run[::-1])   # the finite values' span, end exclusive
    if run[first:last].any() or run.all():
        return ""
    return (" at the ends of the axis only, as an alignment that does not crop leaves them (HyperSpy's "
            "shift1D or align1D with crop=False): crop the spectrum to its measured channels")


def looks_like_kev(lo, hi):
    """An axis from ``lo`` to ``hi`` (numbers or arrays of them) that reads as keV: Mn L3 at 0.608-0.676."""
    return (hi * 1e3 >= L3_PLAUSIBLE_EV[0]) & (lo * 1e3 <= L3_PLAUSIBLE_EV[1]) & (hi < 1.0)


def misses_edge(lo, hi):
    """An axis from ``lo`` to ``hi`` (numbers or arrays of them) that spans enough but holds no plausible L3."""
    return (hi - lo >= MIN_SPAN_EV) & ((hi < L3_PLAUSIBLE_EV[0]) | (lo > L3_PLAUSIBLE_EV[1]))


def check_axis(e: np.ndarray) -> np.ndarray:
    """Refuse an energy axis that cannot carry a Mn L2,3 spectrum (ValueError with the reason).

    Returns the points inside :data:`~mnedge_live.preprocessing.ANALYSIS_WINDOW_EV`
    (boolean mask): only they are read, checked and resampled.
    """
    if e.ndim != 1:
        raise ValueError(f"expected a 1-D energy axis, got shape {e.shape}")
    if not np.issubdtype(e.dtype, np.number):
        raise ValueError(f"non-numeric energy axis (dtype {e.dtype})")
    if np.iscomplexobj(e):
        raise ValueError("complex-valued data")
    if e.size < MIN_POINTS:
        raise ValueError(f"only {e.size} points; at least {MIN_POINTS} are needed")
    bad = ~np.isfinite(e)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} NaN or inf value(s)")
    lo, hi = float(e.min()), float(e.max())
    if looks_like_kev(lo, hi):
        raise ValueError(f"axis {lo:.4f}-{hi:.4f} looks like keV; the engine reads eV "
                         "(multiply the energies by 1000)")
    if misses_edge(lo, hi):
        raise ValueError(f"axis {_ev(lo)}-{_ev(hi)} eV misses the Mn L2,3 edge (L3 near 640 eV, "
                         f"accepted {L3_PLAUSIBLE_EV[0]:.0f}-{L3_PLAUSIBLE_EV[1]:.0f} eV allowing calibration errors)")
    inside = (e >= ANALYSIS_WINDOW_EV[0]) & (e <= ANALYSIS_WINDOW_EV[1])
    region = f"{ANALYSIS_WINDOW_EV[0]:.0f}-{ANALYSIS_WINDOW_EV[1]:.0f} eV"
    n_in = int(inside.sum())
    if n_in < MIN_POINTS:
        raise ValueError(f"only {n_in} points in the Mn L2,3 region {region}; at least {MIN_POINTS} are needed")
    span = float(e[inside].max() - e[inside].min())
    if span < MIN_SPAN_EV:
        where = "" if inside.all() else f" within the Mn L2,3 region {region}"
        raise ValueError(f"energy axis spans only {span:.2f} eV{where}; at least {MIN_SPAN_EV} eV are needed")
    points = e[inside]
    spacing = point_spacing(points if bool(np.all(points[1:] > points[:-1])) else np.unique(points))
    if spacing > MAX_POINT_SPACING_EV:
        raise ValueError(f"points every {_ev(spacing)} eV cannot resolve the Mn L3 and L2 lines (each 1-3 eV wide); "
                         f"at most {MAX_POINT_SPACING_EV:g} eV between points is needed")
    return inside

def _ev(x: float) -> str:
    """An energy for a reason: 0.1 eV digits, or three significant ones where that would print hundreds of
    digits (an axis in another unit, 1e300)."""
    return f"{x:.1f}" if abs(x) < 1e7 else f"{x:.3g}"


def check_and_resample(energy, intensity) -> Resampled:
    """Check one spectrum and bring it onto the work axis (ValueError with the reason if it cannot be read).

    Zero padding at the window's ends (:func:`zero_padding`) is set aside as not measured and counted
    in ``Resampled.padded``.
    """
    for name, a in (("energy", energy), ("intensity", intensity)):
        masked = np.ma.count_masked(a) if isinstance(a, np.ma.MaskedArray) else 0
        if masked:
            raise ValueError(f"{name} has {masked} masked value(s): the engine reads measured points "
                             "only (a masked array's mask would be dropped); remove or fill the masked points")
    e = np.asarray(energy)
    y = np.asarray(intensity)
    if e.ndim != 1 or y.ndim != 1:
        raise ValueError(f"expected 1-D energy and intensity, got shapes {e.shape} and {y.shape}")
    if e.shape != y.shape:
        raise ValueError(f"energy has {e.size} points but intensity has {y.size}")
    inside = check_axis(e)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"non-numeric intensity (dtype {y.dtype})")
    if np.iscomplexobj(y):
        raise ValueError("complex-valued data")
    if not inside.all():
        e, y = e[inside], y[inside]
    unordered = out_of_order(e)
    bad = ~np.isfinite(y)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} NaN or inf value(s){_at_the_ends_note(e, bad)}")
    pad = zero_padding(e, y)
    padded = int(pad.sum())
    if padded:
        e, y = e[~pad], y[~pad]
        try:
            check_axis(e)   # what is left must still carry the edge
        except ValueError as exc:
            raise ValueError(f"{exc} (after {padded} zero-filled points at the window's ends were set aside "
                             "as padding)") from None
    hi, lo = float(y.max()), float(y.min())
    if hi == lo:
        raise ValueError("intensity is constant: no edge")
    r = resample_measured(e, rescale_extreme_rows(y, np.float64(max(abs(hi), abs(lo)))), WORK_STEP_EV)
    return r._replace(padded=padded, out_of_order=unordered) if padded or unordered else r


@dataclass
class RowChecks:
    """The preprocessing diagnostics of a batch as numpy arrays, and the rejection rules applied to them."""

    l3_ev: np.ndarray
    shift_ev: np.ndarray
    edge_snr: np.ndarray
    l2_spacing_ev: np.ndarray
    l2_height: np.ndarray
    l2_covered: np.ndarray
    pre_edge_covered: np.ndarray
    l3_covered: np.ndarray
    psnr_db: np.ndarray
    l3_drop: np.ndarray
    dip_depth: np.ndarray
    background: np.ndarray
    second_stray_line: np.ndarray
    stray_line_ev: np.ndarray
    ood_score: np.ndarray
    ood: OodScore | None
    output_finite: np.ndarray

    @classmethod
    def of(cls, prep, ood_score: np.ndarray, ood: OodScore | None, output_finite: np.ndarray) -> RowChecks:
        """The diagnostics of a :class:`~mnedge_live.preprocessing.Prepared` batch as numpy, with the OOD scores.

        ``output_finite``: per row, every number the network returned for it is finite
        (:func:`finite_rows` of the backend's outputs).
        """
        return cls(**{f.name: getattr(prep, f.name).numpy().astype(np.float64 if f.name in FLOAT_CHECKS else bool)
                      for f in fields(cls) if f.name not in NOT_FROM_PREPARED},
                   ood_score=np.asarray(ood_score, np.float64), ood=ood,
                   output_finite=np.asarray(output_finite, bool))

    def rejected(self) -> np.ndarray:
        """Boolean per row: one of the rules of :meth:`reason` refuses it."""
        lo, hi = MN_SPACING_ACCEPTED_EV
        with np.errstate(invalid="ignore"):
            no_edge = ~np.isfinite(self.edge_snr) | (self.edge_snr < MIN_EDGE_SNR)
            not_l3 = ~((self.l3_ev >= L3_PLAUSIBLE_EV[0]) & (self.l3_ev <= L3_PLAUSIBLE_EV[1]))
            no_line = ~(self.l3_drop >= MIN_L3_DROP)
            inverted = self.dip_depth > MAX_DIP_DEPTH
            bad_spacing = self.l2_covered & ~((self.l2_spacing_ev >= lo) & (self.l2_spacing_ev <= hi))
            no_l2_line = self.l2_covered & ~(self.l2_height >= MIN_L2_HEIGHT)
            stray_lines = self.second_stray_line > MAX_SECOND_STRAY_LINE
            unlike = (self.ood_score > self.ood.thresholds_for(self.psnr_db) if self.ood is not None
                      else np.zeros(len(self.l3_ev), bool))
        return (no_edge | not_l3 | no_line | inverted | ~self.l3_covered | bad_spacing | no_l2_line | stray_lines
                | ~self.output_finite | unlike)

    def reason(self, j: int) -> str:
        """Reason to reject row ``j``, or '' (the first rule that refuses it)."""
        l3 = float(self.l3_ev[j])
        snr = float(self.edge_snr[j])
        if not math.isfinite(snr) or snr < MIN_EDGE_SNR:
            return f"{NO_EDGE_REASON} (edge/noise {snr:.1f} < {MIN_EDGE_SNR})"
        if not (L3_PLAUSIBLE_EV[0] <= l3 <= L3_PLAUSIBLE_EV[1]):
            return (f"strongest edge feature at {l3:.1f} eV is not the Mn L3 edge even allowing calibration errors "
                    f"(accepted {L3_PLAUSIBLE_EV[0]:.0f}-{L3_PLAUSIBLE_EV[1]:.0f} eV)")
        drop = float(self.l3_drop[j])
        if not drop >= MIN_L3_DROP:
            return (f"no L3 line at {l3:.1f} eV: the spectrum falls by {100 * drop:.0f} % of the feature's height "
                    f"within {L3_DROP_WINDOW_EV:g} eV above it (a line falls by at least {100 * MIN_L3_DROP:g} %): "
                    "a rising slope or a step, not a Mn L3 line (an I0 or background column read as the spectrum?)")
        depth = float(self.dip_depth[j])
        if depth > MAX_DIP_DEPTH:
            times = f"{depth:.1f} times" if depth < 100 else "over 100 times"
            return (f"the spectrum dips {times} the height of the line taken for L3 below its background "
                    f"(at most {MAX_DIP_DEPTH:g} is read): its lines look like dips. An inverted spectrum (a negative "
                    "drain current, or transmission I/I0 instead of the absorbance -ln(I/I0))? Flip or convert it first")
        if not self.l3_covered[j]:
            return (f"the measured window does not reach {L3_COVER_EV[0]:g} eV below and {L3_COVER_EV[1]:g} eV above "
                    f"the L3 maximum at {l3:.1f} eV (the L3 line and the start of L2 must be measured)")
        if self.l2_covered[j]:   # first whether there is an L2 line, then where it is
            h = float(self.l2_height[j])
            if not h >= MIN_L2_HEIGHT:
                return (f"not a Mn L2,3 edge: no L2 line above the L3 maximum at {l3:.1f} eV (its height is "
                        f"{100 * h:.1f} % of L3's, under {100 * MIN_L2_HEIGHT:g} %; Mn shows both spin-orbit lines)")
            d = float(self.l2_spacing_ev[j])
            lo, hi = MN_SPACING_ACCEPTED_EV
            if not (lo <= d <= hi):
                return (f"not a Mn L2,3 edge: L3-L2 spacing {d:.1f} eV is outside {lo}-{hi} eV "
                        "(Mn 2p spin-orbit splitting is about 11 eV)")
        second = float(self.second_stray_line[j])
        if second > MAX_SECOND_STRAY_LINE:
            return (f"not a Mn L2,3 edge: two or more lines where Mn has none (below L3 or past L2; in the band-pass, "
                    f"the second {second:.3f} of the L3 line's height, at most {MAX_SECOND_STRAY_LINE:.2f} is read; the "
                    f"strongest {float(self.stray_line_ev[j]):+.1f} eV from the L3 maximum at {l3:.1f} eV): a periodic "
                    "pattern (a sawtooth, fringes, a detector's fixed pattern), another element's lines, or an L3 "
                    "found on a plural-scattering replica (t/lambda well above 1)")
        if not self.output_finite[j]:
            return ("the model returned NaN or inf for this spectrum: its weights or its backend are faulty "
                    f"({NON_FINITE_OUTPUT_HINT})")
        if self.ood is not None:
            limit = float(self.ood.thresholds_for(self.psnr_db[j:j + 1])[0])
            if self.ood_score[j] > limit:
                band = self.ood.band_of(float(self.psnr_db[j]))
                return (f"unlike the Mn L2,3 spectra the model was trained on: out-of-distribution score "
                        f"{self.ood_score[j]:.1f} above {limit:.1f} (the {100 * self.ood.quantile:g}th percentile "
                        f"of synthetic training spectra{' of ' + band if band else ''})")
        return ""


#: Fields of :class:`RowChecks` that do not come from the preprocessing's output.
NOT_FROM_PREPARED = ("ood_score", "ood", "output_finite")

#: What to do about a model that returns non-finite numbers (rule of :class:`RowChecks`).
NON_FINITE_OUTPUT_HINT = ("check the model's evaluation in its card, or force another backend, "
                          "e.g. --backend onnxruntime instead of an FP16 TensorRT engine")


def finite_rows(*outputs: np.ndarray | None) -> np.ndarray:
    """Per row, whether every value of every given ``(B, ...)`` output is finite (None: skipped).

    A network fed finite input returns finite numbers unless its weights or its
    backend are broken (a diverged retraining, an FP16 overflow): such a row
    must be refused, not read out as a NaN valence.
    """
    present = [np.asarray(o) for o in outputs if o is not None]
    ok = np.ones(len(present[0]), bool)
    for o in present:
        ok &= np.isfinite(o.reshape(len(o), -1)).all(axis=1)
    return ok


FLOAT_CHECKS = {"l3_ev", "shift_ev", "edge_snr", "l2_spacing_ev", "l2_height", "psnr_db", "l3_drop", "dip_depth",
                "background", "second_stray_line", "stray_line_ev"}
