"""``mnedge demo``: proxy + live service + RunEngine with simulated instruments, end to end.

Starts ``bluesky-0MQ-proxy`` and two ``mnedge live`` services (spectrum image and
step scan, the latter serving its readout as EPICS PVs on loopback) as subprocesses,
runs an EELS spectrum image and an XAS step scan (its monochromator off by
:data:`MONO_OFFSET_EV`),
prints the live readouts, compares them with the simulated truth, writes maps
and plots, and stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mnedge demo``."""
    p = subparsers.add_parser("demo", help="run the live readout on simulated instruments end to end")
    p.add_argument("--out-dir", default="mnedge_demo", help="where maps and plots are written")
    p.add_argument("--model", dest="model_path", help="model artifact directory (default: the model in use in the store, MNEDGE_HOME, else the embedded one)")
    p.add_argument("--shape", default="6x8", help="spectrum-image size ROWSxCOLS")
    p.set_defaults(run=run)
    return p


#: Calibration error of the simulated monochromator (readback minus true energy, eV): the step-scan
#: readout's energy offset reads it back.
MONO_OFFSET_EV = 2.5
#: PV prefix of the step-scan service's soft IOC (served on loopback, on a port of the demo's own).
EPICS_PREFIX = "DEMO:MNEDGE:"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_service(args: list[str], env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mnedge_live.cli", "live", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "mnedge live: ready" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
        print("  service:", line.rstrip())
    proc.kill()
    raise RuntimeError("the live service did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when both runs were read out and every process stopped."""
    import bluesky.plans as bp
    import numpy as np
    from bluesky import RunEngine
    from bluesky.callbacks.zmq import RemoteDispatcher

    from mnedge_live.publishing import make_publisher
    from mnedge_live.serializers import msgpack_dumps, msgpack_loads
    from mnedge_live.sim import SpectrumSource, make_eels, make_xas, valence_of

    ny, nx = (int(v) for v in args.shape.lower().split("x"))
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    pin, pout = _port(), _port()
    exe = shutil.which("bluesky-0MQ-proxy", path=str(Path(sys.executable).parent)) or "bluesky-0MQ-proxy"
    procs: list[subprocess.Popen] = []
    docs: list[tuple[str, dict]] = []
    disp = None
    publisher = None
    beacons: socket.socket | None = None
    try:
        procs.append(subprocess.Popen([exe, "--in-address", str(pin), "--out-address", str(pout)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        print(f"proxy: publishers -> 127.0.0.1:{pin}, subscribers <- 127.0.0.1:{pout}")
        common = ["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--plot", str(out)]
        if args.model_path:
            common += ["--model", args.model_path]
        cfg = out / "eels.toml"
        cfg.write_text('dispersion_field = "eels_dispersion"\noffset_field = "eels_offset"\n'
                       f'detectors = ["eels"]\nmaps_dir = "{out}"\n')
        xas_cfg = out / "xas.toml"
        xas_cfg.write_text('detectors = ["xas"]\nstep_readout_every = 5\n')
        print("starting the live services (spectrum image, step scan) ...")
        procs.append(_start_service([*common, "--config", str(cfg), "--mode", "spectrum",
                                     "--spectrum-field", "eels_spectrum"]))
        ca_port = _port()   # Channel Access of the demo's soft IOC: loopback, a port of its own
        # and its beacons to a loopback port the demo listens on (as a host's CA repeater would), so that
        # no beacon is refused where no repeater runs
        beacons = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        beacons.bind(("127.0.0.1", 0))
        ca_env = {"EPICS_CAS_SERVER_PORT": str(ca_port), "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
                  "EPICS_CAS_BEACON_PORT": str(beacons.getsockname()[1]),
                  "EPICS_CA_SERVER_PORT": str(ca_port), "EPICS_CA_ADDR_LIST": f"127.0.0.1:{ca_port}",
                  "EPICS_CA_AUTO_ADDR_LIST": "NO"}
        procs.append(_start_service([*common, "--config", str(xas_cfg), "--mode", "step",
                                     "--signal-field", "xas_tey",
                                     "--norm-field", "xas_i0", "--epics-prefix", EPICS_PREFIX],
                                    env={**os.environ, **ca_env}))

        disp = RemoteDispatcher(f"127.0.0.1:{pout}", deserializer=msgpack_loads)
        derived_desc: dict[str, str] = {}

        def show(name: str, doc: dict) -> None:
            docs.append((name, doc))
            if name == "descriptor" and doc.get("name") == "mnedge":
                derived_desc[doc["uid"]] = doc["run_start"]
            if name in ("event", "event_page") and doc["descriptor"] in derived_desc:
                d = doc["data"]
                for i, seq in enumerate(np.atleast_1d(d["source_seq_num"])):
                    v, s = np.atleast_1d(d["valence"])[i], np.atleast_1d(d["valence_std"])[i]
                    st = np.atleast_1d(d["status"])[i]
                    where = (f"pixel ({np.atleast_1d(d['pixel_row'])[i]},{np.atleast_1d(d['pixel_col'])[i]})"
                             if "pixel_row" in d else f"point {seq}" + (" final" if d.get("final") and
                                                                        np.atleast_1d(d["final"])[i] else ""))
                    print(f"  live readout {where}: " + (f"valence {v:.2f} +- {s:.2f}" if st == "ok" else
                                                          f"rejected ({np.atleast_1d(d['reason'])[i]})"))

        disp.subscribe(show)
        threading.Thread(target=lambda: _quiet(disp.start), daemon=True).start()
        time.sleep(0.3)

        RE = RunEngine({})
        publisher = make_publisher(f"127.0.0.1:{pin}", serializer=msgpack_dumps)
        RE.subscribe(publisher)
        source = SpectrumSource()
        det, sy, sx = make_eels((ny, nx), source)
        det.prefetch()
        print(f"EELS spectrum image {ny} x {nx} ...")
        RE(bp.grid_scan([det], sy, 0, 1, ny, sx, 0, 1, nx, snake_axes=True))
        fractions = (0.2, 0.5, 0.3)
        dets, mono = make_xas(fractions, source, mono_offset_ev=MONO_OFFSET_EV)
        print(f"XAS step scan 630-665 eV (the simulated monochromator reads {MONO_OFFSET_EV:.2f} eV high) ...")
        RE(bp.scan([dets], mono, 630, 665, 71))
        stops = _wait_stops(docs, 2)
        starts = {d["uid"]: d for n, d in docs if n == "start" and d.get("mnedge_derived")}
        ok = len(stops) == 2
        for st in stops:
            kind = starts[st["run_start"]]["mnedge_kind"]
            print(f"derived run ({kind}): processed {st['processed']}, rejected {st['rejected']}, "
                  f"missed {st['missed']}" + (f", maps {st['maps_h5']}" if "maps_h5" in st else ""))
            if kind == "map" and "maps_h5" in st:
                import h5py

                with h5py.File(st["maps_h5"]) as f:
                    got = f["valence"][()]
                err = np.abs(got - det.truth())
                good = np.isfinite(err)
                print(f"  spectrum image vs truth: {good.sum()} pixels read, median |error| "
                      + (f"{np.median(err[good]):.2f}" if good.any() else "n/a"))
        finals = [r for r in _rows(docs, derived_desc) if r.get("final")]
        if finals:
            f = finals[-1]
            print(f"  step scan final valence {f['valence']:.2f} vs truth {valence_of(np.array(fractions)):.2f}; "
                  f"energy offset read {f['energy_offset_eV']:+.2f} eV vs the monochromator's {MONO_OFFSET_EV:+.2f} eV"
                  if f["status"] == "ok" else f"  step scan final readout rejected: {f['reason']}")
        print(f"  EPICS, the step-scan service's soft IOC: {_pv_summary(EPICS_PREFIX, ca_env)}")
        print(f"maps and plots in {out}")
        return 0 if ok else 1
    finally:
        if disp is not None and not disp.loop.is_closed():
            disp.loop.call_soon_threadsafe(lambda: disp._task and disp._task.cancel())
        if publisher is not None:
            publisher.close()
        for p in reversed(procs):
            _stop(p)
        if beacons is not None:
            beacons.close()


def _pv_summary(prefix: str, ca_env: dict[str, str]) -> str:
    """The final readout as a Channel Access client reads it from the service's soft IOC (``ca_env``: its
    address; set in this process only while reading)."""
    from caproto import AlarmSeverity
    from caproto.sync.client import read

    saved = {k: os.environ.get(k) for k in ca_env}
    os.environ.update(ca_env)
    try:
        parts = []
        for name, fmt in (("VALENCE", ".3f"), ("ENERGY_OFFSET", "+.2f"), ("STATUS", ""), ("FINAL_READOUTS", ".0f")):
            r = _read_pv(read, prefix + name)
            value = r.data[0].decode() if isinstance(r.data[0], bytes) else r.data[0]
            alarm = AlarmSeverity(r.metadata.severity).name if name in ("VALENCE", "ENERGY_OFFSET") else ""
            parts.append(f"{prefix}{name} {format(value, fmt)}" + (f" ({alarm})" if alarm else ""))
        return ", ".join(parts)
    except Exception as exc:   # a demo line, not the demo's outcome
        return f"not read ({type(exc).__name__}: {exc})"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _read_pv(read, pv: str, attempts: int = 3, timeout: float = 3.0):
    """One Channel Access read, searched again after a timeout: the IOC answers from a process busy reading
    spectra, and a search took longer than 2 s once in a CI run on the loaded 2-core machine (2026-12-07)."""
    from caproto import CaprotoTimeoutError

    for _ in range(attempts - 1):
        try:
            return read(pv, data_type="time", timeout=timeout, repeater=False)
        except CaprotoTimeoutError:
            continue
    return read(pv, data_type="time", timeout=timeout, repeater=False)


def _quiet(fn) -> None:
    try:
        fn()
    except BaseException:  # cancelled at shutdown
        pass


def _wait_stops(docs: list, n: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = {d["uid"] for name, d in docs if name == "start" and d.get("mnedge_derived")}
        stops = [d for name, d in docs if name == "stop" and d["run_start"] in starts]
        if len(stops) >= n:
            return stops
        time.sleep(0.1)
    return stops


def _rows(docs: list, descs: dict) -> list[dict]:
    rows = []
    for name, d in docs:
        if name == "event" and d["descriptor"] in descs:
            rows.append(d["data"])
        elif name == "event_page" and d["descriptor"] in descs:
            rows.extend({k: v[i] for k, v in d["data"].items()} for i in range(len(d["seq_num"])))
    return rows
