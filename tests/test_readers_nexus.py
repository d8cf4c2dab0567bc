"""NeXus files as beamlines write them (h5py, on disk): the plottable data of each entry, axes as stored."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mnedge_live.readers import MeasuredSpectrum, ReadError, RefusedSignal, SpectrumImage, read_file

#: An unevenly stepped monochromator axis (eV).
E = np.sort(630.0 + 35.0 * np.random.default_rng(0).random(300))
Y = np.exp(-0.5 * ((E - 641.0) / 0.7) ** 2) + 0.4 * np.exp(-0.5 * ((E - 652.0) / 1.0) ** 2) + 0.05


def entry(f: h5py.File, name: str, default: str | None = "data") -> h5py.Group:
    """An NXentry with an empty NXdata group ``data`` (its ``@default`` when ``default``)."""
    en = f.create_group(name)
    en.attrs["NX_class"] = "NXentry"
    if default:
        en.attrs["default"] = default
    g = en.create_group("data")
    g.attrs["NX_class"] = "NXdata"
    return g


def axis(g: h5py.Group, name: str, values: np.ndarray, units: str = "eV") -> None:
    g.create_dataset(name, data=values).attrs["units"] = units


def test_a_scan_reads_its_signal_against_its_uneven_axis_as_stored(tmp_path):
    p = tmp_path / "scan.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
        axis(g, "energy", E)
        g.create_dataset("mu", data=Y)
    (s,) = read_file(p)
    assert isinstance(s, MeasuredSpectrum) and s.label == "/entry/data"
    assert np.array_equal(s.energy, E) and np.array_equal(s.intensity, Y)


def test_a_raw_yield_is_divided_by_its_i0_and_column_picks_another(tmp_path):
    i0 = 1e5 * (1.0 + 0.2 * np.sin(E / 3.0))
    p = tmp_path / "tey.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        g.attrs["signal"], g.attrs["axes"] = "tey", ["energy"]
        axis(g, "energy", E)
        g.create_dataset("tey", data=Y * i0)
        g.create_dataset("i0", data=i0)
        g.create_dataset("tfy", data=2 * Y * i0)
    (s,) = read_file(p)
    assert np.allclose(s.intensity, Y, rtol=1e-12)
    (raw,) = read_file(p, column="tfy")
    assert np.allclose(raw.intensity, 2 * Y * i0)
    (ratio,) = read_file(p, column="tfy/i0")
    assert np.allclose(ratio.intensity, 2 * Y)
    with pytest.raises(ReadError, match="no dataset 'pfy'"):
        read_file(p, column="pfy")


def test_old_style_attributes_and_kev_units(tmp_path):
    p = tmp_path / "old.h5"   # a NeXus file by content, whatever its extension
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        ds = g.create_dataset("norm", data=Y)
        ds.attrs["signal"], ds.attrs["axes"] = 1, "pgm_energy"
        axis(g, "pgm_energy", E / 1000.0, "keV")
    (s,) = read_file(p)
    assert np.allclose(s.energy, E, atol=1e-9) and np.array_equal(s.intensity, Y)


def test_every_entry_is_read_and_one_without_a_default_gives_each_of_its_nxdata(tmp_path):
    p = tmp_path / "scans.nxs"
    with h5py.File(p, "w") as f:
        for k in (1, 2):
            g = entry(f, f"scan{k}")
            g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
            axis(g, "energy", E)
            g.create_dataset("mu", data=k * Y)
        g = entry(f, "scan3", default=None)
        g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
        axis(g, "energy", E, "electronvolt")
        g.create_dataset("mu", data=3 * Y)
        mon = f["scan3"].create_group("monitor")
        mon.attrs["NX_class"], mon.attrs["signal"] = "NXdata", "i0"   # no axes: refused, the rest read
        mon.create_dataset("i0", data=np.ones_like(E))
    items = read_file(p)
    assert [type(it).__name__ for it in items] == ["MeasuredSpectrum"] * 3 + ["RefusedSignal"]
    assert [it.label for it in items[:3]] == ["/scan1/data", "/scan2/data", "/scan3/data"]
    assert [float(it.intensity.max() / Y.max()) for it in items[:3]] == pytest.approx([1, 2, 3])
    assert items[3].index == 3 and "/scan3/monitor" in items[3].reason and "no axis dataset" in items[3].reason


def test_an_eels_map_is_a_lazy_spectrum_image(tmp_path):
    e = np.arange(630.0, 670.0, 0.25)
    cube = np.random.default_rng(1).random((3, 4, e.size))
    p = tmp_path / "map.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        g.attrs["signal"], g.attrs["axes"], g.attrs["energy_indices"] = "data", [".", ".", "energy"], 2
        g.create_dataset("data", data=cube, chunks=(1, 4, e.size))
        axis(g, "energy", e)
    (img,) = read_file(p)
    try:
        assert isinstance(img, SpectrumImage) and img.shape == (3, 4) and hasattr(img.data, "compute")
        assert np.array_equal(img.energy, e) and np.array_equal(img.data.compute(), cube)
    finally:
        img.close()


@pytest.mark.parametrize("build, why", [
    (lambda g: g.create_dataset("mu", data=Y), "names no @signal"),
    (lambda g: (g.attrs.__setitem__("signal", "mu"), g.attrs.__setitem__("axes", ["energy"]),
                g.create_dataset("mu", data=Y), axis(g, "energy", E[:-1])), "299 values for a dimension of 300"),
    (lambda g: (g.attrs.__setitem__("signal", "tey"), g.attrs.__setitem__("axes", ["energy"]),
                g.create_dataset("tey", data=Y), g.create_dataset("i0", data=np.zeros_like(E)), axis(g, "energy", E)),
     "zero or non-finite"),
    (lambda g: (g.attrs.__setitem__("signal", "mu"), g.attrs.__setitem__("axes", ["x"]),
                g.create_dataset("mu", data=Y), axis(g, "x", E, "mm")), "not an energy"),
])
def test_a_group_that_cannot_be_read_is_refused_with_the_reason(tmp_path, build, why):
    p = tmp_path / "bad.nxs"
    with h5py.File(p, "w") as f:
        build(entry(f, "entry"))
    with pytest.raises(ReadError, match=why):
        read_file(p)


def test_a_nexus_file_without_plottable_data_is_refused(tmp_path):
    p = tmp_path / "empty.nxs"
    with h5py.File(p, "w") as f:
        f.create_group("entry").attrs["NX_class"] = "NXentry"
    with pytest.raises(ReadError, match="without an NXdata group"):
        read_file(p)


def test_predict_labels_each_scan(tmp_path, capsys, tiny_artifact):
    import json

    from mnedge_live.cli import main

    p = tmp_path / "two.nxs"
    with h5py.File(p, "w") as f:
        for k in (1, 2):
            g = entry(f, f"scan{k}")
            g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
            axis(g, "energy", E)
            g.create_dataset("mu", data=Y)
    main(["predict", "--json", "--no-progress", "--model", str(tiny_artifact), str(p)])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["index"], r["label"]) for r in rows] == [(0, "/scan1/data"), (1, "/scan2/data")]
    assert rows[0]["valence"] == rows[1]["valence"] and Path(rows[0]["file"]) == p.resolve()


def test_a_hyperspy_file_is_not_taken_for_nexus(tmp_path):
    from hspy_writer import write_contiguous_hspy

    p = write_contiguous_hspy(tmp_path / "s.hspy", Y[None, None, :].astype(np.float32), offset=630.0, scale=0.1)
    items = read_file(p)
    assert not any(isinstance(it, RefusedSignal) for it in items) and items[0].label is None
