"""EPICS: the caproto soft IOC on loopback, the ophyd readout device (pyepics), and the feedback plan."""

from __future__ import annotations

import math
import os

import pytest
from live_support import real_engine
from wire_support import wait_until

# conftest.py pointed Channel Access at loopback on a port of this session before ophyd was imported.
CA_PORT = int(os.environ["EPICS_CA_SERVER_PORT"])


@pytest.fixture(scope="module")
def ioc():
    """One soft IOC for the module (Channel Access clients do not reconnect to a second one on the same
    port). Each test's callback stands for a service (re)started behind the same PVs."""
    from mnedge_live.epics import SoftIOC

    server = SoftIOC(f"FB{CA_PORT}:").start()
    yield server
    server.stop()


def connected_readout(ioc):
    """The ophyd device over the IOC's PVs, connected."""
    from mnedge_live.epics import MnEdgeReadout

    readout = MnEdgeReadout(ioc.prefix, name="mn")
    readout.wait_for_connection(timeout=10)
    return readout


def step_config(readout_every: int = 1000):
    """A step-scan service of the simulated XAS beamline (progressive readouts every ``readout_every`` points)."""
    from mnedge_live.config import LiveConfig

    return LiveConfig(mode="step", signal_field="xas_tey", norm_field="xas_i0", step_readout_every=readout_every,
                      maps_dir=None)


def late_stops(cb, delay_s: float, starts: list | None = None):
    """A subscriber handing documents to ``cb`` with every stop document ``delay_s`` late (a slow 0MQ hop);
    returns it and the list of its timers (join them). ``starts`` collects (time, uid) of start documents."""
    import threading
    import time

    late: list[threading.Timer] = []

    def deliver(name, doc):
        if name == "start" and starts is not None:
            starts.append((time.monotonic(), doc["uid"]))
        if name != "stop":
            cb(name, doc)
            return
        late.append(threading.Timer(delay_s, cb, (name, doc)))
        late[-1].start()

    return deliver, late


def test_feedback_plan_repeats_the_scan_until_the_valence_crosses(ioc):
    from bluesky import RunEngine

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.epics import valence_feedback_plan
    from mnedge_live.sim import make_xas

    readout = connected_readout(ioc)
    cfg = step_config()
    cb = MnEdgeCallback(real_engine(), cfg, lambda n, d: None, on_readout=ioc.update)
    RE = RunEngine({})
    RE.subscribe(cb)
    dets, mono = make_xas((0.0, 0.2, 0.8))
    # a threshold no readout reaches: the plan runs every scan; one every readout reaches: it stops at once
    RE(valence_feedback_plan([dets], mono, 630, 665, 36, readout, threshold=5.0, max_scans=2))
    assert readout.readouts.get() >= 2 and readout.processed.get() == 72 == cb.totals["processed"]
    assert readout.missed.get() == 0 and readout.rejected.get() == 0
    ood = cb.engine.ood    # the shipped model's statistics: a finite score below its threshold
    assert ood is None or 0.0 < readout.ood_score.get() < ood.threshold
    before = readout.readouts.get()
    RE(valence_feedback_plan([dets], mono, 630, 665, 36, readout, threshold=-1.0, max_scans=3))
    status = readout.status.get()
    if "tiny" not in cb.engine.model_id:   # the shipped model reads the simulated sample (truth 3.8; 1 eV steps,
        assert status.startswith("ok"), status   # and Mn3+/Mn4+ mixtures read low: 3.50, README's known limits)
        assert abs(readout.valence.get() - 3.8) < 0.45
    if status.startswith("ok"):
        assert readout.readouts.get() == before + 1  # stopped after the first scan
    else:
        assert math.isnan(readout.valence.get())  # rejected readouts never end the series
        assert readout.readouts.get() == before + 3



