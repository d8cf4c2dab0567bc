"""The service end to end: a real bluesky-0MQ-proxy, `mnedge live` as a subprocess, a publishing RunEngine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from live_support import (
    ROOT,
    Collector,
    derived_rows,
    derived_stops,
    free_port,
    model_args,
    real_engine,
    start_proxy,
    start_service,
    stop,
)
from wire_support import wait_until

from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.plots import RunPlotter
from mnedge_live.publishing import make_publisher
from mnedge_live.serializers import msgpack_dumps, msgpack_loads
from mnedge_live.service import DerivedSink
from mnedge_live.sim import SpectrumSource, make_eels, make_xas


@pytest.fixture(scope="module")
def proxy():
    real_engine()  # trains the tiny model once when no embedded model is shipped
    proc, pin, pout = start_proxy()
    yield pin, pout
    stop(proc)


def epics_env(port: int) -> dict:
    return {"EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_SERVER_PORT": str(port),
            "EPICS_CAS_SERVER_PORT": str(port), "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1"}


def test_bad_option_is_refused_at_start_naming_it():
    cmd = [sys.executable, "-m", "mnedge_live.cli", "live", "--mode", "fly"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "mode:" in r.stderr
    r = subprocess.run([*cmd[:-2], "--serializer", "pickle"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "serializer:" in r.stderr and "allow-pickle" in r.stderr


def test_a_soft_ioc_that_cannot_bind_stops_the_service_with_the_reason(tmp_path):
    """An epics_interfaces address the host does not have (TEST-NET-1): no "ready", exit 2 and why."""
    real_engine()
    cfg = tmp_path / "live.toml"
    cfg.write_text('epics_interfaces = ["192.0.2.1"]\n')
    cmd = [sys.executable, "-m", "mnedge_live.cli", "live", "--config", str(cfg), "--epics-prefix", "NOBIND:",
           *model_args()]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env={**os.environ, **epics_env(free_port())})
    assert r.returncode == 2, (r.stdout, r.stderr[-3000:])
    assert "mnedge live: ready" not in r.stdout
    assert "cannot serve the EPICS PVs" in r.stderr and "192.0.2.1" in r.stderr

@pytest.mark.parametrize("gap_s", [0.02, 0.1, 0.3])
def test_a_second_sigterm_during_the_shutdown_is_ignored_and_the_service_still_stops_cleanly(proxy, gap_s):
    """The first SIGTERM starts the shutdown (open runs closed, last documents sent, soft IOC stopped);
    one more, as a supervisor or an impatient operator sends, must not kill the service half-way."""
    import signal
    import time

    pin, pout = proxy
    ca_port = free_port()
    service = start_service(["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", *model_args(),
                             "--epics-prefix", f"TERM{ca_port}:"], epics_env(ca_port))
    service.send_signal(signal.SIGTERM)
    time.sleep(gap_s)
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
    code = stop(service)
    log = "".join(service.log)
    assert code == 0, log[-3000:]
    assert "mnedge live stopped" in log


def test_service_reads_spectrum_image_and_step_scan_through_the_proxy(proxy, tmp_path):
    pin, pout = proxy
    ca_port = free_port()
    env = epics_env(ca_port)
    prefix = f"TST{ca_port}:"
    common = ["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", *model_args()]
    eels = start_service([*common, "--mode", "spectrum", "--spectrum-field", "eels_spectrum",
                          "--config", str(_eels_toml(tmp_path)), "--plot", str(tmp_path / "plots"),
                          "--epics-prefix", prefix], env)
    collector = Collector(pout, msgpack_loads)
    publisher = make_publisher(f"127.0.0.1:{pin}", serializer=msgpack_dumps)
    # closed whatever happens: a SUB socket left open keeps its 0MQ context alive, and when the garbage
    # collector later finalizes that context (Context.term waits for its sockets) it hangs whichever test
    # runs then (seen: the next test's RunEngine thread blocked in Context.__del__ after a failure here)
    try:
        try:
            source = SpectrumSource()
            det, sy, sx = make_eels((3, 4), source)
            det.prefetch()
            RE = RunEngine({})
            RE.subscribe(publisher)
            (uid,) = RE(bp.grid_scan([det], sy, 0, 1, 3, sx, 0, 1, 4, snake_axes=True))
            assert collector.wait_for(lambda docs: len(derived_stops(docs)) >= 1), eels.log
            (dstop,) = derived_stops(collector.docs)
            dstart = next(d for n, d in collector.docs if n == "start" and d["uid"] == dstop["run_start"])
            assert dstart["parent_uid"] == uid
            assert dstop["processed"] + dstop["rejected"] == 12 and dstop["missed"] == 0
            rows = derived_rows(collector.docs, dstart["uid"])
            assert sorted(r["source_seq_num"] for r in rows) == list(range(1, 13))
            assert os.path.isfile(dstop["maps_h5"])   # written before the stop document
            assert wait_until(lambda: os.path.isfile(dstop["maps_png"]), 30)   # drawn off the reading thread
            assert Path(dstop["maps_h5"]).parent == (tmp_path / "plots").resolve()   # --plot alone: maps beside the plots
            # the PVs of the soft IOC, read with pyepics over loopback
            out = subprocess.run([sys.executable, "-c", (
                f"import epics; p={prefix!r}; print(epics.caget(p+'PROCESSED', timeout=5), epics.caget(p+'REJECTED', timeout=5),"
                " epics.caget(p+'MISSED', timeout=5), epics.caget(p+'STATUS', as_string=True, timeout=5))")],
                capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
            processed, rejected, missed, status = out.stdout.split()[:4]
            # counters are doubles (exact past 2**31): pyepics prints 12.0
            assert (float(processed), float(rejected), float(missed)) == (dstop["processed"], dstop["rejected"], 0), out
            assert status.startswith(("ok", "rejected")), out
        finally:
            assert stop(eels) == 0, "".join(eels.log)
        # our own derived run went through the same proxy and was not read again
        assert len(derived_stops(collector.docs)) == 1

        step = start_service([*common, "--mode", "step", "--signal-field", "xas_tey", "--norm-field", "xas_i0"])
        try:
            dets, mono = make_xas((0.2, 0.5, 0.3), source)
            (uid,) = RE(bp.scan([dets], mono, 630, 665, 36))
            assert collector.wait_for(lambda docs: len(derived_stops(docs)) >= 2), step.log
            dstop = derived_stops(collector.docs)[-1]
            assert (dstop["processed"], dstop["rejected"], dstop["missed"]) == (36, 0, 0)
            final = [r for r in derived_rows(collector.docs, dstop["run_start"]) if r["final"]]
            assert len(final) == 1 and final[0]["source_seq_num"] == 36
        finally:
            assert stop(step) == 0
    finally:
        collector.close()
        publisher.close()


def _eels_toml(tmp_path):
    p = tmp_path / "eels.toml"
    p.write_text('dispersion_field = "eels_dispersion"\noffset_field = "eels_offset"\nmax_batch = 8\n')
    return p


def _binned_map_through(sink, maps_dir: Path, map_bin: int = 2):
    """A 4 x 4 spectrum image read in process with ``map_bin``; derived documents go to ``sink``."""
    cfg = LiveConfig(mode="spectrum", spectrum_field="eels_spectrum", dispersion_field="eels_dispersion",
                     offset_field="eels_offset", maps_dir=str(maps_dir), map_bin=map_bin, max_batch=4)
    cb = MnEdgeCallback(real_engine(), cfg, sink)
    det, sy, sx = make_eels((4, 4), SpectrumSource(seed=2))
    det.prefetch()
    RE = RunEngine({})
    RE.subscribe(cb)
    RE(bp.grid_scan([det], sy, 0, 1, 4, sx, 0, 1, 4))
    return cb


def test_readout_plots_of_a_binned_map_leave_the_block_readouts_alone(tmp_path):
    """--plot with map_bin: the block stream (no source_seq_num) is not plotted and breaks nothing."""
    docs: list[tuple[str, dict]] = []
    plots = RunPlotter(tmp_path / "plots")
    sink = DerivedSink(lambda n, d: docs.append((n, d)), plots)
    cb = _binned_map_through(sink, tmp_path / "maps")
    (dstop,) = derived_stops(docs)
    assert dstop["exit_status"] == "success" and dstop["processed"] + dstop["rejected"] == 16
    assert dstop["binned_processed"] + dstop["binned_rejected"] == 4 == cb.totals["binned_readouts"]
    assert cb.totals["bad_documents"] == 0 and sink.plot_failures == 0 and not cb.runs
    assert len(plots.written) == 1 and Path(plots.written[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_readout_plot_is_counted_and_never_reaches_the_callback(tmp_path):
    """The plot folder vanishes mid-service: the plot fails, the derived run is complete all the same."""
    docs: list[tuple[str, dict]] = []
    plots = RunPlotter(tmp_path / "plots")
    (tmp_path / "plots").rmdir()
    sink = DerivedSink(lambda n, d: docs.append((n, d)), plots)
    cb = _binned_map_through(sink, tmp_path / "maps")
    (dstop,) = derived_stops(docs)
    assert dstop["exit_status"] == "success" and dstop["binned_processed"] + dstop["binned_rejected"] == 4
    assert cb.totals["bad_documents"] == 0 and cb.last_stop is dstop and not cb.runs
    assert sink.plot_failures == 1


def test_readout_plots_are_drawn_when_the_publisher_fails(tmp_path):
    """The 0MQ publisher raises on every document: each run's plot is still written, and the callback
    counts every derived document as unsent (nothing raises into it)."""
    plots = RunPlotter(tmp_path / "plots")

    def broken(name, doc):
        raise OSError("publisher socket closed")

    sink = DerivedSink(broken, plots)
    cb = _binned_map_through(sink, tmp_path / "maps")
    assert len(plots.written) == 1 and Path(plots.written[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = 16 + 4      # a row per pixel, and one per 2 x 2 block in stream mnedge_binned
    assert cb.totals["unpublished_rows"] == rows and cb.totals["unpublished_documents"] >= 5
    assert cb.totals["bad_documents"] == 0 and cb.last_stop["unpublished_rows"] == rows and not cb.runs
