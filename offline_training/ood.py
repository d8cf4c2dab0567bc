"""Fit the out-of-distribution statistics of a trained network (see :mod:`mnedge_live.engine.ood`).

The features are those of synthetic spectra drawn from the network's own
training ranges and prepared by the training pipeline
(:func:`~offline_training.generate.make_training_batch`): one seeded set
gives the mean and covariance, a second, disjoint and larger one the
thresholds, overall and per band of the PSNR the engine measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mnedge_live.engine.ood import OOD_FILE, psnr_bands
from mnedge_live.network import MnEdgeCNN
from offline_training.forward import ForwardModel
from offline_training.generate import make_training_batch

#: Default share of training-distribution spectra the threshold lets through.
DEFAULT_QUANTILE = 0.999
#: Inner edges (dB) of the PSNR bands with their own threshold: below 10 dB (the engine's
#: ``low_psnr`` flag) the held-out 99.9th percentile is about 58, above it 25-35
#: (benchmarks/RESULTS.md), so one threshold for all would be sized by the noisiest spectra.
DEFAULT_PSNR_EDGES_DB = (10.0, 20.0, 30.0, 40.0)
#: Held-out spectra per fitted one: each band's tail quantile needs its own share of them.
THRESHOLD_SET_FACTOR = 5
#: Ridge added to the covariance, relative to its mean eigenvalue (features that never vary
#: must not turn a tiny numerical difference into a huge distance).
RIDGE = 1e-6


def trunk_features(model: MnEdgeCNN, fm: ForwardModel, n: int, generator: torch.Generator,
                   batch: int = 1024) -> np.ndarray:
    """Trunk features ``(n, hidden)`` (float64) of ``n`` fresh synthetic spectra."""
    return _features(model, fm, n, generator, batch, psnr=False)[0]


def trunk_features_and_psnr(model: MnEdgeCNN, fm: ForwardModel, n: int, generator: torch.Generator,
                            batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Trunk features ``(n, hidden)`` and the PSNR (dB) the engine's preprocessing measures ``(n,)``."""
    return _features(model, fm, n, generator, batch, psnr=True)


def _features(model: MnEdgeCNN, fm: ForwardModel, n: int, generator: torch.Generator, batch: int,
              psnr: bool) -> tuple[np.ndarray, np.ndarray | None]:
    model.eval()
    feats, snr = [], []
    with torch.no_grad():
        for start in range(0, n, batch):
            tb = make_training_batch(fm, min(batch, n - start), generator=generator, diagnostics=psnr)
            feats.append(model.forward_with_features(tb.x)[3].double().numpy())
            if psnr:
                snr.append(tb.prepared.psnr_db.double().numpy())
    return np.concatenate(feats), (np.concatenate(snr) if psnr else None)


def band_thresholds(scores: np.ndarray, psnr_db: np.ndarray, edges: tuple[float, ...],
                    quantile: float, overall: float | None = None) -> tuple[list[float], list[int]]:
    """The ``quantile`` of ``scores`` within each PSNR band, and the number of spectra in each.

    ``len(edges) + 1`` bands.  A band holding fewer than ``1 / (1 - quantile)``
    spectra (one expected above the quantile), for example a PSNR the
    training ranges never reach, gets the overall quantile (``overall`` when
    the caller has it), as spectra without a PSNR (NaN, counted in no band)
    do in the engine.
    """
    band = psnr_bands(psnr_db, edges)
    overall = float(np.quantile(scores, quantile)) if overall is None else overall
    out, counts = [], []
    for k in range(len(edges) + 1):
        s = scores[band == k]
        counts.append(int(s.size))
        out.append(float(np.quantile(s, quantile)) if s.size >= 1.0 / (1.0 - quantile) else overall)
    return out, counts


def fit_ood(model: MnEdgeCNN, fm: ForwardModel, out_dir: str | Path, n_fit: int = 20000,
            n_threshold: int = 100000, seed: int = 9090, quantile: float = DEFAULT_QUANTILE,
            psnr_edges_db: tuple[float, ...] = DEFAULT_PSNR_EDGES_DB) -> dict:
    """Write :data:`OOD_FILE` into ``out_dir`` and return the model card's ``ood`` entry.

    Parameters
    ----------
    model : MnEdgeCNN
        The trained network.
    fm : ForwardModel
        Its training forward model (bank and ranges).
    out_dir : path
        Artifact directory.
    n_fit, n_threshold : int
        Spectra for the mean and covariance, and (disjoint) for the threshold.
    seed : int
        Seed of both sets (a seed training does not use).
    quantile : float
        The threshold is this quantile of the held-out scores, overall and
        within each PSNR band.
    psnr_edges_db : tuple of float
        Inner edges of the PSNR bands (ascending; empty: one threshold).
    """
    if n_fit < 2 * model.config.hidden or n_threshold < 100:
        raise ValueError(f"OOD statistics need n_fit >= {2 * model.config.hidden} (twice the features) "
                         f"and n_threshold >= 100, got {n_fit} and {n_threshold}")
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"OOD quantile must lie in [0.5, 1), got {quantile}")
    gen = torch.Generator().manual_seed(seed)
    h = trunk_features(model, fm, n_fit, gen)
    mean = h.mean(axis=0)
    cov = np.cov(h, rowvar=False)
    cov += RIDGE * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
    eigval, eigvec = np.linalg.eigh(cov)
    whitening = eigvec / np.sqrt(eigval)[None, :]
    held, psnr = trunk_features_and_psnr(model, fm, n_threshold, gen)
    scores = np.linalg.norm((held - mean) @ whitening, axis=1)
    threshold = float(np.quantile(scores, quantile))
    edges = tuple(float(e) for e in psnr_edges_db)
    bands, counts = band_thresholds(scores, psnr, edges, quantile, threshold) if edges else ([], [])
    np.savez(Path(out_dir) / OOD_FILE, mean=mean.astype(np.float32), whitening=whitening.astype(np.float32))
    return {"file": OOD_FILE, "threshold": threshold, "quantile": quantile, "n_fit": n_fit,
            "n_threshold": n_threshold, "seed": seed, "features": int(len(mean)),
            "psnr_edges_db": list(edges), "band_thresholds": bands, "band_counts": counts,
            "held_out_score_percentiles": {p: float(np.percentile(scores, float(p))) for p in ("50", "99", "99.9")},
            "method": "Mahalanobis distance of the trunk features from their mean on synthetic spectra of the "
                      "training ranges; thresholds: the quantile of held-out synthetic scores, overall (spectra "
                      "of unknown PSNR) and per band of the PSNR the engine measures"}
