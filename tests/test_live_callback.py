"""The live callback in process: a real RunEngine with the simulated instruments, the real engine."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import bluesky.plans as bp
import event_model
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from live_support import derived_rows, real_engine

from mnedge_live.assembly import grid_pixel
from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.sim import SpectrumSource, make_eels, make_xas

EELS_OPTS = dict(mode="spectrum", spectrum_field="eels_spectrum", dispersion_field="eels_dispersion",
                 offset_field="eels_offset")


@pytest.fixture(scope="module")
def engine():
    return real_engine()


@pytest.fixture(scope="module")
def source():
    return SpectrumSource()


def run_with(engine, config, plan_factory):
    docs: list[tuple[str, dict]] = []
    cb = MnEdgeCallback(engine, config, lambda n, d: docs.append((n, d)))
    RE = RunEngine({})
    RE.subscribe(cb)
    RE(plan_factory())
    return cb, docs


def test_spectrum_image_gets_one_row_per_pixel_and_maps(engine, source, tmp_path):
    det, sy, sx = make_eels((3, 4), source)
    det.prefetch()
    cfg = LiveConfig(**EELS_OPTS, maps_dir=str(tmp_path))
    cb, docs = run_with(engine, cfg, lambda: bp.grid_scan([det], sy, 0, 1, 3, sx, 0, 1, 4, snake_axes=True))
    src_start = next(d for n, d in docs if n == "start")
    assert src_start["parent_uid"] and src_start["mnedge_model"] == engine.model_id
    desc = next(d for n, d in docs if n == "descriptor")
    assert desc["name"] == "mnedge" and "valence" in desc["hints"]["mnedge"]["fields"]
    for k in ("valence", "valence_std", "frac_mn2", "frac_mn3", "frac_mn4", "energy_offset_eV", "resolution_eV",
              "t_lambda", "ood_score", "status", "reason", "flags", "source_seq_num", "pixel_row", "pixel_col"):
        assert k in desc["data_keys"]
    assert desc["data_keys"]["energy_offset_eV"]["units"] == desc["data_keys"]["resolution_eV"]["units"] == "eV"
    rows = derived_rows(docs)
    assert sorted(r["source_seq_num"] for r in rows) == list(range(1, 13))
    for r in rows:
        assert (r["pixel_row"], r["pixel_col"]) == grid_pixel(r["source_seq_num"], (3, 4), (False, True))
        assert r["status"] in ("ok", "rejected") and (r["status"] == "ok" or r["reason"])
    stop = docs[-1][1]
    assert stop["processed"] + stop["rejected"] == 12 and stop["missed"] == 0
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, f"the engine rejected every simulated spectrum: {rows[0]['reason']}"
    with h5py.File(stop["maps_h5"]) as f:
        assert f["valence"].shape == (3, 4)
        # the side outputs per pixel: each map holds its own field of the pixel's row (NaN where rejected)
        for r in rows:
            px = (r["pixel_row"], r["pixel_col"])
            for layer in ("valence", "energy_offset_eV", "resolution_eV", "t_lambda"):
                assert np.array_equal(f[layer][px], r[layer], equal_nan=True), (layer, px)
        assert np.isfinite(f["t_lambda"][()][~f["rejected"][()]]).all()
    truth = det.truth()
    err = [abs(r["valence"] - truth[r["pixel_row"], r["pixel_col"]]) for r in ok]
    if "tiny" not in engine.model_id:
        assert np.median(err) < 0.3


def _placed_where_the_stage_was(engine, source, tmp_path, plan_factory, shape):
    """Run a real bluesky plan over the simulated stage; every derived row's pixel and the stage's
    position index at its source event, side by side."""
    det, sy, sx = make_eels(shape, source)
    det.prefetch()
    docs: list[tuple[str, dict]] = []
    cb = MnEdgeCallback(engine, LiveConfig(**EELS_OPTS, maps_dir=str(tmp_path)), lambda n, d: docs.append((n, d)))
    RE = RunEngine({})
    source_events = {}
    RE.subscribe(cb)
    RE.subscribe(lambda n, d: source_events.update({d["seq_num"]: d["data"]}) if n == "event" else None)
    RE(plan_factory(det, sy, sx))
    ys, xs = np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1])
    where = {seq: (int(np.argmin(abs(ys - d["stage_y"]))), int(np.argmin(abs(xs - d["stage_x"]))))
             for seq, d in source_events.items()}
    return derived_rows(docs), where


def test_a_snaked_list_grid_scan_places_each_spectrum_where_the_stage_was(engine, source, tmp_path):
    """list_grid_scan records its snake_axes, not snaking: odd rows were mapped mirrored."""
    rows, where = _placed_where_the_stage_was(
        engine, source, tmp_path, lambda det, sy, sx: bp.list_grid_scan(
            [det], sy, list(np.linspace(0, 1, 3)), sx, list(np.linspace(0, 1, 4)), snake_axes=True), (3, 4))
    assert len(rows) == 12
    assert {r["source_seq_num"]: (r["pixel_row"], r["pixel_col"]) for r in rows} == where


def test_a_spiral_scans_spectra_are_refused_a_pixel_with_the_reason(engine, source, tmp_path):
    """spiral_square announces a grid's shape, but its points are not in the grid's order."""
    rows, _ = _placed_where_the_stage_was(
        engine, source, tmp_path, lambda det, sy, sx: bp.spiral_square([det], sx, sy, 0.5, 0.5, 1, 1, 3, 3), (3, 3))
    assert len(rows) == 9
    assert all(r["status"] == "rejected" and "pixel_fields" in r["reason"] for r in rows)


def beam_lost_after(n: int):
    """A grid scan's per_step that raises at step ``n + 1``, as an interlock ending a scan would."""
    import bluesky.plan_stubs as bps

    steps = []

    def per_step(detectors, step, pos_cache):
        steps.append(step)
        if len(steps) > n:
            raise RuntimeError("beam lost")
        return (yield from bps.one_nd_step(detectors, step, pos_cache))

    return per_step


