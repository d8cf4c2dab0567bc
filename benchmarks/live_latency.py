"""Live service latency and sustained spectrum-image throughput, through a real 0MQ proxy.

Starts ``bluesky-0MQ-proxy`` on free loopback ports and ``mnedge live``
(spectrum mode, msgpack) as a subprocess, then publishes Bluesky documents to
the proxy with bluesky's :class:`~bluesky.callbacks.zmq.Publisher` and reads
the service's derived documents back from the proxy with a plain zmq SUB
socket (only the service's ``mnedge`` prefix) and the project's msgpack
deserializer.

1. **Warm-up**: a run with a pool of simulated Mn L2,3 EELS spectra
   (:class:`mnedge_live.sim.SpectrumSource`, the forward model) is published
   until its derived stop document comes back (slow-joiner safe); only pool
   spectra whose derived row has status ``ok`` are used afterwards.
2. **Latency**: ``--events`` events, one spectrum each, published one by one at
   ``--rate`` events/s; the latency of an event is the time from just before
   it is handed to the Publisher to the arrival of the derived row with its
   ``source_seq_num``.  ``p50_ms`` / ``p99_ms`` are over the rows received
   with status ``ok``.
3. **Throughput**: a spectrum-image run (start document ``shape``) of
   ``--throughput-spectra`` spectra in event pages of ``--page-size``,
   published as fast as the service keeps up with credit-based pacing: never
   more than ``--window`` spectra ahead of the derived rows received, so no
   message is dropped at a PUB/SUB high-water mark.
   ``sustained_spectra_per_s`` is rows received over the time from the first
   page published to the last row received; ``missed`` is the derived stop
   document's ``missed`` count plus rows never received.

Every wait has a deadline; the proxy and the service are terminated in a
``finally``.  Both share the machine with this script, so the numbers include
CPU contention on small machines.

Usage: python benchmarks/live_latency.py [--json] [--rate 100] [--events 2000]
       [--throughput-spectra 50000] [--model PATH]
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import emit, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Field of the simulated spectrometer's spectrum in the source events.
SPECTRUM_FIELD = "eels_spectrum"
#: 0MQ prefix of the service's derived documents.
OUT_PREFIX = "mnedge"


class BenchError(RuntimeError):
    """The benchmark could not complete; the message says why."""


# ----------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    """A free TCP port on loopback.

    Returns
    -------
    int
        Port number the OS handed out (free at the time of the call).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoggedProcess:
    """A subprocess whose merged stdout/stderr is drained by a thread (the pipe never fills).

    Parameters
    ----------
    cmd : list of str
        Command line.
    keep : int
        Number of last output lines kept for error messages.
    """

    def __init__(self, cmd: list[str], keep: int = 200):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=ROOT, env=dict(os.environ))
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Wait until a line containing ``text`` is printed.

        Raises
        ------
        BenchError
            The process exited or ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.cmd[0]}: no {text!r} within {timeout:.0f} s:\n{self.tail()}")
            try:
                line = self._queue.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise BenchError(f"{' '.join(self.cmd[:4])} exited ({self.proc.wait(5)}) before {text!r}:\n"
                                 f"{self.tail()}")
            if text in line:
                return

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        """The last ``n`` output lines."""
        return "\n".join(list(self.lines)[-n:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._thread.join(5)
        return self.proc.returncode


def venv_exe(name: str) -> str:
    """An executable next to this interpreter (the virtualenv's), else from ``PATH``."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name) or name


def start_proxy(in_port: int, out_port: int) -> LoggedProcess:
    """Start ``bluesky-0MQ-proxy IN OUT`` and give it time to bind.

    Raises
    ------
    BenchError
        The proxy exited at once (e.g. a port was taken meanwhile).
    """
    proc = LoggedProcess([venv_exe("bluesky-0MQ-proxy"), str(in_port), str(out_port)])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"bluesky-0MQ-proxy exited ({proc.proc.returncode}):\n{proc.tail()}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", out_port)) == 0:
                return proc
        time.sleep(0.05)
    raise BenchError("bluesky-0MQ-proxy did not open its ports within 5 s")


def start_service(args: list[str], timeout: float) -> LoggedProcess:
    """Start ``mnedge live ARGS`` and wait for its ready line."""
    proc = LoggedProcess([sys.executable, "-m", "mnedge_live.cli", "live", *args])
    try:
        proc.wait_for_line("mnedge live: ready", timeout)
    except BaseException:
        proc.stop(5)
        raise
    return proc


# ----------------------------------------------------------------------------------------------- receiving


@dataclass
class _DerivedRun:
    """Derived documents received for one source run."""

    rows: dict[int, tuple[float, str, str]] = field(default_factory=dict)  # seq -> (t_recv, status, reason)
    duplicates: int = 0
    stop: dict | None = None
    last_t: float = 0.0


class DerivedReceiver:
    """Reads the service's derived documents from the proxy in a thread.

    A plain zmq SUB socket subscribed to the service's prefix only (the source
    spectra are not read back); each message is timed with
    :func:`time.perf_counter` as soon as ``recv`` returns, then decoded.

    Parameters
    ----------
    address : str
        ``host:port`` of the proxy's subscriber side.
    loads : callable
        Deserializer of the payloads (the project's msgpack one).
    """

    def __init__(self, address: str, loads: Callable[[bytes], dict]):
        import zmq

        self._zmq = zmq
        self.loads = loads
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # never drop on our side
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, OUT_PREFIX.encode() + b" ")
        self.sock.connect(f"tcp://{address}")
        self.cond = threading.Condition()
        self.runs: dict[str, _DerivedRun] = {}
        self._start_parent: dict[str, str] = {}
        self._desc_parent: dict[str, str] = {}
        self.bad_messages = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def run(self, parent_uid: str) -> _DerivedRun:
        """The (possibly empty) derived record of a source run; call with :attr:`cond` held."""
        return self.runs.setdefault(parent_uid, _DerivedRun())

    def _loop(self) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                while True:
                    try:
                        msg = self.sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t = time.perf_counter()
                    self._handle(msg, t)
        except Exception as exc:  # reported by the waits, never silent
            self.error = f"{type(exc).__name__}: {exc}"
            with self.cond:
                self.cond.notify_all()

    def _handle(self, msg: bytes, t: float) -> None:
        try:
            _, name, payload = msg.split(b" ", 2)
            doc = self.loads(payload)
            kind = name.decode()
        except Exception:
            self.bad_messages += 1
            return
        with self.cond:
            if kind == "start":
                parent = doc.get("parent_uid")
                if parent:
                    self._start_parent[doc["uid"]] = parent
                    self.run(parent)
            elif kind == "descriptor":
                parent = self._start_parent.get(doc.get("run_start", ""))
                if parent:
                    self._desc_parent[doc["uid"]] = parent
            elif kind in ("event", "event_page"):
                parent = self._desc_parent.get(doc.get("descriptor", ""))
                if parent is None:
                    return
                run = self.run(parent)
                data = doc["data"]
                if kind == "event":
                    seqs, status, reason = [data["source_seq_num"]], [data["status"]], [data["reason"]]
                else:
                    seqs, status, reason = data["source_seq_num"], data["status"], data["reason"]
                for s, st, r in zip(seqs, status, reason):
                    if int(s) in run.rows:
                        run.duplicates += 1
                    run.rows[int(s)] = (t, str(st), str(r))
                run.last_t = t
            elif kind == "stop":
                parent = self._start_parent.get(doc.get("run_start", ""))
                if parent:
                    self.run(parent).stop = doc
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
        """Wait until ``predicate()`` (evaluated with :attr:`cond` held) holds.

        Returns False after ``timeout`` seconds; raises :class:`BenchError` when
        the receiver failed or ``alive()`` turns False (the service died).
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                if self.error:
                    raise BenchError(f"receiver failed: {self.error}")
                if not alive():
                    raise BenchError("the service exited")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.25))
        return True

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self.ctx.term()


