"""Live valence maps (``mnedge watch``): the derived rows of a spectrum image drawn as they arrive."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from live_support import ROOT, model_args, real_engine, start_proxy, start_service, stop

from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.live_map import LiveMapWatcher
from mnedge_live.publishing import make_publisher
from mnedge_live.serializers import msgpack_dumps
from mnedge_live.sim import SpectrumSource, make_eels

EELS = dict(mode="spectrum", spectrum_field="eels_spectrum", dispersion_field="eels_dispersion",
            offset_field="eels_offset")


class Clock:
    """Seconds that move only when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def derived_documents(tmp_path, shape=(3, 4), max_batch=4, source_start: list | None = None) -> list[tuple[str, dict]]:
    """The derived documents of a simulated spectrum image read in process, in order (``source_start``
    collects the source run's start document)."""
    docs: list[tuple[str, dict]] = []
    cb = MnEdgeCallback(real_engine(), LiveConfig(**EELS, maps_dir=str(tmp_path / "service"), max_batch=max_batch),
                        lambda n, d: docs.append((n, d)))
    det, sy, sx = make_eels(shape, SpectrumSource(seed=3))
    det.prefetch()
    RE = RunEngine({})
    RE.subscribe(cb)
    if source_start is not None:
        RE.subscribe(lambda n, d: source_start.append(d) if n == "start" else None)
    RE(bp.grid_scan([det], sy, 0, 1, shape[0], sx, 0, 1, shape[1]))
    return docs


def test_the_source_runs_scan_shape_sizes_the_map_from_its_first_write(tmp_path):
    """The source start (which reaches the proxy before the service's derived start) gives the map its
    shape at once; without it the map grows to the pixels seen."""
    source: list[dict] = []
    docs = derived_documents(tmp_path, source_start=source)
    first_page = next(i for i, (n, _) in enumerate(docs) if n in ("event", "event_page"))
    for with_source in (True, False):
        watcher = LiveMapWatcher(tmp_path / f"live{with_source}", every_s=100.0)
        if with_source:
            watcher("start", source[0])
        for name, doc in docs[: first_page + 1]:
            watcher(name, doc)
        with h5py.File(watcher.written[-2]) as f:
            assert (f["valence"].shape == (3, 4)) is with_source
        assert not watcher.shapes


def test_the_map_builds_up_and_ends_as_the_services_own(tmp_path):
    docs = derived_documents(tmp_path)
    clock = Clock()
    watcher = LiveMapWatcher(tmp_path / "live", every_s=1.0, clock=clock)
    pages = [i for i, (n, _) in enumerate(docs) if n in ("event", "event_page")]
    assert len(pages) >= 3
    for i, (name, doc) in enumerate(docs):
        if i == pages[1]:
            clock.now = 0.5   # too soon after the first write: nothing new written
        if i == pages[2]:
            clock.now = 2.0
        before = len(watcher.written)
        watcher(name, doc)
        if i == pages[0]:   # the first rows are written at once, the map not complete
            first = len(doc["seq_num"]) if name == "event_page" else 1
            with h5py.File(watcher.written[-2]) as f:
                assert not f.attrs["complete"] and f.attrs["rows_read"] == first < 12
                assert np.isfinite(f["valence"][()]).sum() <= first
        if i == pages[1]:
            assert len(watcher.written) == before
        if i == pages[2]:
            assert len(watcher.written) == before + 2
    assert watcher.finished == 1 and watcher.skipped == 0 and not watcher.runs
    stop = docs[-1][1]
    with h5py.File(watcher.written[-2]) as live, h5py.File(stop["maps_h5"]) as final:
        assert live.attrs["complete"] and live.attrs["rows_read"] == 12
        for layer in ("valence", "valence_std", "frac_mn3", "energy_offset_eV", "t_lambda", "ood_score", "rejected"):
            assert np.array_equal(live[layer][()], final[layer][()], equal_nan=True), layer
    assert watcher.written[-1].endswith("_live.png")


def test_rows_that_cannot_be_placed_are_counted_not_raised(tmp_path, caplog):
    docs = derived_documents(tmp_path, shape=(2, 2))
    watcher = LiveMapWatcher(tmp_path / "live", every_s=100.0)
    for name, doc in docs:
        if name == "event_page" and "pixel_row" in doc["data"]:   # one row of each page at a fractional pixel
            doc = {**doc, "data": {**doc["data"], "pixel_row": [2.5] + list(doc["data"]["pixel_row"][1:])}}
        elif name == "event" and "pixel_row" in doc["data"]:
            doc = {**doc, "data": {**doc["data"], "pixel_row": 2.5}}
        watcher(name, doc)
    watcher("event_page", {"descriptor": "unknown"})   # another stream's: ignored
    watcher("stop", {"no": "run_start"})                # malformed: nothing to close
    watcher("descriptor", None)                         # not a document: counted
    assert watcher.finished == 1 and watcher.skipped >= 2
    assert "2.5 is not a whole number" in caplog.text


