"""``mnedge demo`` (the README's main job) end to end, as a user runs it: its readouts against the
simulated truth, the monochromator's calibration error read back, and the EPICS PVs of the step scan."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from live_support import ROOT


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[int, str]:
    out = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, "-m", "mnedge_live.cli", "demo", "--shape", "3x4", "--out-dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def test_the_demo_reads_out_both_runs_against_the_truth(demo):
    rc, out = demo
    assert rc == 0, out
    assert "derived run (step): processed 71, rejected 0, missed 0" in out
    m = re.search(r"spectrum image vs truth: (\d+) pixels read, median \|error\| ([\d.]+)", out)
    assert m and int(m.group(1)) >= 11 and float(m.group(2)) < 0.3, out
    m = re.search(r"step scan final valence ([\d.]+) vs truth ([\d.]+)", out)
    assert m and abs(float(m.group(1)) - float(m.group(2))) < 0.2, out


def test_the_demo_reads_the_monochromators_calibration_error_and_serves_the_readout_as_pvs(demo):
    from mnedge_live.commands.demo import EPICS_PREFIX, MONO_OFFSET_EV

    rc, out = demo
    m = re.search(r"step scan final valence ([\d.]+) .*; energy offset read ([+-][\d.]+) eV vs the monochromator's "
                  r"([+-][\d.]+) eV", out)
    assert m and float(m.group(3)) == MONO_OFFSET_EV and abs(float(m.group(2)) - MONO_OFFSET_EV) < 0.5, out
    p = re.escape(EPICS_PREFIX)
    pvs = re.search(rf"EPICS, the step-scan service's soft IOC: {p}VALENCE ([\d.]+) \(NO_ALARM\), "
                    rf"{p}ENERGY_OFFSET ([+-][\d.]+) \(NO_ALARM\), {p}STATUS ok, {p}FINAL_READOUTS 1\n", out)
    assert pvs, out
    assert abs(float(pvs.group(1)) - float(m.group(1))) <= 0.005   # the PV shows the final readout
    assert pvs.group(2) == m.group(2)


def test_the_demo_prints_no_error_and_no_traceback(demo):
    """What a user sees first: no ERROR line and no traceback from any of its processes (caproto's beacon
    refusals where no CA repeater runs on the host printed one)."""
    rc, out = demo
    assert rc == 0, out
    assert not [line for line in out.splitlines() if " ERROR " in line or "Traceback" in line], out
    assert "beacon" not in out.lower(), out
