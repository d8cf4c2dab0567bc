"""Measured end-member references supplied by facility staff (two-column files per valence).

A reference is baseline-corrected (straight line through the first and last
2 eV, i.e. pre-edge and post-edge continuum removed with the edge step
approximated by that line), resampled onto the bank grid with zeros outside
its window, and scaled to unit area by :func:`~offline_training.references.bank.join_measured`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline_training.realism import read_two_column
from offline_training.references.bank import BANK_GRID

#: A reference must cover at least this window (eV) around its L3 maximum, and the window must
#: lie on the bank grid it is resampled onto (:func:`l3_interval`).
REQUIRED_BELOW_EV = 3.0
REQUIRED_ABOVE_EV = 14.0


def l3_interval(grid: np.ndarray) -> tuple[float, float]:
    """Where a reference's L3 maximum may lie (eV) for its required window to lie on ``grid``.

    A window reaching past the grid would be cut off when the reference is
    resampled onto it (:meth:`MeasuredReference.on_grid` fills zeros outside
    the grid), leaving a truncated end member in the bank.
    """
    return float(grid[0]) + REQUIRED_BELOW_EV, float(grid[-1]) - REQUIRED_ABOVE_EV


def _check_on_grid(name: str, l3: float, grid: np.ndarray) -> None:
    """Refuse (ValueError) an L3 maximum whose required window does not lie on ``grid``, stating the interval."""
    lo, hi = l3_interval(grid)
    if not lo <= l3 <= hi:
        raise ValueError(f"reference {name}: L3 maximum at {l3:.2f} eV is outside {lo:.2f}-{hi:.2f} eV, where the "
                         f"bank grid ({float(grid[0]):g}-{float(grid[-1]):g} eV) holds the {REQUIRED_BELOW_EV:g} eV "
                         f"below and {REQUIRED_ABOVE_EV:g} eV above it that a reference needs")


@dataclass
class MeasuredReference:
    """One measured pure-valence spectrum."""

    name: str
    valence: int
    energy: np.ndarray
    intensity: np.ndarray

    def __post_init__(self) -> None:
        if self.valence not in (2, 3, 4):
            raise ValueError(f"reference {self.name}: valence must be 2, 3 or 4, got {self.valence}")
        e = np.asarray(self.energy, float)
        y = np.asarray(self.intensity, float)
        if e.shape != y.shape or e.ndim != 1 or e.size < 8:
            raise ValueError(f"reference {self.name}: need two columns of equal length (at least 8 rows)")
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(y))):
            raise ValueError(f"reference {self.name}: contains NaN or inf")
        order = np.argsort(e)
        self.energy, self.intensity = e[order], y[order]
        l3 = self.energy[np.argmax(self.intensity)]
        if l3 - self.energy[0] < REQUIRED_BELOW_EV or self.energy[-1] - l3 < REQUIRED_ABOVE_EV:
            raise ValueError(f"reference {self.name}: does not cover the edge ({self.energy[0]:.1f}-{self.energy[-1]:.1f} eV; "
                             f"need {REQUIRED_BELOW_EV} eV below and {REQUIRED_ABOVE_EV} eV above the L3 maximum at {l3:.1f} eV)")
        _check_on_grid(self.name, l3, BANK_GRID)

    def on_grid(self, grid: np.ndarray) -> np.ndarray:
        """Baseline-corrected reference on ``grid`` (zero outside its measured window).

        Refused (``ValueError``) when ``grid`` does not hold the window around
        the L3 maximum (:func:`l3_interval`): the reference would be truncated.
        """
        e, y = self.energy, self.intensity
        _check_on_grid(self.name, float(e[np.argmax(y)]), grid)
        lo = e <= e[0] + 2.0
        hi = e >= e[-1] - 2.0
        x0, x1 = e[lo].mean(), e[hi].mean()
        y0, y1 = y[lo].mean(), y[hi].mean()
        base = y0 + (y1 - y0) * (e - x0) / (x1 - x0)
        corrected = np.clip(y - base, 0.0, None)
        return np.interp(grid, e, corrected, left=0.0, right=0.0)


def read_measured_references(specs: list[str]) -> list[MeasuredReference]:
    """Parse ``VALENCE:FILE`` items (e.g. ``"3:/data/Mn2O3.csv"``) into references.

    The same file given twice with the same valence is refused (``ValueError``): it would join the bank twice.
    """
    refs = []
    seen: dict[tuple[int, Path], str] = {}
    for spec in specs:
        if ":" not in spec:
            raise ValueError(f"measured reference {spec!r}: expected VALENCE:FILE, e.g. 3:Mn2O3.csv")
        v, path = spec.split(":", 1)
        try:
            valence = int(v.strip().rstrip("+"))
        except ValueError:
            raise ValueError(f"measured reference {spec!r}: valence {v!r} is not 2, 3 or 4") from None
        key = (valence, Path(path).expanduser().resolve())
        if key in seen:
            raise ValueError(f"measured reference {spec!r} is given twice (first as {seen[key]!r})")
        seen[key] = spec
        e, y = read_two_column(path)
        refs.append(MeasuredReference(Path(path).name, valence, e, y))
    return refs