def test_an_aborted_scan_ends_its_derived_run_and_maps_with_the_scans_exit_status(engine, source, tmp_path):
    """The source stop said fail (beam lost after 3 of 6 pixels); the derived stop said success."""
    det, sy, sx = make_eels((2, 3), source)
    det.prefetch()
    docs: list[tuple[str, dict]] = []
    cb = MnEdgeCallback(engine, LiveConfig(**EELS_OPTS, maps_dir=str(tmp_path)), lambda n, d: docs.append((n, d)))
    RE = RunEngine({})
    RE.subscribe(cb)
    with pytest.raises(RuntimeError, match="beam lost"):
        RE(bp.grid_scan([det], sy, 0, 1, 2, sx, 0, 1, 3, per_step=beam_lost_after(3)))
    stop = docs[-1][1]
    assert stop["exit_status"] == "fail" and "beam lost" in stop["reason"]
    assert stop["processed"] + stop["rejected"] == 3
    with h5py.File(stop["maps_h5"]) as f:
        assert f.attrs["exit_status"] == "fail" and np.isnan(f["valence"][()]).sum() >= 3


def test_a_source_stop_without_a_valid_exit_status_ends_the_derived_run_as_failed():
    from mnedge_live.callback import source_exit

    assert source_exit({"exit_status": "abort", "reason": "stopped by the operator"}) == (
        "abort", "stopped by the operator")
    assert source_exit({"exit_status": "success"}) == ("success", "")
    status, reason = source_exit({"exit_status": "done", "reason": 7})
    assert status == "fail" and "'done'" in reason


