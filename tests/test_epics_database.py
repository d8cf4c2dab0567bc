"""deploy/epics/mnedge_readout.db: the records a site's IOC needs for ``epics_mode = "pyepics"``, checked
against the service's PV tables and loaded into a real EPICS IOC that the service then writes to."""

from __future__ import annotations

import math
import os
import re

import pytest
from live_support import ROOT, start_site_ioc
from wire_support import wait_until

DATABASE = ROOT / "deploy" / "epics" / "mnedge_readout.db"
CA_PORT = int(os.environ["EPICS_CA_SERVER_PORT"])


def records() -> dict[str, tuple[str, dict[str, str]]]:
    """``{name without $(P): (record type, {field: value})}`` of the database file."""
    text = re.sub(r"#.*", "", DATABASE.read_text())
    out = {}
    for rtype, name, body in re.findall(r'record\((\w+),\s*"\$\(P\)(\w+)"\)\s*\{(.*?)\}', text, flags=re.S):
        out[name] = (rtype, dict(re.findall(r'field\((\w+),\s*"([^"]*)"\)', body)))
    return out


def test_the_template_has_a_record_of_the_right_kind_for_every_pv_the_service_writes():
    from mnedge_live.epics import (
        BINNED_FLOAT_PVS,
        COUNT_PVS,
        FINAL_UID_PV,
        FLOAT_PVS,
        LONG_STRING,
        LONG_STRING_PVS,
        STRING_PVS,
    )

    db = records()
    expected = {**{n: "ao" for n in (*FLOAT_PVS, *BINNED_FLOAT_PVS)}, **{n: "stringout" for n in (*STRING_PVS, FINAL_UID_PV)},
                **{n: "waveform" for n in LONG_STRING_PVS}, **{n: "ao" for n in COUNT_PVS}}
    assert {n: rtype for n, (rtype, _) in db.items()} == expected
    for name in (*FLOAT_PVS, *BINNED_FLOAT_PVS):
        fields = db[name][1]
        assert fields["UDFS"] == "INVALID" and fields["PREC"].isdigit(), name   # NaN: invalid, as the soft IOC
    for name in COUNT_PVS:   # doubles, shown without decimals, from 0
        assert (db[name][1]["PREC"], db[name][1]["VAL"]) == ("0", "0"), name
    assert db["ENERGY_OFFSET"][1]["EGU"] == db["RESOLUTION"][1]["EGU"] == "eV"
    for name, (lo, hi) in {"VALENCE": (2, 4), "BINNED_VALENCE": (2, 4), "FRAC_MN2": (0, 1), "FRAC_MN3": (0, 1),
                           "FRAC_MN4": (0, 1)}.items():   # display ranges, as the soft IOC's
        assert (float(db[name][1]["LOPR"]), float(db[name][1]["HOPR"])) == (lo, hi), name
    for name in LONG_STRING_PVS:
        assert db[name][1]["FTVL"] == "CHAR" and int(db[name][1]["NELM"]) == LONG_STRING, name
    for name in STRING_PVS:
        assert db[name][1]["VAL"] == "idle", name
    assert all(fields["PINI"] == "YES" for _, fields in db.values())   # defined from the start
    assert all(db[n][1]["VAL"] == "NaN" for n in (*FLOAT_PVS, *BINNED_FLOAT_PVS))


