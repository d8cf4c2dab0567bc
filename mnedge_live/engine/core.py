"""The valence engine: measured spectra in, one typed result per spectrum out.

Per-spectrum checks (:mod:`mnedge_live.engine.checks`: each failure is a
rejection with its reason, never an exception and never a guess), then the
shared preprocessing, then the backend, then calibration of the
uncertainties and quality flags.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from mnedge_live.artifact import Artifact, load_artifact
from mnedge_live.calibration import StdCalibration
from mnedge_live.cores import usable_cores
from mnedge_live.engine.backends import Backend, make_backend
from mnedge_live.engine.checks import (
    MIN_PADDING_POINTS,
    MIN_POINTS,
    RowChecks,
    check_and_resample,
    check_axis,
    finite_rows,
    looks_like_kev,
    misses_edge,
    zero_padding,
)
from mnedge_live.engine.ood import OodScore
from mnedge_live.preprocessing import (
    ANALYSIS_WINDOW_EV,
    WORK_STEP_EV,
    Prepared,
    Resampled,
    pad_rows,
    preprocess,
    resample_shared_axis,
    rescale_extreme_rows,
)
from mnedge_live.results import SpectrumResult

log = logging.getLogger(__name__)

#: Largest spacing (eV) of measured points a model was trained on when its card does not say
#: (``ForwardConfig.point_spacing``'s default): a readout whose median point spacing is larger is
#: flagged ``coarse_axis``.  Beyond it readings drift toward the middle, by how much depending on
#: how sharp the lines are: the broad measured EELS spectra read the same up to 0.5 eV and drift
#: by up to 0.2 at 0.75-1 eV; sharper synthetic XAS spectra (35 dB, 20 per composition) move from
#: their fine-axis reading by 0.01-0.08 at 0.4-0.45 eV, 0.05-0.15 at 0.5 eV and up to 0.31 at 1 eV,
#: and training on spacings up to 1 eV did not reduce that (benchmarks/RESULTS.md).
DEFAULT_TRAINED_SPACING_EV = 0.4
#: Share of the model's largest trained instrument resolution (its card's ``gauss_fwhm``) above
#: which the estimated resolution flags a readout ``broad_resolution``: the measured spectra read
#: the same with up to 2.5 eV of extra blur (estimates up to 2.45 eV) and drift from 3 eV on (MnO
#: 2.43, estimate 2.23); synthetic accuracy_0.1 falls at 2.0-2.6 eV (benchmarks/RESULTS.md).
BROAD_RESOLUTION_SHARE = 0.8
#: Largest instrument resolution (FWHM, eV) assumed trained when a card does not say.
DEFAULT_TRAINED_RESOLUTION_EV = 2.5
#: Energies (eV, from the L3 maximum) of the lines: a readout whose work points there bridge a gap
#: of more than 1.5 eV between measured points (``Resampled.bridged``) is flagged ``sparse_lines``.
#: The measured spectra subsampled at random changed by 0.12 on average (0.31 in one case in ten)
#: with such gaps, by 0.01-0.04 with gaps up to 1.5 eV (benchmarks/RESULTS.md).
LINES_REGION_EV = (-3.0, 15.0)
#: Added to the reason of a refused spectrum whose lines have such gaps: a gap across the trough
#: between L3 and L2 made measured spectra unlike the training spectra (out-of-distribution score
#: 40-54, benchmarks/RESULTS.md), and the reason alone did not say why.
SPARSE_LINES_NOTE = ("; its axis has gaps of more than 1.5 eV between measured points on or between the L3 and "
                     "L2 lines (bridged by straight lines), which may be the cause: measure or digitize the lines "
                     "more densely")
#: PSNR (dB) below which a readout is flagged as noisy.
LOW_PSNR_DB = 10.0
#: Noise at the lines' scale over the point-to-point noise (:attr:`Prepared.line_noise_ratio`) from which
#: a readout is flagged ``correlated_noise``, when that noise is also within :data:`CORRELATED_NOISE_PSNR_DB`
#: of the L3 height: the model was trained on independent noise, and noise correlated over several points
#: looks like fine structure to it.  Synthetic validation spectra (4,000 per physics version): 99.9 % below
#: 1.65 (physics 1) and 2.46 (physics 2, whose coarse points are interpolated), 1 of each set flagged; the
#: measured files 1.0-2.7; measured spectra with noise smoothed over 0.2 / 0.4 / 0.7 eV: medians 5.4 / 4.1 /
#: 2.5, their readings off by more than 0.15 flagged in 33 of 33 / 34 of 47 / 11 of 36 (benchmarks/RESULTS.md).
CORRELATED_NOISE_RATIO = 3.0
#: L3 height over the noise at the lines' scale (dB) below which correlated noise is flagged.
CORRELATED_NOISE_PSNR_DB = 50.0
#: Calibrated valence std above which a readout is flagged as uncertain.
UNCERTAIN_VALENCE_STD = 0.25
#: Background under the L3 maximum, in units of the L3 line's height (:attr:`Prepared.background`),
#: above which a readout is flagged ``strong_background``: beyond 99.9 % of the training prior
#: (49,152 synthetic spectra: at most 18.8, 99.9 % below 7; 8,000 validation spectra at most 7.85).
#: The four measured XAS-like spectra on an EELS power law E^-3 read within 0.05 up to 30-40 times,
#: SrMnO3 3.85 at 70-90 times and 3.47-3.59 beyond 120 times, but measured EELS mixtures drift
#: steadily (La0.7Sr0.3MnO3 film +0.13 / +0.16, its interface +0.12 / +0.16 on noiseless power laws of
#: 8.5-8.7 / 17-18 times the L3 height at L3, which this measure reads as about 9.5 / 19.5-19.7; the
#: limit was 20 until 2026-12-07: benchmarks/RESULTS.md).
STRONG_BACKGROUND = 10.0
#: Rows preprocessed and run at once, by backend device. On 2 CPU cores the
#: engine is fastest at 1024 (image pixels/s at 256/512/1024/2048/4096 rows:
#: 7.7k/9.3k/9.6k/8.8k/5.8k, benchmarks/RESULTS.md); a GPU wants larger batches.
BATCH_ROWS = {"cpu": 1024, "cuda": 4096}
#: Fewest spectra per part when the engine splits a batch over its workers; smaller batches
#: run whole in the calling thread (handing work to a thread costs about 0.1 ms).
MIN_PART_SPECTRA = 32


def _one_intra_op_thread() -> None:
    """Worker-thread initializer: torch's intra-op thread count is per thread (an OpenMP setting), so
    each worker runs its part on one core without changing the caller's setting."""
    torch.set_num_threads(1)