def test_feedback_plan_acts_on_the_final_readout_not_a_progressive_one(ioc):
    """Progressive readouts (step_readout_every = 2, as deploy/configs/xas_beamline.toml) raise READOUTS
    during the scan; the plan must still wait for the readout of the whole scan.  The service's stop
    document arrives 0.5 s after the scan ends, as over a slow 0MQ hop."""

    from bluesky import RunEngine

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.epics import valence_feedback_plan
    from mnedge_live.sim import make_xas

    readout = connected_readout(ioc)
    cfg = step_config(readout_every=2)
    rows: list[dict] = []
    cb = MnEdgeCallback(real_engine(), cfg, lambda n, d: None,
                        on_readout=lambda row, totals: (rows.append(row), ioc.update(row, totals)))
    deliver, late = late_stops(cb, 0.5)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(deliver)
    dets, mono = make_xas((0.0, 0.2, 0.8))
    result = RE(valence_feedback_plan([dets], mono, 630, 665, 36, readout, threshold=5.0, max_scans=1))
    late[-1].join()
    progressive = [r for r in rows if r and not r["final"]]
    (final,) = [r for r in rows if r and r["final"]]
    assert progressive and progressive[-1]["source_seq_num"] < final["source_seq_num"] == 36
    assert progressive[-1]["valence"] != final["valence"]  # else this test could not tell them apart
    (acted_on,) = result.plan_result
    if math.isnan(final["valence"]):
        assert math.isnan(acted_on)
    else:
        assert acted_on == pytest.approx(final["valence"], abs=1e-9)


def test_feedback_plan_reports_nan_for_a_scan_whose_final_readout_never_comes(ioc):
    """VALENCE still holds the last scan's readout: a scan whose own final readout does not arrive
    within wait_s (the service down, the 0MQ hop lost) is unknown, not that stale value."""
    from bluesky import RunEngine

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.epics import valence_feedback_plan
    from mnedge_live.sim import make_xas

    readout = connected_readout(ioc)
    cfg = step_config()
    dets, mono = make_xas((0.0, 0.2, 0.8))
    RE = RunEngine({}, call_returns_result=True)
    cb = MnEdgeCallback(real_engine(), cfg, lambda n, d: None, on_readout=ioc.update)
    token = RE.subscribe(cb)
    (first,) = RE(valence_feedback_plan([dets], mono, 630, 665, 36, readout, threshold=5.0, max_scans=1)).plan_result
    assert math.isfinite(first) and readout.valence.get() == pytest.approx(first)
    RE.unsubscribe(token)                       # the service stops listening: no readout of the next scan
    (second,) = RE(valence_feedback_plan([dets], mono, 630, 665, 36, readout, threshold=5.0, max_scans=1,
                                         wait_s=0.5)).plan_result
    assert math.isnan(second)


def test_feedback_plan_does_not_take_a_late_readout_of_an_earlier_scan_for_its_own(ioc):
    """Stop documents 0.9 s late (a slow 0MQ hop), the plan waiting 0.6 s: the first scan times out, and
    its final readout arrives while the second scan runs or waits. That readout shows the first scan's
    uid in FINAL_UID; a plan watching a counter took it for the second scan's valence."""
    import time

    from bluesky import RunEngine

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.epics import valence_feedback_plan
    from mnedge_live.sim import make_xas

    readout = connected_readout(ioc)
    cfg = step_config()
    finals: list[tuple[float, str]] = []     # (arrival time, source uid) of each final readout

    def hook(row, totals):
        ioc.update(row, totals)
        if row.get("final"):
            finals.append((time.monotonic(), row["source_uid"]))

    cb = MnEdgeCallback(real_engine(), cfg, lambda n, d: None, on_readout=hook)
    starts: list[tuple[float, str]] = []
    deliver, late = late_stops(cb, 0.9, starts)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(deliver)
    dets, mono = make_xas((0.0, 0.2, 0.8))
    result = RE(valence_feedback_plan([dets], mono, 630, 665, 36, readout, threshold=5.0, max_scans=2, wait_s=0.6))
    ended = time.monotonic()
    for t in late:
        t.join()
    assert [u for _, u in finals] == [u for _, u in starts]
    arrived_first = finals[0][0]
    assert starts[1][0] < arrived_first < ended   # the first scan's readout came during the second one's plan
    assert all(math.isnan(v) for v in result.plan_result)


def test_feedback_plan_reads_the_first_scan_after_the_service_restarts(ioc):
    """A restarted service counts its readouts from 0 again, below what FINAL_READOUTS showed; the plan
    matches its scan's uid, so the first scan after the restart still gets its valence."""
    from bluesky import RunEngine

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.epics import valence_feedback_plan
    from mnedge_live.sim import make_xas

    readout = connected_readout(ioc)
    cfg = step_config()
    dets, mono = make_xas((0.0, 0.2, 0.8))
    RE = RunEngine({}, call_returns_result=True)
    for _ in range(2):   # two services in turn, the second starting its counts from 0
        cb = MnEdgeCallback(real_engine(), cfg, lambda n, d: None, on_readout=ioc.update)
        token = RE.subscribe(cb)
        (valence,) = RE(valence_feedback_plan([dets], mono, 630, 665, 36, readout, threshold=5.0,
                                              max_scans=1)).plan_result
        RE.unsubscribe(token)
        assert cb.totals["final_readouts"] == 1 and readout.final_readouts.get() == 1
        assert math.isfinite(valence) and readout.valence.get() == pytest.approx(valence)


