"""``mnedge predict`` end to end: real files, the real engine (a tiny trained artifact), real Dask clusters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hspy_writer import write_contiguous_hspy

from mnedge_live.cli import main
from mnedge_live.results import SpectrumResult

E = np.round(np.arange(620.0, 680.0, 0.1), 4)
KEYS = {"file", "index", "status", "reason", "fractions", "fractions_std", "valence", "valence_std",
        "energy_offset_eV", "resolution_eV", "flags", "model"}


def mn_like(e=E, l3=641.0, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    y = np.exp(-0.5 * ((e - l3) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - l3 - 11.0) / 0.9) ** 2) + 0.05
    return y + rng.normal(0, noise, np.shape(e))


def write_csv(path: Path, e, y, header: str = "energy,intensity\n", sep: str = ",", bom: bool = False) -> Path:
    text = header + "".join(f"{a:.4f}{sep}{b:.6f}\n" for a, b in zip(e, y))
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def write_image(path: Path, data: np.ndarray, offset: float = 620.0, scale: float = 0.1) -> Path:
    from rsciio.hspy import file_writer

    ny, nx, n = data.shape
    axes = [{"name": "y", "size": ny, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True},
            {"name": "x", "size": nx, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True},
            {"name": "Energy loss", "size": n, "offset": offset, "scale": scale, "units": "eV", "navigate": False}]
    sig = {"data": data, "axes": axes, "metadata": {"General": {"title": "si"}, "Signal": {"signal_type": "EELS"}},
           "original_metadata": {}, "attributes": {"_lazy": False}, "tmp_parameters": {}, "learning_results": {},
           "models": {}, "package_info": {"name": "hyperspy", "version": "2.1"}}
    file_writer(str(path), sig, show_progressbar=False)
    return path


@pytest.fixture(scope="module")
def model(tiny_artifact) -> str:
    return str(tiny_artifact)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spectra")
    out = {
        "good": write_csv(d / "good.csv", E, mn_like(), bom=True),
        "tabs": write_csv(d / "tabs.txt", E, mn_like(seed=1), header="", sep="\t"),
        "desc": write_csv(d / "desc.csv", E[::-1], mn_like(seed=2)[::-1]),
        "plus12": write_csv(d / "plus12.csv", E + 12.0, mn_like(seed=3)),
        "minus12": write_csv(d / "minus12.csv", E - 12.0, mn_like(seed=4)),
        "window": write_csv(d / "window.csv", E[150:320], mn_like(seed=5)[150:320]),  # 635-652 eV
        "flat": write_csv(d / "flat.csv", E, np.ones(E.size)),
        "garbage": d / "garbage.csv",
        "binary": d / "binary.dm3",
    }
    out["garbage"].write_text("this is not a spectrum\n")
    from dm_writer import write_dm

    out["dm3"] = write_dm(d / "good.dm3", mn_like(seed=7).astype(np.float32),
                          [{"offset": 620.0, "scale": 0.1, "units": "eV"}], version=3)
    out["binary"].write_bytes(b"\x00\x00\x00\x03" + bytes(200))
    from rsciio.msa import file_writer

    out["emsa"] = d / "good.msa"
    file_writer(str(out["emsa"]), {"data": mn_like(seed=6), "axes": [
        {"name": "Energy", "size": E.size, "offset": 620.0, "scale": 0.1, "units": "eV", "navigate": False}],
        "metadata": {"General": {"title": "x"}, "Signal": {"signal_type": "EELS"}}, "original_metadata": {}})
    # 3 x 4 spectrum image: Mn-like pixels, and constant pixels on the diagonal (rejected by the engine).
    img = np.stack([mn_like(seed=10 + k) for k in range(12)]).reshape(3, 4, E.size).astype(np.float32)
    for k in range(3):
        img[k, k] = 1.0
    out["image"] = write_image(d / "si.hspy", img)
    out["dm_image"] = write_dm(d / "si.dm4", np.ascontiguousarray(np.moveaxis(img, -1, 0)),
                               [{"offset": 620.0, "scale": 0.1, "units": "eV"}, {"offset": 0, "scale": 1, "units": "nm"},
                                {"offset": 0, "scale": 1, "units": "nm"}], version=4, fmt="Spectrum image")
    return out


def predict_json(capsys, *argv) -> tuple[int, list[dict]]:
    rc = main(["predict", "--json", "--no-progress", *map(str, argv)])
    return rc, json.loads(capsys.readouterr().out)


def test_good_files_in_every_format_read_out_with_exit_0(capsys, model, files):
    names = ["good", "tabs", "desc", "plus12", "minus12", "window", "emsa", "dm3"]
    rc, rows = predict_json(capsys, "--model", model, *(files[n] for n in names))
    assert rc == 0
    assert [Path(r["file"]).name for r in rows] == [files[n].name for n in names]
    for r in rows:
        assert KEYS <= set(r), r
        assert r["status"] == "ok", r
        assert r["index"] == 0 and r["model"] == "tiny-test"
        assert set(r["fractions"]) == {"Mn2+", "Mn3+", "Mn4+"}
        assert abs(sum(r["fractions"].values()) - 1) < 1e-6
        assert 2.0 <= r["valence"] <= 4.0
    by = {Path(r["file"]).stem: r for r in rows}
    # The +-12 eV axis errors are found by the alignment (sign: axis reading minus true energy).
    assert by["plus12"]["energy_offset_eV"] - by["good"]["energy_offset_eV"] == pytest.approx(12.0, abs=1.5)
    assert by["minus12"]["energy_offset_eV"] - by["good"]["energy_offset_eV"] == pytest.approx(-12.0, abs=1.5)


def test_unreadable_files_get_rejection_rows_and_the_rest_is_processed(capsys, model, files):
    rc, rows = predict_json(capsys, "--model", model, files["garbage"], files["good"], files["binary"],
                            files["flat"], Path(files["good"]).parent / "absent.csv")
    assert rc == 1
    assert [r["status"] for r in rows] == ["rejected", "ok", "rejected", "rejected", "rejected"]
    garbage, _, binary, flat, absent = rows
    assert garbage["index"] is None and "cannot read the file" in garbage["reason"]
    assert "no numeric" in garbage["reason"]
    assert "DigitalMicrograph" in binary["reason"]
    assert flat["index"] == 0 and "constant" in flat["reason"]
    assert "no such file" in absent["reason"]
    for r in rows:
        assert KEYS <= set(r)
        if r["status"] == "rejected":
            assert r["valence"] is None and all(v is None for v in r["fractions"].values())


def test_xas_export_with_a_monitor_column_is_refused_until_the_column_is_named(capsys, model, tmp_path):
    y = mn_like(seed=7)
    path = tmp_path / "tey_scan.dat"
    path.write_text("# energy i0 tey tfy\n" + "".join(f"{a:.4f} 1.0e5 {b:.6f} {2 * b:.6f}\n" for a, b in zip(E, y)))
    rc, rows = predict_json(capsys, "--model", model, path)
    assert rc == 1 and rows[0]["status"] == "rejected" and "is a monitor" in rows[0]["reason"]
    rc, rows = predict_json(capsys, "--model", model, "--column", "tey", path)
    good = write_csv(tmp_path / "same.csv", E, y)
    rc_ref, ref = predict_json(capsys, "--model", model, good)
    assert rc == rc_ref == 0 and rows[0]["valence"] == ref[0]["valence"]


def test_what_the_reader_passed_over_or_converted_is_kept_with_the_files_rows(capsys, model, tmp_path, files):
    y = mn_like(seed=8)
    footer = tmp_path / "footer.dat"
    footer.write_text("Energy\tmu\n" + "".join(f"{a:.4f}\t{b:.6f}\n" for a, b in zip(E, y)) + "END OF SCAN\n")
    kev = tmp_path / "kev.dat"
    kev.write_text("Energy (keV)\tmu\n" + "".join(f"{a / 1000:.7f}\t{b:.6f}\n" for a, b in zip(E, y)))
    rc, rows = predict_json(capsys, "--model", model, footer, kev, files["good"])
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert len(rows[0]["reader_notes"]) == 1 and "footer" in rows[0]["reader_notes"][0]
    assert len(rows[1]["reader_notes"]) == 1 and "keV" in rows[1]["reader_notes"][0]
    assert "reader_notes" not in rows[2]   # a file read as it is carries none
    assert rows[0]["valence"] == rows[1]["valence"]


def test_table_output(capsys, model, files):
    rc = main(["predict", "--no-progress", "--model", model, str(files["good"]), str(files["garbage"])])
    out = capsys.readouterr().out
    assert rc == 1
    assert "good.csv" in out and "garbage.csv" in out and "rejected" in out and "no numeric" in out
    rc = main(["predict", "--no-progress", "--model", model, str(files["image"])])
    out = capsys.readouterr().out
    assert rc == 1  # rejected pixels count as rejections without --json too
    assert "map 3x4" in out and "9 of 12 spectra read out, 3 rejected" in out
    # the pixels' energy offset under the image's line: median and 5-95 % of the rows of the same pixels
    rc, rows = predict_json(capsys, "--model", model, files["image"])
    off = np.array([r["energy_offset_eV"] for r in rows if r["status"] == "ok"])
    med, lo, hi = np.median(off), *np.percentile(off, [5, 95])
    assert f"    energy offset: median {med:+.2f} eV, 5-95 % of pixels {lo:+.2f} to {hi:+.2f} eV\n" in out
    assert main(["predict", "--no-progress", "--model", model, str(files["good"])]) == 0


def check_image_rows(rows: list[dict]) -> None:
    assert len(rows) == 12
    for r in rows:
        row, col = r["pixel"]
        assert r["index"] == row * 4 + col
        assert r["signal"] == 0          # the image's position in its file (a DM file may hold several)
        assert KEYS <= set(r)
        assert r["status"] == ("rejected" if row == col else "ok"), r
        if row == col:
            assert "constant" in r["reason"]


def test_spectrum_image_on_the_local_cluster_with_maps_and_plots(capsys, model, files, tmp_path):
    import h5py

    plot_dir = tmp_path / "plots"
    rc, rows = predict_json(capsys, "--model", model, "--plot", plot_dir, "--chunk-spectra", "5",
                            files["image"], files["good"])
    assert rc == 1  # the diagonal pixels are rejected
    check_image_rows(rows[:12])
    assert rows[12]["status"] == "ok"
    with h5py.File(plot_dir / "si_0_maps.h5") as f:
        val = f["valence"][()]
        assert val.shape == (3, 4)
        assert np.isnan(np.diag(val)).all() and np.isfinite(val[~np.eye(3, 4, dtype=bool)]).all()
        assert f["rejected"][()].sum() == 3
        for k in ("frac_mn2", "frac_mn3", "frac_mn4", "valence_std"):
            assert f[k].shape == (3, 4)
        assert f["ood_score"].shape == (3, 4) and np.isnan(f["ood_score"][()]).all()  # the tiny model has no OOD statistics
        # the side outputs per pixel, as in each pixel's row (rows[:12] are the image's, row-major)
        for layer, key in (("energy_offset_eV", "energy_offset_eV"), ("resolution_eV", "resolution_eV"),
                           ("t_lambda", "t_lambda")):
            shown = np.array([np.nan if r[key] is None else r[key] for r in rows[:12]]).reshape(3, 4)
            assert np.allclose(f[layer][()], shown, equal_nan=True, rtol=0, atol=1e-9), layer
            assert np.isfinite(f[layer][()][~np.eye(3, 4, dtype=bool)]).all(), layer
        assert f.attrs["model"] == "tiny-test"
    for png in ("si_0_maps.png", "good_0.png"):
        assert (plot_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_that_cannot_be_written_are_counted_and_exit_3(capsys, model, files, tmp_path):
    """A map or PNG that --plot asked for and that could not be written (here a folder stands where each
    file goes) was a warning only: exit 0 without the maps. Every spectrum keeps its row, the other
    outputs are written, stderr ends with the count, and the exit status is 3."""
    plot_dir = tmp_path / "plots"
    (plot_dir / "si_0_maps.h5").mkdir(parents=True)
    (plot_dir / "good_0.png").mkdir()
    rc = main(["predict", "--json", "--no-progress", "--model", str(model), "--plot", str(plot_dir),
               str(files["image"]), str(files["good"]), str(files["tabs"])])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert rc == 3
    check_image_rows(rows[:12])
    assert [r["status"] for r in rows[12:]] == ["ok", "ok"]
    assert (plot_dir / "tabs_0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = err.strip().splitlines()[-1]
    assert last.startswith("mnedge predict: 2 output file(s) asked for with --plot could not be written")
    assert "si_0_maps" in last and "good_0.png" in last
    # without the obstacles the same run writes everything and says only what it read out
    for blocker in ("si_0_maps.h5", "good_0.png"):
        (plot_dir / blocker).rmdir()
    rc, rows = predict_json(capsys, "--model", model, "--plot", plot_dir, files["image"], files["good"])
    assert rc == 1 and (plot_dir / "si_0_maps.h5").is_file() and (plot_dir / "good_0.png").is_file()


def test_spectrum_image_on_an_existing_scheduler(capsys, model, files):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        rc, rows = predict_json(capsys, "--model", model, "--scheduler", cluster.scheduler_address,
                                "--chunk-spectra", "4", files["image"])
        assert len(cluster.scheduler.workers) == 1  # the command left the cluster running
    assert rc == 1
    check_image_rows(rows)


@pytest.mark.parametrize("ny, nx", [(4, 1), (1, 4)])
def test_one_column_and_one_row_images_keep_their_shape(capsys, model, tmp_path, ny, nx):
    """An N x 1 image was read as 1 x N: pixels [0, i] instead of [i, 0], maps and --bin of the wrong shape."""
    import h5py

    img = np.stack([mn_like(seed=20 + k) for k in range(ny * nx)]).reshape(ny, nx, E.size).astype(np.float32)
    hspy = write_image(tmp_path / "line.hspy", img)
    from dm_writer import write_dm

    dm = write_dm(tmp_path / "line.dm4", np.ascontiguousarray(np.moveaxis(img, -1, 0)),
                  [{"offset": 620.0, "scale": 0.1, "units": "eV"}, {"offset": 0, "scale": 1, "units": "nm"},
                   {"offset": 0, "scale": 1, "units": "nm"}], version=4, fmt="Spectrum image")
    plots = tmp_path / "plots"
    rc, rows = predict_json(capsys, "--model", model, "--plot", plots, hspy, dm)
    assert len(rows) == 2 * ny * nx
    expected = [[i // nx, i % nx] for i in range(ny * nx)]
    assert [r["pixel"] for r in rows] == expected * 2
    assert [r["index"] for r in rows] == list(range(ny * nx)) * 2
    for name in ("line_0_maps.h5", "line_0_maps-2.h5"):
        with h5py.File(plots / name) as f:
            assert f["valence"].shape == (ny, nx) and list(f.attrs["source_shape"]) == [ny, nx]
    binned = tmp_path / "binned"
    rc, rows = predict_json(capsys, "--model", model, "--plot", binned, "--bin", "2", hspy)
    shape = ((ny + 1) // 2, (nx + 1) // 2)
    assert [r["pixel"] for r in rows] == [[i // shape[1], i % shape[1]] for i in range(shape[0] * shape[1])]
    with h5py.File(binned / "line_0_maps.h5") as f:
        assert f["valence"].shape == shape and list(f.attrs["source_shape"]) == [ny, nx]
    main(["predict", "--no-progress", "--model", model, "--bin", "2", str(hspy)])
    assert f"map {shape[0]}x{shape[1]} (signal 0, binned {min(2, ny)}x{min(2, nx)} from {ny}x{nx})" \
        in capsys.readouterr().out


def test_a_signal_that_is_no_spectrum_gets_a_row(capsys, model, tmp_path):
    """Every signal of a DM file gets a row: a survey image beside a spectrum image was dropped unreported."""
    from dm_writer import write_dm

    img = np.stack([mn_like(seed=30 + k) for k in range(2)]).reshape(2, 1, E.size).astype(np.float32)
    px = {"offset": 0.0, "scale": 1.0, "units": "nm"}
    p = write_dm(tmp_path / "several.dm4", np.ascontiguousarray(np.moveaxis(img, -1, 0)),
                 [{"offset": 620.0, "scale": 0.1, "units": "eV"}, px, px], version=4, fmt="Spectrum image",
                 more=[{"data": np.zeros((8, 9), np.float32), "axes": [px, px], "signal": "", "fmt": "Image"}])
    rc, rows = predict_json(capsys, "--model", model, p)
    assert rc == 1
    refused = [r for r in rows if r.get("signal") == 1]
    assert len(refused) == 1 and refused[0]["status"] == "rejected" and "pixel" not in refused[0]
    assert "signal 1" in refused[0]["reason"] and "2-D signal" in refused[0]["reason"]
    assert [r["pixel"] for r in rows if r.get("signal") == 0] == [[0, 0], [1, 0]]
    main(["predict", "--no-progress", "--model", model, str(p)])
    out = capsys.readouterr().out
    assert "2-D signal" in out and "map 2x1 (signal 0)" in out


def test_unchunked_spectrum_image_is_read_out(capsys, model, tmp_path, monkeypatch):
    from mnedge_live.readers import signals

    monkeypatch.setattr(signals, "CONTIGUOUS_CHUNK_BYTES", 4 * E.size * 4)   # one row of the image a chunk
    img = np.stack([mn_like(seed=40 + k) for k in range(12)]).reshape(3, 4, E.size).astype(np.float32)
    img[1, 1] = 1.0
    p = write_contiguous_hspy(tmp_path / "contiguous.hspy", img)
    rc, rows = predict_json(capsys, "--model", model, "--chunk-spectra", "4", p)
    assert rc == 1 and len(rows) == 12
    assert [r["pixel"] for r in rows] == [[i // 4, i % 4] for i in range(12)]
    assert [r["status"] == "rejected" for r in rows] == [i == 5 for i in range(12)]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through Linux /proc")
def test_image_files_are_closed_when_predict_returns(capsys, model, files, tmp_path):
    """The Dask graph carried open h5py datasets: the cluster's copies kept every HyperSpy image's file
    open until the run ended (and after it, until garbage collection)."""
    img = np.stack([mn_like(seed=50 + k) for k in range(4)]).reshape(2, 2, E.size).astype(np.float32)
    paths = [write_contiguous_hspy(tmp_path / "contiguous.hspy", img), write_image(tmp_path / "chunked.hspy", img),
             files["image"]]
    seen = []

    def open_now():
        return sorted(str(fd.resolve()) for fd in Path("/proc/self/fd").iterdir()
                      if fd.exists() and str(fd.resolve()) in {str(p.resolve()) for p in paths})

    from mnedge_live import spectrum_image

    close_client = spectrum_image.close_client
    def watch(client):
        seen.append(open_now())
        close_client(client)

    import unittest.mock

    with unittest.mock.patch.object(spectrum_image, "close_client", watch):
        rc, rows = predict_json(capsys, "--model", model, *paths)
    assert len(rows) == 4 + 4 + 12
    assert seen == [[]]          # closed file by file, not only at the end of the run
    assert open_now() == []


@pytest.mark.slow
def test_spectrum_images_on_a_cluster_of_worker_processes(model, files):
    """Workers in other processes: the lazy HDF5 and DM arrays and the engine spec travel to them."""
    from distributed import LocalCluster

    exe = [sys.executable, "-m", "mnedge_live.cli"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        proc = subprocess.run([*exe, "predict", "--json", "--no-progress", "--model", model, "--scheduler",
                               cluster.scheduler_address, str(files["image"]), str(files["dm_image"])],
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    rows = json.loads(proc.stdout)
    check_image_rows(rows[:12])
    check_image_rows(rows[12:])


def test_corrupt_spectrum_image_chunk_rejects_its_pixels_with_the_reason(capsys, model, files, tmp_path):
    import h5py

    p = tmp_path / "corrupt.hspy"
    p.write_bytes(files["image"].read_bytes())
    with h5py.File(p, "r") as f:
        info = f["Experiments/si/data"].id.get_chunk_info(0)  # the first stored (gzip) chunk
    with open(p, "r+b") as fh:
        fh.seek(info.byte_offset + 16)
        fh.write(b"\xff" * 64)
    rc, rows = predict_json(capsys, "--model", model, p, files["good"])
    assert rc == 1
    broken = [r for r in rows if r["file"] == str(p) and "chunk failed" in r["reason"]]
    assert broken and all(r["status"] == "rejected" and r["pixel"] is not None for r in broken)
    assert rows[-1]["status"] == "ok"  # the next file is still read out


@pytest.mark.parametrize("address", ["unreachable", "silent", "no-workers", "bogus://x:1", "no-port", ""])
@pytest.mark.parametrize("kind", ["image", "good"])
def test_unusable_scheduler_exits_2_before_any_file_is_read(capsys, model, files, monkeypatch, address, kind):
    """The documented exit 2 for an unusable --scheduler: it gave exit 1 with a rejected image row, and
    with only single-spectrum files the address was never checked (exit 0). A port that accepts
    connections but never answers (a dashboard's HTTP port, another service: "silent") hung for good, as
    did a scheduler without any worker ("no-workers")."""
    import socket
    import threading
    import time

    from mnedge_live.commands import predict

    monkeypatch.setattr(predict, "SCHEDULER_TIMEOUT_S", 2.0)
    monkeypatch.setattr(predict, "WORKER_WAIT_S", 2.0)
    listener = cluster = None
    if address == "no-workers":
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=0, processes=False, scheduler_port=0, dashboard_address=None)
        address = cluster.scheduler_address
    elif address == "unreachable":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    elif address == "silent":       # connections are accepted (the backlog) and never answered
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    read = []
    monkeypatch.setattr(predict, "read_file", lambda *a, **k: read.append(a) or [])
    result: list[int] = []
    t0 = time.monotonic()
    run = threading.Thread(target=lambda: result.append(main(
        ["predict", "--json", "--no-progress", "--model", model, "--scheduler", address, str(files[kind])])),
        daemon=True)
    run.start()
    run.join(30)
    if listener is not None:
        listener.close()
    if cluster is not None:
        cluster.close()
    assert not run.is_alive(), f"mnedge predict --scheduler {address} still waiting after 30 s"
    assert time.monotonic() - t0 < 15
    rc = result[0]
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and read == []
    assert f"cannot use --scheduler {address}: " in err
    import dask

    # a Client that failed to connect had made itself the process's scheduler: every later dask
    # computation in the process (the next file's image, a library caller's) then failed
    assert dask.config.get("scheduler", None) != "dask.distributed"


#: A scheduler with one worker thread in its own process (so that it can be killed), on a free loopback
#: port; prints its address, then serves until killed.
SCHEDULER_SCRIPT = """
import logging, time
from distributed import LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                       scheduler_port=0, dashboard_address=None, silence_logs=logging.ERROR)
print(cluster.scheduler_address, flush=True)
while True:
    time.sleep(60)