def _float_rows(y: np.ndarray) -> np.ndarray:
    """Rows for :meth:`Engine._answer_shared`: float32 stays float32 (detector data, spectrum images: the
    model reads float32, and half the memory traffic is most of the cost of the whole-matrix passes),
    anything else becomes float64."""
    return y if y.dtype == np.float32 else y.astype(np.float64, copy=False)


def _same_shape_numeric(y, energy: np.ndarray) -> bool:
    """``y`` is a numeric ndarray shaped like ``energy`` (else the per-spectrum path words the problem)."""
    return _plain(y) and y.shape == energy.shape and y.dtype.kind in "fiu"


def _plain(a) -> bool:
    """``a`` is an ndarray whose every value counts: not a masked array (whose mask ``np.asarray`` drops:
    the per-spectrum path refuses masked values with the reason)."""
    return isinstance(a, np.ndarray) and not isinstance(a, np.ma.MaskedArray)


#: Axes whose points relative to their first one agree to this (eV) are one axis shifted
#: (:meth:`Engine._shifted_axis_groups`): far below any spacing a spectrometer or monochromator sets.
SHIFT_TOLERANCE_EV = 1e-9


class WorkRows(NamedTuple):
    """A batch of resampled spectra on the work axis, with what their measured points told (one row each).

    What :meth:`Engine._run_rows` reads: built from per-spectrum
    :class:`~mnedge_live.preprocessing.Resampled` results (:meth:`stack`) or
    from one shared-axis result (:meth:`shared`).
    """

    start: np.ndarray     #: ``(B,)`` energy of work point 0 of each row (eV)
    values: np.ndarray    #: ``(B, N)`` float32 intensities on ``start + WORK_STEP_EV * arange(N)``
    valid: np.ndarray     #: ``(B, N)`` the measured window of each row
    noise: np.ndarray     #: ``(B,)`` noise sigma of the measured points
    spikes: np.ndarray    #: ``(B,)`` spikes replaced
    spacing: np.ndarray   #: ``(B,)`` median spacing of the measured points (eV)
    clipped: np.ndarray   #: ``(B,)`` the maximum is held flat (a saturated detector)
    padded: np.ndarray    #: ``(B,)`` zero-padding points set aside at the window's ends
    out_of_order: np.ndarray  #: ``(B,)`` the energies went back across the window (sorted and averaged)
    bridged: np.ndarray | None  #: ``(B, N)`` work points inside a wide gap of measured points; None: none

    @classmethod
    def stack(cls, rows: list[Resampled]) -> WorkRows:
        """Spectra resampled one by one, zero-padded to one length (``valid`` marks each row's own)."""
        values, valid = pad_rows([r.values for r in rows])
        bridged = pad_rows([r.bridged for r in rows])[0] > 0 if any(r.bridged.any() for r in rows) else None
        return cls(np.array([r.start for r in rows]), values, valid, np.array([r.noise for r in rows]),
                   np.array([r.spikes for r in rows]), np.array([r.spacing for r in rows]),
                   np.array([r.clipped for r in rows]), np.array([r.padded for r in rows]),
                   np.array([r.out_of_order for r in rows], bool), bridged)

    @classmethod
    def shared(cls, r: Resampled, starts: np.ndarray | None = None, padded: int = 0) -> WorkRows:
        """Rows resampled together from one axis (:func:`~mnedge_live.preprocessing.resample_shared_axis`);
        ``starts``: each row's own first energy where the rows' axes are that axis shifted; ``padded``: the
        zero-padding points set aside from each row before."""
        b = len(r.values)
        return cls(np.full(b, r.start) if starts is None else np.asarray(starts, np.float64),
                   r.values.astype(np.float32), np.ones(r.values.shape, bool), r.noise,
                   r.spikes, np.full(b, r.spacing), r.clipped, np.full(b, padded, np.int64), np.zeros(b, bool),
                   np.broadcast_to(r.bridged, r.values.shape) if r.bridged.any() else None)


