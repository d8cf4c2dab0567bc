"""What the readers return: one measured spectrum, a lazy spectrum image, a signal that is no spectrum, or
:class:`ReadError` with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnedge_live.readers.hdf5_cache import release

#: Energy units accepted on a signal axis and their factor to eV.
ENERGY_UNITS = {"ev": 1.0, "kev": 1e3, "mev": 1e-3, "electronvolt": 1.0, "electron volt": 1.0,
                "electron_volt": 1.0, "kiloelectronvolt": 1e3}
#: Most values of one spectrum (or axis) read whole into memory: a measured spectrum has thousands; a
#: HDF5 dataset may declare billions that it never stored, which reading would allocate.
MAX_SPECTRUM_VALUES = 10_000_000
#: Axis units that mean "not recorded"; such axes are taken as eV.
UNDEFINED_UNITS = frozenset({"", "<undefined>", "undefined", "none", "t.b.d.", "unknown"})


class ReadError(ValueError):
    """A file could not be read as a spectrum; the message says why."""


@dataclass(frozen=True)
class MeasuredSpectrum:
    """One measured spectrum.

    Attributes
    ----------
    file : str
        Path the spectrum was read from.
    index : int
        Position of the spectrum within its file (0 for single-spectrum files).
    energy : numpy.ndarray
        Energy axis (eV), as measured: any spacing, ascending or descending.
    intensity : numpy.ndarray
        Intensities, one per energy.
    pixel : tuple of int or None
        ``(row, column)`` within a spectrum image, None for a single spectrum.
    label : str or None
        The name of the spectrum's column in a table of several (``MnO`` in
        ``Energy, MnO, Mn2O3``); None otherwise.
    """

    file: str
    index: int
    energy: np.ndarray
    intensity: np.ndarray
    pixel: tuple[int, int] | None = None
    label: str | None = None


@dataclass(frozen=True)
class SpectrumImage:
    """A spectrum image (or line scan): one spectrum per pixel on a shared energy axis.

    Attributes
    ----------
    file : str
        Path the image was read from.
    index : int
        Position of the signal within its file.
    energy : numpy.ndarray
        Shared energy axis (eV), ``(n,)``.
    data : dask.array.Array
        Intensities ``(rows, columns, n)``, lazy; a line scan has one row.
    """

    file: str
    index: int
    energy: np.ndarray
    data: Any

    @property
    def shape(self) -> tuple[int, int]:
        """Navigation shape ``(rows, columns)``."""
        return int(self.data.shape[0]), int(self.data.shape[1])

    @property
    def n_pixels(self) -> int:
        """Number of spectra in the image."""
        rows, cols = self.shape
        return rows * cols

    def spectrum(self, row: int, col: int) -> MeasuredSpectrum:
        """The spectrum of one pixel, computed from the lazy array."""
        values = np.asarray(self.data[row, col].compute() if hasattr(self.data, "compute") else self.data[row, col])
        return MeasuredSpectrum(self.file, self.index, self.energy, values, (row, col))

    def close(self) -> None:
        """Close the file the lazy array reads from (every image of that file): call it when done with them."""
        release(self.file)



@dataclass(frozen=True)
class RefusedSignal:
    """A signal of a multi-signal file (a DM file may hold several) that is not a spectrum or
    spectrum image, while other signals of the file are: it is reported, not dropped.

    Attributes
    ----------
    file : str
        Path of the file.
    index : int
        Position of the signal within its file.
    reason : str
        Why it was not read.
    """

    file: str
    index: int
    reason: str


Item = MeasuredSpectrum | SpectrumImage | RefusedSignal
