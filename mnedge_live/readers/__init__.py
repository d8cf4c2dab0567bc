"""Read measured spectra from files into one uniform structure.

Supported inputs:

* column text (energy, intensity), comma, semicolon, tab or space
  separated, optional header line(s) and ``#`` comments, UTF-8 (byte-order
  mark tolerated) or UTF-16 with its byte-order mark, ascending or
  descending axes; files with more columns (XAS exports: energy, I0, TEY,
  mu, ...) are read by their column names (:func:`intensity_column`) or the
  column the user names, and named columns are checked (a monitor is never
  read as the spectrum); decimal commas between tabs, semicolons or spaces,
  a text footer after the data, an empty cell in a column not read and one
  or two rows of numbers before the names line are read, each logged;
* EMSA/MSA single spectra (``Y`` and ``XY`` data), through RosettaSciIO;
* Gatan DigitalMicrograph DM3/DM4 and HyperSpy ``.hspy`` files through
  RosettaSciIO, single spectra as well as spectrum images (line scans and
  2-D maps); spectrum images stay lazy Dask arrays;
* FEI/ThermoFisher TIA series (``.ser``, or ``.emi`` with its ``.ser``
  files) through RosettaSciIO, loaded, the energy origin at TIA's
  calibration element;
* NeXus HDF5 files (synchrotron scans): the plottable ``NXdata`` of each
  entry, its energy axis as stored (:mod:`~mnedge_live.readers.nexus`).

Every reader either returns data or raises :class:`ReadError` with the
reason, so a caller can reject one file and carry on with the next.

>>> items = read_file("MnO.csv")                         # doctest: +SKIP
>>> items[0].energy, items[0].intensity                  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from mnedge_live.readers.columns import (
    intensity_column,
    parse_columns,
    read_text,
    read_text_items,
)
from mnedge_live.readers.hdf5_cache import HDF5Dataset, release
from mnedge_live.readers.items import Item, MeasuredSpectrum, ReadError, RefusedSignal, SpectrumImage
from mnedge_live.readers.msa import read_msa
from mnedge_live.readers.nexus import attr_text, is_nexus, read_nexus
from mnedge_live.readers.signals import contiguous_chunks, read_rsciio
from mnedge_live.readers.text_fields import split_fields

#: File extensions read as EMSA/MSA.
MSA_EXTENSIONS = frozenset({".msa", ".ems", ".emsa", ".mas"})
#: File extensions read as Gatan DigitalMicrograph.
DM_EXTENSIONS = frozenset({".dm3", ".dm4"})
#: File extensions read as FEI/ThermoFisher TIA series (``.emi`` reads its ``.ser`` files).
TIA_EXTENSIONS = frozenset({".ser", ".emi"})
#: File extensions read as NeXus (:mod:`~mnedge_live.readers.nexus`).
NEXUS_EXTENSIONS = frozenset({".nxs", ".nx5", ".nexus"})
#: File extensions read as HDF5: HyperSpy, or NeXus where the file has an NXentry, and NeXus ones.
HSPY_EXTENSIONS = frozenset({".hspy", ".hdf5", ".h5"}) | NEXUS_EXTENSIONS

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def read_file(path: str | Path, lazy: bool = True, column: str | None = None) -> list[Item]:
    """Read every spectrum (or spectrum image) in a file.

    The format is chosen by extension (``.msa``/``.ems``/..., ``.dm3``/``.dm4``,
    ``.hspy``/``.hdf5``/``.h5``) and, for any other extension, by the file's
    first bytes; everything else is read as two-column text.

    Parameters
    ----------
    path : str or Path
        The file.
    lazy : bool
        Keep spectrum images as lazy Dask arrays (single spectra are always loaded).
    column : str, optional
        Intensity column of a text file (a name from its header or a 1-based
        number; see :func:`intensity_column`), or the dataset of a NeXus file's
        NXdata groups (``A/B``: A divided by B); other formats ignore it.

    Returns
    -------
    list of MeasuredSpectrum, SpectrumImage or RefusedSignal
        One item per signal of the file, in the file's order; at least one is a
        spectrum or an image (a file none of whose signals is raises ReadError).

    Raises
    ------
    ReadError
        When the file is missing, unreadable, in an unknown layout or holds no spectrum.
    """
    p = Path(path)
    if not p.exists():
        raise ReadError(f"{p}: no such file")
    if p.is_dir():
        raise ReadError(f"{p} is a directory, not a file")
    if not p.is_file():   # a pipe (/dev/stdin, <(...)) is read once: detecting its format ate its first bytes
        raise ReadError(f"{p} is not a regular file (a pipe or a device): save the data to a file first")
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ReadError(f"{p}: cannot open: {exc.strerror or exc}") from exc
    if not head:
        raise ReadError(f"{p}: the file is empty")
    fmt = detect_format(p, head)
    if fmt == "msa":
        return read_msa(p)
    if fmt == "dm":
        return read_rsciio(p, "dm", lazy=lazy)
    if fmt == "tia":
        return read_rsciio(p, "tia", lazy=lazy)
    if fmt == "hspy":
        if p.suffix.lower() in NEXUS_EXTENSIONS or _is_nexus_file(p):
            return read_nexus(p, lazy=lazy, column=column)
        return read_rsciio(p, "hspy", lazy=lazy)
    return read_text_items(p, column)


def _is_nexus_file(p: Path) -> bool:
    """Whether an HDF5 file is NeXus (an ``NXentry`` at its top) rather than HyperSpy; False if h5py cannot
    open it (the HyperSpy reader then says why)."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            return attr_text(f.attrs.get("file_format", "")) != "HyperSpy" and is_nexus(f)
    except Exception:
        return False


def detect_format(path: Path, head: bytes) -> str:
    """``"msa"``, ``"dm"``, ``"tia"``, ``"hspy"`` or ``"text"`` from the extension, else from the first bytes."""
    ext = path.suffix.lower()
    if ext in MSA_EXTENSIONS:
        return "msa"
    if ext in DM_EXTENSIONS:
        return "dm"
    if ext in TIA_EXTENSIONS:
        return "tia"
    if ext in HSPY_EXTENSIONS:
        return "hspy"
    if head.startswith(_HDF5_MAGIC):
        return "hspy"
    if head[:4] in (b"\x00\x00\x00\x03", b"\x00\x00\x00\x04"):
        return "dm"
    if head.lstrip(b"\xef\xbb\xbf").lstrip().upper().startswith(b"#FORMAT"):
        return "msa"
    return "text"


__all__ = ["HDF5Dataset", "Item", "MeasuredSpectrum", "ReadError", "RefusedSignal", "SpectrumImage", "contiguous_chunks",
           "detect_format", "intensity_column", "parse_columns", "read_file", "read_msa", "read_nexus", "read_rsciio", "read_text",
           "release", "split_fields"]