def test_derived_run_is_valid_and_plottable_by_best_effort_callback(engine, source, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from bluesky.callbacks.best_effort import BestEffortCallback

    det, sy, sx = make_eels((2, 3), source)
    det.prefetch()
    cfg = LiveConfig(**EELS_OPTS, maps_dir=str(tmp_path), max_batch=4)
    _, docs = run_with(engine, cfg, lambda: bp.grid_scan([det], sy, 0, 1, 2, sx, 0, 1, 3))
    bec = BestEffortCallback()
    bec.disable_plots()
    assert {"start", "descriptor", "event_page", "stop"} <= {name for name, _ in docs}
    for name, doc in docs:
        if name in ("start", "descriptor", "stop", "event", "event_page"):
            event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
        if name == "event_page":
            for ev in event_model.unpack_event_page(doc):
                bec("event", ev)
        else:
            bec(name, doc)


def test_step_scan_reads_out_progressively_and_finally(engine, source):
    dets, mono = make_xas((0.2, 0.5, 0.3), source)
    cfg = LiveConfig(mode="step", signal_field="xas_tey", norm_field="xas_i0", step_readout_every=10, maps_dir=None)
    cb, docs = run_with(engine, cfg, lambda: bp.scan([dets], mono, 630, 665, 71))
    rows = derived_rows(docs)
    final = [r for r in rows if r["final"]]
    assert len(final) == 1 and final[0]["source_seq_num"] == 71
    progressive = [r for r in rows if not r["final"]]
    # L2 (658 eV) is reached at point 57: readouts only after that
    assert progressive and all(r["source_seq_num"] >= 57 for r in progressive)
    stop = docs[-1][1]
    assert (stop["processed"], stop["rejected"], stop["missed"]) == (71, 0, 0)


@pytest.mark.parametrize("closed_by", ["run_timeout_s", "service stop"])
def test_a_step_scan_closed_without_its_stop_gets_a_readout_that_is_not_final(engine, source, closed_by):
    """A scan paused past run_timeout_s was read out as final: FINAL_UID named it, a feedback plan read the
    valence of 30 of 71 points as the scan's."""
    dets, mono = make_xas((0.2, 0.5, 0.3), source)
    cfg = LiveConfig(mode="step", signal_field="xas_tey", norm_field="xas_i0", step_readout_every=10, maps_dir=None)
    docs: list[tuple[str, dict]] = []
    cb = MnEdgeCallback(engine, cfg, lambda n, d: docs.append((n, d)))
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: None if name == "stop" else cb(name, doc))   # the stop never comes
    RE(bp.scan([dets], mono, 630, 665, 71))
    if closed_by == "run_timeout_s":
        assert len(cb.expire(now=1e12)) == 1
    else:
        cb.close_all()
    rows = derived_rows(docs)
    assert rows[-1]["source_seq_num"] == 71 and rows[-1]["status"] == "ok"   # what was measured is read out
    assert not any(r["final"] for r in rows) and cb.totals["final_readouts"] == 0
    assert docs[-1][0] == "stop" and docs[-1][1]["exit_status"] in ("fail", "abort")


