"""The service end to end: a real bluesky-0MQ-proxy, `mnedge live` as a subprocess, a publishing RunEngine."""

from __future__ import annotations

import os
import subprocess
import sys

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

from mnedge_live.publishing import make_publisher
from mnedge_live.serializers import msgpack_dumps, msgpack_loads
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
        assert os.path.isfile(dstop["maps_h5"]) and os.path.isfile(dstop["maps_png"])
        # the PVs of the soft IOC, read with pyepics over loopback
        out = subprocess.run([sys.executable, "-c", (
            f"import epics; p={prefix!r}; print(epics.caget(p+'PROCESSED', timeout=5), epics.caget(p+'REJECTED', timeout=5),"
            " epics.caget(p+'MISSED', timeout=5), epics.caget(p+'STATUS', as_string=True, timeout=5))")],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        processed, rejected, missed, status = out.stdout.split()[:4]
        assert (int(processed), int(rejected), int(missed)) == (dstop["processed"], dstop["rejected"], 0), out
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
        collector.close()
        publisher.close()


def _eels_toml(tmp_path):
    p = tmp_path / "eels.toml"
    p.write_text('dispersion_field = "eels_dispersion"\noffset_field = "eels_offset"\nmax_batch = 8\n')
    return p
