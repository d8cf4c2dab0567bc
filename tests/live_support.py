"""Helpers of the live-plugin tests: free ports, a real 0MQ proxy process, a collecting subscriber."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: One folder for everything a test session writes outside pytest's ``tmp_path`` (the model store,
#: the services' working folders, the tiny model), removed when the session's process exits.
SCRATCH = Path(tempfile.mkdtemp(prefix="mnedge-tests-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def scratch_dir(prefix: str) -> Path:
    """A new folder inside :data:`SCRATCH` (removed with it at exit)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_loopback_channel_access() -> int:
    """Point Channel Access at loopback on a free port of our own; returns the port.

    pyepics builds its CA context from the environment once per process, the
    first time anything (ophyd included) uses it, so this must run before any
    test module imports ophyd: ``conftest.py`` calls it at import.
    """
    port, site = free_port(), free_port()
    # the second address is where a test starts "a site's IOC" in a process of its own (SITE_CA_PORT):
    # two servers on one UDP port each see only some of the searches sent to it
    os.environ.update({"EPICS_CA_ADDR_LIST": f"127.0.0.1 127.0.0.1:{site}", "EPICS_CA_AUTO_ADDR_LIST": "NO",
                       "EPICS_CA_SERVER_PORT": str(port), "EPICS_CAS_SERVER_PORT": str(port),
                       "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", SITE_CA_PORT: str(site)})
    return port


#: Environment variable holding the Channel Access port of a site IOC's process (:func:`start_site_ioc`).
SITE_CA_PORT = "MNEDGE_TEST_SITE_CA_PORT"


#: Programs of :func:`start_site_ioc`, each run as ``python -c CODE PREFIX``.
SITE_IOCS = {
    # a caproto IOC whose readout PVs clients may write (the records of a site's own IOC)
    "caproto": ("import sys; from caproto.asyncio.server import run; from mnedge_live.epics import make_pvgroup; "
                "run(make_pvgroup(sys.argv[1], read_only=False).pvdb, interfaces=['127.0.0.1'])"),
    # as "caproto", as made for the PV list before 2026-12-07: without the newer PVs, counters 32-bit integers
    "older": ("import sys; from caproto import ChannelInteger; from caproto.asyncio.server import run; "
              "from mnedge_live.epics import COUNT_PVS, make_pvgroup; p = sys.argv[1]; "
              "db = {k: v for k, v in make_pvgroup(p, read_only=False).pvdb.items() "
              "if k[len(p):] not in ('ENERGY_OFFSET', 'RESOLUTION', 'REASON', 'FLAGS')}; "
              "db.update({p + n: ChannelInteger(value=0) for n in COUNT_PVS}); run(db, interfaces=['127.0.0.1'])"),
    # as "caproto", but VALENCE an integer record (a site record that would round the valence)
    "long_valence": ("import sys; from caproto import ChannelInteger; from caproto.asyncio.server import run; "
                     "from mnedge_live.epics import make_pvgroup; db = dict(make_pvgroup(sys.argv[1], read_only=False).pvdb); "
                     "db[sys.argv[1] + 'VALENCE'] = ChannelInteger(value=0); run(db, interfaces=['127.0.0.1'])"),
    # as "caproto", but REASON an EPICS string of 40 bytes (a site record made for a short text)
    "string_reason": ("import sys; from caproto import ChannelString; from caproto.asyncio.server import run; "
                      "from mnedge_live.epics import make_pvgroup; db = dict(make_pvgroup(sys.argv[1], read_only=False).pvdb); "
                      "db[sys.argv[1] + 'REASON'] = ChannelString(value=''); run(db, interfaces=['127.0.0.1'])"),
    # the service's own soft IOC, as it stands before its first readout
    "soft_ioc": "import sys, time; from mnedge_live.epics import SoftIOC; SoftIOC(sys.argv[1]).start(); time.sleep(3600)",
    # a real EPICS IOC (EPICS base from epicscorelibs, run by pythonSoftIOC) with deploy/epics/mnedge_readout.db
    "epics_db": ("import sys, time; from softioc import asyncio_dispatcher, softioc; "
                 f"softioc.dbLoadDatabase({str(ROOT / 'deploy' / 'epics' / 'mnedge_readout.db')!r}, "
                 "substitutions='P=' + sys.argv[1]); "
                 "softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher(), enable_pva=False); time.sleep(3600)"),
}


def start_site_ioc(prefix: str, kind: str = "caproto") -> subprocess.Popen:
    """An IOC serving the readout PVs under ``prefix`` in its own process on loopback, at the port clients of
    this session also search (:func:`use_loopback_channel_access`): one of :data:`SITE_IOCS` (``"caproto"``:
    the existing IOC that ``epics_mode = "pyepics"`` writes to)."""
    port = os.environ[SITE_CA_PORT]
    # Channel Access on loopback only (the EPICS IOC starts no PV Access server: enable_pva=False)
    env = {**os.environ, "EPICS_CAS_SERVER_PORT": port, "EPICS_CA_SERVER_PORT": port}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-c", SITE_IOCS[kind], prefix], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_ports(proc, (int(port),))
    return proc


