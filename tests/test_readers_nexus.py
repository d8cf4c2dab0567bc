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


def scan(f: h5py.File, name: str, y: np.ndarray, default: str | None = "data", units: str = "eV",
         signal: str = "mu") -> h5py.Group:
    """An entry whose NXdata plots ``signal`` = ``y`` against ``energy`` (:data:`E`)."""
    g = entry(f, name, default)
    g.attrs["signal"], g.attrs["axes"] = signal, ["energy"]
    axis(g, "energy", E, units)
    g.create_dataset(signal, data=y)
    return g


def test_a_scan_reads_its_signal_against_its_uneven_axis_as_stored(tmp_path):
    p = tmp_path / "scan.nxs"
    with h5py.File(p, "w") as f:
        scan(f, "entry", Y)
    (s,) = read_file(p)
    assert isinstance(s, MeasuredSpectrum) and s.label == "/entry/data"
    assert np.array_equal(s.energy, E) and np.array_equal(s.intensity, Y)


def test_a_raw_yield_is_divided_by_its_i0_and_column_picks_another(tmp_path):
    i0 = 1e5 * (1.0 + 0.2 * np.sin(E / 3.0))
    p = tmp_path / "tey.nxs"
    with h5py.File(p, "w") as f:
        g = scan(f, "entry", Y * i0, signal="tey")
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
            scan(f, f"scan{k}", k * Y)
        scan(f, "scan3", 3 * Y, default=None, units="electronvolt")
        mon = f["scan3"].create_group("monitor")
        mon.attrs["NX_class"], mon.attrs["signal"] = "NXdata", "i0"   # no axes: refused, the rest read
        mon.create_dataset("i0", data=np.ones_like(E))
    items = read_file(p)
    assert [type(it).__name__ for it in items] == ["MeasuredSpectrum"] * 3 + ["RefusedSignal"]
    assert [it.label for it in items[:3]] == ["/scan1/data", "/scan2/data", "/scan3/data"]
    assert [float(it.intensity.max() / Y.max()) for it in items[:3]] == pytest.approx([1, 2, 3])
    assert items[3].index == 3 and "/scan3/monitor" in items[3].reason and "'i0' is a monitor" in items[3].reason


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
            scan(f, f"scan{k}", Y)
    main(["predict", "--json", "--no-progress", "--model", str(tiny_artifact), str(p)])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["index"], r["label"]) for r in rows] == [(0, "/scan1/data"), (1, "/scan2/data")]
    assert rows[0]["valence"] == rows[1]["valence"] and Path(rows[0]["file"]) == p.resolve()


def test_a_hyperspy_file_is_not_taken_for_nexus(tmp_path):
    """A HyperSpy file with an NXentry beside its signals (HyperSpy's own NeXus-flavoured export) stays HyperSpy."""
    from hspy_writer import write_contiguous_hspy

    p = write_contiguous_hspy(tmp_path / "s.hspy", Y[None, None, :].astype(np.float32), offset=630.0, scale=0.1)
    with h5py.File(p, "a") as f:
        f.create_group("entry").attrs["NX_class"] = "NXentry"
    items = read_file(p)
    assert len(items) == 1 and not isinstance(items[0], RefusedSignal) and items[0].label is None


def test_a_map_behind_an_external_link_is_read_from_the_detector_file(tmp_path):
    cube = np.random.default_rng(2).random((2, 3, E.size))
    with h5py.File(tmp_path / "detector.h5", "w") as d:
        d.create_dataset("frames", data=cube, chunks=(1, 3, E.size))
    p = tmp_path / "scan.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        g.attrs["signal"], g.attrs["axes"] = "data", [".", ".", "energy"]
        g["data"] = h5py.ExternalLink("detector.h5", "/frames")
        f.create_dataset("frames", data=np.zeros_like(cube))   # the same path in the scan file: not the data
        axis(g, "energy", E)
    (img,) = read_file(p)
    try:
        assert np.array_equal(img.data.compute(), cube)
    finally:
        img.close()


def test_a_monitor_or_an_undivided_raw_yield_is_refused_as_in_column_text(tmp_path):
    p = tmp_path / "detectors.nxs"
    with h5py.File(p, "w") as f:
        en = f.create_group("entry")
        en.attrs["NX_class"] = "NXentry"
        for name in ("i0", "tey"):   # one NXdata per detector, no @default
            g = en.create_group(name)
            g.attrs["NX_class"], g.attrs["signal"], g.attrs["axes"] = "NXdata", name, ["energy"]
            axis(g, "energy", E)
            g.create_dataset(name, data=1e5 * Y if name == "tey" else np.full_like(E, 1e5))
    with pytest.raises(ReadError) as exc:
        read_file(p)
    assert "'i0' is a monitor" in str(exc.value) and "'tey' is a raw yield and no dataset" in str(exc.value)
    assert "--column tey reads it as it is" in str(exc.value)


