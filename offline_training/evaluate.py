"""Evaluation on a fixed, seeded synthetic validation set, with baselines and robustness curves.

Definitions (also in the README):

* ``accuracy_0.1``: share of validation spectra whose three fraction errors
  are all <= 0.1 (absolute).  This is our exact reading of MnEdgeNet's
  undefined "accuracy".  Rejected spectra count as failures.
* ``fraction_mae``: mean absolute error over the three fractions.
* ``valence_mae``: mean absolute error of ``2 f2 + 3 f3 + 4 f4``.
* ``coverage``: share of errors inside the stated one- and two-sigma
  intervals (ideal 0.683 / 0.954), for the fractions and the valence, and
  the valence's one-sigma share per group of the largest fraction read and
  per kind of true composition (:func:`coverage`).
* ``not_mn_probes``: how many noisy draws of inputs that are no Mn L2,3 edge
  (two equal lines 11 eV apart, a sawtooth, one line, an edge step) the
  engine refuses (:func:`not_mn_refusals`): a model can read like another
  and still let such shapes through as a confident valence.

The validation set spans the model's training ranges with PSNR and t/lambda
narrowed to PSNR >= 10 dB and t/lambda <= 1 (the issue's acceptance set;
:func:`validation_ranges`, recorded as ``validation_ranges``), every other
range as in training (offsets +-15 eV, crops, both modalities); robustness
curves use the full training ranges (PSNR 5-60 dB, t/lambda 0-1.5 for the
default model) binned by one parameter at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from mnedge_live.calibration import GROUP_EDGES, calibration_group
from mnedge_live.engine import Engine
from mnedge_live.preprocessing import WORK_STEP_EV
from mnedge_live.results import reason_kind
from offline_training.forward import Batch, ForwardConfig, ForwardModel
from offline_training.json_output import strict_json
from offline_training.values import check_whole

VALIDATION_LIMITS = {"psnr_db": (10.0, 60.0), "t_lambda": (0.0, 1.0)}


def batch_spectra(b: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
    """The measured windows of a synthetic batch as (energy, intensity) pairs, as a user would have them
    (:meth:`~offline_training.forward.Batch.measured`: physics 2's coarse points as measured)."""
    return [b.measured(i) for i in range(len(b.values))]


def engine_predictions(engine: Engine, b: Batch, chunk: int = 2048) -> dict:
    """Run the engine end to end on a batch; NaN rows where rejected."""
    spectra = batch_spectra(b)
    res = []
    for k in range(0, len(spectra), chunk):
        res += engine.predict(spectra[k:k + chunk])
    f = np.array([r.fractions for r in res], float)
    return {"fractions": f, "fractions_std": np.array([r.fractions_std for r in res], float),
            "valence": np.array([r.valence for r in res]), "valence_std": np.array([r.valence_std for r in res]),
            "offset": np.array([r.energy_offset_eV for r in res]),
            "resolution": np.array([r.resolution_eV for r in res]),
            "t_lambda": np.array([r.t_lambda for r in res]),
            "ok": np.array([r.ok for r in res]), "reasons": [r.reason for r in res if not r.ok]}


def fraction_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    """accuracy_0.1, fraction_mae and valence_mae of ``pred`` (rejected: NaN rows) against ``true``.

    accuracy_0.1 is over all ``n`` rows, a rejected one counting as a failure; the two mean errors are
    over the ``answered`` rows only (a rejection has no error to average): compare them between two
    methods on the rows both answered (:func:`paired_errors`), not as they stand.
    """
    err = np.abs(pred - true)
    ok = np.all(np.isfinite(pred), axis=1)
    acc = float(np.mean(ok & np.all(np.nan_to_num(err, nan=1.0) <= 0.1, axis=1)))
    w = np.array([2.0, 3.0, 4.0])
    vmae = float(np.nanmean(np.abs(pred @ w - true @ w))) if ok.any() else float("nan")
    return {"accuracy_0.1": acc, "fraction_mae": float(np.nanmean(err)) if ok.any() else float("nan"),
            "valence_mae": vmae, "n": int(len(true)), "answered": int(ok.sum())}


def paired_errors(pred: np.ndarray, other: np.ndarray, true: np.ndarray) -> dict:
    """Mean valence and fraction errors of two methods' readings on the rows both answered.

    A method that refuses its hardest spectra has a smaller mean error over what it answers; on the
    same rows the comparison is of the readings alone.
    """
    both = np.all(np.isfinite(pred), axis=1) & np.all(np.isfinite(other), axis=1)
    w = np.array([2.0, 3.0, 4.0])
    out = {"both_answered": int(both.sum())}
    for name, f in (("", pred), ("other_", other)):
        if both.any():
            out[f"{name}valence_mae"] = float(np.mean(np.abs(f[both] @ w - true[both] @ w)))
            out[f"{name}fraction_mae"] = float(np.mean(np.abs(f[both] - true[both])))
        else:
            out[f"{name}valence_mae"] = out[f"{name}fraction_mae"] = float("nan")
    return out


def _paired_with_ours(baseline: np.ndarray, ours: np.ndarray, true: np.ndarray) -> dict:
    """A baseline's mean errors and ours on the rows both answered (:func:`paired_errors`)."""
    p = paired_errors(np.asarray(baseline, float), np.asarray(ours, float), true)
    return {"rows": p["both_answered"], "valence_mae": p["valence_mae"], "ours_valence_mae": p["other_valence_mae"],
            "fraction_mae": p["fraction_mae"], "ours_fraction_mae": p["other_fraction_mae"]}


def coverage(pred: dict, true_f: np.ndarray) -> dict:
    """Share of errors within the stated 1- and 2-sigma intervals (fractions and valence).

    Besides the overall shares, the valence's 1-sigma share per group of the
    largest fraction read (the calibration's groups, :mod:`mnedge_live.calibration`)
    and per kind of true composition (pure, binary, ternary): an interval
    can be right on average and wrong for every mixture.
    """
    ok = pred["ok"]
    ef = np.abs(pred["fractions"][ok] - true_f[ok])
    sf = pred["fractions_std"][ok]
    ev = np.abs(pred["valence"][ok] - true_f[ok] @ np.array([2.0, 3.0, 4.0]))
    sv = pred["valence_std"][ok]
    inside = ev <= sv
    group = calibration_group(pred["fractions"][ok])
    edges = (0.0, *GROUP_EDGES, 1.0)
    kinds = (true_f[ok] > 1e-6).sum(axis=1)
    return {"fractions_1sigma": float(np.mean(ef <= sf)), "fractions_2sigma": float(np.mean(ef <= 2 * sf)),
            "valence_1sigma": float(np.mean(inside)), "valence_2sigma": float(np.mean(ev <= 2 * sv)),
            "valence_1sigma_by_largest_fraction": {
                f"{edges[k]:g}-{edges[k + 1]:g}": float(np.mean(inside[group == k])) if np.any(group == k) else None
                for k in range(len(GROUP_EDGES) + 1)},
            "valence_1sigma_by_kind": {
                name: float(np.mean(inside[kinds == k])) if np.any(kinds == k) else None
                for k, name in ((1, "pure"), (2, "binary"), (3, "ternary"))},
            "ideal": [0.6827, 0.9545]}


def validation_ranges(fm_config: ForwardConfig, limits: dict | None = None) -> dict:
    """The training ranges of ``fm_config`` narrowed to ``limits`` (default :data:`VALIDATION_LIMITS`).

    Each range is the intersection of the training range and the limit (the
    larger low end, the smaller high end): a model trained on narrower ranges
    than the limits is scored where it was trained, not on the limits
    themselves. For the default model (PSNR 5-60 dB, t/lambda 0-1.5) this is
    the limits.

    Raises
    ------
    ValueError
        When a training range and its limit do not overlap (nothing to score on).
    """
    out = {}
    for name, (lo, hi) in (limits or VALIDATION_LIMITS).items():
        train_lo, train_hi = getattr(fm_config, name)
        low, high = max(lo, train_lo), min(hi, train_hi)
        if low > high:
            raise ValueError(f"{name}: the training range ({train_lo:g}, {train_hi:g}) does not overlap the "
                             f"validation limits ({lo:g}, {hi:g})")
        out[name] = (low, high)
    return out


def validation_model(fm_config: ForwardConfig, bank, limits: dict | None = None) -> ForwardModel:
    """Forward model for the validation set: training ranges narrowed to ``limits`` (:func:`validation_ranges`)."""
    return ForwardModel(bank, dataclasses.replace(fm_config, **validation_ranges(fm_config, limits)))


#: Bin edges of the robustness curves; the first and last bins reach out to the smallest and largest
#: value drawn (a model trained on wider ranges is scored on all of its validation spectra).
ROBUSTNESS_BINS = {
    "psnr_db": np.array([5, 10, 15, 20, 30, 40, 50, 60.0]),
    "t_lambda": np.array([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]),
    "offset": np.array([-15, -10, -5, 0, 5, 10, 15.0]),
    "resolution_fwhm": np.array([0.05, 0.3, 0.6, 0.9, 1.2, 1.6, 2.0, 2.6]),
}


def robustness(engine: Engine, fm: ForwardModel, n: int, seed: int) -> dict:
    """Accuracy and valence MAE binned by PSNR, t/lambda (EELS rows), offset and resolution."""
    b = fm.sample(n, seed=seed)
    pred = engine_predictions(engine, b)
    true = b.fractions.numpy().astype(float)
    curves = {}
    for name, edges in ROBUSTNESS_BINS.items():
        v = b.params[name].numpy()
        sel_all = b.params["is_eels"].numpy() > 0.5 if name == "t_lambda" else np.ones(n, bool)
        rows = []
        edges = edges.copy()
        if sel_all.any():
            edges[0], edges[-1] = min(edges[0], float(v[sel_all].min())), max(edges[-1], float(v[sel_all].max()))
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = sel_all & (v >= lo) & (v < hi if hi != edges[-1] else v <= hi)
            if sel.sum() == 0:
                continue
            m = fraction_metrics(pred["fractions"][sel], true[sel])
            rows.append({"low": float(lo), "high": float(hi), **m})
        curves[name] = rows
    return curves


def plot_curves(curves: dict, out_dir: str | Path, extra: dict | None = None, title: str = "") -> list[Path]:
    """Write one PNG per robustness curve (accuracy_0.1 and valence MAE against the parameter), titled
    ``title`` (the model's id: curves of two models in one folder are told apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in curves.items():
        x = [(r["low"] + r["high"]) / 2 for r in rows]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot(x, [r["accuracy_0.1"] for r in rows], "o-", label="accuracy_0.1 (ours)")
        for label, c in (extra or {}).get(name, {}).items():
            ax.plot(x[: len(c)], c, "s--", label=label)
        ax.set_xlabel(name)
        ax.set_ylabel("accuracy_0.1")
        ax.set_ylim(0, 1.02)
        ax2 = ax.twinx()
        ax2.plot(x, [r["valence_mae"] for r in rows], "^:", color="C3", label="valence MAE (ours, answered)")
        ax2.set_ylabel("valence MAE", color="C3")
        handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=7)
        if title:
            ax.set_title(title, fontsize=8)
        fig.tight_layout()
        p = out / f"robustness_{name}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


#: Axis scale (dispersion) errors applied to the measured spectra, about :data:`SCALE_CENTER_EV`.
AXIS_SCALE_ERRORS = (-0.10, -0.07, -0.05, -0.03, 0.03, 0.05, 0.07, 0.10)
#: Energy the axis scale errors are applied about (eV): the edge moves too, as on a real instrument.
SCALE_CENTER_EV = 600.0
#: Extra Gaussian blur (FWHM, eV) applied to the measured spectra: a worse instrument resolution.
EXTRA_BLUR_FWHM_EV = (1.0, 2.0, 3.0)
#: PSNR (dB, 20 log10 of the spectrum's max - min over the noise sigma) of white Gaussian noise
#: added to the measured spectra, the draws per level, their seed, and the uniform step (eV) the
#: spectra are put on first so that the noise is per channel, as a detector's is.
ADDED_NOISE_PSNR_DB = (20.0, 15.0, 10.0)
ADDED_NOISE_DRAWS = 10
ADDED_NOISE_SEED = 0
ADDED_NOISE_STEP_EV = 0.1


def measured_files(folder: str | Path) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[tuple[str, str]]]:
    """The two-column files in ``folder`` (e.g. ../shared/real_spectra), by name: ``(file name, energy,
    intensity)`` of each one read, and ``(file name, why not)`` of each ``.csv``, ``.txt``, ``.dat`` or
    ``.tsv`` file that is no two-column spectrum (a note beside the spectra must not end the evaluation)."""
    from offline_training.realism import read_two_column

    spectra, unreadable = [], []
    for p in sorted(Path(folder).glob("*")):
        if p.suffix.lower() not in (".csv", ".txt", ".dat", ".tsv") or p.name.startswith("."):
            continue
        try:
            spectra.append((p.name, *read_two_column(p)))
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            unreadable.append((p.name, f"{type(exc).__name__}: {exc}"))
    return spectra, unreadable


def measured_spectra(folder: str | Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(file name, energy, intensity)`` of every two-column file in ``folder`` read (:func:`measured_files`)."""
    return measured_files(folder)[0]


def real_spectra_predictions(engine: Engine, folder: str | Path) -> list[dict]:
    """Readouts of every two-column file in ``folder`` (e.g. ../shared/real_spectra); a file that cannot be
    read gets a row of its own, status ``rejected`` and the reason."""
    spectra, unreadable = measured_files(folder)
    rows = [{"file": name, **engine.predict_one(e, y).to_dict()} for name, e, y in spectra]
    rows += [{"file": name, "status": "rejected", "reason": f"unreadable: {why}", "valence": None}
             for name, why in unreadable]
    return sorted(rows, key=lambda r: r["file"])


#: Energy axis (eV) of :func:`not_mn_probes`.
PROBE_ENERGY = np.arange(620.0, 680.0, 0.1)


def not_mn_probes(energy: np.ndarray = PROBE_ENERGY) -> dict[str, np.ndarray]:
    """Noise-free inputs on ``energy`` that are no Mn L2,3 edge, by name: what every model must refuse.

    Two equal Gaussian lines 11 eV apart have Mn's spin-orbit spacing but
    neither its branching ratio nor its line shapes (two networks distilled
    from ``mnedge-default-v12``, one with ReLU, one with fewer channels, read
    them as Mn4+: benchmarks/RESULTS.md); a sawtooth has lines everywhere;
    one line and an edge step have no L2.
    """
    def gauss(center: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((energy - center) / width) ** 2)

    return {"two equal lines 11 eV apart": gauss(640.0, 1.0) + gauss(651.0, 1.0),
            "a sawtooth": energy % 5.0,
            "one line": gauss(640.0, 1.5),
            "an edge step": 0.5 + np.arctan((energy - 640.0) / 0.5) / np.pi}


def not_mn_refusals(engine: Engine, draws: int = 5, noise: float = 0.01, seed: int = 0) -> dict:
    """How many of ``draws`` noisy copies of each :func:`not_mn_probes` input the engine refuses.

    Each copy gets white noise of ``noise`` (the probes peak near 1); the
    same seed gives the same copies to every model. Returns, per probe, the
    draws refused, the draws and the valences read where one was accepted,
    and ``refused`` / ``draws`` over all probes.
    """
    rng = np.random.default_rng(seed)
    probes, refused, total = {}, 0, 0
    for name, y in not_mn_probes().items():
        res = engine.predict([(PROBE_ENERGY, y + rng.normal(0.0, noise, y.size)) for _ in range(draws)])
        n_ref = sum(not r.ok for r in res)
        probes[name] = {"refused": n_ref, "draws": draws, "read_as": [round(r.valence, 3) for r in res if r.ok]}
        refused, total = refused + n_ref, total + draws
    return {"probes": probes, "refused": refused, "draws": total}


def blurred(energy: np.ndarray, intensity: np.ndarray, fwhm: float) -> np.ndarray:
    """``intensity`` convolved with a Gaussian of ``fwhm`` eV on its own (possibly irregular) axis.

    Computed on a uniform 0.02 eV axis and read back at the measured energies,
    so irregular or descending axes are blurred by the same width everywhere.
    """
    o = np.argsort(energy)
    e, y = energy[o], intensity[o]
    grid = np.arange(e[0], e[-1] + 1e-9, 0.02)
    u = np.interp(grid, e, y)
    u = gaussian_filter1d(u, fwhm / (2 * np.sqrt(2 * np.log(2))) / 0.02, mode="nearest")
    out = np.empty_like(intensity, dtype=np.float64)
    out[o] = np.interp(e, grid, u)
    return out


def with_added_noise(energy: np.ndarray, intensity: np.ndarray, psnr_db: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The spectrum on a uniform :data:`ADDED_NOISE_STEP_EV` axis plus white Gaussian noise of ``psnr_db``.

    The noise sigma is ``(max - min) / 10 ** (psnr_db / 20)`` of the resampled spectrum (the
    project's PSNR); the spectrum's own noise comes on top, so the result is at most that PSNR.
    """
    o = np.argsort(energy)
    e, y = energy[o], intensity[o]
    grid = np.arange(e[0], e[-1] + 1e-9, ADDED_NOISE_STEP_EV)
    u = np.interp(grid, e, y)
    sigma = (u.max() - u.min()) / 10 ** (psnr_db / 20)
    return grid, u + rng.normal(0.0, sigma, len(grid))


def real_spectra_robustness(engine: Engine, folder: str | Path) -> list[dict]:
    """Readouts of every measured file in ``folder`` with its axis scaled, extra blur and added noise.

    What a badly calibrated dispersion (:data:`AXIS_SCALE_ERRORS`, applied
    about :data:`SCALE_CENTER_EV`), a worse resolution
    (:data:`EXTRA_BLUR_FWHM_EV`) or a noisier detector
    (:data:`ADDED_NOISE_PSNR_DB`, :func:`with_added_noise`) does to the reading
    of a real spectrum: the synthetic validation cannot show where the
    calculated end members and the measured ones differ.  Valence per
    condition, None where rejected; for the noise, the mean and standard
    deviation of the answered draws and the number refused.
    """
    def valence(e, y):
        r = engine.predict_one(e, y)
        return round(float(r.valence), 4) if r.ok else None

    def noise_row(e, y, db, rng):
        vals = [valence(*with_added_noise(e, y, db, rng)) for _ in range(ADDED_NOISE_DRAWS)]
        ok = np.array([v for v in vals if v is not None])
        return {"mean": round(float(ok.mean()), 4) if len(ok) else None,
                "std": round(float(ok.std()), 4) if len(ok) else None, "refused": len(vals) - len(ok)}

    out = []
    for name, e, y in measured_spectra(folder):
        rng = np.random.default_rng(ADDED_NOISE_SEED)
        out.append({
            "file": name,
            "valence": valence(e, y),
            "axis_scale": {f"{d:+.2f}": valence(SCALE_CENTER_EV + (e - SCALE_CENTER_EV) * (1 + d), y)
                           for d in AXIS_SCALE_ERRORS},
            "extra_blur_fwhm_eV": {f"{w:g}": valence(e, blurred(e, y, w)) for w in EXTRA_BLUR_FWHM_EV},
            "added_noise_psnr_dB": {f"{db:g}": noise_row(e, y, db, rng) for db in ADDED_NOISE_PSNR_DB},
        })
    return out


#: Per-atom shares of the first spectrum in the measured two-spectrum mixtures.
MIXTURE_SHARES = (0.75, 0.5, 0.25)
#: Smallest difference (valence) between the readings of two measured files for them to be mixed.
MIXTURE_MIN_SEPARATION = 0.5
#: Step (eV) of the common axis the measured files are mixed on, and the pre-edge width (eV)
#: at its start whose mean is taken as each file's baseline.
MIXTURE_STEP_EV = 0.1
MIXTURE_PRE_EDGE_EV = 1.0
#: Width (eV) at the end of the common axis whose mean is taken as a file's continuum level, when the
#: axis reaches at least :data:`MIXTURE_POST_L2_EV` above its L2 maximum (otherwise no continuum is removed).
MIXTURE_POST_EDGE_EV = 2.0
MIXTURE_POST_L2_EV = 4.0
#: Smallest continuum level (share of the L3 maximum) taken as a continuum: a file whose continuum
#: was subtracted ends within a percent of zero either way, noise and over-subtraction.
MIXTURE_MIN_CONTINUUM = 0.03


def line_area(energy: np.ndarray, spectrum: np.ndarray) -> float:
    """Area of the L3 and L2 lines of a pre-edge-subtracted spectrum, its continuum removed.

    The continuum (edge jump) per Mn atom does not depend on the valence while the line area grows
    with the 3d holes, so a per-atom mixture scales each spectrum by its line area, not by its
    whole area.  The continuum is a 2:1 double arctan step (0.5 eV half-width) at the L3 and L2 maxima
    whose top is the mean of the last :data:`MIXTURE_POST_EDGE_EV`; none when the axis ends less than
    :data:`MIXTURE_POST_L2_EV` above L2 (no post-edge measured) or that mean is below
    :data:`MIXTURE_MIN_CONTINUUM` of the L3 maximum (a continuum-subtracted file).

    Raises
    ------
    ValueError
        When nothing positive is left (no lines above the continuum).
    """
    l3 = energy[int(np.argmax(spectrum))]
    window = (energy > l3 + 8.0) & (energy < l3 + 14.0)
    level = 0.0
    if window.any():
        l2 = energy[window][int(np.argmax(spectrum[window]))]
        if energy[-1] >= l2 + MIXTURE_POST_L2_EV:
            level = float(spectrum[energy >= energy[-1] - MIXTURE_POST_EDGE_EV].mean())
            if level < MIXTURE_MIN_CONTINUUM * float(spectrum.max()):
                level = 0.0
        steps = sum(h * (0.5 + np.arctan((energy - e0) / 0.5) / np.pi) for h, e0 in ((2 / 3, l3), (1 / 3, l2)))
        steps = steps / steps[-1] * level
    else:
        steps = 0.0
    area = float(np.trapezoid(spectrum - steps, energy))
    if not np.isfinite(area) or area <= 0:
        raise ValueError("no line area above the continuum")
    return area


def holes_at(valence: float) -> float:
    """3d holes per Mn atom at a (possibly mixed) valence: :data:`HOLES` interpolated over 2-4."""
    from offline_training.forward.composition import HOLES

    v = sorted(HOLES)
    return float(np.interp(valence, v, [HOLES[k] for k in v]))


def mix_per_atom(a: np.ndarray, b: np.ndarray, share: float, holes_a: float, holes_b: float) -> np.ndarray:
    """Mixture of two spectra of unit line area in which ``share`` of the Mn atoms are those of ``a``.

    The L2,3 line area per Mn atom is proportional to its number of 3d holes (the L-edge sum rule),
    the normalization the forward model labels its mixtures with, so the weights are
    ``share * holes_a`` and ``(1 - share) * holes_b`` (each spectrum's continuum, scaled alike, is then
    that of its atoms), normalized to weights summing to one.
    """
    wa, wb = share * holes_a, (1.0 - share) * holes_b
    return (wa * a + wb * b) / (wa + wb)


def measured_mixtures(engine: Engine, folder: str | Path) -> dict:
    """Readouts of per-atom mixtures of the measured files, against the model's own readings of each.

    Every pair of files whose own readings differ by :data:`MIXTURE_MIN_SEPARATION` or more is put
    on one :data:`MIXTURE_STEP_EV` axis over the energies both cover, each file's pre-edge level
    (mean of the first :data:`MIXTURE_PRE_EDGE_EV`) removed and its line area (:func:`line_area`, the
    continuum left out) set to one (a pair where either has none is skipped), and mixed with
    :func:`mix_per_atom` at :data:`MIXTURE_SHARES` (holes from :func:`holes_at` at each file's
    reading).  The expected valence is the share-weighted mean of the two readings on that axis,
    so no label is needed: the check shows whether the model reads mixed-valence samples linearly,
    which pure measured spectra cannot show.

    Returns
    -------
    dict
        ``pairs`` (files, their readings, and per share the expected and read valence, None where
        refused) and ``mean_abs_deviation`` over all answered mixtures (None without any).
    """
    spectra = [(name, e[np.argsort(e)], y[np.argsort(e)]) for name, e, y in measured_spectra(folder)]
    pairs, deviations = [], []
    for i, (name_a, ea, ya) in enumerate(spectra):
        for name_b, eb, yb in spectra[i + 1:]:
            lo, hi = max(ea[0], eb[0]), min(ea[-1], eb[-1])
            grid = np.round(np.arange(lo, hi, MIXTURE_STEP_EV), 4)
            if len(grid) < 2:
                continue
            try:
                flat = [u - u[grid < lo + MIXTURE_PRE_EDGE_EV].mean()
                        for u in (np.interp(grid, ea, ya), np.interp(grid, eb, yb))]
                unit = [u / line_area(grid, u) for u in flat]
            except ValueError:      # no line area above the pre-edge level and the continuum: nothing to mix
                continue
            ra, rb = engine.predict_one(grid, unit[0]), engine.predict_one(grid, unit[1])
            if not (ra.ok and rb.ok) or abs(ra.valence - rb.valence) < MIXTURE_MIN_SEPARATION:
                continue
            va, vb = float(ra.valence), float(rb.valence)
            rows = []
            for f in MIXTURE_SHARES:
                r = engine.predict_one(grid, mix_per_atom(unit[0], unit[1], f, holes_at(va), holes_at(vb)))
                expected = f * va + (1 - f) * vb
                read = round(float(r.valence), 4) if r.ok else None
                if read is not None:
                    deviations.append(read - expected)
                rows.append({"share": f, "expected": round(expected, 4), "read": read})
            pairs.append({"files": [name_a, name_b], "valences": [round(va, 4), round(vb, 4)], "mixtures": rows})
    mad = round(float(np.mean(np.abs(deviations))), 4) if deviations else None
    return {"pairs": pairs, "mean_abs_deviation": mad}


def nnls_baselines(fm: ForwardModel, b: Batch, rows: np.ndarray, seed: int) -> dict:
    """NNLS fractions for ``rows`` of ``b``: references of another session (with and without a +-3 eV shift
    search), of another instrument (a shift search over the whole offset range) and matched ones."""
    from offline_training.baselines import nnls_fractions, reference_spectra, searched_nnls_fractions

    mism = reference_spectra(fm, b.params, rows, matched=False, seed=seed)
    other = reference_spectra(fm, b.params, rows, matched=False, seed=seed + 1, session_drift_eV=None)
    match = reference_spectra(fm, b.params, rows, matched=True, seed=seed)
    axis = b.start[0].item() + WORK_STEP_EV * np.arange(b.values.shape[1])
    shifts = np.arange(-3.0, 3.01, 0.2)
    lo, hi = fm.config.offset
    out = {"nnls_mismatched": [], "nnls_mismatched_shift_search": [], "nnls_other_instrument_shift_search": [],
           "nnls_matched": []}
    for k, i in enumerate(rows):
        m = b.valid[i].numpy()
        y = b.values[i].numpy()[m].astype(float)
        e = axis[m]
        out["nnls_mismatched"].append(nnls_fractions(y, mism[k][:, m]))
        out["nnls_mismatched_shift_search"].append(nnls_fractions(y, mism[k][:, m], shifts=shifts, energy=e))
        out["nnls_other_instrument_shift_search"].append(searched_nnls_fractions(y, other[k][:, m], e, span=hi - lo))
        out["nnls_matched"].append(nnls_fractions(y, match[k][:, m]))
    return {k: np.array(v) for k, v in out.items()}


def evaluate(engine: Engine, fm_config: ForwardConfig, bank, n: int = 20000, seed: int = 12345,
             plot_dir: str | Path | None = None, mnedgenet: torch.nn.Module | None = None,
             n_nnls: int = 1000, real_dir: str | Path | None = None, robustness_n: int = 8000) -> dict:
    """Full evaluation; returns one JSON-ready dict.

    Parameters
    ----------
    engine : Engine
        The model under test, run end to end (preprocessing included).
    fm_config : ForwardConfig
        The training forward configuration (validation narrows PSNR and t/lambda).
    bank : Bank
        End members.
    n, seed : int
        Size and seed of the validation set (fixed seed: the same set every time).
    plot_dir : path, optional
        Where robustness PNGs and JSON go.
    mnedgenet : nn.Module, optional
        A trained :class:`~offline_training.baselines.MnEdgeNetPublished` to compare.
    n_nnls : int
        Validation spectra (the first ``n_nnls``) used for the NNLS baselines.
    real_dir : path, optional
        Folder of measured two-column spectra to read out.
    robustness_n : int
        Spectra for the robustness curves.

    Raises
    ------
    ValueError
        When ``n`` is below 1 or ``n_nnls``, ``robustness_n`` or ``seed`` below 0 (named as the options
        of ``mnedge-train evaluate``), before any spectrum is drawn.
    """
    for name, value, low in (("n", n, 1), ("n_nnls", n_nnls, 0), ("robustness_n", robustness_n, 0), ("seed", seed, 0)):
        check_whole(f"{name} (--{name.replace('_', '-')})", value, low)
    fm = validation_model(fm_config, bank)
    b = fm.sample(n, seed=seed)
    true = b.fractions.numpy().astype(float)
    pred = engine_predictions(engine, b)
    eels = b.params["is_eels"].numpy() > 0.5
    result = {"model": engine.model_id, "weights_sha256": engine.artifact.card.get("files", {}).get("weights.pt"),
              "backend": engine.backend_name, "n": n, "seed": seed,
              "validation_limits": VALIDATION_LIMITS,
              "validation_ranges": {name: list(getattr(fm.config, name)) for name in VALIDATION_LIMITS},
              **fraction_metrics(pred["fractions"], true)}
    result["per_modality"] = {"xas": fraction_metrics(pred["fractions"][~eels], true[~eels]),
                              "eels": fraction_metrics(pred["fractions"][eels], true[eels])}
    result["coverage"] = coverage(pred, true)
    result["rejected"] = int((~pred["ok"]).sum())
    reasons: dict[str, int] = {}
    for r in pred["reasons"]:
        key = reason_kind(r)
        reasons[key] = reasons.get(key, 0) + 1
    result["rejection_reasons"] = reasons
    ok = pred["ok"]
    result["side_outputs"] = {
        "offset_mae_eV": float(np.mean(np.abs(pred["offset"][ok] - b.params["offset"].numpy()[ok]))),
        "resolution_mae_eV": float(np.mean(np.abs(pred["resolution"][ok] - b.params["resolution_fwhm"].numpy()[ok]))),
        "t_lambda_mae_eels": float(np.mean(np.abs(pred["t_lambda"][ok & eels] - b.params["t_lambda"].numpy()[ok & eels]))),
    }
    flops = engine.artifact.card.get("flops_per_spectrum")
    baselines = {}
    if mnedgenet is not None:
        from mnedge_live.network import count_flops
        from mnedge_live.preprocessing import preprocess

        with torch.no_grad():
            prep = preprocess(b.start, b.values, b.valid)
            f_b = torch.cat([mnedgenet(prep.x[k:k + 2048]) for k in range(0, n, 2048)]).numpy()
        baselines["mnedgenet_published"] = {**fraction_metrics(f_b.astype(float), true),
                                            "where_ours_answered": _paired_with_ours(f_b, pred["fractions"], true),
                                            "flops_per_spectrum": count_flops(mnedgenet, in_channels=2),
                                            "parameters": sum(p.numel() for p in mnedgenet.parameters())}
    if n_nnls:
        rows = np.arange(min(n_nnls, n))
        nn_res = nnls_baselines(fm, b, rows, seed + 1)
        for k, f in nn_res.items():
            baselines[k] = {**fraction_metrics(f, true[rows]),
                            "where_ours_answered": _paired_with_ours(f, pred["fractions"][rows], true[rows])}
        baselines["ours_on_nnls_subset"] = fraction_metrics(pred["fractions"][rows], true[rows])
    result["flops_per_spectrum"] = flops
    result["baselines"] = baselines
    curves = robustness(engine, ForwardModel(bank, fm_config), robustness_n, seed + 2) if robustness_n > 0 else {}
    result["robustness"] = curves
    if plot_dir is not None and curves:
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        plot_curves(curves, plot_dir, title=f"{engine.model_id}, n {robustness_n}, seed {seed + 2}")
        (Path(plot_dir) / "robustness.json").write_text(strict_json(
            {"model": engine.model_id, "n": robustness_n, "seed": seed + 2, "curves": curves}))
    result["not_mn_probes"] = not_mn_refusals(engine)
    if real_dir is not None and Path(real_dir).is_dir():
        result["real_spectra"] = real_spectra_predictions(engine, real_dir)
        result["real_spectra_robustness"] = real_spectra_robustness(engine, real_dir)
        result["real_spectra_mixtures"] = measured_mixtures(engine, real_dir)
    return result
