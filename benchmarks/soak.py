"""Soak test of the live service: N spectra through a real proxy into a real ``mnedge live``, run after run.

Spectra go out as event pages, one run at a time; the next run starts when the
derived stop of the previous one is back, so the sender never runs ahead of the
receiver (the highest rate it keeps up with).  Reports the spectra sent, the
missed count summed over the derived stop documents, the rate, and the
service's resident memory after the first and the last run (a leak shows as growth).

Usage: python benchmarks/soak.py [--json] [--spectra 1000000] [--run-size 10000] [--page 256] [--model PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import event_model  # noqa: E402
import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402
from _common import emit, machine  # noqa: E402

from mnedge_live.serializers import msgpack_dumps  # noqa: E402
from mnedge_live.sim import SpectrumSource  # noqa: E402


def free_port() -> int:
    """A free loopback TCP port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_service(args: list[str], log_path: Path) -> subprocess.Popen:
    """``mnedge live`` as a subprocess; returns once it prints that it is ready (90 s at most)."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "mnedge_live.cli", "live", *args], stdout=subprocess.PIPE,
                            stderr=log, text=True, cwd=log_path.parent)  # maps and plots land beside the log, not in the source tree
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "mnedge live: ready" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"service did not start; see {log_path}")


class StopWatcher:
    """A raw SUB socket that decodes only the stop documents of the derived runs."""

    def __init__(self, port: int):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"mnedge ")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def wait_stop(self, timeout: float) -> dict | None:
        """The next derived stop document, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000)):
                break
            _, name, payload = self.sock.recv().split(b" ", 2)
            if name == b"stop":
                return msgpack.unpackb(payload, raw=False)
        return None

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--spectra", type=int, default=1_000_000)
    ap.add_argument("--run-size", type=int, default=10_000, help="spectra per run")
    ap.add_argument("--page", type=int, default=256, help="spectra per event page")
    ap.add_argument("--model", help="model artifact directory (default: the service's default model)")
    ap.add_argument("--run-timeout", type=float, default=600.0, help="longest wait for one derived run (s)")
    args = ap.parse_args()

    pool_e, pool = SpectrumSource().draw(np.random.default_rng(0).dirichlet(np.ones(3), 512), eels=True)
    pool = np.asarray(pool, np.float64)
    tmp = Path(tempfile.mkdtemp(prefix="mnedge-soak-"))
    toml = tmp / "live.toml"
    toml.write_text(f'spectrum_field = "spec"\noffset_eV = {float(pool_e[0])}\n'
                    f'dispersion_eV = {float(pool_e[1] - pool_e[0])}\nmax_batch = 1024\n')
    pin, pout = free_port(), free_port()
    exe = str(Path(sys.executable).parent / "bluesky-0MQ-proxy")
    proxy = subprocess.Popen([exe, "--in-address", f"tcp://127.0.0.1:{pin}", "--out-address",
                              f"tcp://127.0.0.1:{pout}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    svc = None
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    watcher = None
    try:
        time.sleep(0.5)
        svc = start_service(["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--config", str(toml),
                             *(["--model", args.model] if args.model else [])], tmp / "service.log")
        watcher = StopWatcher(pout)
        pub.connect(f"tcp://127.0.0.1:{pin}")
        time.sleep(1.0)  # slow joiner
        sent = missed = processed = rejected = 0
        rss_first = rss_last = float("nan")
        rss_series: dict[int, float] = {}   # service RSS after ten evenly spaced runs (and the first and last)
        n_runs = -(-args.spectra // args.run_size)
        sampled = {round(j * (n_runs - 1) / 9) for j in range(10)} | {0, n_runs - 1}
        run_index = 0
        k = 0
        t0 = time.perf_counter()
        while sent < args.spectra:
            n = min(args.run_size, args.spectra - sent)
            b = event_model.compose_run(metadata={"plan_name": "soak", "detectors": ["det"]})
            d = b.compose_descriptor(name="primary", data_keys={
                "spec": {"source": "det", "dtype": "array", "shape": [pool.shape[1]]}})

            def send(name: str, doc: dict) -> None:
                pub.send(b"soak " + name.encode() + b" " + msgpack_dumps(doc))

            send("start", b.start_doc)
            send("descriptor", d.descriptor_doc)
            for s0 in range(0, n, args.page):
                m = min(args.page, n - s0)
                idx = (np.arange(k, k + m) % len(pool))
                k += m
                now = time.time()
                send("event_page", {"descriptor": d.descriptor_doc["uid"], "uid": [f"{b.start_doc['uid']}-{s0 + i}"
                                                                                  for i in range(m)],
                                    "seq_num": list(range(s0 + 1, s0 + m + 1)), "time": [now] * m,
                                    "data": {"spec": pool[idx]}, "timestamps": {"spec": [now] * m},
                                    "filled": {}})
            stop = dict(b.compose_stop())
            stop["num_events"] = {"primary": n}
            send("stop", stop)
            dstop = watcher.wait_stop(args.run_timeout)
            if dstop is None:
                raise RuntimeError(f"no derived stop within {args.run_timeout} s; see {tmp / 'service.log'}")
            sent += n
            missed += int(dstop.get("missed", 0))
            processed += int(dstop.get("processed", 0))
            rejected += int(dstop.get("rejected", 0))
            if run_index in sampled:
                time.sleep(0.1)  # the service trims its heap right after publishing the stop: read after that
                rss_last = rss_series[run_index + 1] = rss_mb(svc.pid)
                if rss_first != rss_first:  # NaN: first run
                    rss_first = rss_last
            run_index += 1
        wall = time.perf_counter() - t0
    finally:
        if watcher is not None:
            watcher.close()
        pub.close()
        ctx.term()
        for p in (svc, proxy):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
    result = {"spectra": sent, "missed": missed, "processed": processed, "rejected": rejected,
              "spectra_per_s": round(sent / wall, 1), "runs": -(-sent // args.run_size),
              "run_size": args.run_size, "page": args.page, "rss_mb_first_run": round(rss_first, 1),
              "rss_mb_last_run": round(rss_last, 1),
              "rss_mb_series": {run: round(mb, 1) for run, mb in sorted(rss_series.items())},
              "service_exit_code": svc.returncode if svc else None,
              "machine": machine(), "service_log": str(tmp / "service.log")}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
