"""HyperSpy files written with h5py for tests: layouts RosettaSciIO's writer does not produce."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_contiguous_hspy(path: Path, data: np.ndarray, offset: float = 620.0, scale: float = 0.1) -> Path:
    """A HyperSpy spectrum image (rows, columns, energy) stored unchunked (contiguous), as h5py writes by
    default; the energy axis starts at ``offset`` eV in steps of ``scale`` eV."""
    import h5py

    ny, nx, n = data.shape
    axes = [{"name": "y", "size": ny, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True},
            {"name": "x", "size": nx, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True},
            {"name": "Energy loss", "size": n, "offset": offset, "scale": scale, "units": "eV", "navigate": False}]
    with h5py.File(path, "w") as f:
        f.attrs.update({"file_format": "HyperSpy", "file_format_version": "3.3"})
        g = f.create_group(f"Experiments/{Path(path).stem}")
        g.create_dataset("data", data=data)
        for i, ax in enumerate(axes):
            g.create_group(f"axis-{i}").attrs.update(ax)
        g.create_group("metadata/General").attrs["title"] = Path(path).stem
        g.create_group("metadata/Signal").attrs["signal_type"] = "EELS"
        g.create_group("original_metadata")
        assert g["data"].chunks is None
    return path