def test_block_readouts_of_a_binned_map_have_their_own_pvs(ioc, tmp_path):
    import time

    import bluesky.plans as bp
    from bluesky import RunEngine

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.config import LiveConfig
    from mnedge_live.sim import SpectrumSource, make_eels

    readout = connected_readout(ioc)
    cfg = LiveConfig(mode="spectrum", spectrum_field="eels_spectrum", dispersion_field="eels_dispersion",
                     offset_field="eels_offset", maps_dir=str(tmp_path), map_bin=3, max_batch=6)
    rows = []
    cb = MnEdgeCallback(real_engine(), cfg, lambda n, d: None,
                        on_readout=lambda row, totals: (rows.append(row), ioc.update(row, totals)))
    det, sy, sx = make_eels((6, 6), SpectrumSource(seed=4))
    det.prefetch(psnr_db=4.0)
    RE = RunEngine({})
    RE.subscribe(cb)
    RE(bp.grid_scan([det], sy, 0, 1, 6, sx, 0, 1, 6))
    blocks = [r for r in rows if "block_row" in r]
    pixels = [r for r in rows if r and "block_row" not in r]
    assert len(blocks) >= 2 and pixels and cb.totals["binned_readouts"] == 4
    deadline = time.monotonic() + 5
    while readout.binned_readouts.get() != 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readout.binned_readouts.get() == 4 and readout.readouts.get() == 36
    last_block, last_pixel = blocks[-1], pixels[-1]
    assert readout.binned_status.get() == (last_block["status"] if not last_block["reason"]
                                           else f"{last_block['status']}: {last_block['reason']}")[:39]
    if last_block["status"] == "ok":
        assert readout.binned_valence.get() == pytest.approx(last_block["valence"], abs=1e-6)
    # The pixel PVs keep the last pixel's readout, never a block's.
    assert readout.status.get().startswith(last_pixel["status"])
    if last_pixel["status"] == "ok":
        assert readout.valence.get() == pytest.approx(last_pixel["valence"], abs=1e-6)
    else:
        assert math.isnan(readout.valence.get())


def test_a_soft_ioc_that_cannot_bind_says_so_at_start():
    """192.0.2.1 (TEST-NET-1, RFC 5737) is no host's address: nothing can be served there."""
    from mnedge_live.epics import SoftIOC

    ioc = SoftIOC(f"NOBIND{CA_PORT}:", ["192.0.2.1"])
    with pytest.raises(RuntimeError, match=r"cannot serve on 192\.0\.2\.1"):
        ioc.start()