# ----------------------------------------------------------------------------------------------- publishing


class SourceRun:
    """Composes one source run (event-model) and publishes it through a Publisher.

    Parameters
    ----------
    publish : callable
        ``publish(name, doc)`` (a bluesky Publisher).
    energy : numpy.ndarray
        Channel axis of the spectra; sent as dispersion and offset in the descriptor configuration.
    plan_name : str
        Start-document plan name.
    shape : tuple of int, optional
        Spectrum-image shape (rows, columns); the service then reads the run as a map.
    """

    def __init__(self, publish: Callable[[str, dict], None], energy: np.ndarray, plan_name: str,
                 shape: tuple[int, int] | None = None):
        import event_model

        self.publish = publish
        md: dict[str, Any] = {"plan_name": plan_name, "detectors": ["eels"], "mnedge_benchmark": True}
        if shape is not None:
            md.update(shape=[int(shape[0]), int(shape[1])], snaking=[False, False])
        self.bundle = event_model.compose_run(metadata=md)
        self.uid: str = self.bundle.start_doc["uid"]
        n = int(energy.size)
        conf = {"eels_dispersion": float(energy[1] - energy[0]), "eels_offset": float(energy[0])}
        now = time.time()
        data_keys = {SPECTRUM_FIELD: {"source": "SIM:eels", "dtype": "array", "shape": [n], "dtype_numpy": "<f4"}}
        configuration = {"eels": {"data": conf, "timestamps": dict.fromkeys(conf, now),
                                  "data_keys": {k: {"source": "SIM:eels", "dtype": "number", "shape": []}
                                                for k in conf}}}
        self.desc = self.bundle.compose_descriptor(name="primary", data_keys=data_keys, configuration=configuration,
                                                   object_keys={"eels": [SPECTRUM_FIELD]})
        self.n_events = 0
        self.publish("start", self.bundle.start_doc)
        self.publish("descriptor", self.desc.descriptor_doc)

    def event(self, spectrum: np.ndarray) -> int:
        """Publish one event; returns its seq_num."""
        self.n_events += 1
        now = time.time()
        doc = self.desc.compose_event(data={SPECTRUM_FIELD: spectrum}, timestamps={SPECTRUM_FIELD: now},
                                      seq_num=self.n_events, time=now, validate=False)
        self.publish("event", doc)
        return self.n_events

    def page(self, spectra: np.ndarray) -> int:
        """Publish ``spectra`` (k, n) as one event page; returns the last seq_num."""
        k = len(spectra)
        seqs = list(range(self.n_events + 1, self.n_events + k + 1))
        self.n_events += k
        now = time.time()
        doc = self.desc.compose_event_page(data={SPECTRUM_FIELD: spectra}, timestamps={SPECTRUM_FIELD: [now] * k},
                                           seq_num=seqs, time=[now] * k, validate=False)
        self.publish("event_page", doc)
        return self.n_events

    def stop(self) -> None:
        """Publish the stop document with the number of events."""
        doc = dict(self.bundle.compose_stop(exit_status="success"))
        doc["num_events"] = {"primary": self.n_events}
        self.publish("stop", doc)


