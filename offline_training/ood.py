"""Fit the out-of-distribution statistics of a trained network (see :mod:`mnedge_live.engine.ood`).

The features are those of synthetic spectra drawn from the network's own
training ranges and prepared by the training pipeline
(:func:`~offline_training.generate.make_training_batch`): one seeded set
gives the mean and covariance, a second, disjoint one the threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mnedge_live.engine.ood import OOD_FILE
from mnedge_live.network import MnEdgeCNN
from offline_training.forward import ForwardModel
from offline_training.generate import make_training_batch

#: Default share of training-distribution spectra the threshold lets through.
DEFAULT_QUANTILE = 0.999
#: Ridge added to the covariance, relative to its mean eigenvalue (features that never vary
#: must not turn a tiny numerical difference into a huge distance).
RIDGE = 1e-6


def trunk_features(model: MnEdgeCNN, fm: ForwardModel, n: int, generator: torch.Generator,
                   batch: int = 1024) -> np.ndarray:
    """Trunk features ``(n, hidden)`` (float64) of ``n`` fresh synthetic spectra."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            tb = make_training_batch(fm, min(batch, n - start), generator=generator)
            out.append(model.forward_with_features(tb.x)[3].double().numpy())
    return np.concatenate(out)


def fit_ood(model: MnEdgeCNN, fm: ForwardModel, out_dir: str | Path, n_fit: int = 20000,
            n_threshold: int = 20000, seed: int = 9090, quantile: float = DEFAULT_QUANTILE) -> dict:
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
        The threshold is this quantile of the held-out scores.
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
    held = trunk_features(model, fm, n_threshold, gen)
    scores = np.linalg.norm((held - mean) @ whitening, axis=1)
    threshold = float(np.quantile(scores, quantile))
    np.savez(Path(out_dir) / OOD_FILE, mean=mean.astype(np.float32), whitening=whitening.astype(np.float32))
    return {"file": OOD_FILE, "threshold": threshold, "quantile": quantile, "n_fit": n_fit,
            "n_threshold": n_threshold, "seed": seed, "features": int(len(mean)),
            "held_out_score_percentiles": {p: float(np.percentile(scores, float(p))) for p in ("50", "99", "99.9")},
            "method": "Mahalanobis distance of the trunk features from their mean on synthetic spectra of the "
                      "training ranges; threshold: the quantile of held-out synthetic scores"}