def test_auxiliary_signals_are_reported(tmp_path, caplog):
    p = tmp_path / "aux.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        g.attrs["signal"], g.attrs["axes"], g.attrs["auxiliary_signals"] = "mu", ["energy"], ["tfy", "pfy_mn"]
        axis(g, "energy", E)
        for k in ("mu", "tfy", "pfy_mn"):
            g.create_dataset(k, data=Y)
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(p)
    assert "auxiliary signals tfy, pfy_mn not read" in caplog.text and str(p) in caplog.text


@pytest.mark.parametrize("layout", ["gda_axis_attr", "column_arrays", "subentry", "bin_edges", "dangling_link"])
def test_layouts_beamlines_write(tmp_path, layout):
    p = tmp_path / f"{layout}.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry", default=None if layout == "subentry" else "data")
        if layout == "subentry":   # NXentry / NXsubentry / NXdata, no @default anywhere
            del f["entry/data"]
            sub = f["entry"].create_group("xas")
            sub.attrs["NX_class"] = "NXsubentry"
            g = sub.create_group("data")
            g.attrs["NX_class"] = "NXdata"
        if layout == "gda_axis_attr":   # signal=1 on the data, axis=1 and primary=1 on the axis
            g.create_dataset("mu", data=Y).attrs["signal"] = 1
            ds = g.create_dataset("energy", data=E)
            ds.attrs["axis"], ds.attrs["primary"] = 1, 1
            g.create_dataset("energy_readback", data=E + 5).attrs["axis"] = 1
        elif layout == "column_arrays":   # a scalar per point stored as (N, 1)
            g.attrs["signal"], g.attrs["axes"] = "mu", ["energy", "."]
            g.create_dataset("mu", data=Y[:, None])
            axis(g, "energy", E[:, None])
        elif layout == "bin_edges":
            g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
            g.create_dataset("mu", data=Y[:-1])
            axis(g, "energy", E)   # N + 1 edges for N values
        else:
            g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
            g.create_dataset("mu", data=Y)
            axis(g, "energy", E)
            if layout == "dangling_link":
                g["image"] = h5py.ExternalLink("gone.h5", "/image")
    (s,) = read_file(p)
    if layout == "bin_edges":
        assert np.allclose(s.energy, 0.5 * (E[1:] + E[:-1])) and np.array_equal(s.intensity, Y[:-1])
    else:
        assert np.array_equal(s.energy, E) and np.array_equal(s.intensity, Y), layout


def test_entries_come_in_the_natural_order_of_their_names(tmp_path):
    p = tmp_path / "bliss.nxs"
    with h5py.File(p, "w") as f:
        for k in (1, 2, 10):
            scan(f, f"{k}.1", k * Y)
    assert [it.label for it in read_file(p)] == ["/1.1/data", "/2.1/data", "/10.1/data"]


def test_i0_in_the_entrys_nxmonitor_divides_a_raw_yield(tmp_path, caplog):
    i0 = 1e5 * (1.0 + 0.2 * np.sin(E / 3.0))
    p = tmp_path / "monitor.nxs"
    with h5py.File(p, "w") as f:
        scan(f, "entry", Y * i0, signal="tey")
        mon = f["entry"].create_group("monitor")
        mon.attrs["NX_class"] = "NXmonitor"
        mon.create_dataset("data", data=i0)
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(p)
    assert np.allclose(s.intensity, Y, rtol=1e-12) and "I0 monitor '/entry/monitor/data'" in caplog.text


def test_a_refused_default_gives_way_to_the_entrys_other_data(tmp_path):
    p = tmp_path / "default_i0.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry", default="i0")
        g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
        axis(g, "energy", E)
        g.create_dataset("mu", data=Y)
        i0 = f["entry"].create_group("i0")
        i0.attrs["NX_class"], i0.attrs["signal"], i0.attrs["axes"] = "NXdata", "I0", ["energy"]
        axis(i0, "energy", E)
        i0.create_dataset("I0", data=np.full_like(E, 1e5))
    (s,) = read_file(p)
    assert s.label == "/entry/data" and np.array_equal(s.intensity, Y)


def test_two_axes_in_ev_are_refused_by_name(tmp_path):
    p = tmp_path / "mca.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        g.attrs["signal"], g.attrs["axes"] = "counts", ["mono", "emission"]
        g.create_dataset("counts", data=np.ones((E.size, 50)))
        axis(g, "mono", E)
        axis(g, "emission", np.linspace(500, 900, 50))
    with pytest.raises(ReadError, match=r"2 axes in energy units \(mono, emission\)"):
        read_file(p)


def test_a_dataset_declaring_billions_of_values_is_refused_unread(tmp_path):
    """HDF5 stores nothing for an unwritten chunked dataset; reading its 10 billion declared values would
    allocate 80 GB."""
    p = tmp_path / "huge.nxs"
    with h5py.File(p, "w") as f:
        g = entry(f, "entry")
        g.attrs["signal"], g.attrs["axes"] = "mu", ["energy"]
        g.create_dataset("mu", shape=(10_000_000_000,), dtype="f8", chunks=(1_000_000,))
        g.create_dataset("energy", shape=(10_000_000_000,), dtype="f8", chunks=(1_000_000,))
    with pytest.raises(ReadError, match="'mu' holds 10000000000 values"):
        read_file(p)