def spectrum_pool(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` simulated EELS spectra of random Mn2+/Mn3+/Mn4+ compositions.

    Returns
    -------
    energy : numpy.ndarray (m,)
        The shared channel axis (eV).
    spectra : numpy.ndarray (n, m) float32
    """
    from mnedge_live.sim import SpectrumSource

    rng = np.random.default_rng(seed)
    source = SpectrumSource(seed=seed)
    energy, spectra = source.draw(rng.dirichlet(np.ones(3), size=n), eels=True, psnr_db=35.0)
    return energy, spectra.astype(np.float32)


# ----------------------------------------------------------------------------------------------- phases


def warm_up(publisher: Callable[[str, dict], None], rx: DerivedReceiver, energy: np.ndarray, pool: np.ndarray,
            alive: Callable[[], bool], timeout: float) -> tuple[np.ndarray, dict[str, int]]:
    """Publish the pool as a run until its derived stop arrives.

    Returns
    -------
    ok : numpy.ndarray of int
        Indices of the pool spectra the service read out with status ``ok``.
    reasons : dict
        The three commonest rejection reasons (first 80 characters) and their counts.

    Raises
    ------
    BenchError
        No derived stop within ``timeout`` s, or no pool spectrum read out ok.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        run = SourceRun(publisher, energy, "mnedge_bench_warmup")
        for s in pool:
            run.event(s)
            time.sleep(0.002)
        run.stop()
        got = rx.wait(lambda uid=run.uid: rx.run(uid).stop is not None,
                      min(15.0, max(0.5, deadline - time.monotonic())), alive)
        if not got:
            continue  # slow joiner: the first documents may have gone before the sockets were connected
        with rx.cond:
            rows = dict(rx.run(run.uid).rows)
        ok = np.array(sorted(seq - 1 for seq, (_, st, _) in rows.items() if st == "ok"), int)
        reasons = collections.Counter(r[:80] for _, st, r in rows.values() if st != "ok")
        if ok.size == 0:
            raise BenchError(f"no pool spectrum was read out ok: {reasons.most_common(3)}")
        return ok, dict(reasons.most_common(3))
    raise BenchError(f"no derived stop for the warm-up run within {timeout:.0f} s ({attempt} attempt(s))")


def measure_latency(publisher: Callable[[str, dict], None], rx: DerivedReceiver, energy: np.ndarray,
                    pool: np.ndarray, events: int, rate: float, alive: Callable[[], bool]) -> dict:
    """Publish ``events`` single-spectrum events at ``rate``/s; latency percentiles of the ``ok`` rows."""
    run = SourceRun(publisher, energy, "mnedge_bench_latency")
    t_pub = np.full(events + 1, np.nan)
    period = 1.0 / rate
    t0 = time.perf_counter() + 0.05
    for k in range(events):
        target = t0 + k * period
        while True:
            now = time.perf_counter()
            if now >= target:
                break
            time.sleep(min(target - now, 0.002) if target - now > 0.0005 else 0)
        if k % 256 == 0 and not alive():
            raise BenchError("the service exited during the latency phase")
        t_pub[k + 1] = time.perf_counter()
        run.event(pool[k % len(pool)])
    t_last = time.perf_counter()
    run.stop()
    rx.wait(lambda: rx.run(run.uid).stop is not None, 30.0 + 2 * events / 1000.0, alive)
    with rx.cond:
        rec = rx.run(run.uid)
        rows = dict(rec.rows)
        stop = rec.stop
    seqs = np.array(sorted(rows), int)
    t_recv = np.array([rows[s][0] for s in seqs])
    ok = np.array([rows[s][1] == "ok" for s in seqs], bool)
    lat_ms = 1e3 * (t_recv - t_pub[seqs]) if seqs.size else np.array([])
    lat_ok = lat_ms[ok] if seqs.size else lat_ms
    not_ok = collections.Counter(rows[s][2] for s in seqs[~ok]) if seqs.size else collections.Counter()
    out: dict[str, Any] = {
        "p50_ms": round(float(np.percentile(lat_ok, 50)), 3) if lat_ok.size else None,
        "p99_ms": round(float(np.percentile(lat_ok, 99)), 3) if lat_ok.size else None,
        "latency_mean_ms": round(float(lat_ok.mean()), 3) if lat_ok.size else None,
        "latency_min_ms": round(float(lat_ok.min()), 3) if lat_ok.size else None,
        "latency_max_ms": round(float(lat_ok.max()), 3) if lat_ok.size else None,
        "latency_events_received": int(seqs.size),
        "latency_events_ok": int(ok.sum()),
        "latency_not_ok_reasons": dict(not_ok.most_common(3)),
        "latency_publish_rate_achieved": round((events - 1) / (t_last - t_pub[1]), 1) if events > 1 else None,
        "latency_derived_stop_missed": None if stop is None else stop.get("missed"),
    }
    return out


def measure_throughput(publisher: Callable[[str, dict], None], rx: DerivedReceiver, energy: np.ndarray,
                       pool: np.ndarray, n: int, page: int, window: int, stall_s: float,
                       alive: Callable[[], bool]) -> dict:
    """Publish an ``n``-spectrum image in pages with credit-based pacing; sustained rate and missed rows."""
    cols = min(n, 256)
    shape = (math.ceil(n / cols), cols)
    run = SourceRun(publisher, energy, "mnedge_bench_throughput", shape=shape)
    rec_uid = run.uid
    rng = np.random.default_rng(3)
    published = 0
    stalled = False
    t_first = time.perf_counter()
    while published < n:
        k = min(page, n - published)
        need = published + k - window  # rows that must be back before this page may go
        last_progress = time.monotonic()
        seen = -1
        while not rx.wait(lambda need=need: len(rx.run(rec_uid).rows) >= need, 1.0, alive):
            with rx.cond:
                got = len(rx.run(rec_uid).rows)
            if got != seen:
                seen, last_progress = got, time.monotonic()
            elif time.monotonic() - last_progress > stall_s:
                stalled = True
                break
        if stalled:
            break
        published = run.page(pool[rng.integers(0, len(pool), size=k)])
    run.stop()
    # all rows, then the derived stop (written after the maps), each with a deadline
    rx.wait(lambda: len(rx.run(rec_uid).rows) >= published, stall_s, alive)
    with rx.cond:
        rec = rx.run(rec_uid)
        received = len(rec.rows)
        t_end = rec.last_t
        statuses = collections.Counter(st for _, st, _ in rec.rows.values())
        dups = rec.duplicates
    rx.wait(lambda: rx.run(rec_uid).stop is not None, 60.0 + n / 5000.0, alive)
    with rx.cond:
        stop = rx.run(rec_uid).stop
    stop_missed = None if stop is None else int(stop.get("missed", 0))
    never = n - received
    wall = t_end - t_first if received else float("nan")
    return {
        "sustained_spectra_per_s": round(received / wall, 1) if received and wall > 0 else None,
        "missed": (stop_missed or 0) + never,
        "missed_in_derived_stop": stop_missed,
        "rows_never_received": never,
        "throughput_spectra_published": published,
        "throughput_rows_received": received,
        "throughput_rows_ok": statuses.get("ok", 0),
        "throughput_rows_rejected": received - statuses.get("ok", 0),
        "throughput_duplicate_rows": dups,
        "throughput_wall_s": round(wall, 3) if received else None,
        "throughput_stalled": stalled,
        "throughput_derived_stop_received": stop is not None,
        "throughput_image_shape": list(shape),
    }


# ----------------------------------------------------------------------------------------------- main


def main() -> int:
    """Run the benchmark and print the result; 0 on success, 1 when a phase failed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rate", type=float, default=100.0, help="latency phase: events per second")
    ap.add_argument("--events", type=int, default=2000, help="latency phase: number of events")
    ap.add_argument("--throughput-spectra", type=int, default=50000, help="throughput phase: spectra in the image")
    ap.add_argument("--model", help="model artifact (default: the model in use in the store, else the embedded one)")
    ap.add_argument("--backend", default="auto", help="engine backend of the service")
    ap.add_argument("--page-size", type=int, default=256, help="throughput phase: spectra per event page")
    ap.add_argument("--window", type=int, default=4096, help="throughput phase: most spectra in flight")
    ap.add_argument("--pool", type=int, default=256,
                    help="simulated spectra drawn; those the service reads out ok are published")
    ap.add_argument("--max-batch", type=int, default=256, help="service max_batch")
    ap.add_argument("--max-delay-ms", type=float, default=5.0, help="service max_delay_ms")
    ap.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the service to become ready")
    ap.add_argument("--stall-timeout", type=float, default=60.0, help="seconds without progress before giving up")
    args = ap.parse_args()
    if args.rate <= 0 or args.events < 1 or args.throughput_spectra < 1 or args.page_size < 1:
        ap.error("--rate, --events, --throughput-spectra and --page-size must be positive")
    if args.window < args.page_size:
        ap.error("--window must be at least --page-size")

    from bluesky.callbacks.zmq import Publisher

    from mnedge_live.artifact import load_artifact
    from mnedge_live.serializers import msgpack_dumps, msgpack_loads

    params = {"rate": args.rate, "events": args.events, "throughput_spectra": args.throughput_spectra,
              "model": args.model or f"the default: {load_artifact(None).model_id}", "backend": args.backend, "page_size": args.page_size,
              "window": args.window, "pool": args.pool, "max_batch": args.max_batch,
              "max_delay_ms": args.max_delay_ms, "serializer": "msgpack", "mode": "spectrum"}
    result: dict[str, Any] = {"p50_ms": None, "p99_ms": None, "sustained_spectra_per_s": None, "missed": None}
    energy, pool = spectrum_pool(args.pool, seed=11)
    tmp = Path(tempfile.mkdtemp(prefix="mnedge-live-bench-"))
    proxy = service = None
    rx = publisher = None
    code = 0
    try:
        pin, pout = free_port(), free_port()
        while pout == pin:
            pout = free_port()
        proxy = start_proxy(pin, pout)
        toml = tmp / "live.toml"
        toml.write_text(f'dispersion_field = "eels_dispersion"\noffset_field = "eels_offset"\n'
                        f"max_batch = {args.max_batch}\nmax_delay_ms = {args.max_delay_ms}\n"
                        f"maps_dir = {str(tmp / 'maps')!r}\n")
        svc_args = ["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--mode", "spectrum",
                    "--spectrum-field", SPECTRUM_FIELD, "--serializer", "msgpack", "--config", str(toml),
                    "--backend", args.backend]
        if args.model:
            svc_args += ["--model", str(Path(args.model).resolve())]
        t = time.perf_counter()
        service = start_service(svc_args, args.start_timeout)
        result["service_start_s"] = round(time.perf_counter() - t, 2)
        svc = service

        def alive() -> bool:
            return svc.alive()

        rx = DerivedReceiver(f"127.0.0.1:{pout}", msgpack_loads)
        publisher = Publisher(f"127.0.0.1:{pin}", serializer=msgpack_dumps)
        ok_idx, reasons = warm_up(publisher, rx, energy, pool, alive, timeout=90.0)
        result["pool_ok"] = int(ok_idx.size)
        result["pool_not_ok_reasons"] = reasons
        good = pool[ok_idx]
        result.update(measure_latency(publisher, rx, energy, good, args.events, args.rate, alive))
        result.update(measure_throughput(publisher, rx, energy, good, args.throughput_spectra, args.page_size,
                                         args.window, args.stall_timeout, alive))
        if result["p50_ms"] is None or result["sustained_spectra_per_s"] is None:
            code = 1
    except Exception as exc:  # reported in the JSON, after the processes are stopped
        result["error"] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        if publisher is not None:
            publisher.close()
        if rx is not None:
            rx.close()
        if service is not None:
            rc = service.stop()
            result["service_exit_code"] = rc
            if rc != 0:
                result["service_log_tail"] = service.tail(15)
                code = 1
        if proxy is not None:
            proxy.stop(5)
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(params)
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result["machine"] = machine()
    emit(result, args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
