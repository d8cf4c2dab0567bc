"""The out-of-distribution score: how unlike the network's training spectra an input looks to the network.

The score is the Mahalanobis distance of the network's trunk features (the
vector its three heads read) from their mean over synthetic spectra of the
training distribution (Lee et al., NeurIPS 2018, "A simple unified framework
for detecting out-of-distribution samples"). The artifact stores the mean,
a whitening matrix ``W`` with ``W W^T = C^-1`` (``C`` the feature
covariance) and a threshold: the given quantile (0.999 by default) of the
distance on held-out synthetic spectra, so about 1 in 1,000 spectra from the
training distribution is refused by this rule.

What it catches and what not is measured in benchmarks/RESULTS.md: smooth
lines that are not a Mn L2,3 edge (two Gaussians 11 eV apart, one Gaussian,
a sawtooth) score above the threshold; a Mn window that starts above the L3
line (the L2 line taken for L3) does not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from mnedge_live.artifact import Artifact, ArtifactError

#: File of an artifact holding the statistics (numpy ``.npz``, read without pickle).
OOD_FILE = "ood.npz"


@dataclass(frozen=True)
class OodScore:
    """Feature statistics of a network on its training distribution, and the rejection threshold.

    Attributes
    ----------
    mean : numpy.ndarray
        ``(D,)`` mean trunk feature.
    whitening : numpy.ndarray
        ``(D, D)``; ``||(h - mean) @ whitening||`` is the Mahalanobis distance.
    threshold : float
        Scores above it are rejected.
    quantile : float
        Share of held-out training-distribution spectra at or below ``threshold``.
    """

    mean: np.ndarray
    whitening: np.ndarray
    threshold: float
    quantile: float

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> OodScore | None:
        """The artifact's statistics (``card["ood"]`` and :data:`OOD_FILE`), or None if it has none.

        Raises :class:`~mnedge_live.artifact.ArtifactError` when they are unusable.
        """
        info = artifact.card.get("ood")
        if not info:
            return None
        try:
            with np.load(artifact.file(info.get("file", OOD_FILE)), allow_pickle=False) as z:
                mean, whitening = np.asarray(z["mean"], np.float32), np.asarray(z["whitening"], np.float32)
            threshold, quantile = float(info["threshold"]), float(info["quantile"])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ArtifactError(f"{artifact.path}: unusable out-of-distribution statistics: {exc!r}") from exc
        if mean.ndim != 1 or whitening.shape != (mean.size, mean.size):
            raise ArtifactError(f"{artifact.path}: {OOD_FILE} whitening {whitening.shape} does not match "
                                f"mean {mean.shape}")
        return cls(mean=mean, whitening=whitening, threshold=threshold, quantile=quantile)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Scores ``(B,)`` of trunk features ``(B, D)`` (float64).

        The product runs in torch, on the thread pool the preprocessing
        already uses: numpy's would wake OpenBLAS's own threads, whose
        spinning after each call cost ``mnedge predict`` 10-15 % on a 256 x 256
        image on 2 cores (benchmarks/RESULTS.md).
        """
        with torch.inference_mode():
            z = (torch.from_numpy(np.ascontiguousarray(features, np.float32)) - self._mean) @ self._whitening
            return torch.linalg.vector_norm(z, dim=1, dtype=torch.float64).numpy()

    @functools.cached_property
    def _mean(self) -> torch.Tensor:
        return torch.from_numpy(self.mean)

    @functools.cached_property
    def _whitening(self) -> torch.Tensor:
        return torch.from_numpy(self.whitening)