def test_the_service_writes_its_readouts_into_a_real_epics_ioc_loaded_with_the_template():
    """EPICS base 7 (epicscorelibs, run by pythonSoftIOC) serving the template: it starts as the service's
    soft IOC does (numbers NaN, UDF / INVALID; the rest without an alarm), the pyepics writer fills every
    record, a rejected readout's NaN marks the numbers UDF / INVALID there too, the whole reason and the
    flags arrive and clear with the next readout, and the ophyd device reads it all."""
    import epics
    from caproto import AlarmSeverity, AlarmStatus

    from mnedge_live.epics import COUNT_PVS, MnEdgeReadout, PyepicsWriter

    prefix = f"EPICSDB{CA_PORT}:"
    ioc = start_site_ioc(prefix, "epics_db")
    try:
        writer = PyepicsWriter(prefix, connect_timeout=10.0)
        for name in ("VALENCE", "ENERGY_OFFSET", "BINNED_VALENCE_STD"):   # before the first readout
            pv = epics.PV(prefix + name, form="time")
            assert pv.wait_for_connection(5) and math.isnan(pv.get(timeout=5)), name
            assert (pv.severity, pv.status) == (AlarmSeverity.INVALID_ALARM, AlarmStatus.UDF), name
        for name, value in (("STATUS", "idle"), ("REASON", ""), ("FINAL_UID", ""), ("READOUTS", 0)):
            pv = epics.PV(prefix + name, form="time")
            assert pv.wait_for_connection(5) and pv.get(timeout=5, as_string=True) == str(value), name
            assert pv.severity == AlarmSeverity.NO_ALARM, name
        assert all(pv.connected for pv in writer.pvs.values()), [n for n, pv in writer.pvs.items() if not pv.connected]
        readout = MnEdgeReadout(prefix, name="epicsdb")
        readout.wait_for_connection(timeout=10)
        uid = "0b6f8f0e-2a1d-4d7c-8d9e-4f1a2b3c4d5e"
        ok = {"valence": 3.75, "valence_std": 0.0625, "frac_mn2": 0.0, "frac_mn3": 0.25, "frac_mn4": 0.75,
              "ood_score": 30.5, "energy_offset_eV": -4.25, "resolution_eV": 1.25, "status": "ok", "reason": "",
              "flags": "uncertain", "final": True, "source_uid": uid}
        # past 2**31: a 32-bit integer record would wrap these negative
        totals = {key: 2**31 + 10 * (i + 1) for i, key in enumerate(COUNT_PVS.values())}
        writer.update(ok, totals)
        assert wait_until(lambda: readout.final_uid.get() == uid, 10)
        shown = {"VALENCE": 3.75, "VALENCE_STD": 0.0625, "FRAC_MN2": 0.0, "FRAC_MN3": 0.25, "FRAC_MN4": 0.75,
                 "OOD_SCORE": 30.5, "ENERGY_OFFSET": -4.25, "RESOLUTION": 1.25}
        for name, value in shown.items():
            pv = epics.PV(prefix + name, form="time")
            assert pv.wait_for_connection(5) and pv.get(timeout=5) == pytest.approx(value), name
            assert pv.severity == AlarmSeverity.NO_ALARM, name
        for name in COUNT_PVS:
            assert epics.caget(prefix + name, timeout=5) == totals[name.lower()], name
        assert readout.status.get() == "ok" and readout.flags.get() == "uncertain" and readout.reason.get() == ""
        assert readout.energy_offset.get() == pytest.approx(-4.25)

        reason = ("unlike the Mn L2,3 spectra the model was trained on: out-of-distribution score 48.2 above 36.6 "
                  "(the 99.9th percentile of synthetic training spectra of PSNR from 40 dB)")
        refused = {**{k: math.nan for k in ("valence", "valence_std", "frac_mn2", "frac_mn3", "frac_mn4",
                                            "energy_offset_eV", "resolution_eV")},
                   "ood_score": 48.2, "status": "rejected", "reason": reason, "flags": ""}
        writer.update(refused, totals)
        assert wait_until(lambda: readout.reason.get() == reason, 10)
        assert readout.flags.get() == ""
        assert readout.status.get() == f"rejected: {reason}"[:39].rstrip()
        for name in ("VALENCE", "FRAC_MN3", "ENERGY_OFFSET", "RESOLUTION"):
            pv = epics.PV(prefix + name, form="time")
            assert pv.wait_for_connection(5) and math.isnan(pv.get(timeout=5)), name
            assert (pv.severity, pv.status) == (AlarmSeverity.INVALID_ALARM, AlarmStatus.UDF), name
        assert epics.caget(prefix + "OOD_SCORE", timeout=5) == pytest.approx(48.2)
        # the next readout is ok: the reason cleared (written as one blank), the numbers valid again
        writer.update({**ok, "flags": "clipped"}, totals)
        assert wait_until(lambda: readout.flags.get() == "clipped", 10)
        assert readout.reason.get() == "" and readout.status.get() == "ok"
        valence = epics.PV(prefix + "VALENCE", form="time")
        assert valence.wait_for_connection(5) and valence.get(timeout=5) == pytest.approx(3.75)
        assert valence.severity == AlarmSeverity.NO_ALARM
        writer.stop()
    finally:
        ioc.terminate()
        ioc.wait(10)
