"""A minimal Gatan DigitalMicrograph DM3/DM4 writer for tests (RosettaSciIO reads DM files but cannot write them).

Writes the tag tree a DM file needs for one calibrated image: ``ImageList/<group>/ImageData``
(``Data``, ``DataType``, ``Dimensions``, ``Calibrations``), ``ImageTags/Meta Data`` and ``Name``.
Tag-tree bookkeeping is big-endian; the data are little-endian, as DM writes them on PCs.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

#: numpy dtype -> (DM image DataType, DM tag element type) for the supported data.
_IMAGE_TYPES = {np.dtype("float32"): (2, 6), np.dtype("float64"): (12, 7), np.dtype("int32"): (7, 3)}


class _Writer:
    def __init__(self, version: int):
        self.v = version
        self.buf = bytearray()

    def n(self, value: int) -> bytes:
        """A big-endian length: 4 bytes in DM3, 8 in DM4."""
        return struct.pack(">q" if self.v == 4 else ">l", value)

    def group(self, items: list[tuple[str, object]]) -> bytes:
        body = bytearray()
        for name, value in items:
            body += self.tag(name, value)
        head = b"\x00\x01"  # is_sorted, is_open
        return head + self.n(len(items)) + bytes(body)

    def tag(self, name: str, value) -> bytes:
        label = name.encode("latin-1")
        if isinstance(value, list):  # a group
            content = self.group(value)
            size = self.n(len(content)) if self.v == 4 else b""
            return b"\x14" + struct.pack(">h", len(label)) + label + size + content
        info, data = self.encode(value)
        content = b"%%%%" + self.n(len(info)) + b"".join(self.n(i) for i in info) + data
        size = self.n(len(content)) if self.v == 4 else b""
        return b"\x15" + struct.pack(">h", len(label)) + label + size + content

    @staticmethod
    def encode(value) -> tuple[list[int], bytes]:
        if isinstance(value, str):  # DM strings: arrays of 2-byte characters
            return [20, 4, len(value)], np.frombuffer(value.encode("utf-16-le"), "<u2").tobytes()
        if isinstance(value, np.ndarray):
            el = _IMAGE_TYPES[value.dtype][1]
            return [20, el, value.size], value.astype(value.dtype.newbyteorder("<")).tobytes()
        if isinstance(value, bool):
            return [8], struct.pack("<B", value)
        if isinstance(value, int):
            return [3], struct.pack("<l", value)
        return [6], struct.pack("<f", float(value))


def write_dm(path: str | Path, data: np.ndarray, axes: list[dict], version: int = 3, signal: str = "EELS",
             fmt: str = "Spectrum", name: str = "test", more: list[dict] | None = None) -> Path:
    """Write ``data`` (numpy order, e.g. ``(E, Y, X)`` for a DM spectrum image) with calibrated axes.

    Parameters
    ----------
    axes : list of dict
        One per numpy axis: ``offset``, ``scale``, ``units``.
    fmt : str
        ``ImageTags/Meta Data/Format``: ``"Spectrum"`` or ``"Spectrum image"``.
    more : list of dict, optional
        Further images of the same file, after this one: each a dict of ``data``, ``axes`` and
        optionally ``signal``, ``fmt``, ``name`` (as the arguments of this function).
    """
    w = _Writer(version)
    images = [_image(data, axes, signal, fmt, name)]
    for m in more or []:
        images.append(_image(m["data"], m["axes"], m.get("signal", "EELS"), m.get("fmt", "Spectrum"),
                             m.get("name", "test")))
    root = w.group([("ImageList", [("", image) for image in images])])
    head = struct.pack(">l", version) + w.n(len(root) + 16) + struct.pack(">l", 1)  # 1: little-endian data
    p = Path(path)
    p.write_bytes(head + root + bytes(8))
    return p


def _image(data: np.ndarray, axes: list[dict], signal: str, fmt: str, name: str) -> list:
    """The tag group of one image."""
    data = np.ascontiguousarray(data)
    dm_axes = list(zip(data.shape[::-1], axes[::-1]))  # DM lists the fastest axis first
    dims = [("", int(size)) for size, _ in dm_axes]
    cal = [("", [("Origin", -float(a["offset"]) / float(a["scale"])), ("Scale", float(a["scale"])),
                 ("Units", str(a["units"]))]) for _, a in dm_axes]
    return [
        ("ImageData", [
            ("Calibrations", [("Brightness", [("Origin", 0.0), ("Scale", 1.0), ("Units", "counts")]),
                              ("Dimension", cal)]),
            ("Data", data.ravel()),
            ("DataType", _IMAGE_TYPES[data.dtype][0]),
            ("Dimensions", dims),
        ]),
        ("ImageTags", [("Meta Data", [("Format", fmt), ("Signal", signal)])]),
        ("Name", name),
    ]