"""


def test_scheduler_lost_during_the_run_rejects_the_image_only(capsys, model, files, tmp_path, monkeypatch):
    """A real scheduler (and its worker) in another process, killed with SIGKILL once the first chunk of a
    6 x 8 image (six chunks) is merged: the image's other chunks are rejected with the lost connection as
    the reason, the two-column file after it is read out, the image after that gets one row naming the lost
    scheduler, exit 1, no traceback, and the command ends instead of hanging."""
    import logging
    import os
    import queue
    import threading
    import time

    from mnedge_live import spectrum_image

    img = np.stack([mn_like(seed=60 + k) for k in range(48)]).reshape(6, 8, E.size).astype(np.float32)
    lost = write_image(tmp_path / "lost.hspy", img)
    root = str(Path(__file__).resolve().parents[1])   # the worker unpickles this checkout's chunk task
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(tmp_path / "scheduler.log", "w") as log:
        sched = subprocess.Popen([sys.executable, "-c", SCHEDULER_SCRIPT], stdout=subprocess.PIPE, stderr=log,
                                 text=True, env=env)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(sched.stdout.readline()), daemon=True).start()
        address = lines.get(timeout=60).strip()
        assert address.startswith("tcp://127.0.0.1:"), (address, (tmp_path / "scheduler.log").read_text())

        # Spies that observe and call through: the client run_image is given, and the first merged chunk.
        clients, merged = [], []
        run_image, merge = spectrum_image.run_image, spectrum_image.MapMerger.merge

        def watch_run_image(image, client, *args, **kwargs):
            clients.append(client)
            return run_image(image, client, *args, **kwargs)

        def watch_merge(self, origin, shape, results):
            merge(self, origin, shape, results)
            merged.append((origin, shape))
            if len(merged) == 1:   # the first chunk is in: the scheduler dies with its worker
                sched.kill()
                sched.wait(timeout=30)
                # the client's report stream ends now; let it see that before the next chunk is fetched
                deadline = time.monotonic() + 30
                while (clients[-1].status == "running" or clients[-1].futures) and time.monotonic() < deadline:
                    time.sleep(0.01)

        monkeypatch.setattr(spectrum_image, "run_image", watch_run_image)
        monkeypatch.setattr(spectrum_image.MapMerger, "merge", watch_merge)
        logged: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = logged.append
        logging.getLogger("distributed.client").addHandler(handler)
        outcome: dict = {}

        def predict():
            try:
                outcome["rc"] = main(["predict", "--json", "--no-progress", "--model", model, "--scheduler", address,
                                      "--chunk-spectra", "8", str(lost), str(files["good"]), str(files["image"])])
            except BaseException as exc:  # re-raised below, in the test's thread
                outcome["error"] = exc

        started = time.monotonic()
        runner = threading.Thread(target=predict, daemon=True)
        runner.start()
        runner.join(timeout=120)
        elapsed = time.monotonic() - started
        logging.getLogger("distributed.client").removeHandler(handler)
        assert not runner.is_alive(), "mnedge predict still running 120 s after its start: it hangs"
        if "error" in outcome:
            raise outcome["error"]
    finally:
        if sched.poll() is None:
            sched.kill()
            sched.wait(timeout=30)
    rows = json.loads(capsys.readouterr().out)
    assert outcome["rc"] == 1 and elapsed < 60
    assert sched.returncode == -9 and len(merged) == 6   # killed mid-image; every chunk still came back
    image_rows, (good, later) = rows[:48], rows[48:]
    assert [r["pixel"] for r in image_rows] == [[i // 8, i % 8] for i in range(48)]
    (r0, c0), (nr, nc) = merged[0]
    first = {(r, c) for r in range(r0, r0 + nr) for c in range(c0, c0 + nc)}
    assert len(first) == 8
    for r in image_rows:
        if tuple(r["pixel"]) in first:
            assert r["status"] == "ok", r
        else:
            assert r["status"] == "rejected" and r["valence"] is None, r
            assert r["reason"] == ("chunk failed: FutureCancelledError: cancelled for reason: "
                                   "scheduler-connection-lost. Client lost the connection to the scheduler. "
                                   "Please check your connection and re-run your work."), r
    assert good["file"] == str(files["good"]) and good["status"] == "ok"
    assert later["file"] == str(files["image"]) and later["signal"] == 0 and "pixel" not in later
    assert later["status"] == "rejected" and later["reason"] == (
        f"cannot process the spectrum image: the connection to the Dask scheduler {address} was lost during the run")
    assert [logging.Formatter().format(rec) for rec in logged if rec.exc_info] == []   # no traceback on stderr


def test_measured_spectra(capsys, model, real_dir):
    rc, rows = predict_json(capsys, "--model", model, *sorted(real_dir.glob("*.csv")))
    assert rc == 0
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("argv", [
    ["predict"],                                     # no FILE
    ["predict", "--json", "--backend"],              # option without its value
    ["predict", "--chunk-spectra", "x", "a.csv"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_unloadable_model_or_bad_options_exit_2(capsys, tmp_path, files):
    assert main(["predict", "--model", str(tmp_path / "no_model"), str(files["good"])]) == 2
    assert "cannot load the model" in capsys.readouterr().err
    assert main(["predict", "--chunk-spectra", "0", str(files["good"])]) == 2
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["predict", "--plot", str(blocker / "sub"), str(files["good"])]) == 2
    # a folder that exists and takes no file (as root, only a pseudo file system refuses writes)
    assert main(["predict", "--plot", "/proc/self", str(files["good"])]) == 2
    assert "cannot use --plot /proc/self" in capsys.readouterr().err


def test_chunk_merger_places_every_pixel():
    from mnedge_live.spectrum_image import MapMerger

    m = MapMerger((3, 5))
    for r0, c0, nr, nc in [(0, 0, 2, 3), (0, 3, 2, 2), (2, 0, 1, 3), (2, 3, 1, 2)]:
        res = [SpectrumResult(status="ok", fractions=(1.0, 0.0, 0.0), valence=float(10 * (r0 + i // nc) + c0 + i % nc))
               for i in range(nr * nc)]
        m.merge((r0, c0), (nr, nc), res)
    out = m.finish()
    expected = 10 * np.arange(3)[:, None] + np.arange(5)[None, :]
    np.testing.assert_array_equal(out.maps.layers["valence"], expected)
    assert [r.valence for r in out.results] == expected.ravel().tolist()
    assert out.counts == {"spectra": 15, "ok": 15, "rejected": 0, "low_psnr": 0} and out.reasons == {}
    lean = MapMerger((1, 3), keep_results=False)
    lean.merge((0, 0), (1, 2), [SpectrumResult(status="ok", valence=3.0, flags=("low_psnr",)),
                                SpectrumResult.rejected("not finite (3 of 560 points)")])
    out = lean.finish()  # pixel (0, 2) never came back from its chunk
    assert out.results == [] and out.counts == {"spectra": 3, "ok": 1, "rejected": 2, "low_psnr": 1}
    assert out.reasons == {"not finite": 1, "internal error: pixel not processed": 1}
    assert out.maps.rejected.tolist() == [[False, True, True]]


@pytest.mark.parametrize("stored, target, expected", [
    ((21, 21), 4096, (21, 256)),    # 16 rows wanted: one stored block of 21 rows instead of cutting blocks
    ((21, 21), 16384, (63, 256)),   # 64 rows wanted: three stored blocks
    ((64, 64), 5, (1, 5)),          # far below one stored block: what was asked
    ((256, 1), 4096, (16, 256)),    # stored row by row: as asked
])
def test_image_chunks_follow_the_files_storage_blocks(stored, target, expected):
    import dask.array as da

    from mnedge_live.readers import SpectrumImage
    from mnedge_live.spectrum_image import chunk_image

    image = SpectrumImage("x.hspy", 0, np.arange(8.0), da.zeros((256, 256, 8), chunks=(*stored, 8)))
    arr = chunk_image(image, target)
    assert (arr.chunks[0][0], arr.chunks[1][0]) == expected
    assert sum(arr.chunks[0]) == 256 and arr.chunks[2] == (8,)


@pytest.mark.parametrize("cores, plan", [(1, (1, 1)), (2, (2, 1)), (3, (2, 1)), (16, (2, 8))])
def test_local_cluster_runs_two_chunks_at_once_without_oversubscribing(cores, plan):
    from mnedge_live.spectrum_image import local_thread_plan

    assert local_thread_plan(cores) == plan


def test_installed_console_script(model, files):
    exe = Path(sys.executable).parent / "mnedge"
    assert exe.exists(), f"{exe} is not installed: the README's setup (pip install -e .) installs it"
    proc = subprocess.run([str(exe), "predict", "--json", "--model", model, str(files["good"]), str(files["garbage"])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["status"] for r in rows] == ["ok", "rejected"]


def test_a_reader_that_goes_away_ends_the_command_quietly(model, files):
    """``mnedge predict ... | head``: a reader that is gone (here one that reads nothing) gives no traceback."""
    exe = Path(sys.executable).parent / "mnedge"
    cmd = f"{exe} predict {files['good']} {files['tabs']} {files['emsa']} --model {model} --no-progress | true"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
    assert r.returncode == 141, (r.returncode, r.stderr)  # 128 + SIGPIPE, as Unix tools end


def test_binning_a_noisy_spectrum_image_lifts_its_pixels_above_the_low_psnr_flag(capsys, model, tmp_path):
    import h5py

    # 8 x 8 pixels at about 7 dB PSNR each; 4 x 4 binning averages 16 pixels: about +12 dB.
    img = np.stack([mn_like(noise=0.45, seed=100 + k) for k in range(64)]).reshape(8, 8, E.size).astype(np.float32)
    path = write_image(tmp_path / "noisy.hspy", img)
    rc, raw = predict_json(capsys, "--model", model, path)
    assert len(raw) == 64 and "bin" not in raw[0]
    low = [r for r in raw if r["status"] != "ok" or "low_psnr" in r["flags"]]
    assert len(low) >= 48, [r["flags"] or r["reason"] for r in raw]
    rc, binned = predict_json(capsys, "--model", model, "--bin", "4", "--plot", tmp_path / "maps", path)
    assert rc == 0
    assert [r["pixel"] for r in binned] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert [r["index"] for r in binned] == [0, 1, 2, 3] and {r["bin"] for r in binned} == {4}
    assert all(r["status"] == "ok" and "low_psnr" not in r["flags"] and KEYS <= set(r) for r in binned), binned
    with h5py.File(tmp_path / "maps" / "noisy_0_maps.h5") as f:
        assert f["valence"].shape == (2, 2) and f.attrs["bin"] == 4 and list(f.attrs["source_shape"]) == [8, 8]
    assert main(["predict", "--no-progress", "--model", model, "--bin", "4", str(path)]) == 0
    out = capsys.readouterr().out
    assert "map 2x2 (signal 0, binned 4x4 from 8x8): 4 of 4 spectra read out" in out and "--bin" not in out
    # Unbinned, the table counts the reasons and points to --bin.
    main(["predict", "--no-progress", "--model", model, str(path)])
    out = capsys.readouterr().out
    n_ok = sum(r["status"] == "ok" for r in raw)
    assert f"map 8x8 (signal 0): {n_ok} of 64 spectra read out" in out
    n_no_edge = sum(r["reason"].startswith("no edge detectable above the noise") for r in raw)
    if n_no_edge:
        assert f"{n_no_edge} rejected: no edge detectable above the noise" in out
    n_low_psnr = sum(r["status"] == "ok" and "low_psnr" in r["flags"] for r in raw)
    assert f"{n_no_edge + n_low_psnr} pixels too noisy" in out and "--bin 2 averages 2x2 pixels" in out
    assert main(["predict", "--no-progress", "--model", model, "--bin", "0", str(path)]) == 2
    assert "--bin must be at least 1" in capsys.readouterr().err


def test_a_table_of_several_spectra_gets_a_labelled_row_each(capsys, model, tmp_path):
    a, b = mn_like(seed=21), mn_like(seed=22)
    path = tmp_path / "table.csv"
    path.write_text("Energy,sample A,sample B\n" + "".join(f"{e:.4f},{p:.6f},{q:.6f}\n" for e, p, q in zip(E, a, b)))
    rc, rows = predict_json(capsys, "--model", model, path)
    singles = [predict_json(capsys, "--model", model, write_csv(tmp_path / f"{k}.csv", E, y))[1][0]
               for k, y in (("a", a), ("b", b))]
    assert rc == 0 and [(r["index"], r["label"]) for r in rows] == [(0, "sample A"), (1, "sample B")]
    assert [r["valence"] for r in rows] == [r["valence"] for r in singles]
    assert "label" not in singles[0]
    assert main(["predict", "--no-progress", "--model", model, str(path)]) == 0
    table = capsys.readouterr().out
    assert "table.csv [sample A]" in table and "table.csv [sample B]" in table
    assert main(["predict", "--no-progress", "--model", model, "--plot", str(tmp_path / "plots"), str(path)]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == ["table_0_sample_A.png", "table_1_sample_B.png"]


def test_csv_holds_the_json_rows_pixels_included(capsys, model, files):
    import csv
    import io

    argv = ["--model", model, files["good"], files["garbage"], files["image"]]
    _, rows = predict_json(capsys, *argv)
    rc = main(["predict", "--csv", "--no-progress", *map(str, argv)])
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rc == 1 and len(table) == len(rows) == 2 + 12
    for r, c in zip(rows, table):
        assert c["file"] == r["file"] and c["status"] == r["status"] and c["reason"] == r["reason"]
        assert c["index"] == ("" if r["index"] is None else str(r["index"]))
        assert (c["pixel_row"], c["pixel_col"]) == tuple(map(str, r.get("pixel", ("", ""))))
        if r["valence"] is None:
            assert c["valence"] == c["Mn2+"] == ""
        else:
            assert float(c["valence"]) == r["valence"] and float(c["Mn4+ std"]) == r["fractions_std"]["Mn4+"]
            assert c["flags"] == ";".join(r["flags"])


def test_json_and_csv_together_are_a_usage_error(capsys, model, files):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--json", "--csv", "--model", model, str(files["good"])])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_csv_shows_a_formula_like_name_as_text(capsys, model, tmp_path):
    a = mn_like(seed=31)
    path = tmp_path / "t.csv"
    path.write_text('Energy,"=HYPERLINK(""http://x"")",B\n' + "".join(f"{e:.4f},{p:.6f},{p:.6f}\n" for e, p in zip(E, a)))
    main(["predict", "--csv", "--no-progress", "--model", model, str(path)])
    out = capsys.readouterr().out
    assert ",\"'=HYPERLINK(\"\"http://x\"\")\"," in out and ",=HYPERLINK" not in out


def test_rows_of_a_spec_file_come_in_its_order(capsys, model, tmp_path):
    """An aborted scan between two read ones: its rejected row is the second row, not the last."""
    y = mn_like(seed=41)
    scan = "#S {n}  ascan  energy 620 680\n#L Energy  mu\n"
    data = "".join(f"{e:.4f}  {v:.6f}\n" for e, v in zip(E, y))
    path = tmp_path / "run.spec"
    path.write_text("#F run.spec\n" + scan.format(n=1) + data + scan.format(n=2) + "#C aborted\n" + scan.format(n=3) + data)
    rc, rows = predict_json(capsys, "--model", model, path)
    assert rc == 1 and [(r["index"], r["status"]) for r in rows] == [(0, "ok"), (1, "rejected"), (2, "ok")]
    assert [r.get("label") for r in rows] == ["scan 1", None, "scan 3"] and "scan 2 not read" in rows[1]["reason"]


def test_plot_names_stay_short_and_unique_without_case(tmp_path):
    from mnedge_live.commands.predict import MAX_PLOT_STEM, _PlotNames

    names = _PlotNames(tmp_path)
    first, second = names.next("t.csv", "1_MnO", ".png"), names.next("t.csv", "1_mno", ".png")
    assert first.name == "t_1_MnO.png" and second.name == "t_1_mno-2.png"
    long = names.next("t.csv", "1_" + "x" * 400, ".png")
    assert len(long.stem) <= MAX_PLOT_STEM and long != names.next("t.csv", "1_" + "x" * 399 + "y", ".png")


@pytest.mark.parametrize("fmt", ["", "--csv"])
def test_a_file_name_that_is_not_utf8_is_printed_escaped(model, files, tmp_path, fmt):
    """A name copied from a Latin-1 share (byte 0xE9): a strict UTF-8 stdout refused it and every row was lost."""
    import os

    name = os.fsdecode(bytes(tmp_path) + b"/Mn\xe9_sample.csv")
    Path(name).write_bytes(files["good"].read_bytes())
    exe = Path(sys.executable).parent / "mnedge"
    proc = subprocess.run([str(exe), "predict", "--model", model, "--no-progress", name, *([fmt] if fmt else [])],
                          capture_output=True, timeout=300, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Mn\\xe9_sample.csv" in proc.stdout and b"ok" in proc.stdout


def test_plot_titles_are_drawn_as_written_and_failed_plots_close_their_figures(model, files, tmp_path, monkeypatch):
    """A file named like a formula (``$...$``) failed to plot (exit 3); a figure that failed stayed open."""
    import matplotlib.pyplot as plt

    from mnedge_live import plots

    odd = tmp_path / "MnO_$\\sample$_10$.csv"
    odd.write_bytes(files["good"].read_bytes())
    assert main(["predict", "--model", model, "--no-progress", "--plot", str(tmp_path / "p"), str(odd)]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 1
    before = len(plt.get_fignums())
    monkeypatch.setattr(plots, "_draw_spectrum", lambda *a: (_ for _ in ()).throw(RuntimeError("draw failed")))
    with pytest.raises(RuntimeError):
        plots.plot_spectrum(tmp_path / "x.png", E, mn_like(), None)
    assert len(plt.get_fignums()) == before