def test_pyepics_mode_writes_every_readout_pv_of_a_sites_ioc():
    """``epics_mode = "pyepics"``: the writer puts a final readout and the counts into a running IOC whose
    PVs clients may write (the site's IOC: a caproto server in a process of its own), read back over
    Channel Access."""
    import time

    import epics
    from live_support import start_site_ioc

    from mnedge_live.epics import COUNT_PVS, FLOAT_PVS, MnEdgeReadout, PyepicsWriter

    prefix = f"SITE{CA_PORT}:"
    site = start_site_ioc(prefix)
    try:
        writer = PyepicsWriter(prefix, connect_timeout=10.0)
        assert all(pv.connected for pv in writer.pvs.values())
        uid = "5f0c3a6e-8d2b-4c1e-9a7f-2b8d6e4c1a90"
        row = {"valence": 3.25, "valence_std": 0.125, "frac_mn2": 0.1, "frac_mn3": 0.55, "frac_mn4": 0.35,
               "ood_score": 12.5, "energy_offset_eV": 2.5, "resolution_eV": 0.75, "status": "ok", "reason": "",
               "flags": "spikes_removed,low_psnr", "final": True, "source_uid": uid}
        totals = {key: i + 1 for i, key in enumerate(COUNT_PVS.values())}
        writer.update(row, totals)
        readout = MnEdgeReadout(prefix, name="site")
        readout.wait_for_connection(timeout=10)
        deadline = time.monotonic() + 10
        while readout.final_uid.get() != uid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert readout.final_uid.get() == uid and readout.status.get() == "ok"
        assert readout.valence.get() == pytest.approx(3.25) and readout.frac_mn3.get() == pytest.approx(0.55)
        assert readout.ood_score.get() == pytest.approx(12.5)
        assert readout.final_readouts.get() == totals["final_readouts"]
        assert readout.processed.get() == totals["processed"] and readout.missed.get() == totals["missed"]
        # every float and counter PV read back over Channel Access shows its own field (all values differ)
        # (spelled out here, not read from the module's own tables, so that a swapped entry there fails)
        shown = {"VALENCE": 3.25, "VALENCE_STD": 0.125, "FRAC_MN2": 0.1, "FRAC_MN3": 0.55, "FRAC_MN4": 0.35,
                 "OOD_SCORE": 12.5, "ENERGY_OFFSET": 2.5, "RESOLUTION": 0.75}
        assert set(shown) == set(FLOAT_PVS)
        for pv, value in shown.items():
            assert epics.caget(prefix + pv, timeout=5) == pytest.approx(value), pv
        assert set(COUNT_PVS) == {"PROCESSED", "REJECTED", "MISSED", "READOUTS", "FINAL_READOUTS", "BINNED_READOUTS"}
        for pv in COUNT_PVS:
            assert epics.caget(prefix + pv, timeout=5) == totals[pv.lower()], pv
        assert readout.flags.get() == "spikes_removed,low_psnr" and readout.reason.get() == ""
        # a refusal's whole reason, past the 39 characters of STATUS, in the site's char-array record
        reason = "the measured window does not reach 2 eV below and 8.5 eV above the L3 maximum at 648.3 eV"
        writer.update({**row, "valence": math.nan, "status": "rejected", "reason": reason, "flags": ""}, totals)
        assert wait_until(lambda: readout.reason.get() == reason, 10)
        assert readout.status.get() == f"rejected: {reason}"[:39].rstrip() and math.isnan(readout.valence.get())
        assert readout.flags.get() == ""
        # the next readout is ok again: the reason is cleared, not left standing beside status ok
        writer.update({**row, "flags": "clipped"}, totals)
        assert wait_until(lambda: readout.flags.get() == "clipped", 10)
        assert readout.reason.get() == "" and readout.status.get() == "ok"
        assert readout.valence.get() == pytest.approx(3.25)
        writer.stop()
    finally:
        site.terminate()
        site.wait(10)


def test_the_soft_ioc_shows_calibration_flags_and_the_whole_reason_and_marks_refusals_invalid(ioc):
    """An ok readout: its energy offset and resolution (eV) and flags, NO_ALARM. A refused one: every number
    PV NaN with severity INVALID / UDF, the whole reason in ``REASON`` (``STATUS`` holds 39 characters of
    it), a reason longer than the PV cut on a character boundary. Read over Channel Access."""
    import epics
    from caproto import AlarmSeverity, AlarmStatus

    from mnedge_live.epics import LONG_STRING

    prefix = ioc.prefix
    readout = connected_readout(ioc)
    ok = {"valence": 3.4, "valence_std": 0.11, "frac_mn2": 0.05, "frac_mn3": 0.5, "frac_mn4": 0.45, "ood_score": 20.5,
          "energy_offset_eV": -1.75, "resolution_eV": 0.85, "status": "ok", "reason": "", "flags": "low_psnr,uncertain"}
    ioc.update(ok, {"readouts": 101, "processed": 2**31 + 7})
    assert wait_until(lambda: readout.readouts.get() == 101, 10)
    assert readout.processed.get() == 2**31 + 7   # past a 32-bit integer: exact, not wrapped negative
    assert readout.energy_offset.get() == pytest.approx(-1.75) and readout.resolution.get() == pytest.approx(0.85)
    assert readout.flags.get() == "low_psnr,uncertain" and readout.reason.get() == ""
    for name in ("VALENCE", "ENERGY_OFFSET", "RESOLUTION", "OOD_SCORE"):
        pv = epics.PV(prefix + name, form="ctrl")
        assert pv.wait_for_connection(5) and math.isfinite(pv.get(timeout=5)), name
        assert pv.severity == AlarmSeverity.NO_ALARM, name
    assert epics.PV(prefix + "ENERGY_OFFSET", form="ctrl").get_ctrlvars(timeout=5)["units"] == "eV"
    ctrl = epics.PV(prefix + "VALENCE", form="ctrl").get_ctrlvars(timeout=5)
    assert (ctrl["lower_disp_limit"], ctrl["upper_disp_limit"]) == (2.0, 4.0)   # where displays scale

    reason = ("no L3 line at 641.2 eV: the spectrum falls by 3 % of the feature's height within 2 eV above it "
              "(a line falls by at least 10 %): a rising slope or a step, not a Mn L3 line")
    refused = {**{k: math.nan for k in ok if k not in ("status", "reason", "flags")}, "ood_score": 55.0,
               "status": "rejected", "reason": reason, "flags": ""}
    ioc.update(refused, {"readouts": 102})
    assert wait_until(lambda: readout.readouts.get() == 102, 10)
    assert readout.reason.get() == reason and len(reason) > 100 and readout.flags.get() == ""
    assert readout.status.get() == f"rejected: {reason}"[:39]
    for name in ("VALENCE", "VALENCE_STD", "FRAC_MN2", "FRAC_MN3", "FRAC_MN4", "ENERGY_OFFSET", "RESOLUTION"):
        pv = epics.PV(prefix + name, form="time")
        assert pv.wait_for_connection(5) and math.isnan(pv.get(timeout=5)), name
        assert (pv.severity, pv.status) == (AlarmSeverity.INVALID_ALARM, AlarmStatus.UDF), name
    score = epics.PV(prefix + "OOD_SCORE", form="time")   # refused for its score: the score itself is a number
    assert score.wait_for_connection(5) and score.get(timeout=5) == pytest.approx(55.0)
    assert score.severity == AlarmSeverity.NO_ALARM

    # ASCII, anything else as "?" (a field name from the network, say), cut to the PV's length;
    # the counters after it are still written
    long = "field 'é→θ' " + "x" * (2 * LONG_STRING)
    ioc.update({**refused, "reason": long}, {"readouts": 103})
    assert wait_until(lambda: readout.readouts.get() == 103, 10)
    shown = readout.reason.get()
    assert shown == ("field '???' " + "x" * LONG_STRING)[:LONG_STRING - 1]
    assert readout.status.get() == "rejected: field '???' " + "x" * 17   # 39 characters