def test_a_detector_reconfigured_mid_scan_misses_nothing(engine, caplog):
    """bps.configure mid-scan brings a second descriptor of the stream; bluesky numbers its events on (6, 7, ...),
    which the callback, counting per descriptor, took for a gap of 5 missed events."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from ophyd.sim import SynAxis, SynGauss

    motor = SynAxis(name="mono")
    det = SynGauss("tey", motor, "mono", center=640, Imax=1, sigma=5)
    missed_seen: list[int] = []
    docs: list[tuple[str, dict]] = []
    cb = MnEdgeCallback(engine, LiveConfig(mode="step", energy_field="mono", signal_field="tey", maps_dir=None),
                        lambda n, d: docs.append((n, d)), on_readout=lambda row, totals: missed_seen.append(totals["missed"]))
    descriptors = []

    @bpp.run_decorator(md={"detectors": ["tey"], "motors": ["mono"]})
    def plan():
        for i, e in enumerate(range(630, 670, 2)):
            if i == 5:
                yield from bps.configure(det, {"sigma": 4.0})   # a gain change, say
            yield from bps.mv(motor, e)
            yield from bps.trigger_and_read([det, motor])

    RE = RunEngine({})
    RE(plan(), lambda n, d: (descriptors.append(d) if n == "descriptor" else None, cb(n, d)))
    assert len(descriptors) == 2 and {d["name"] for d in descriptors} == {"primary"}
    assert missed_seen and max(missed_seen) == 0 and cb.totals["missed"] == 0
    assert "sequence gap" not in caplog.text
    assert docs[-1][1]["processed"] + docs[-1][1]["rejected"] == 20


class Raising:
    model_id = "raising-test-backend"

    def predict(self, spectra):
        raise RuntimeError("GPU fell off the bus")


def test_failing_backend_rejects_rows_with_reason_and_keeps_going(source, tmp_path):
    det, sy, sx = make_eels((2, 2), source)
    cfg = LiveConfig(**EELS_OPTS, maps_dir=str(tmp_path))
    cb, docs = run_with(Raising(), cfg, lambda: bp.grid_scan([det], sy, 0, 1, 2, sx, 0, 1, 2))
    rows = derived_rows(docs)
    assert len(rows) == 4 and all("GPU fell off the bus" in r["reason"] for r in rows)
    assert docs[-1][1]["rejected"] == 4


def _source_docs(spectra, energy=None, num_events=None, drop=()):
    """A hand-composed source run: one spectrum per event."""
    b = event_model.compose_run(metadata={"plan_name": "count"})
    keys = {"spec": {"source": "x", "dtype": "array", "shape": [560]}}
    d = b.compose_descriptor(name="primary", data_keys=keys)
    docs = [("start", b.start_doc), ("descriptor", d.descriptor_doc)]
    for i, s in enumerate(spectra):
        ev = d.compose_event(data={"spec": s}, timestamps={"spec": 0.0}, validate=False)
        if i + 1 not in drop:
            docs.append(("event", ev))
    stop = dict(b.compose_stop())
    if num_events is not None:
        stop["num_events"] = {"primary": num_events}
    docs.append(("stop", stop))
    return docs


def test_bad_spectra_and_documents_are_rejected_or_ignored_never_raise(engine, source):
    e, good = source.draw(np.array([[0.0, 1.0, 0.0]]), eels=True)
    bad = [good[0].copy(), np.full(560, np.nan), np.zeros((2, 5)), "not-a-datum", [1, 2, 3], None]
    bad[0][10] = np.inf
    docs = _source_docs(bad)
    out: list = []
    cb = MnEdgeCallback(engine, LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125,
                                           maps_dir=None), lambda n, d: out.append((n, d)))
    cb("event", {"descriptor": "nope", "seq_num": 1, "data": {}, "uid": "x", "time": 0, "timestamps": {}})
    cb("stop", {"run_start": "unknown", "uid": "s", "time": 0, "exit_status": "success"})
    cb("start", ["not", "a", "dict"])
    cb("descriptor", {"no": "keys"})
    for name, doc in docs:
        cb(name, doc)
    rows = derived_rows(out)
    assert len(rows) == len(bad) and all(r["status"] == "rejected" and r["reason"] for r in rows)
    assert out[-1][1]["rejected"] == len(bad)
    assert cb.totals["bad_documents"] >= 4


def test_a_scan_shape_too_large_for_a_map_reads_its_spectra_without_one(engine, source):
    # a start document announcing a 100000 x 100000 grid: allocating its maps failed and the run was lost
    e, spectra = source.draw(np.tile([0.2, 0.3, 0.5], (3, 1)), eels=True)
    docs = _source_docs(list(spectra))
    docs[0] = ("start", dict(docs[0][1], shape=[100_000, 100_000]))
    out: list = []
    cb = MnEdgeCallback(engine, LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125,
                                           maps_dir=None), lambda n, d: out.append((n, d)))
    for name, doc in docs:
        cb(name, doc)
    rows = derived_rows(out)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert cb.totals["bad_documents"] == 0 and out[-1][1]["exit_status"] == "success"


def test_sequence_gaps_are_counted_as_missed(engine, source):
    e, spectra = source.draw(np.tile([0.2, 0.3, 0.5], (6, 1)), eels=True)
    docs = _source_docs(list(spectra), num_events=6, drop=(2, 3, 6))
    out: list = []
    cb = MnEdgeCallback(engine, LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125,
                                           maps_dir=None), lambda n, d: out.append((n, d)))
    for name, doc in docs:
        cb(name, doc)
    stop = out[-1][1]
    assert stop["missed"] == 3 and stop["processed"] + stop["rejected"] == 3
    assert cb.totals["missed"] == 3


def test_own_derived_runs_are_never_reprocessed(engine, source):
    e, spectra = source.draw(np.tile([0.2, 0.3, 0.5], (2, 1)), eels=True)
    out: list = []
    cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, maps_dir=None)
    cb = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
    for name, doc in _source_docs(list(spectra)):
        cb(name, doc)
    n_before = len(out)
    again = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
    for name, doc in list(out):
        cb(name, doc)
        again(name, doc)
    assert len(out) == n_before


def _pixel_docs(spectra, pixels):
    """A hand-composed spectrum image whose events give their pixel in fields ``r`` and ``c``."""
    b = event_model.compose_run(metadata={"plan_name": "count"})
    keys = {"spec": {"source": "x", "dtype": "array", "shape": [560]},
            "r": {"source": "x", "dtype": "integer", "shape": []}, "c": {"source": "x", "dtype": "integer", "shape": []}}
    d = b.compose_descriptor(name="primary", data_keys=keys)
    docs = [("start", b.start_doc), ("descriptor", d.descriptor_doc)]
    for s, (r, c) in zip(spectra, pixels):
        docs.append(("event", d.compose_event(data={"spec": s, "r": r, "c": c}, timestamps={"spec": 0.0, "r": 0.0, "c": 0.0},
                                              validate=False)))
    stop = dict(b.compose_stop())
    stop["num_events"] = {"primary": len(pixels)}
    docs.append(("stop", stop))
    return docs


def test_a_pixel_index_that_would_grow_the_map_past_its_limit_is_rejected(engine, source, tmp_path):
    from mnedge_live.callback import MAX_MAP_PIXELS

    side = int(math.isqrt(MAX_MAP_PIXELS))
    pixels = [(0, 0), (0, 1), (side, side), (0, MAX_MAP_PIXELS), (1, 0)]
    _, spectra = source.draw(np.tile([0.2, 0.3, 0.5], (len(pixels), 1)), eels=True)
    out: list = []
    cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, pixel_fields=["r", "c"],
                     maps_dir=str(tmp_path), max_batch=len(pixels))
    cb = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
    for name, doc in _pixel_docs(list(spectra), pixels):
        cb(name, doc)
    rows = {r["source_seq_num"]: r for r in derived_rows(out)}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    for seq in (3, 4):
        assert rows[seq]["status"] == "rejected" and "would grow the map" in rows[seq]["reason"]
    for seq in (1, 2, 5):
        assert "map" not in rows[seq]["reason"]
    stop = out[-1][1]
    assert stop["processed"] + stop["rejected"] == 5 and stop["missed"] == 0 and cb.totals["bad_documents"] == 0
    with h5py.File(stop["maps_h5"]) as f:
        assert f["valence"].shape == (2, 2)


def test_a_pixel_measured_again_is_counted_and_the_map_shows_the_last_readout(engine, source, tmp_path):
    """Pixel fields that repeat a pixel: the second readout replaced the first without a word."""
    pixels = [(0, 0), (0, 1), (0, 0)]
    _, spectra = source.draw(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), eels=True)
    out: list = []
    cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, pixel_fields=["r", "c"],
                     maps_dir=str(tmp_path))
    cb = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
    for name, doc in _pixel_docs(list(spectra), pixels):
        cb(name, doc)
    stop = out[-1][1]
    assert stop["overwritten_pixels"] == 1 and stop["processed"] + stop["rejected"] == 3
    last = next(r for r in derived_rows(out) if r["source_seq_num"] == 3)
    with h5py.File(stop["maps_h5"]) as f:
        assert np.array_equal(f["valence"][0, 0], last["valence"], equal_nan=True)


#: Reads a pixel-index spectrum image whose third pixel needs a 4096 x 4096 map, with the process's
#: address space limited so that map cannot be allocated; prints the rows and the stop's counts.
_OUT_OF_MEMORY_RUN = """
import json, resource, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import numpy as np
from live_support import real_engine
from test_live_callback import _pixel_docs, derived_rows
from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.sim import SpectrumSource