class Engine:
    """Reads Mn2+/Mn3+/Mn4+ fractions from measured spectra with a verified model artifact.

    Thread-safe: :meth:`predict` may be called from several threads.

    Parameters
    ----------
    artifact : Artifact
        The verified model artifact.
    backend : Backend
        What runs the network.
    workers : int
        Batches of at least ``2 * MIN_PART_SPECTRA`` spectra are split into up
        to this many parts, read out at once on a thread pool, each part on
        one CPU thread. Spectra are independent, so the parts need no
        merging beyond putting the results back in order; on a CPU the parts
        keep every core busy through the preprocessing's many small torch
        operations, which one call on all cores does not.
    """

    def __init__(self, artifact: Artifact, backend: Backend, workers: int = 1):
        self.artifact = artifact
        self.backend = backend
        card = artifact.card
        self.model_id = artifact.model_id
        self.calibration = StdCalibration(card["calibration"])
        if card["input"]["work_step_eV"] != WORK_STEP_EV or card["input"]["preprocessing"] != PREPROCESSING_ID:
            raise RuntimeError(f"model {self.model_id} was trained with preprocessing "
                               f"{card['input']['preprocessing']!r}, this build has {PREPROCESSING_ID!r}")
        self.ood = OodScore.from_artifact(artifact)
        forward = card.get("training", {}).get("config", {}).get("forward", {})
        trained = forward.get("gauss_fwhm")
        #: estimated resolution (eV) above which a readout is flagged ``broad_resolution``
        self.broad_resolution_ev = BROAD_RESOLUTION_SHARE * float(
            trained[1] if trained else DEFAULT_TRAINED_RESOLUTION_EV)
        spacing = forward.get("point_spacing")
        #: median point spacing (eV) above which a readout is flagged ``coarse_axis``: the largest trained
        self.coarse_axis_ev = float(spacing[1] if spacing else DEFAULT_TRAINED_SPACING_EV)
        if self.ood is None:
            log.warning("model %s has no out-of-distribution statistics: spectra unlike its training data "
                        "are not rejected by the OOD rule ('mnedge-train fit-ood' adds them)", self.model_id)
        self._lock = threading.Lock()
        self.counters = {"spectra": 0, "ok": 0, "rejected": 0}
        self._batch_rows = BATCH_ROWS.get(backend.device, BATCH_ROWS["cpu"])
        self.workers = max(1, int(workers))
        self._pool = (ThreadPoolExecutor(self.workers, thread_name_prefix="mnedge-engine",
                                         initializer=_one_intra_op_thread) if self.workers > 1 else None)

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
        return self._in_parts(len(spectra), lambda a, b: self._predict_part([spectra[i] for i in range(a, b)]))

    def _in_parts(self, n: int, part: Callable[[int, int], list]) -> list[SpectrumResult]:
        """Results of items ``0 .. n - 1``: ``part(start, stop)`` for each of :meth:`_parts`, at once on
        the workers when there are several, joined in order and counted."""
        parts = self._parts(n)
        if len(parts) == 1:
            return self._count(part(0, n))
        futures = [self._pool.submit(part, a, b) for a, b in parts]
        return self._count([r for f in futures for r in f.result()])

    def _parts(self, n: int) -> list[tuple[int, int]]:
        """``[start, stop)`` of each part a batch of ``n`` is read out in (one part: the calling thread)."""
        k = min(self.workers, n // MIN_PART_SPECTRA)
        if k <= 1:
            return [(0, n)]
        edges = np.linspace(0, n, k + 1).round().astype(int)
        return list(zip(edges[:-1].tolist(), edges[1:].tolist()))

    def _predict_part(self, spectra: Sequence) -> list[SpectrumResult | None]:
        """Results of one part of a :meth:`predict` batch, uncounted."""
        results: list[SpectrumResult | None] = [None] * len(spectra)
        single: list[int] = []
        with torch.inference_mode():
            alone: list[int] = []
            for idx in self._shared_axis_groups(spectra, alone):
                energy = spectra[idx[0]][0]
                shaped: list[int] = []
                for i in idx:
                    (shaped if _same_shape_numeric(spectra[i][1], energy) else single).append(i)
                if shaped:
                    block = _float_rows(np.asarray([spectra[i][1] for i in shaped]))
                    self._answer_shared(energy, block, shaped, results, single)
            for idx, starts in self._shifted_axis_groups(spectra, alone, single):
                energy = spectra[idx[0]][0]
                block = _float_rows(np.asarray([spectra[i][1] for i in idx]))
                self._answer_shared(energy, block, idx, results, single, starts)
            self._answer_single(spectra, sorted(single), results)
        return results

    @staticmethod
    def _shifted_axis_groups(spectra: Sequence, idx: list[int], single: list[int]) -> list[tuple[list[int], np.ndarray]]:
        """Spectra ``idx`` whose axes are one axis shifted (events of one spectrometer whose offset drifts, files
        of one instrument), each group with its rows' first energies; the rest go to ``single``.

        Axes group when their points relative to their first one agree to :data:`SHIFT_TOLERANCE_EV` and
        every axis lies inside the analysis window and passes its range checks (the only ones a shift can
        change; :meth:`_answer_shared` checks the group's first axis for the rest), so that the
        group resamples as one matrix on its first axis (:meth:`_answer_shared`), each row keeping its own
        start: the shared path's answers, at a fraction of the per-spectrum path's cost.
        """
        candidates: dict[tuple, list[int]] = {}
        for i in idx:
            item = spectra[i]
            e = item[0] if isinstance(item, tuple) and len(item) == 2 else None
            # first spacing and span in units of the tolerance: not finite also where the division overflows
            # (an axis of 1e300 eV steps, whose rounding would raise)
            first, span = ((float(e[1] - e[0]) / SHIFT_TOLERANCE_EV, float(e[-1] - e[0]) / SHIFT_TOLERANCE_EV)
                           if _plain(e) and e.ndim == 1 and e.dtype.kind == "f" and e.size >= MIN_POINTS
                           else (math.nan, math.nan))
            if math.isfinite(first) and math.isfinite(span) and _same_shape_numeric(item[1], e):
                key = (e.size, round(first), round(span))
                candidates.setdefault(key, []).append(i)
            else:   # not a float axis, too short, NaN or inf at its ends: the per-spectrum path says what is wrong
                single.append(i)
        out = []
        for members in candidates.values():
            if len(members) < 2:
                single.extend(members)
                continue
            axes = np.stack([spectra[i][0] for i in members]).astype(np.float64, copy=False)
            starts = axes[:, 0]
            rel = axes - starts[:, None]
            lo, hi = starts, axes[:, -1]
            ok = (np.isfinite(axes).all(axis=1) & (np.abs(rel - rel[0]).max(axis=1) <= SHIFT_TOLERANCE_EV)
                  & (lo >= ANALYSIS_WINDOW_EV[0]) & (hi <= ANALYSIS_WINDOW_EV[1])
                  & ~looks_like_kev(lo, hi) & ~misses_edge(lo, hi))
            kept = [i for i, k in zip(members, ok) if k]
            single.extend(i for i, k in zip(members, ok) if not k)
            if len(kept) > 1:   # what no shift changes (points, span, spacing): _answer_shared's check_axis
                out.append((kept, starts[ok]))
            else:
                single.extend(kept)
        return out

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
            :meth:`predict`, which words each problem; a 1-D object array
            holding array rows is read row by row, any other array that is not 2-D as one spectrum.
        """
        if isinstance(intensities, np.ma.MaskedArray) and intensities.ndim == 2:   # each row says what it masks
            return self.predict([(energy, row) for row in intensities])
        try:
            y = np.asarray(intensities)
        except ValueError:  # ragged rows: each answers for itself
            return self.predict([(energy, row) for row in intensities])
        if y.ndim != 2 or not _plain(energy) or y.shape[1:] != energy.shape or y.dtype.kind not in "fiu":
            if y.ndim == 1 and y.dtype == object and any(isinstance(row, (np.ndarray, list, tuple)) for row in y):
                return self.predict([(energy, row) for row in y])   # ragged rows, a None among them: one answer each
            if y.ndim != 2:
                return self.predict([(energy, y)])
            # rows given as lists are converted one by one, as predict does: one row holding a None
            # must not make the whole block an object array and every good row "non-numeric"
            rows = y if isinstance(intensities, np.ndarray) else intensities
            return self.predict([(energy, row) for row in rows])
        y = _float_rows(y)
        return self._in_parts(len(y), lambda a, b: self._shared_axis_part(energy, y[a:b]))

    def _shared_axis_part(self, energy: np.ndarray, y: np.ndarray) -> list[SpectrumResult | None]:
        """Results of one part of a :meth:`predict_shared_axis` batch, uncounted."""
        results: list[SpectrumResult | None] = [None] * len(y)
        single: list[int] = []
        with torch.inference_mode():
            self._answer_shared(energy, y, list(range(len(y))), results, single)
            if single:
                self._answer_single({i: (energy, y[i]) for i in single}, single, results)
        return results

    def _answer_single(self, spectra, idx: list[int], results: list) -> None:
        """The per-spectrum path: check and resample ``spectra[i]`` for ``i`` in ``idx`` one by one, run in batches."""
        done: list[int] = []
        rows: list[Resampled] = []
        for i in idx:
            try:
                energy, intensity = _pair(spectra[i])
                rows.append(check_and_resample(energy, intensity))
            except (ValueError, TypeError) as exc:
                results[i] = SpectrumResult.rejected(str(exc), model=self.model_id)
                continue
            done.append(i)
        step = self._batch_rows
        for k in range(0, len(rows), step):
            self._answer_rows(done[k:k + step], WorkRows.stack(rows[k:k + step]), results)

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
        last: object = object()   # no item's energy is this
        key = b""
        for i, item in enumerate(spectra):
            energy = item[0] if isinstance(item, tuple) and len(item) == 2 else None
            if energy is last:   # the same array object as the spectrum before (pixels sharing one axis)
                groups[key].append(i)
            elif _plain(energy) and energy.ndim == 1 and energy.dtype.kind == "f" and energy.size >= MIN_POINTS:
                # keyed by value: equal axes in separate arrays (one per event) group as well; an axis
                # equal to the one before joins its group by a byte comparison, without hashing its bytes
                last, values = energy, energy.tobytes()
                if values == key:
                    groups[key].append(i)
                else:
                    key = values
                    groups.setdefault(key, []).append(i)
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
                       single: list[int], starts: np.ndarray | None = None, padded: int = 0) -> None:
        """Answer rows ``y`` (spectra ``idx``) on one strictly ascending axis as a matrix.

        ``starts``: the rows' axes are ``e`` shifted to start there (:meth:`_shifted_axis_groups`).
        Anything unusual (an axis that fails its check or is not strictly
        ascending, a non-finite or constant row) goes to ``single``: the
        per-spectrum path words the rejection, so both paths answer the same.
        Rows with zero padding (:func:`~mnedge_live.engine.checks.zero_padding`)
        are answered here too, each set of rows padded alike on the axis
        without its padding (``padded``: the points set aside, for the flag),
        as the per-spectrum path reads them: a detector's masked end channels
        pad every pixel of a spectrum image alike.
        """
        try:
            inside = check_axis(e)
            if not inside.all():
                e, y = e[inside], y[:, inside]
            ascending = bool(np.all(e[1:] > e[:-1]))
        except (ValueError, TypeError):
            ascending = False
        if not ascending:
            single.extend(idx)
            return
        # rows with inf go to the per-spectrum path; rows with zero padding are answered below, grouped
        ok = np.isfinite(y).all(axis=1)
        ends_in_zeros = ok & (~(y[:, :MIN_PADDING_POINTS] != 0).any(axis=1) | ~(y[:, -MIN_PADDING_POINTS:] != 0).any(axis=1))
        alike: dict[bytes, tuple[np.ndarray, list[int]]] = {}
        for r in np.flatnonzero(ends_in_zeros):   # low counts end in zeros too: only padding leaves
            mask = zero_padding(e, y[r])
            if mask.any():
                alike.setdefault(mask.tobytes(), (mask, []))[1].append(int(r))
        for mask, rows in alike.values():
            keep = ~mask
            moved = None if starts is None else starts[rows] + (e[keep][0] - e[0])
            self._answer_shared(e[keep], y[rows][:, keep], [idx[r] for r in rows], results, single, moved,
                                padded + int(mask.sum()))
        if alike:   # answered above: neither here nor on the per-spectrum path
            answered = np.zeros(len(idx), bool)
            answered[[r for _, rows in alike.values() for r in rows]] = True
            y, idx = y[~answered], [i for i, a in zip(idx, answered) if not a]
            starts = None if starts is None else starts[~answered]
            ok = ok[~answered]
        finite = y if ok.all() else y[ok]
        hi, lo = finite.max(axis=1), finite.min(axis=1)
        ok[ok] = hi > lo   # not constant
        if not ok.all():
            single.extend(i for i, keep in zip(idx, ok) if not keep)
            y = y[ok]
            idx = [i for i, keep in zip(idx, ok) if keep]
            starts = None if starts is None else starts[ok]
            hi, lo = hi[hi > lo], lo[hi > lo]
        scaled = rescale_extreme_rows(y, np.maximum(np.abs(hi.astype(np.float64)), np.abs(lo.astype(np.float64))))
        top, y = (hi if scaled is y else None), scaled
        step = self._batch_rows
        for k in range(0, len(idx), step):
            r = resample_shared_axis(e, y[k:k + step], WORK_STEP_EV, None if top is None else top[k:k + step])
            self._answer_rows(idx[k:k + step], WorkRows.shared(r, None if starts is None else starts[k:k + step],
                                                                padded), results)

    def _answer_rows(self, idx: list[int], rows: WorkRows, results: list) -> None:
        """Run resampled rows and store one result per row at ``results[idx[j]]``; a backend failure answers all."""
        try:
            for i, res in zip(idx, self._run_rows(rows)):
                results[i] = res
        except Exception as exc:  # backend failure: answer every row, keep serving
            log.exception("backend %s failed", self.backend_name)
            for i in idx:
                results[i] = SpectrumResult.rejected(f"model backend failed: {type(exc).__name__}: {exc}",
                                                     model=self.model_id)

    def _run_rows(self, rows: WorkRows) -> list[SpectrumResult]:
        """Preprocess and run resampled rows; one result per row.

        Everything per row is computed as whole-batch arrays first and turned
        into Python numbers once: at spectrum-image rates the per-row Python
        work, not the network, is what limits throughput.
        """
        start = np.asarray(rows.start, np.float64)
        prep = preprocess(torch.from_numpy(start), torch.from_numpy(rows.values), torch.from_numpy(rows.valid),
                          noise=torch.from_numpy(np.asarray(rows.noise, np.float64)),
                          spacing=torch.from_numpy(np.asarray(rows.spacing, np.float64)))
        frac, log_std, side, features = self.backend.run(prep.x.numpy())
        ood = (self.ood(features) if self.ood is not None and features is not None
               else np.full(len(frac), np.nan))
        checks = RowChecks.of(prep, ood, self.ood, finite_rows(frac, log_std, side, features))
        std = np.exp(log_std.astype(np.float64)) * self.calibration.factors(frac)
        f = np.clip(frac.astype(np.float64), 0.0, 1.0)
        f = f / f.sum(axis=1, keepdims=True)
        valence = 2.0 * f[:, 0] + 3.0 * f[:, 1] + 4.0 * f[:, 2]  # no BLAS call: its threads spin (see engine.ood)
        offset = checks.shift_ev + side[:, 0].astype(np.float64)
        resolution = np.maximum(side[:, 1].astype(np.float64), 0.0)
        t_lambda = np.maximum(side[:, 2].astype(np.float64), 0.0)
        sparse = (np.zeros(len(f), bool) if rows.bridged is None
                  else _bridged_near(rows.bridged, checks.l3_ev - start))
        flag_columns = (("l2_not_measured", ~checks.l2_covered), ("pre_edge_not_measured", ~checks.pre_edge_covered),
                        ("post_edge_not_measured", ~prep.post_edge_covered.numpy()),
                        ("low_psnr", checks.psnr_db < LOW_PSNR_DB), ("uncertain", std[:, 3] > UNCERTAIN_VALENCE_STD),
                        ("spikes_removed", np.asarray(rows.spikes) > 0), ("clipped", np.asarray(rows.clipped, bool)),
                        ("zero_padding_ignored", np.asarray(rows.padded) > 0),
                        ("points_out_of_order", np.asarray(rows.out_of_order, bool)),
                        ("coarse_axis", np.asarray(rows.spacing) > self.coarse_axis_ev + 1e-9),
                        ("broad_resolution", resolution > self.broad_resolution_ev),
                        ("strong_background", checks.background > STRONG_BACKGROUND),
                        ("correlated_noise", correlated_noise(prep)),
                        ("sparse_lines", sparse))
        flags = _flag_tuples(flag_columns, len(f))
        reject = checks.rejected()
        model = self.model_id
        out = []
        for j, (fr, sd, val, off, res, tl, od) in enumerate(zip(f.tolist(), std.tolist(), valence.tolist(),
                                                                offset.tolist(), resolution.tolist(),
                                                                t_lambda.tolist(), ood.tolist())):
            if reject[j]:
                reason = checks.reason(j) + (SPARSE_LINES_NOTE if sparse[j] else "")
                out.append(SpectrumResult.rejected(reason, model=model, ood_score=od))
                continue
            out.append(SpectrumResult.reading(tuple(fr), tuple(sd[:3]), val, sd[3], off, res, tl, od, flags[j], model))
        return out


def correlated_noise(prep: Prepared) -> np.ndarray:
    """Per row: noise correlated over several points, strong enough at the lines' scale to matter
    (:data:`CORRELATED_NOISE_RATIO`, :data:`CORRELATED_NOISE_PSNR_DB`); False where it was not measured."""
    ratio, psnr = prep.line_noise_ratio.numpy(), prep.line_psnr_db.numpy()
    return (ratio >= CORRELATED_NOISE_RATIO) & (psnr < CORRELATED_NOISE_PSNR_DB)


def _pair(item) -> tuple:
    """``item`` as ``(energy, intensity)``; ValueError naming what it is instead."""
    try:
        energy, intensity = item
    except (TypeError, ValueError):
        try:
            what = f"{len(item)} item{'s' if len(item) != 1 else ''}"
        except TypeError:   # no length (None, a number, a 0-d array)
            what = type(item).__name__
        raise ValueError(f"expected a pair (energy, intensity), got {what}") from None
    return energy, intensity


def _flag_tuples(columns: tuple[tuple[str, np.ndarray], ...], n: int) -> list[tuple[str, ...]]:
    """Per row, the names of the ``(name, boolean column)`` pairs that are True there, in their order.

    Rows are coded by which flags they carry (one bit each) and each code present is
    spelled out once: a batch carries a handful of combinations, not one per row.
    """
    bits = np.zeros(n, np.int64)
    for k, (_, col) in enumerate(columns):
        bits |= np.asarray(col, bool).astype(np.int64) << k
    codes = bits.tolist()
    names = {c: tuple(name for k, (name, _) in enumerate(columns) if c >> k & 1) for c in set(codes)}
    return [names[c] for c in codes]


def _bridged_near(bridged: np.ndarray, l3_rel_ev: np.ndarray) -> np.ndarray:
    """Per row: a bridged work point lies within :data:`LINES_REGION_EV` of the L3 maximum (``l3_rel_ev`` from the row start)."""
    n = bridged.shape[1]
    l3 = np.nan_to_num(l3_rel_ev / WORK_STEP_EV, nan=-1e9)
    lo = np.clip(np.floor(l3 + LINES_REGION_EV[0] / WORK_STEP_EV), 0, n).astype(np.int64)
    hi = np.clip(np.ceil(l3 + LINES_REGION_EV[1] / WORK_STEP_EV) + 1, 0, n).astype(np.int64)
    counts = np.zeros((len(bridged), n + 1), np.int64)
    np.cumsum(bridged, axis=1, out=counts[:, 1:])
    rows = np.arange(len(bridged))
    return counts[rows, hi] > counts[rows, lo]


def model_input(energy, intensity) -> Prepared:
    """One measured spectrum as the network sees it: the engine's checks and repairs, then the shared preprocessing.

    For figures and diagnostics; raises ``ValueError`` with the engine's
    rejection reason where the engine would reject the spectrum before the
    preprocessing.
    """
    r = check_and_resample(energy, intensity)
    with torch.inference_mode():
        return preprocess(torch.tensor([r.start], dtype=torch.float64),
                          torch.from_numpy(r.values[None].astype(np.float32)),
                          noise=torch.tensor([r.noise], dtype=torch.float64),
                          spacing=torch.tensor([r.spacing], dtype=torch.float64))


def edge_rejection(energy, intensity) -> str:
    """The engine's reason to refuse a spectrum by the rules that need no model (its axis and values, an edge
    above the noise, an L3 line, Mn's L3-L2 spacing and L2 line, dips), or '' when it reads as a Mn L2,3
    edge by them: what tools that fit spectra without the network (``mnedge-train realism``) check first."""
    try:
        prep = model_input(energy, intensity)
    except ValueError as exc:
        return str(exc)
    return RowChecks.of(prep, np.array([np.nan]), None, np.array([True])).reason(0)


#: Identifier of the preprocessing (:mod:`mnedge_live.preprocessing`; the name predates that package and is kept so
#: that existing artifacts stay valid); artifacts record it.
PREPROCESSING_ID = "mnedge_live.spectrum/v2 (doublet alignment, L3 at 641 eV, 256 x 0.125 eV, pre/post-edge chord, L3 max)"


def load_engine(path: str | None = None, backend: str = "auto", warmup: bool = True,
                threads: int | None = None, workers: int | None = None) -> Engine:
    """Load and verify a model artifact (default: the model in use) and pick a backend.

    Parameters
    ----------
    path : str, optional
        Artifact directory; None for the model in use in the model store (``$MNEDGE_HOME``), else
        the model shipped in the package.
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
    workers : int, optional
        Parts a large batch is split into and read out at once, one CPU
        thread each (:class:`Engine`). None: one per usable core on a CPU
        backend when ``threads`` is None, else 1 (a caller that sizes
        ``threads`` runs its own parallelism). Measured on 2 cores with two
        workers, 1,024 spectra (benchmarks/RESULTS.md): 26-27k spectra/s on
        one axis, 22-23k each on its own axis shifted, 4.9k on axes of
        different spacing (each resampled alone).
    """
    if threads:
        torch.set_num_threads(int(threads))
    split = workers is None and not threads or (workers or 1) > 1
    artifact = load_artifact(path)
    # A split batch runs one ONNX Runtime call per part at once: one thread per call.
    be = make_backend(artifact, backend, threads=1 if split else threads)
    if workers is None:
        workers = usable_cores() if split and be.device == "cpu" else 1
    engine = Engine(artifact, be, workers=workers)
    log.info("model %s on backend %s, %d worker(s)", engine.model_id, engine.backend_name, engine.workers)
    if warmup:
        t = time.perf_counter()
        features = be.run(np.zeros((8, 2, artifact.card["input"]["grid_points"]), np.float32))[3]
        log.debug("warm-up %.1f ms", 1e3 * (time.perf_counter() - t))
        if features is None and engine.ood is not None:
            log.warning("backend %s returns no trunk features (an engine built before they were exported): "
                        "the out-of-distribution rule of model %s is off; rebuild the engine to restore it",
                        engine.backend_name, engine.model_id)
    return engine