def start_proxy(ports: tuple[int, int] | None = None) -> tuple[subprocess.Popen, int, int]:
    """Start ``bluesky-0MQ-proxy --in-address IN --out-address OUT`` on ``ports`` (IN, OUT; default: two
    free ones, e.g. another proxy's to restart it); returns (process, in_port, out_port)."""
    pin, pout = ports or (free_port(), free_port())
    exe = shutil.which("bluesky-0MQ-proxy", path=str(Path(sys.executable).parent)) or "bluesky-0MQ-proxy"
    proc = subprocess.Popen([exe, "--in-address", str(pin), "--out-address", str(pout)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_ports(proc, (pin, pout))
    return proc, pin, pout


def wait_for_ports(proc: subprocess.Popen, ports: tuple[int, ...], timeout: float = 30.0) -> None:
    """Return once every loopback TCP port accepts a connection; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before ports {pending} were bound")
        try:
            socket.create_connection(("127.0.0.1", pending[0]), timeout=0.2).close()
            pending.pop(0)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ports {pending} not bound after {timeout} s") from None
            time.sleep(0.02)


def start_service(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start ``mnedge live ARGS`` as a subprocess; returns once it says it is ready.

    It runs in a fresh temporary folder, so what it writes to its working
    directory (the default ``mnedge_maps/``) never lands in the source tree.
    """
    cmd = [sys.executable, "-m", "mnedge_live.cli", "live", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, cwd=scratch_dir("live-"))
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "mnedge live: ready" in line:
            threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
            proc.log = lines
            time.sleep(0.3)
            return proc
    proc.kill()
    raise RuntimeError("service did not start:\n" + "".join(lines))


def stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM a process and wait; kill it if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_for_subscription(dispatcher, thread: threading.Thread, settle_s: float) -> None:
    """Wait until a bluesky ``RemoteDispatcher`` started on ``thread`` has its SUB socket, then ``settle_s``.

    bluesky makes and connects the socket in ``start()``, on that thread; the
    subscription then still has to reach the proxy, and 0MQ drops what a PUB
    sends before it has a subscriber.
    """
    deadline = time.monotonic() + 10
    while dispatcher._socket is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(settle_s)


class Collector:
    """Subscribes to a proxy in a thread and keeps every (name, doc) it receives."""

    def __init__(self, port: int, loads, **kwargs):
        from bluesky.callbacks.zmq import RemoteDispatcher

        self.docs: list[tuple[str, dict]] = []
        self.dispatcher = RemoteDispatcher(f"127.0.0.1:{port}", deserializer=loads, **kwargs)
        self.dispatcher.subscribe(lambda name, doc: self.docs.append((name, doc)))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for_subscription(self.dispatcher, self.thread, 0.3)

    def _run(self) -> None:
        try:
            self.dispatcher.start()
        except BaseException:  # cancelled at close
            pass

    def wait_for(self, predicate, timeout: float = 30) -> bool:
        """Wait until ``predicate(docs)`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.docs):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        loop = self.dispatcher.loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(lambda: self.dispatcher._task and self.dispatcher._task.cancel())
        self.thread.join(5)


def derived_stops(docs) -> list[dict]:
    """Stop documents of derived runs."""
    starts = {d["uid"] for n, d in docs if n == "start" and d.get("mnedge_derived")}
    return [d for n, d in docs if n == "stop" and d["run_start"] in starts]


def derived_rows(docs, run_uid: str | None = None) -> list[dict]:
    """Every derived row (events and unpacked event pages), optionally of one derived run."""
    descs = {d["uid"]: d["run_start"] for n, d in docs if n == "descriptor" and d.get("name") == "mnedge"}
    rows = []
    for n, d in docs:
        if n not in ("event", "event_page") or d["descriptor"] not in descs:
            continue
        if run_uid is not None and descs[d["descriptor"]] != run_uid:
            continue
        if n == "event":
            rows.append(dict(d["data"]))
        else:
            keys = list(d["data"])
            for i in range(len(d["seq_num"])):
                rows.append({k: d["data"][k][i] for k in keys})
    return rows


_ENGINE = {}


def real_engine(tmp_factory=None):
    """The real engine: the embedded model when shipped, else a tiny model trained with the real trainer."""
    if "e" in _ENGINE:
        return _ENGINE["e"]
    from mnedge_live.artifact import default_artifact_path
    from mnedge_live.engine import load_engine

    # Only a checkout without the shipped model falls back to a tiny one (whose readouts the accuracy
    # checks leave alone); a shipped model that fails to load is an error, never a quiet fallback.
    shipped = default_artifact_path()
    if (shipped / "model_card.json").is_file():
        eng = load_engine(shipped, backend="onnxruntime")
    else:
        art = os.environ.get("MNEDGE_TEST_ARTIFACT") or str(_tiny_artifact())
        eng = load_engine(art, backend="onnxruntime")
    _ENGINE["e"] = eng
    return eng


def model_args() -> list[str]:
    """``--model`` for the service subprocess when there is no embedded model."""
    eng = real_engine()
    path = getattr(getattr(eng, "artifact", None), "path", None)
    from mnedge_live.artifact import default_artifact_path

    if path is None or Path(path).resolve() == Path(default_artifact_path()).resolve():
        return []
    return ["--model", str(path)]


def _tiny_artifact() -> Path:
    from offline_training.export import export_artifact
    from offline_training.train import train
    from offline_training.train_config import TrainConfig

    root = scratch_dir("tiny-")
    cfg = TrainConfig.from_toml(ROOT / "offline_training" / "configs" / "tiny.toml")
    cfg.train.steps = 8
    cfg.train.calibration_spectra = 128
    final = train(cfg, root / "run", progress=False)
    return Path(export_artifact(final, root / "artifact", model_id="tiny-test", ood_spectra=0))