engine = real_engine()
_, spectra = SpectrumSource().draw(np.tile([0.2, 0.3, 0.5], (4, 1)), eels=True)
docs = _pixel_docs(list(spectra), [(0, 0), (0, 1), (4095, 4095), (1, 0)])
out = []
cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, pixel_fields=["r", "c"],
                 maps_dir=sys.argv[1], max_batch=4)
cb = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
engine.predict([(np.asarray(615.0 + 0.125 * np.arange(560)), s) for s in spectra])  # warm, before the limit
size = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))  # < 6 layers of 4096**2
for name, doc in docs:
    cb(name, doc)
stop = [d for n, d in out if n == "stop"]
print(json.dumps({"rows": [{k: r[k] for k in ("source_seq_num", "status", "reason")} for r in derived_rows(out)],
                  "stop": {k: stop[-1][k] for k in ("processed", "rejected", "missed")} if stop else None}))
"""


def test_a_readout_that_cannot_be_recorded_is_rejected_not_lost(tmp_path):
    """Out of memory while the map grows: that pixel gets a rejection with the reason; its batch is kept."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY_RUN, str(tmp_path)], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": path}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    rows = {row["source_seq_num"]: row for row in got["rows"]}
    assert sorted(rows) == [1, 2, 3, 4], r.stderr[-3000:]
    assert rows[3]["status"] == "rejected" and "could not be recorded: MemoryError" in rows[3]["reason"]
    assert all("could not be recorded" not in rows[s]["reason"] for s in (1, 2, 4))
    assert got["stop"]["processed"] + got["stop"]["rejected"] == 4 and got["stop"]["missed"] == 0