def test_a_row_without_a_pixel_is_skipped_and_an_aborted_scans_map_says_so(tmp_path):
    """The service's pixel -1 (a spectrum refused a pixel) was counted as placed; the final live map of
    a scan that ended early said complete and nothing more."""
    docs = derived_documents(tmp_path, shape=(2, 2))
    watcher = LiveMapWatcher(tmp_path / "live", every_s=100.0)
    for name, doc in docs:
        if name == "event_page" and "pixel_row" in doc["data"]:
            doc = {**doc, "data": {**doc["data"], "pixel_row": [-1] + list(doc["data"]["pixel_row"][1:])}}
        elif name == "event" and "pixel_row" in doc["data"]:
            doc = {**doc, "data": {**doc["data"], "pixel_row": -1}}
        if name == "stop":
            doc = {**doc, "exit_status": "abort", "reason": "stopped by the operator"}
        watcher(name, doc)
    pages = sum(1 for n, d in docs if n in ("event", "event_page") and "pixel_row" in d["data"])
    assert watcher.finished == 1 and watcher.skipped == pages
    with h5py.File(watcher.written[-2]) as f:
        assert f.attrs["complete"] and f.attrs["exit_status"] == "abort" and f.attrs["rows_read"] == 4 - pages


@pytest.fixture(scope="module")
def proxy():
    real_engine()
    proc, pin, pout = start_proxy()
    yield pin, pout
    stop(proc)


