"""Valence maps written to disk: whole files or none, and attributes HDF5 can store."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mnedge_live.assembly import ValenceMaps
from mnedge_live.results import SpectrumResult


def _maps() -> ValenceMaps:
    maps = ValenceMaps((2, 3))
    maps.set((0, 1), SpectrumResult(status="ok", fractions=(0.0, 1.0, 0.0), valence=3.0))
    maps.set((1, 2), SpectrumResult.rejected("no edge"))
    return maps


def test_maps_are_written_with_their_layers_and_attributes(tmp_path):
    h5, png = _maps().write(tmp_path, "m", {"source_file": "a.hspy", "bin": 2})
    with h5py.File(h5) as f:
        assert f["valence"][0, 1] == 3.0 and np.isnan(f["valence"][0, 0]) and f["rejected"][1, 2]
        assert f.attrs["source_file"] == "a.hspy" and f.attrs["bin"] == 2
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.png"]   # no temporary file left


def test_a_file_name_that_is_not_utf8_is_stored_with_its_bad_bytes_replaced(tmp_path):
    """A name from a share in another encoding (a lone surrogate in Python) made HDF5 refuse the attribute:
    the maps were lost, a half-written .h5 left behind and no PNG written."""
    name = "bad/Probe\udce9.hspy"
    h5, png = _maps().write(tmp_path, "m", {"source_file": name})
    with h5py.File(h5) as f:
        assert f.attrs["source_file"] == "bad/Probe?.hspy" and f["valence"].shape == (2, 3)
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_a_write_that_fails_leaves_no_half_written_file_and_the_earlier_one_whole(tmp_path):
    _maps().write(tmp_path, "m", {"run": 1})
    with pytest.raises(TypeError):
        _maps().write(tmp_path, "m", {"run": 2, "not storable": {"a": 1}})   # HDF5 stores no dicts
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["run"] == 1 and f["valence"][0, 1] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.png"]
    with pytest.raises(TypeError):
        _maps().write(tmp_path, "new", {"not storable": {"a": 1}})
    assert not (tmp_path / "new.h5").exists() and not (tmp_path / "new.png").exists()


def test_a_large_map_is_drawn_from_every_kth_pixel_a_small_one_whole(tmp_path):
    small = ValenceMaps((1024, 300))
    assert small.for_picture() is small
    big = ValenceMaps((3000, 2050))
    big.layers["valence"][:] = np.arange(3000 * 2050, dtype=float).reshape(3000, 2050)
    big.rejected[::7] = True
    pic = big.for_picture()
    assert pic.shape == (1000, 684) and pic.nbytes < big.nbytes / 8   # k = 3
    assert np.array_equal(pic.layers["valence"], big.layers["valence"][::3, ::3])
    assert np.array_equal(pic.rejected, big.rejected[::3, ::3])
    png = big.write_png(tmp_path, "big")
    assert png.endswith("big.png") and (tmp_path / "big.png").stat().st_size > 0