def test_a_soft_ioc_before_its_first_readout_shows_undefined_numbers():
    """Started, nothing read out yet: every number PV NaN, INVALID / UDF (as an EPICS record that has not
    run), the status ``idle``. The service's SoftIOC in a process of its own, read over Channel Access."""
    import epics
    from caproto import AlarmSeverity, AlarmStatus
    from live_support import start_site_ioc

    from mnedge_live.epics import BINNED_FLOAT_PVS, FLOAT_PVS

    prefix = f"FRESH{CA_PORT}:"
    proc = start_site_ioc(prefix, "soft_ioc")
    try:
        for name in (*FLOAT_PVS, *BINNED_FLOAT_PVS):
            pv = epics.PV(prefix + name, form="time")
            assert pv.wait_for_connection(10), name
            assert math.isnan(pv.get(timeout=5)), name
            assert (pv.severity, pv.status) == (AlarmSeverity.INVALID_ALARM, AlarmStatus.UDF), name
        assert epics.caget(prefix + "STATUS", timeout=5) == "idle"
    finally:
        proc.terminate()
        proc.wait(10)


def test_beacons_nobody_receives_are_reported_once_not_as_a_traceback_every_period(tmp_path):
    """No CA repeater on the beacon port (a host with no CA client, a container): caproto's connected beacon
    socket fails every other period with "connection refused", logged as an error with a traceback for as
    long as the service runs. One warning says so, later failures are counted. The IOC runs in a process of
    its own, its beacons every 0.2 s to a loopback port where nothing listens."""
    import json
    import subprocess
    import sys

    from live_support import free_port

    beacon_port, ca_port = free_port(), free_port()
    script = tmp_path / "ioc.py"
    script.write_text(
        "import json, logging, time\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s %(message)s')\n"
        "from mnedge_live.epics import BEACON_FILTER, SoftIOC\n"
        f"ioc = SoftIOC('BEACON{ca_port}:').start()\n"
        "time.sleep(2.5)\n"
        "ioc.stop()\n"
        "print(json.dumps({str(k): v for k, v in BEACON_FILTER.failures.items()}))\n")
    env = {**os.environ, "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
           "EPICS_CAS_BEACON_PORT": str(beacon_port), "EPICS_CAS_BEACON_PERIOD": "0.2",
           "EPICS_CAS_SERVER_PORT": str(ca_port), "EPICS_CA_SERVER_PORT": str(ca_port)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Failed to send beacon" not in done.stderr, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "beacons to" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING"), done.stderr
    assert f"('127.0.0.1', {beacon_port})" in warnings[0] and "not delivered" in warnings[0]
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert failures[str(("127.0.0.1", beacon_port))] >= 2, failures
