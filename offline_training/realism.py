"""Realism: how well the bank and forward model reproduce measured spectra, per valence.

For every measured spectrum and every valence, the best synthetic *pure*
spectrum is searched over the bank members of that valence, an extra
Gaussian broadening (up to what the forward model gives that valence) and an energy shift (+-8 eV around the
measured L3), with a free scale, a straight-line background and an
arctan edge step fitted by least squares, its height held within the
forward model's ``edge_step`` range (relative to the member's maximum, as
there).  The misfit is the R-factor

    R = sum (y - fit)^2 / sum (y - mean(y))^2

over the measured window (0: perfect; 1: no better than a constant).  A
spectrum's own valence must fit best with a clear margin; if it does not,
the physics (bank, broadening ranges) is wrong, not the fit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mnedge_live.readers import read_text
from offline_training.forward import ForwardConfig
from offline_training.references.bank import Bank

BROADENING_STEP = 0.3
SHIFT_RANGE_EV = 8.0
SHIFT_STEP_EV = 0.1


def read_two_column(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a measured spectrum from a text file with :func:`mnedge_live.readers.read_text`.

    Raises
    ------
    ValueError
        When the file cannot be read as (energy, intensity) columns
        (:class:`~mnedge_live.readers.ReadError`) or has fewer than 8 rows.
    """
    s = read_text(path)
    if len(s.energy) < 8:
        raise ValueError(f"{path}: only {len(s.energy)} numeric rows (two columns: energy, intensity)")
    return s.energy, s.intensity


def _gauss_broaden(energy: np.ndarray, spectra: np.ndarray, fwhm: float) -> np.ndarray:
    if fwhm <= 0:
        return spectra
    de = energy[1] - energy[0]
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2))) / de
    n = spectra.shape[1]
    nfft = 1 << int(math.ceil(math.log2(2 * n)))
    w = 2 * np.pi * np.fft.rfftfreq(nfft)
    f = np.fft.rfft(spectra, n=nfft) * np.exp(-0.5 * (sigma * w) ** 2)
    return np.fft.irfft(f, n=nfft)[:, :n]


BRANCHING_STEPS = 3


def _with_branching_ratios(bank: Bank, idx: np.ndarray, ratio_range: tuple[float, float]) -> np.ndarray:
    """Each member rescaled (L2 part) to the low, middle and high branching ratio of the forward model."""
    e = bank.energy
    out = []
    for i in idx:
        s = bank.spectra[i].astype(float)
        w2 = 0.5 * (1 + np.tanh((e - bank.split_ev[i]) / 0.5))
        l3, l2 = s * (1 - w2), s * w2
        own = l3.sum() / l2.sum()
        for target in np.linspace(ratio_range[0], ratio_range[1], BRANCHING_STEPS):
            out.append(l3 + l2 * own / target)
    return np.array(out)


def max_broadening(valence: int, config: ForwardConfig | None = None) -> float:
    """Largest extra Gaussian FWHM the forward model gives a pure ``valence`` spectrum (intrinsic and instrument)."""
    cfg = config or ForwardConfig()
    return math.hypot(cfg.intrinsic_fwhm[valence][1], cfg.gauss_fwhm[1])


def best_fit(energy: np.ndarray, y: np.ndarray, bank: Bank, valence: int,
             config: ForwardConfig | None = None) -> dict:
    """Best R-factor of one measured spectrum against the bank's pure ``valence`` spectra.

    The extra broadening is searched up to what the forward model can
    produce for that valence (:func:`max_broadening`): a fit the training
    data could never contain would prove nothing.
    """
    cfg = config or ForwardConfig()
    idx = bank.of_valence(valence)
    base = _with_branching_ratios(bank, idx, cfg.branching_ratio[valence])
    idx = np.repeat(idx, BRANCHING_STEPS)
    l3_meas = energy[np.argmax(y - np.linspace(y[0], y[-1], y.size))]
    l3_bank = bank.energy[np.argmax(base, axis=1)]
    shifts = np.arange(-SHIFT_RANGE_EV, SHIFT_RANGE_EV + 1e-9, SHIFT_STEP_EV)
    yc = y - y.mean()
    sst = float(yc @ yc)
    best = {"r": np.inf}
    e_norm = (energy - energy.mean()) / (np.ptp(energy) or 1.0)
    for fw in np.arange(0.0, max_broadening(valence, config) + 1e-9, BROADENING_STEP):
        spec = _gauss_broaden(bank.energy, base, fw)
        for m in range(len(idx)):
            # Align the member's L3 on the measured L3 first, then scan the shift.
            positions = energy[None, :] - (l3_meas - l3_bank[m]) - shifts[:, None]
            cand = np.interp(positions.ravel(), bank.energy, spec[m]).reshape(len(shifts), -1)
            step_pos = l3_meas + shifts - 1.0
            step = 0.5 + np.arctan((energy[None, :] - step_pos[:, None]) / 1.0) / np.pi
            r = _fit_with_bounded_step(cand, step, e_norm, y, cfg.edge_step) / sst
            k = int(np.argmin(r))
            if r[k] < best["r"]:
                best = {"r": float(r[k]), "member": int(idx[m]), "broadening_fwhm": float(fw),
                        "shift_eV": float(l3_meas - l3_bank[m] + shifts[k])}
    return best