def test_external_hdf5_frames_via_resource_and_datum(engine, source, tmp_path):
    """Each event names its frame of an HDF5 file by a datum: its row is the engine's readout of that frame."""
    e, spectra = source.draw(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), eels=True)
    path = tmp_path / "det.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=spectra)
    b = event_model.compose_run()
    res = b.compose_resource(spec="AD_HDF5", root=str(tmp_path), resource_path="det.h5",
                             resource_kwargs={"frame_per_point": 1})
    keys = {"spec": {"source": "x", "dtype": "array", "shape": [560], "external": "FILESTORE:"}}
    d = b.compose_descriptor(name="primary", data_keys=keys)
    out: list = []
    cb = MnEdgeCallback(engine, LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125,
                                           maps_dir=None), lambda n, d: out.append((n, d)))
    cb("start", b.start_doc)
    cb("resource", res.resource_doc)
    cb("descriptor", d.descriptor_doc)
    for i in range(3):
        datum = res.compose_datum(datum_kwargs={"point_number": i})
        cb("datum", datum)
        cb("event", d.compose_event(data={"spec": datum["datum_id"]}, timestamps={"spec": 0.0},
                                    filled={"spec": False}, validate=False))
    cb("stop", b.compose_stop())
    rows = sorted(derived_rows(out), key=lambda r: r["source_seq_num"])
    axis = 615.0 + 0.125 * np.arange(560)
    expected = engine.predict([(axis, np.asarray(s, np.float64)) for s in spectra])  # the frames as written
    assert [r["source_seq_num"] for r in rows] == [1, 2, 3]
    assert [(r["status"], r["reason"]) for r in rows] == [(x.status, x.reason or "") for x in expected]
    for r, x in zip(rows, expected):
        if x.ok:
            assert r["valence"] == pytest.approx(x.valence, abs=1e-9)
    assert any(x.ok for x in expected), [x.reason for x in expected]  # else the frames would not be told apart
    assert out[-1][1]["processed"] == sum(x.ok for x in expected) and out[-1][1]["rejected"] == 3 - out[-1][1]["processed"]
    assert not cb.external.resources and not cb.external.datums   # a closed run's frames are not kept for good


def test_a_derived_row_carries_the_readout_flags():
    """Quality flags reach the documents as one comma-separated string; a rejection has none."""
    from mnedge_live.derived import result_row
    from mnedge_live.results import SpectrumResult

    ok = SpectrumResult(status="ok", fractions=(0.1, 0.8, 0.1), valence=3.0, flags=("low_psnr", "sparse_lines"))
    assert result_row(ok, 3)["flags"] == "low_psnr,sparse_lines"
    assert result_row(SpectrumResult.rejected("no edge"), 4)["flags"] == ""


