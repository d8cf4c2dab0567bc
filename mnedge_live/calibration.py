"""Calibrated one-sigma uncertainties: the network's stated std times factors fitted on held-out spectra.

The network's std head is trained with a small likelihood term, so its
scale is set afterwards: a factor per output (three fractions, valence) makes
68.27 % of held-out synthetic errors fall inside the stated one-sigma
interval. One factor for all spectra is calibrated on average only: the
network states too wide an interval for spectra it reads as one valence and
too narrow a one for mixtures (v12, 10,000 validation spectra: valence
one-sigma coverage 0.85 where the largest fraction is read above 0.99, 0.57
where it is read below 0.6). The factors are therefore fitted per group of
the prediction's largest fraction, a quantity the engine knows at run time
(a group-conditional, "Mondrian", calibration), and floored at the global
factor: groups that the global factor under-covers are widened to 68.27 %,
none is narrowed. Readings snapped to one valence are mostly exact and
sometimes far off; a 68 % quantile there (0.08 of the global factor for
v12) would state +-0.01 for every one of them and its wider intervals would
miss the wrong ones. Artifacts written before the groups carry the one
global factor, which is still applied as it was.
"""

from __future__ import annotations

import numpy as np

#: Share of held-out errors a one-sigma interval should cover.
TARGET_COVERAGE = 0.6827
#: Upper edges of the groups of the prediction's largest fraction: [0, 0.8), [0.8, 0.95), [0.95, 0.99), [0.99, 1].
GROUP_EDGES = (0.8, 0.95, 0.99)
#: A group with fewer calibration spectra than this takes the global factors.
MIN_GROUP_SPECTRA = 200
METHOD = "68.27 % quantile of |error|/std on held-out synthetic spectra"


def calibration_group(fractions: np.ndarray, edges: tuple[float, ...] = GROUP_EDGES) -> np.ndarray:
    """Group index of each row of ``fractions`` ``(N, 3)``: how many of ``edges`` its largest fraction reaches."""
    return np.searchsorted(np.asarray(edges, np.float64), np.asarray(fractions, np.float64).max(axis=1),
                           side="right")


def fit_calibration(z: np.ndarray, fractions: np.ndarray, edges: tuple[float, ...] = GROUP_EDGES,
                    min_group: int = MIN_GROUP_SPECTRA) -> dict:
    """Global and per-group factors from held-out ``|error| / stated std``.

    Parameters
    ----------
    z : ndarray, shape (N, 4)
        ``|error| / std`` of the three fractions and the valence, on spectra not used in training.
    fractions : ndarray, shape (N, 3)
        The network's fractions for the same spectra (they pick the group).
    edges : tuple of float
        Group edges of the largest fraction.
    min_group : int
        Groups with fewer spectra take the global factors (recorded as such).

    Returns
    -------
    dict
        The model card's ``calibration`` entry: ``std_scale`` (global, four factors), ``method``
        and ``groups`` (``by``, ``edges``, ``std_scale`` per group, never below the global
        factors, ``spectra`` per group).
    """
    z = np.asarray(z, np.float64)
    overall = np.quantile(z, TARGET_COVERAGE, axis=0)
    group = calibration_group(fractions, edges)
    scales, counts = [], []
    for k in range(len(edges) + 1):
        rows = z[group == k]
        counts.append(len(rows))
        own = np.quantile(rows, TARGET_COVERAGE, axis=0) if len(rows) >= min_group else overall
        scales.append(np.maximum(own, overall).tolist())
    return {"std_scale": overall.tolist(),
            "method": METHOD + ", per group of the largest fraction read, never below the global factor",
            "groups": {"by": "largest fraction", "edges": list(edges), "std_scale": scales, "spectra": counts,
                       "min_group_spectra": min_group}}


class StdCalibration:
    """The factors of an artifact's card, applied per spectrum.

    Parameters
    ----------
    calibration : dict
        The card's ``calibration`` entry; without ``groups`` the global ``std_scale`` applies to every row.
    """

    def __init__(self, calibration: dict):
        self.global_scale = np.asarray(calibration["std_scale"], np.float64)
        groups = calibration.get("groups")
        self.edges = tuple(groups["edges"]) if groups else ()
        self.group_scale = (np.asarray(groups["std_scale"], np.float64) if groups
                            else self.global_scale[None, :])
        if self.group_scale.shape != (len(self.edges) + 1, len(self.global_scale)):
            raise ValueError(f"calibration groups: {self.group_scale.shape[0]} rows of factors for "
                             f"{len(self.edges) + 1} groups")

    def factors(self, fractions: np.ndarray) -> np.ndarray:
        """Factors ``(N, 4)`` for the rows of the network's ``fractions`` ``(N, 3)``."""
        if not self.edges:
            return np.broadcast_to(self.global_scale, (len(fractions), len(self.global_scale)))
        return self.group_scale[calibration_group(fractions, self.edges)]