def test_mnedge_watch_writes_the_live_map_of_a_scan_read_by_a_service(proxy, tmp_path):
    """A real proxy, `mnedge live` and `mnedge watch` as processes, a RunEngine publishing a grid scan:
    watch writes the map while the rows arrive and stops after the image (--runs 1) with the
    service's final values."""
    pin, pout = proxy
    common = ["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", *model_args()]
    cfg = tmp_path / "eels.toml"
    cfg.write_text(f'dispersion_field = "eels_dispersion"\noffset_field = "eels_offset"\nmax_batch = 4\n'
                   f'maps_dir = "{tmp_path / "service"}"\n')
    service = start_service([*common, "--mode", "spectrum", "--spectrum-field", "eels_spectrum", "--config", str(cfg)])
    watch = subprocess.Popen([sys.executable, "-m", "mnedge_live.cli", "watch", "--in", f"127.0.0.1:{pout}",
                              "--out-dir", str(tmp_path / "live"), "--runs", "1", "--every", "0.1"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = [watch.stdout.readline()]
        assert seen[0].startswith("mnedge watch: ready"), seen
        det, sy, sx = make_eels((3, 4), SpectrumSource(seed=5))
        det.prefetch()
        publisher = make_publisher(f"127.0.0.1:{pin}", serializer=msgpack_dumps)
        try:
            garbage = zmq.Context.instance().socket(zmq.PUB)   # a message no document can be read from
            garbage.connect(f"tcp://127.0.0.1:{pin}")
            time.sleep(0.5)
            garbage.send(b"xx start \x00\x01not msgpack")
            garbage.close(linger=1000)
            RE = RunEngine({})
            RE.subscribe(publisher)
            (uid,) = RE(bp.grid_scan([det], sy, 0, 1, 3, sx, 0, 1, 4))
        finally:
            publisher.close()
        out, _ = watch.communicate(timeout=120)
        out = "".join(seen) + out
    finally:
        if watch.poll() is None:
            watch.kill()
        assert stop(service) == 0
    assert watch.returncode == 0, out
    live = tmp_path / "live" / f"mnedge_{uid}_live.h5"
    final = next((tmp_path / "service").glob(f"mnedge_{uid}*.h5"))
    assert f"wrote {live}" in out and "1 image(s) finished" in out and "1 message(s) not read" in out
    with h5py.File(live) as a, h5py.File(final) as b:
        assert a.attrs["complete"] and a.attrs["rows_read"] == 12
        assert np.array_equal(a["valence"][()], b["valence"][()], equal_nan=True)
        assert not math.isnan(float(np.nanmean(a["valence"][()])))


def test_watch_refuses_bad_options():
    cmd = [sys.executable, "-m", "mnedge_live.cli", "watch", "--in"]
    for args, why in ((["nohost"], "--in: 'nohost' is not"), (["127.0.0.1:5568", "--every", "0"], "--every"),
                      (["127.0.0.1:5568", "--serializer", "pickle"], "allow-pickle"),
                      (["127.0.0.1:5568", "--max-message-mb", "0"], "--max-message-mb")):
        r = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 2 and why in r.stderr, (args, r.stderr)


def test_mnedge_watch_reads_a_proxy_secured_with_curvezmq(tmp_path):
    """The proxy's subscriber side secured (--out-curve-secret): `mnedge watch` with its own certificate and
    the proxy's public one writes the map of a spectrum image the service read through the same side;
    without the keys, or with one of them, it refuses to start."""
    import zmq.auth
    from wire_support import RawSender, good_spectra, proxy_ports, service_toml, source_run, start_proxy_on

    keys = {}
    for who in ("proxy", "service", "watch"):
        public, secret = zmq.auth.create_certificates(str(tmp_path), who)
        keys[who], keys[who + "_public"] = secret, public
    real_engine()
    pin, pout = proxy_ports()
    proxy = start_proxy_on(pin, pout, "--out-curve-secret", keys["proxy"])
    service = start_service(["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--config",
                             str(service_toml(tmp_path / "live.toml")), "--curve-secret-key", keys["service"],
                             "--curve-server-public-key", keys["proxy_public"], *model_args()])
    watch_cmd = [sys.executable, "-m", "mnedge_live.cli", "watch", "--in", f"127.0.0.1:{pout}", "--out-dir",
                 str(tmp_path / "live"), "--runs", "1", "--every", "0.1"]
    half = subprocess.run([*watch_cmd, "--curve-secret-key", keys["watch"]], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert half.returncode == 2 and "go together" in half.stderr
    watch = subprocess.Popen([*watch_cmd, "--curve-secret-key", keys["watch"], "--curve-server-public-key",
                              keys["proxy_public"]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    sender = RawSender(pin)
    try:
        seen = [watch.stdout.readline()]
        assert seen[0].startswith("mnedge watch: ready"), seen
        time.sleep(1.0)   # the encrypted subscriptions settle
        docs = source_run(good_spectra(4, seed=3), metadata={"shape": [2, 2]})
        sender.send_all(docs)
        out, _ = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
        sender.close()
        stop(service)
        stop(proxy)
    out = "".join(seen) + out
    assert watch.returncode == 0 and "1 image(s) finished" in out, out
    with h5py.File(tmp_path / "live" / f"mnedge_{docs[0][1]['uid']}_live.h5") as f:
        assert f.attrs["complete"] and f.attrs["rows_read"] == 4 and f["valence"].shape == (2, 2)


def _derived_map_start(uid: str, source: str) -> tuple[str, dict]:
    return "start", {"uid": uid, "time": 0.0, "mnedge_derived": True, "mnedge_kind": "map", "parent_uid": source}


def test_a_start_announcing_a_large_scan_makes_no_map_before_its_first_row(tmp_path):
    """A source start of 4096 x 4096 and its derived start made a 1.2 GB map at once, before any row."""
    watcher = LiveMapWatcher(tmp_path, every_s=100.0)
    watcher("start", {"uid": "src", "time": 0.0, "shape": [4096, 4096]})
    watcher(*_derived_map_start("d", "src"))
    assert watcher.runs["d"].maps is None and watcher.runs["d"].shape == (4096, 4096)
    watcher("stop", {"uid": "s", "run_start": "d", "time": 1.0, "exit_status": "success"})
    assert watcher.finished == 1 and watcher.written == []   # no row: no map file


def test_maps_past_the_memory_budget_or_the_open_count_are_not_kept(tmp_path, monkeypatch, caplog):
    import mnedge_live.live_map as live_map
    from mnedge_live.assembly import ValenceMaps

    monkeypatch.setattr(live_map, "MAX_OPEN_MAP_BYTES", ValenceMaps.bytes_for((2, 2)))
    monkeypatch.setattr(live_map, "MAX_OPEN_MAPS", 2)
    watcher = LiveMapWatcher(tmp_path, every_s=100.0)
    for k in range(2):
        watcher("start", {"uid": f"src{k}", "time": 0.0, "shape": [2, 2]})
        watcher(*_derived_map_start(f"d{k}", f"src{k}"))
        watcher("descriptor", {"uid": f"desc{k}", "run_start": f"d{k}", "name": "mnedge", "time": 0.0,
                               "data_keys": {}})
        watcher("event_page", {"descriptor": f"desc{k}", "seq_num": [1], "time": [0.0], "uid": [f"e{k}"],
                               "timestamps": {}, "data": {"pixel_row": [0], "pixel_col": [0], "valence": [3.0],
                                                          "status": ["ok"]}})
    assert watcher.runs["d0"].maps is not None and watcher.runs["d1"].maps is None   # the second would pass
    assert watcher.skipped == 1 and "would pass" in caplog.text
    watcher(*_derived_map_start("d2", "nobody"))   # a third open map: the oldest, d0, written and dropped
    assert list(watcher.runs) == ["d1", "d2"] and len(watcher.written) == 2
    with h5py.File(watcher.written[0]) as f:
        assert f["valence"][0, 0] == 3.0 and not f.attrs["complete"]