def test_maps_of_pixel_index_fields_grow_by_doubling_within_the_largest_map():
    from mnedge_live.callback import MAX_MAP_PIXELS, _grown_extent

    assert _grown_extent((1, 4), (0, 4), (1, 5)) == (1, 8)            # a raster row: doubled, not one column more
    assert _grown_extent((8, 1024), (8, 0), (9, 1024)) == (16, 1024)  # a new row: doubled (was: one row per copy)
    assert _grown_extent((2, 8), (4095, 3), (4096, 8)) == (4096, 8)   # a far pixel: taken to the pixel
    assert _grown_extent((3, 3), (1, 1), (3, 3)) == (3, 3)            # inside: unchanged
    assert _grown_extent((3000, 4096), (3000, 0), (3001, 4096)) == (4096, 4096)   # doubled as far as the limit
    assert 4096 * 4096 == MAX_MAP_PIXELS


def _read_pixel_run(engine, source, tmp_path, pixels) -> list:
    """A spectrum image whose events name their pixel (fields ``r``, ``c``) read one event per batch; its
    derived documents."""
    _, spectra = source.draw(np.tile([0.2, 0.3, 0.5], (len(pixels), 1)), eels=True)
    out: list = []
    cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, pixel_fields=["r", "c"],
                     maps_dir=str(tmp_path), max_batch=1)
    cb = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
    for name, doc in _pixel_docs(list(spectra), pixels):
        cb(name, doc)
    return out


def test_a_map_grown_ahead_of_its_pixels_is_written_cut_to_them(engine, source, tmp_path):
    out = _read_pixel_run(engine, source, tmp_path, [(r, c) for r in range(3) for c in range(5)])
    with h5py.File(out[-1][1]["maps_h5"]) as f:
        assert f["valence"].shape == (3, 5) and not np.isnan(f["valence"][()]).all(axis=1).any()


def test_a_derived_document_the_publisher_fails_to_send_is_counted_not_raised(engine, source):
    """The publisher raises on the first event page of one run (a closed socket, say): those readouts are
    counted as unpublished in the totals and in the stop document; the runs' other rows, a second run
    and the stop documents still go out."""
    docs: list[tuple[str, dict]] = []
    fail = {"pages": 1}

    def publish(name, doc):
        if name == "event_page" and fail["pages"]:
            fail["pages"] -= 1
            raise OSError("socket closed")
        docs.append((name, doc))

    cfg = LiveConfig(**EELS_OPTS, maps_dir=None, max_batch=4)
    cb = MnEdgeCallback(engine, cfg, publish)
    det, sy, sx = make_eels((3, 3), source)
    RE = RunEngine({})
    RE.subscribe(cb)
    RE(bp.grid_scan([det], sy, 0, 1, 3, sx, 0, 1, 3))
    RE(bp.grid_scan([det], sy, 0, 1, 3, sx, 0, 1, 3))
    first, second = [d for n, d in docs if n == "stop"]
    lost = first["unpublished_rows"]
    assert lost >= 2 and second["unpublished_rows"] == 0      # an event page carries two rows or more
    assert first["processed"] + first["rejected"] == 9 == second["processed"] + second["rejected"]
    assert len(derived_rows(docs, first["run_start"])) == 9 - lost
    assert len(derived_rows(docs, second["run_start"])) == 9
    assert cb.totals["unpublished_documents"] == 1 and cb.totals["unpublished_rows"] == lost
    assert cb.totals["readouts"] == 18


def _shaped_run(spectra, shape):
    docs = _source_docs(list(spectra), num_events=len(spectra))
    docs[0] = ("start", dict(docs[0][1], shape=list(shape)))
    return docs


def test_a_start_document_allocates_no_map_before_its_first_pixel(engine, source, tmp_path):
    """A start announcing a 4096 x 4096 grid (a few hundred bytes) made a 1.2 GB map at once."""
    out: list = []
    cb = MnEdgeCallback(engine, LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125,
                                           maps_dir=str(tmp_path), map_bin=2), lambda n, d: out.append((n, d)))
    docs = _shaped_run([], (4096, 4096))
    cb(*docs[0])
    run = cb.runs[docs[0][1]["uid"]]
    assert run.kind == "map" and run.maps is None and run.binned_maps is None and run.map_bytes() == 0
    for name, doc in docs[1:]:
        cb(name, doc)
    stop = out[-1][1]
    assert "maps_h5" not in stop and "maps_error" not in stop and not list(tmp_path.iterdir())


