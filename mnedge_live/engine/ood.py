"""The out-of-distribution score: how unlike the network's training spectra an input looks to the network.

The score is the Mahalanobis distance of the network's trunk features (the
vector its three heads read) from their mean over synthetic spectra of the
training distribution (Lee et al., NeurIPS 2018, "A simple unified framework
for detecting out-of-distribution samples"). The artifact stores the mean,
a whitening matrix ``W`` with ``W W^T = C^-1`` (``C`` the feature
covariance) and thresholds: the given quantile (0.999 by default) of the
distance on held-out synthetic spectra, so about 1 in 1,000 spectra from the
training distribution is refused by this rule.  The quantile is taken per band
of the spectrum's measured PSNR where the artifact has them (noise spreads the
features: in the training distribution the 99.9th percentile is about 58 below
10 dB and 25-35 above it), so that a clean spectrum unlike any Mn edge is not
let through by a threshold sized for the noisiest ones; a spectrum whose PSNR
is unknown gets the threshold of all bands together.

What it catches and what not is measured in benchmarks/RESULTS.md: smooth
lines that are not a Mn L2,3 edge (two Gaussians 11 eV apart, one Gaussian,
a sawtooth) score above the threshold; a Mn window that starts above the L3
line (the L2 line taken for L3) does not.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
import torch

from mnedge_live.artifact import Artifact, ArtifactError

#: File of an artifact holding the statistics (numpy ``.npz``, read without pickle).
OOD_FILE = "ood.npz"


def psnr_bands(psnr_db, edges) -> np.ndarray:
    """Band of each PSNR (dB): 0 below the first of the ascending ``edges``, ``len(edges)`` from the
    last; -1 where the PSNR is unknown (not finite)."""
    psnr = np.asarray(psnr_db, np.float64)
    band = np.searchsorted(np.asarray(edges, np.float64), np.nan_to_num(psnr, nan=0.0), side="right")
    return np.where(np.isfinite(psnr), band, -1)


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
        Scores above it are rejected (over all PSNR bands together).
    quantile : float
        Share of held-out training-distribution spectra at or below ``threshold``.
    psnr_edges_db : tuple of float
        Inner edges of the PSNR bands, ascending (empty: one band).
    band_thresholds : tuple of float
        One threshold per band (``len(psnr_edges_db) + 1``): below the first
        edge, between edges, from the last edge up.
    """

    mean: np.ndarray
    whitening: np.ndarray
    threshold: float
    quantile: float
    psnr_edges_db: tuple[float, ...] = ()
    band_thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        edges, bands = self.psnr_edges_db, self.band_thresholds
        if (edges or bands) and len(bands) != len(edges) + 1:
            raise ValueError(f"{len(edges)} PSNR edges need {len(edges) + 1} band thresholds, got {len(bands)}")
        if not all(np.isfinite(edges)) or not all(np.isfinite(bands)) or list(edges) != sorted(set(edges)):
            raise ValueError(f"PSNR edges must be finite and strictly ascending and the thresholds finite: "
                             f"{edges}, {bands}")

    def thresholds_for(self, psnr_db: np.ndarray) -> np.ndarray:
        """Threshold of each row ``(B,)`` from its measured PSNR (dB); NaN PSNR: :attr:`threshold`."""
        band = psnr_bands(psnr_db, self.psnr_edges_db)
        if not self.band_thresholds:
            return np.full(band.shape, self.threshold)
        return np.where(band >= 0, np.asarray(self.band_thresholds)[band.clip(0)], self.threshold)

    def band_of(self, psnr_db: float) -> str:
        """Words for the PSNR band of one spectrum, e.g. ``'PSNR 20-30 dB'`` ('' when there are no bands)."""
        k = int(psnr_bands(psnr_db, self.psnr_edges_db))
        if not self.band_thresholds or k < 0:
            return ""
        edges = self.psnr_edges_db
        if k == 0:
            return f"PSNR below {edges[0]:g} dB"
        if k == len(edges):
            return f"PSNR from {edges[-1]:g} dB"
        return f"PSNR {edges[k - 1]:g}-{edges[k]:g} dB"

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> OodScore | None:
        """The artifact's statistics (``card["ood"]`` and :data:`OOD_FILE`), or None if it has none.

        Raises :class:`~mnedge_live.artifact.ArtifactError` when they are unusable.
        """
        info = artifact.card.get("ood")
        if not info:
            return None
        try:
            with np.load(io.BytesIO(artifact.read(info.get("file", OOD_FILE))), allow_pickle=False) as z:
                mean, whitening = np.asarray(z["mean"], np.float32), np.asarray(z["whitening"], np.float32)
            threshold, quantile = float(info["threshold"]), float(info["quantile"])
            edges = tuple(float(v) for v in info.get("psnr_edges_db", ()))
            bands = tuple(float(v) for v in info.get("band_thresholds", ()))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ArtifactError(f"{artifact.path}: unusable out-of-distribution statistics: {exc!r}") from exc
        if mean.ndim != 1 or whitening.shape != (mean.size, mean.size):
            raise ArtifactError(f"{artifact.path}: {OOD_FILE} whitening {whitening.shape} does not match "
                                f"mean {mean.shape}")
        values = (mean, whitening, np.array([threshold, quantile, *edges, *bands]))
        if not all(np.isfinite(v).all() for v in values):   # a NaN threshold would turn the rule off, silently
            raise ArtifactError(f"{artifact.path}: out-of-distribution statistics or thresholds are not finite")
        try:
            return cls(mean=mean, whitening=whitening, threshold=threshold, quantile=quantile,
                       psnr_edges_db=edges, band_thresholds=bands)
        except ValueError as exc:
            raise ArtifactError(f"{artifact.path}: unusable out-of-distribution thresholds: {exc}") from exc

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