def _fit_with_bounded_step(cand: np.ndarray, step: np.ndarray, e_norm: np.ndarray, y: np.ndarray,
                           height: tuple[float, float]) -> np.ndarray:
    """Residual sum of squares of ``y`` against ``a cand + b + c e_norm + d step`` for every row of ``cand``.

    ``a > 0``, and the step height ``d / (a max(cand))`` within ``height``
    (the forward model's ``edge_step`` range): a fit the training data could
    not contain proves nothing.  Where the free least-squares fit breaks a
    limit, the best fit that keeps them has the height at one of its bounds
    (one linear constraint on a convex problem), so the step is tied to the
    scale at each bound and the better of the two kept.  ``cand`` and
    ``step`` are ``(S, N)``; returns ``(S,)``, inf where no positive scale fits.
    """
    ones = np.ones_like(cand)
    line = np.broadcast_to(e_norm, cand.shape)

    def solve(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        design = np.stack(columns, axis=2)                                   # (S, N, K)
        gram = np.einsum("snk,snl->skl", design, design) + 1e-12 * np.eye(design.shape[2])
        coef = np.linalg.solve(gram, np.einsum("snk,n->sk", design, y)[..., None])[..., 0]
        res = y[None, :] - np.einsum("snk,sk->sn", design, coef)
        return coef, np.einsum("sn,sn->s", res, res)

    coef, rss = solve([cand, ones, line, step])
    peak = cand.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = coef[:, 3] / (coef[:, 0] * peak)
    inside = (coef[:, 0] > 0) & (h >= height[0]) & (h <= height[1])
    rss = np.where(inside, rss, np.inf)
    rows = ~inside
    if rows.any():
        for bound in height:
            tied = cand[rows] + bound * peak[rows, None] * step[rows]
            c, r = solve([tied, ones[rows], line[rows]])
            rss[rows] = np.minimum(rss[rows], np.where(c[:, 0] > 0, r, np.inf))
    return rss


def realism(folder: str | Path, bank: Bank, config: ForwardConfig | None = None) -> list[dict]:
    """Misfit per valence for every two-column file in ``folder``.

    A file that cannot be read, or that the engine would refuse by its rules that need no model (NaN
    values, a keV axis, no edge, no L2 line, another element's spacing: :func:`~mnedge_live.engine.core.
    edge_rejection`), gets ``ok`` false and its ``reason`` instead of a fit: a best valence for a single
    Gaussian or an Fe edge 68 eV off would claim what the fit cannot tell.

    Returns
    -------
    list of dict
        ``{"file", "ok", "reason", "misfit": {"Mn2+", "Mn3+", "Mn4+"}, "best": valence name, "margin":
        second-best minus best, "detail": {...}}``, one per file (misfits, best and margin None where not ok).
    """
    from mnedge_live.engine.core import edge_rejection
    from mnedge_live.results import FRACTION_NAMES

    out = []
    for path in sorted(Path(folder).glob("*")):
        if path.suffix.lower() not in (".csv", ".txt", ".dat", ".tsv") or path.name.startswith("."):
            continue
        try:
            e, y = read_two_column(path)
            why = edge_rejection(e, y)
        except ValueError as exc:
            why = f"cannot read the file: {exc}"
        if why:
            out.append({"file": path.name, "ok": False, "reason": why, "misfit": dict.fromkeys(FRACTION_NAMES),
                        "best": None, "margin": None, "detail": {}})
            continue
        order = np.argsort(e)
        e, y = e[order], y[order]
        fits = {f"Mn{v}+": best_fit(e, y, bank, v, config) for v in (2, 3, 4)}
        mis = {k: round(v["r"], 5) for k, v in fits.items()}
        ranked = sorted(mis, key=mis.get)
        out.append({"file": path.name, "ok": True, "reason": "", "misfit": mis, "best": ranked[0],
                    "margin": round(mis[ranked[1]] - mis[ranked[0]], 5), "detail": fits})
    return out

