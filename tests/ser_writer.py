"""A minimal writer of FEI/ThermoFisher TIA ``.ser`` files of spectra (series version 0x0210), for tests.

Written from the SER layout as published (C. Boothroyd's description of TIA's series files):
a 30-byte header (byte order, series id 0x0197, version, data type 0x4120 = 1-D arrays, tag
type 0x4152 = time only, total and valid element counts, offset of the offset arrays, number
of dimensions), one dimension array per navigation dimension (size, calibration offset, delta
and element, description, units), the offsets of each data element and of each tag, then the
elements (calibration offset, delta and element of the energy axis, data type, length,
values) and the tags (type, 0, time). RosettaSciIO reads such files; nothing writes them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_ser(path: Path, spectra: np.ndarray, offset: float, delta: float, element: int = 0,
              dims: list[tuple[int, float, float, str]] | None = None) -> Path:
    """Write ``spectra`` ``(elements, channels)`` (float32) as a TIA series of 1-D arrays.

    Parameters
    ----------
    offset, delta, element : float, float, int
        The energy axis of every element: ``offset`` eV at channel ``element``, ``delta`` eV a channel.
    dims : list of (size, offset, delta, units), optional
        The navigation dimensions in TIA's order (the first varies slowest here); default one
        dimension of ``len(spectra)`` elements in meters.
    """
    spectra = np.ascontiguousarray(spectra, dtype="<f4")
    n, channels = spectra.shape
    dims = dims or [(n, 0.0, 1e-9, "meters")]
    head = bytearray()
    for size, d_off, d_delta, units in dims:
        desc = b"Position"
        head += struct.pack("<IddII", size, d_off, d_delta, 0, len(desc)) + desc
        head += struct.pack("<I", len(units)) + units.encode()
    offset_array_at = 30 + len(head)
    data_at = offset_array_at + 8 * n
    element_size = struct.calcsize("<ddIHI") + 4 * channels
    tags_at = data_at + n * element_size
    out = bytearray(struct.pack("<HHHIIIIII", 0x4949, 0x0197, 0x0210, 0x4120, 0x4152, n, n, offset_array_at,
                                len(dims)))
    out += head
    out += (data_at + element_size * np.arange(n)).astype("<u4").tobytes()
    out += (tags_at + 8 * np.arange(n)).astype("<u4").tobytes()
    for row in spectra:
        out += struct.pack("<ddIHI", offset, delta, element, 7, channels) + row.tobytes()
    for k in range(n):
        out += struct.pack("<HHI", 0x4152, 0, 1_600_000_000 + k)
    path.write_bytes(bytes(out))
    return path
