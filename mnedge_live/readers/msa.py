"""EMSA/MSA single spectra (``Y`` and ``XY`` data) through RosettaSciIO."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnedge_live.readers.items import ENERGY_UNITS, UNDEFINED_UNITS, Item, MeasuredSpectrum, ReadError
from mnedge_live.readers.signals import items_from_signals


def read_msa(path: str | Path) -> list[MeasuredSpectrum]:
    """Read an EMSA/MSA spectrum (``Y`` or ``XY`` data) through RosettaSciIO.

    Raises
    ------
    ReadError
        When RosettaSciIO cannot parse the file or it holds no spectrum.
    """
    from rsciio.msa import file_reader

    p = Path(path)
    try:
        signals = file_reader(str(p))
    except Exception as exc:  # rsciio raises many types on malformed input
        raise ReadError(f"{p}: not a readable EMSA/MSA file: {type(exc).__name__}: {exc}") from exc
    try:
        items = items_from_signals(p, signals, lazy=False)
    except ReadError as exc:
        raise ReadError(f"{exc} (EMSA/MSA file)") from exc
    text = _msa_text(p)
    _check_msa_complete(p, items, text)
    return _with_measured_energies(p, items, text)


@dataclass
class _MsaText:
    """What :func:`read_msa` needs of an EMSA/MSA file beyond RosettaSciIO: the header keywords (first of
    each), the X values of XY data lines, and whether ``#ENDOFDATA`` was reached."""

    header: dict[str, str]
    xs: list[float]
    ended: bool


def _msa_text(p: Path) -> _MsaText:
    """Read the file once for the header keywords, the X column of XY data and the end marker."""
    header: dict[str, str] = {}
    xs: list[float] = []
    in_data = ended = False
    with open(p, encoding="latin-1") as f:
        for line in f:
            text = line.strip()
            if text.startswith("#"):
                key, _, value = text.partition(":")
                key = key.strip().upper()
                header.setdefault(key, value.strip())
                if key == "#SPECTRUM":
                    in_data = True
                elif key == "#ENDOFDATA":
                    ended = True
                    break
                continue
            if in_data and text:
                first = next((v for v in re.split(r"[,;\s]+", text) if v), "")
                try:
                    xs.append(float(first))
                except ValueError:
                    xs.append(math.nan)   # only an XY file's X column is used; a bad one is refused there
    return _MsaText(header, xs, ended)


def _with_measured_energies(p: Path, items: list[Item], text: _MsaText) -> list[Item]:
    """For ``#DATATYPE: XY`` files, the spectrum on the energies the file lists; ``Y`` files must give
    ``#OFFSET`` and ``#XPERCHAN`` (else refused: the channels would be read as energies 0, 1, 2 ...).

    RosettaSciIO builds every EMSA axis as ``#OFFSET + #XPERCHAN * i`` and drops the file's X column:
    measured energies that are not evenly spaced, or a rounded ``#XPERCHAN``, were read on the wrong
    axis (MnO read 2.80, status ok, on an axis up to 2.7 eV from the one in the file).
    """
    header = text.header
    if header.get("#DATATYPE", "Y").upper() != "XY":
        missing = [k for k in ("#OFFSET", "#XPERCHAN") if k not in header]
        if missing:   # RosettaSciIO then numbers the channels 0, 1, 2 ...: no energy axis at all
            raise ReadError(f"{p}: Y data without {' and '.join(missing)}: the file gives no energy axis "
                            "(EMSA/MSA file)")
        return items
    units = header.get("#XUNITS", "").strip().lower()
    factor = ENERGY_UNITS.get(units, 1.0) if units not in UNDEFINED_UNITS else 1.0
    spectra = [it for it in items if isinstance(it, MeasuredSpectrum)]
    if len(spectra) != 1 or len(text.xs) != len(spectra[0].intensity):
        raise ReadError(f"{p}: {len(text.xs)} X values for {sum(len(s.intensity) for s in spectra)} intensities "
                        "(EMSA/MSA XY file)")
    if not all(math.isfinite(x) for x in text.xs):
        raise ReadError(f"{p}: an XY data line does not start with a number (EMSA/MSA file)")
    energy = np.asarray(text.xs, np.float64) * factor
    return [dataclasses.replace(it, energy=energy) if it is spectra[0] else it for it in items]


def _check_msa_complete(p: Path, items: list[Item], text: _MsaText) -> None:
    """Refuse an EMSA/MSA file cut short: its ``#NPOINTS`` differs from the values read, or it has no
    ``#ENDOFDATA`` line (both required by the format; a file cut inside a number reads a wrong last value)."""
    npoints: float | None = None
    if "#NPOINTS" in text.header:
        value = text.header["#NPOINTS"]
        try:
            npoints = float(value)
        except ValueError:
            raise ReadError(f"{p}: #NPOINTS is not a number: {value[:20]!r} (EMSA/MSA file)") from None
    read = sum(len(it.intensity) for it in items if isinstance(it, MeasuredSpectrum))
    if npoints is not None and read != int(npoints):
        raise ReadError(f"{p}: {read} values read where #NPOINTS announces {npoints:g}: truncated or "
                        "inconsistent (EMSA/MSA file)")
    if not text.ended:
        raise ReadError(f"{p}: no #ENDOFDATA line: the file is truncated (EMSA/MSA file)")

