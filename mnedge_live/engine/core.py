"""The valence engine: measured spectra in, one typed result per spectrum out.

Per-spectrum checks (each failure is a rejection with its reason, never an
exception and never a guess), then the shared preprocessing, then the
backend, then calibration of the uncertainties and quality flags.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from mnedge_live.artifact import Artifact, load_artifact
from mnedge_live.engine.backends import Backend, make_backend
from mnedge_live.engine.ood import OodScore
from mnedge_live.preprocessing import (
    ANALYSIS_WINDOW_EV,
    L3_COVER_EV,
    L3_PLAUSIBLE_EV,
    MIN_EDGE_SNR,
    MIN_L2_HEIGHT,
    MN_SPIN_ORBIT_RANGE_EV,
    WORK_STEP_EV,
    Prepared,
    Resampled,
    pad_rows,
    preprocess,
    resample_measured,
    resample_shared_axis,
)
from mnedge_live.results import SpectrumResult

log = logging.getLogger(__name__)

#: Fewest measured points accepted.
MIN_POINTS = 16
#: Narrowest energy span accepted (eV): L3 with its 2 eV surroundings, at least.
MIN_SPAN_EV = 6.0
#: Median point spacing (eV) above which a readout is flagged ``coarse_axis``: training
#: draws spacings up to 0.4 eV; the measured spectra read the same up to 0.5 eV and drift
#: by up to 0.2 at 0.75-1 eV (benchmarks/RESULTS.md).
COARSE_AXIS_EV = 0.5
#: PSNR (dB) below which a readout is flagged as noisy.
LOW_PSNR_DB = 10.0
#: Rejection reason (before its numbers) of a spectrum whose edge does not rise above the noise.
NO_EDGE_REASON = "no edge detectable above the noise"
#: Calibrated valence std above which a readout is flagged as uncertain.
UNCERTAIN_VALENCE_STD = 0.25
#: Rows preprocessed and run at once, by backend device. On 2 CPU cores the
#: engine is fastest at 1024 (image pixels/s at 256/512/1024/2048/4096 rows:
#: 7.7k/9.3k/9.6k/8.8k/5.8k, benchmarks/RESULTS.md); a GPU wants larger batches.
BATCH_ROWS = {"cpu": 1024, "cuda": 4096}


def _float_rows(y: np.ndarray) -> np.ndarray:
    """Rows for :meth:`Engine._answer_shared`: float32 stays float32 (detector data, spectrum images: the
    model reads float32, and half the memory traffic is most of the cost of the whole-matrix passes),
    anything else becomes float64."""
    return y if y.dtype == np.float32 else y.astype(np.float64, copy=False)


def _same_shape_numeric(y, energy: np.ndarray) -> bool:
    """``y`` is a numeric ndarray shaped like ``energy`` (else the per-spectrum path words the problem)."""
    return isinstance(y, np.ndarray) and y.shape == energy.shape and y.dtype.kind in "fiu"


class Engine:
    """Reads Mn2+/Mn3+/Mn4+ fractions from measured spectra with a verified model artifact.

    Thread-safe: :meth:`predict` may be called from several threads.
    """

    def __init__(self, artifact: Artifact, backend: Backend):
        self.artifact = artifact
        self.backend = backend
        card = artifact.card
        self.model_id = artifact.model_id
        self.std_scale = np.asarray(card["calibration"]["std_scale"], np.float64)
        if card["input"]["work_step_eV"] != WORK_STEP_EV or card["input"]["preprocessing"] != PREPROCESSING_ID:
            raise RuntimeError(f"model {self.model_id} was trained with preprocessing "
                               f"{card['input']['preprocessing']!r}, this build has {PREPROCESSING_ID!r}")
        self.ood = OodScore.from_artifact(artifact)
        if self.ood is None:
            log.warning("model %s has no out-of-distribution statistics: spectra unlike its training data "
                        "are not rejected by the OOD rule ('mnedge-train fit-ood' adds them)", self.model_id)
        self._lock = threading.Lock()
        self.counters = {"spectra": 0, "ok": 0, "rejected": 0}
        self._batch_rows = BATCH_ROWS.get(backend.device, BATCH_ROWS["cpu"])

    @property
    def backend_name(self) -> str:
        """Name and device of the backend in use, e.g. ``onnxruntime:cpu``."""
        return f"{self.backend.name}:{self.backend.device}"

    def predict_one(self, energy: np.ndarray, intensity: np.ndarray) -> SpectrumResult:
        """Read out one spectrum."""
        return self.predict([(energy, intensity)])[0]

    def predict(self, spectra: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[SpectrumResult]:
        """Read out a batch; each spectrum has its own energy axis.

        Parameters
        ----------
        spectra : sequence of (energy, intensity)
            Any spacing, ascending or descending, repeated energies allowed,
            partial windows allowed.

        Returns
        -------
        list of SpectrumResult
            One per input, in order: ``ok`` with the readout, or
            ``rejected`` with the reason.
        """
        results: list[SpectrumResult | None] = [None] * len(spectra)
        single: list[int] = []
        with torch.inference_mode():
            for idx in self._shared_axis_groups(spectra, single):
                energy = spectra[idx[0]][0]
                shaped: list[int] = []
                for i in idx:
                    (shaped if _same_shape_numeric(spectra[i][1], energy) else single).append(i)
                if shaped:
                    block = _float_rows(np.asarray([spectra[i][1] for i in shaped]))
                    self._answer_shared(energy, block, shaped, results, single)
            self._answer_single(spectra, sorted(single), results)
        return self._count(results)

    def predict_shared_axis(self, energy: np.ndarray, intensities: np.ndarray) -> list[SpectrumResult]:
        """Read out many spectra measured on one energy axis (the pixels of a spectrum image).

        The same answers as :meth:`predict` on ``[(energy, row) for row in
        intensities]``, without building and grouping one pair per pixel.

        Parameters
        ----------
        energy : numpy.ndarray
            ``(N,)`` the shared axis.
        intensities : numpy.ndarray
            ``(B, N)`` one spectrum per row. Anything else (rows that do not
            match the axis, ragged or non-numeric rows) goes through
            :meth:`predict`, which words each problem; an array that is not
            2-D is answered as one spectrum.
        """
        try:
            y = np.asarray(intensities)
        except ValueError:  # ragged rows: each answers for itself
            return self.predict([(energy, row) for row in intensities])
        if y.ndim != 2 or not isinstance(energy, np.ndarray) or y.shape[1:] != energy.shape or y.dtype.kind not in "fiu":
            return self.predict([(energy, row) for row in y] if y.ndim == 2 else [(energy, y)])
        results: list[SpectrumResult | None] = [None] * len(y)
        single: list[int] = []
        with torch.inference_mode():
            self._answer_shared(energy, _float_rows(y), list(range(len(y))), results, single)
            if single:
                self._answer_single({i: (energy, y[i]) for i in single}, single, results)
        return self._count(results)

    def _answer_single(self, spectra, idx: list[int], results: list) -> None:
        """The per-spectrum path: check and resample ``spectra[i]`` for ``i`` in ``idx`` one by one, run in batches."""
        done: list[int] = []
        rows: list[Resampled] = []
        for i in idx:
            try:
                energy, intensity = spectra[i]
                rows.append(self._check_and_resample(energy, intensity))
            except (ValueError, TypeError) as exc:
                results[i] = SpectrumResult.rejected(str(exc), model=self.model_id)
                continue
            done.append(i)
        step = self._batch_rows
        for k in range(0, len(rows), step):
            chunk = rows[k:k + step]
            values, valid = pad_rows([r.values for r in chunk])
            self._answer_rows(done[k:k + step], np.array([r.start for r in chunk]), values, valid,
                              np.array([r.noise for r in chunk]), np.array([r.spikes for r in chunk]),
                              np.array([r.spacing for r in chunk]), results)

    def _count(self, out: list[SpectrumResult | None]) -> list[SpectrumResult]:
        """Fill any unanswered slot with an explicit rejection, update the counters, return the results."""
        out = [r if r is not None else SpectrumResult.rejected("internal error: no result", model=self.model_id)
               for r in out]
        with self._lock:
            self.counters["spectra"] += len(out)
            n_ok = sum(r.ok for r in out)
            self.counters["ok"] += n_ok
            self.counters["rejected"] += len(out) - n_ok
        return out

    @staticmethod
    def _shared_axis_groups(spectra: Sequence, single: list[int]) -> list[list[int]]:
        """Indices of spectra sharing one float ndarray axis (pixels of an image); the rest go to ``single``."""
        groups: dict[bytes, list[int]] = {}
        for i, item in enumerate(spectra):
            energy = item[0] if isinstance(item, tuple) and len(item) == 2 else None
            if (isinstance(energy, np.ndarray) and energy.ndim == 1 and energy.dtype.kind == "f"
                    and energy.size >= MIN_POINTS):
                groups.setdefault(energy.tobytes(), []).append(i)
            else:
                single.append(i)
        out = []
        for idx in groups.values():
            if len(idx) > 1:
                out.append(idx)
            else:
                single.extend(idx)
        return out

    def _answer_shared(self, e: np.ndarray, y: np.ndarray, idx: list[int], results: list,
                       single: list[int]) -> None:
        """Answer rows ``y`` (spectra ``idx``) on one strictly ascending axis as a matrix.

        Anything unusual (an axis that fails its check or is not strictly
        ascending, a non-finite or constant row) goes to ``single``: the
        per-spectrum path words the rejection, so both paths answer the same.
        """
        try:
            inside = self._check_axis(e)
            if not inside.all():
                e, y = e[inside], y[:, inside]
            ascending = bool(np.all(e[1:] > e[:-1]))
        except (ValueError, TypeError):
            ascending = False
        if not ascending:
            single.extend(idx)
            return
        ok = np.isfinite(y).all(axis=1)
        if ok.all():
            ok = np.ptp(y, axis=1) > 0
        else:  # rows with inf would warn in ptp (inf - inf); they go to the per-spectrum path anyway
            ok[ok] = np.ptp(y[ok], axis=1) > 0
        if not ok.all():
            single.extend(i for i, keep in zip(idx, ok) if not keep)
            y = y[ok]
            idx = [i for i, keep in zip(idx, ok) if keep]
        step = self._batch_rows
        for k in range(0, len(idx), step):
            r = resample_shared_axis(e, y[k:k + step], WORK_STEP_EV)
            self._answer_rows(idx[k:k + step], np.full(len(r.values), r.start), r.values.astype(np.float32),
                              np.ones(r.values.shape, bool), r.noise, r.spikes, np.full(len(r.values), r.spacing),
                              results)

    def _answer_rows(self, idx: list[int], start: np.ndarray, values: np.ndarray, valid: np.ndarray,
                     noise: np.ndarray, spikes: np.ndarray, spacing: np.ndarray, results: list) -> None:
        """Run resampled rows and store one result per row at ``results[idx[j]]``; a backend failure answers all."""
        try:
            for i, res in zip(idx, self._run_rows(start, values, valid, noise, spikes, spacing)):
                results[i] = res
        except Exception as exc:  # backend failure: answer every row, keep serving
            log.exception("backend %s failed", self.backend_name)
            for i in idx:
                results[i] = SpectrumResult.rejected(f"model backend failed: {type(exc).__name__}: {exc}",
                                                     model=self.model_id)

    @staticmethod
    def _check_axis(e: np.ndarray) -> np.ndarray:
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
        if hi * 1e3 >= L3_PLAUSIBLE_EV[0] and lo * 1e3 <= L3_PLAUSIBLE_EV[1] and hi < 1.0:
            raise ValueError(f"axis {lo:.4f}-{hi:.4f} looks like keV; the engine reads eV "
                             "(multiply the energies by 1000)")
        if hi - lo >= MIN_SPAN_EV and (hi < L3_PLAUSIBLE_EV[0] or lo > L3_PLAUSIBLE_EV[1]):
            raise ValueError(f"axis {lo:.1f}-{hi:.1f} eV misses the Mn L2,3 edge (L3 near 640 eV, "
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
        return inside

    @classmethod
    def _check_and_resample(cls, energy, intensity) -> Resampled:
        """Check one spectrum and bring it onto the work axis (ValueError with the reason if it cannot be read)."""
        e = np.asarray(energy)
        y = np.asarray(intensity)
        if e.ndim != 1 or y.ndim != 1:
            raise ValueError(f"expected 1-D energy and intensity, got shapes {e.shape} and {y.shape}")
        if e.shape != y.shape:
            raise ValueError(f"energy has {e.size} points but intensity has {y.size}")
        inside = cls._check_axis(e)
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"non-numeric intensity (dtype {y.dtype})")
        if np.iscomplexobj(y):
            raise ValueError("complex-valued data")
        if not inside.all():
            e, y = e[inside], y[inside]
        bad = ~np.isfinite(y)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} NaN or inf value(s)")
        if float(np.ptp(y)) == 0.0:
            raise ValueError("intensity is constant: no edge")
        return resample_measured(e, y, WORK_STEP_EV)

    def _run_rows(self, start: np.ndarray, values: np.ndarray, valid: np.ndarray,
                  noise: np.ndarray, spikes: np.ndarray, spacing: np.ndarray) -> list[SpectrumResult]:
        """Preprocess and run resampled rows (``values`` on ``start + WORK_STEP_EV * i``); one result per row.

        Everything per row is computed as whole-batch arrays first and turned
        into Python numbers once: at spectrum-image rates the per-row Python
        work, not the network, is what limits throughput.
        """
        prep = preprocess(torch.from_numpy(np.asarray(start, np.float64)), torch.from_numpy(values),
                          torch.from_numpy(valid), noise=torch.from_numpy(np.asarray(noise, np.float64)))
        frac, log_std, side, features = self.backend.run(prep.x.numpy())
        ood = (self.ood(features) if self.ood is not None and features is not None
               else np.full(len(frac), np.nan))
        checks = _RowChecks.of(prep, ood, self.ood)
        std = np.exp(log_std.astype(np.float64)) * self.std_scale[None, :]
        f = np.clip(frac.astype(np.float64), 0.0, 1.0)
        f = f / f.sum(axis=1, keepdims=True)
        valence = 2.0 * f[:, 0] + 3.0 * f[:, 1] + 4.0 * f[:, 2]  # no BLAS call: its threads spin (see engine.ood)
        offset = checks.shift_ev + side[:, 0].astype(np.float64)
        resolution = np.maximum(side[:, 1].astype(np.float64), 0.0)
        t_lambda = np.maximum(side[:, 2].astype(np.float64), 0.0)
        flag_columns = (("l2_not_measured", ~checks.l2_covered), ("pre_edge_not_measured", ~checks.pre_edge_covered),
                        ("low_psnr", checks.psnr_db < LOW_PSNR_DB), ("uncertain", std[:, 3] > UNCERTAIN_VALENCE_STD),
                        ("spikes_removed", np.asarray(spikes) > 0),
                        ("coarse_axis", np.asarray(spacing) > COARSE_AXIS_EV))
        flags = [tuple(name for name, col in flag_columns if col[j]) for j in range(len(values))]
        reject = checks.rejected()
        model = self.model_id
        out = []
        for j, (fr, sd, val, off, res, tl, od) in enumerate(zip(f.tolist(), std.tolist(), valence.tolist(),
                                                                offset.tolist(), resolution.tolist(),
                                                                t_lambda.tolist(), ood.tolist())):
            if reject[j]:
                out.append(SpectrumResult.rejected(checks.reason(j), model=model, ood_score=od))
                continue
            out.append(SpectrumResult(status="ok", fractions=tuple(fr), fractions_std=tuple(sd[:3]), valence=val,
                                      valence_std=sd[3], energy_offset_eV=off, resolution_eV=res, t_lambda=tl,
                                      ood_score=od, flags=flags[j], model=model))
        return out


def model_input(energy, intensity) -> Prepared:
    """One measured spectrum as the network sees it: the engine's checks and repairs, then the shared preprocessing.

    For figures and diagnostics; raises ``ValueError`` with the engine's
    rejection reason where the engine would reject the spectrum before the
    preprocessing.
    """
    r = Engine._check_and_resample(energy, intensity)
    with torch.inference_mode():
        return preprocess(torch.tensor([r.start], dtype=torch.float64),
                          torch.from_numpy(r.values[None].astype(np.float32)),
                          noise=torch.tensor([r.noise], dtype=torch.float64))


@dataclass
class _RowChecks:
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
    ood_score: np.ndarray
    ood: OodScore | None

    @classmethod
    def of(cls, prep, ood_score: np.ndarray, ood: OodScore | None) -> _RowChecks:
        """The diagnostics of a :class:`~mnedge_live.preprocessing.Prepared` batch as numpy, with the OOD scores."""
        return cls(**{f.name: getattr(prep, f.name).numpy().astype(np.float64 if f.name in _FLOAT_CHECKS else bool)
                      for f in fields(cls) if f.name not in ("ood_score", "ood")},
                   ood_score=np.asarray(ood_score, np.float64), ood=ood)

    def rejected(self) -> np.ndarray:
        """Boolean per row: one of the rules of :meth:`reason` refuses it."""
        lo, hi = MN_SPIN_ORBIT_RANGE_EV
        with np.errstate(invalid="ignore"):
            no_edge = ~np.isfinite(self.edge_snr) | (self.edge_snr < MIN_EDGE_SNR)
            not_l3 = ~((self.l3_ev >= L3_PLAUSIBLE_EV[0]) & (self.l3_ev <= L3_PLAUSIBLE_EV[1]))
            bad_spacing = self.l2_covered & ~((self.l2_spacing_ev >= lo) & (self.l2_spacing_ev <= hi))
            no_l2_line = self.l2_covered & ~(self.l2_height >= MIN_L2_HEIGHT)
            unlike = self.ood_score > self.ood.threshold if self.ood is not None else np.zeros(len(self.l3_ev), bool)
        return no_edge | not_l3 | ~self.l3_covered | bad_spacing | no_l2_line | unlike

    def reason(self, j: int) -> str:
        """Reason to reject row ``j``, or '' (the first rule that refuses it)."""
        l3 = float(self.l3_ev[j])
        snr = float(self.edge_snr[j])
        if not math.isfinite(snr) or snr < MIN_EDGE_SNR:
            return f"{NO_EDGE_REASON} (edge/noise {snr:.1f} < {MIN_EDGE_SNR})"
        if not (L3_PLAUSIBLE_EV[0] <= l3 <= L3_PLAUSIBLE_EV[1]):
            return (f"strongest edge feature at {l3:.1f} eV is not the Mn L3 edge even allowing calibration errors "
                    f"(accepted {L3_PLAUSIBLE_EV[0]:.0f}-{L3_PLAUSIBLE_EV[1]:.0f} eV)")
        if not self.l3_covered[j]:
            return (f"the measured window does not reach {L3_COVER_EV[0]:g} eV below and {L3_COVER_EV[1]:g} eV above "
                    f"the L3 maximum at {l3:.1f} eV (the L3 line and the start of L2 must be measured)")
        if self.l2_covered[j]:
            d = float(self.l2_spacing_ev[j])
            lo, hi = MN_SPIN_ORBIT_RANGE_EV
            if not (lo <= d <= hi):
                return (f"not a Mn L2,3 edge: L3-L2 spacing {d:.1f} eV is outside {lo}-{hi} eV "
                        "(Mn 2p spin-orbit splitting is about 11 eV)")
            h = float(self.l2_height[j])
            if not h >= MIN_L2_HEIGHT:
                return (f"not a Mn L2,3 edge: no L2 line above the L3 maximum at {l3:.1f} eV (its height is "
                        f"{100 * h:.1f} % of L3's, under {100 * MIN_L2_HEIGHT:g} %; Mn shows both spin-orbit lines)")
        if self.ood is not None and self.ood_score[j] > self.ood.threshold:
            return (f"unlike the Mn L2,3 spectra the model was trained on: out-of-distribution score "
                    f"{self.ood_score[j]:.1f} above {self.ood.threshold:.1f} (the {100 * self.ood.quantile:g}th "
                    "percentile of synthetic training spectra)")
        return ""


_FLOAT_CHECKS = {"l3_ev", "shift_ev", "edge_snr", "l2_spacing_ev", "l2_height", "psnr_db"}


#: Identifier of the preprocessing (:mod:`mnedge_live.preprocessing`; the name predates that package and is kept so
#: that existing artifacts stay valid); artifacts record it.
PREPROCESSING_ID = "mnedge_live.spectrum/v2 (doublet alignment, L3 at 641 eV, 256 x 0.125 eV, pre/post-edge chord, L3 max)"


def load_engine(path: str | None = None, backend: str = "auto", warmup: bool = True,
                threads: int | None = None) -> Engine:
    """Load and verify a model artifact (default: the embedded model) and pick a backend.

    Parameters
    ----------
    path : str, optional
        Artifact directory; None for the model shipped in the package.
    backend : str
        ``"auto"`` (TensorRT, then ONNX Runtime, then PyTorch) or one of them by name.
    warmup : bool
        Run one batch at load so the first real spectrum is fast.
    threads : int, optional
        CPU threads one ``predict`` call may use, for the preprocessing
        (torch's intra-op pool, which is per process: this sets it for the
        whole process) and the ONNX Runtime session. None keeps the
        libraries' default of one per core, best for one caller; with ``k``
        callers at once (Dask worker threads) ``cores // k`` avoids
        oversubscribing the cores (measured on 2 cores, two callers:
        10.4k spectra/s with 1 thread each, 7.8k/s with the default).
    """
    if threads:
        torch.set_num_threads(int(threads))
    artifact = load_artifact(path)
    be = make_backend(artifact, backend, threads=threads)
    engine = Engine(artifact, be)
    log.info("model %s on backend %s", engine.model_id, engine.backend_name)
    if warmup:
        t = time.perf_counter()
        be.run(np.zeros((8, 2, artifact.card["input"]["grid_points"]), np.float32))
        log.debug("warm-up %.1f ms", 1e3 * (time.perf_counter() - t))
    return engine