def test_maps_past_the_open_runs_budget_are_not_kept_and_the_stop_says_why(engine, source, tmp_path, monkeypatch):
    import mnedge_live.callback as callback
    from mnedge_live.assembly import ValenceMaps

    monkeypatch.setattr(callback, "MAX_OPEN_MAP_BYTES", ValenceMaps.bytes_for((2, 2)))
    _, spectra = source.draw(np.tile([0.2, 0.3, 0.5], (4, 1)), eels=True)
    out: list = []
    cb = MnEdgeCallback(engine, LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125,
                                           maps_dir=str(tmp_path), max_batch=1), lambda n, d: out.append((n, d)))
    first, second, third = (_shaped_run(spectra, (2, 2)) for _ in range(3))
    for name, doc in first[:-1] + second:   # the second runs while the first holds its map
        cb(name, doc)
    cb(*first[-1])
    for name, doc in third:                 # the first closed: room again
        cb(name, doc)
    source_of = {d["uid"]: d["parent_uid"] for n, d in out if n == "start"}    # derived start -> source run
    stop_of = {source_of[d["run_start"]]: d for n, d in out if n == "stop"}
    a, b, c = (stop_of[r[0][1]["uid"]] for r in (first, second, third))
    assert "maps_h5" in a and "maps_h5" in c and "maps_error" not in a
    assert "maps_h5" not in b and "would pass" in b["maps_error"]
    assert b["processed"] + b["rejected"] == 4        # every pixel still read and published
    assert cb.totals["bad_documents"] == 0


def test_the_map_budget_holds_one_full_map_and_a_growing_map_counts_once(engine, source, tmp_path, monkeypatch):
    """The real budget was never checked (every test patched it); a map that grows must not count its old copy
    against the budget beside the new one."""
    import mnedge_live.callback as callback
    from mnedge_live.assembly import ValenceMaps
    from mnedge_live.map_geometry import MAX_MAP_PIXELS, MAX_OPEN_MAP_BYTES

    largest = ValenceMaps.bytes_for((math.isqrt(MAX_MAP_PIXELS),) * 2)
    assert largest <= MAX_OPEN_MAP_BYTES < 2 * largest
    monkeypatch.setattr(callback, "MAX_OPEN_MAP_BYTES", ValenceMaps.bytes_for((1, 4)))
    # pixel fields: the map grows (1, 1) -> (1, 2) -> (1, 4)
    out = _read_pixel_run(engine, source, tmp_path, [(0, 0), (0, 1), (0, 2), (0, 3)])
    stop = out[-1][1]
    assert "maps_error" not in stop
    with h5py.File(stop["maps_h5"]) as f:
        assert f["valence"].shape == (1, 4) and (np.isfinite(f["valence"][0]) | f["rejected"][0]).all()


def test_with_a_picture_writer_the_stop_comes_before_the_maps_picture_is_drawn(engine, source, tmp_path):
    """The service draws the maps' PNG off its reading thread: the stop document (HDF5 written, both files
    named) does not wait for the picture, which follows."""
    from mnedge_live.background_writer import BackgroundWriter

    pictures = BackgroundWriter()
    release = threading.Event()
    pictures.submit("a picture being drawn", lambda: release.wait(30))
    det, sy, sx = make_eels((3, 4), source)
    det.prefetch()
    docs: list[tuple[str, dict]] = []
    cb = MnEdgeCallback(engine, LiveConfig(**EELS_OPTS, maps_dir=str(tmp_path)), lambda n, d: docs.append((n, d)),
                        pictures=pictures)
    RE = RunEngine({})
    RE.subscribe(cb)
    RE(bp.grid_scan([det], sy, 0, 1, 3, sx, 0, 1, 4, snake_axes=True))
    stop = docs[-1][1]
    assert docs[-1][0] == "stop" and stop["processed"] + stop["rejected"] == 12
    png = Path(stop["maps_png"])
    assert Path(stop["maps_h5"]).is_file() and png.parent == tmp_path.resolve() and not png.exists()
    release.set()
    assert pictures.close(timeout=60) and png.is_file() and pictures.failures == 0
