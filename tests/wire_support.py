"""Helpers of the wire-level reliability/security tests: hand-composed source runs, a raw 0MQ sender.

The service under test runs as a real ``mnedge live`` subprocess behind a real
``bluesky-0MQ-proxy``; these helpers compose the source documents (so a test
controls seq_nums, pages, gaps and stop documents exactly) and put them, or any
bytes at all, on the proxy's input.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import event_model
import numpy as np
import zmq
from live_support import free_port

from mnedge_live.serializers import msgpack_dumps

#: Channel axis of the simulated spectra: ``615 + 0.125 k`` eV (see :class:`mnedge_live.sim.SpectrumSource`).
OFFSET_EV, DISPERSION_EV, CHANNELS = 615.0, 0.125, 560


def service_toml(path: Path, **extra: object) -> Path:
    """A service config reading field ``spec`` with the per-event axis fields ``off``/``disp``."""
    lines = ['spectrum_field = "spec"', 'dispersion_field = "disp"', 'offset_field = "off"']
    for k, v in extra.items():
        lines.append(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def source_run(spectra, *, page: int = 1, drop: tuple[int, ...] = (), num_events: int | None = None,
               offset: float = OFFSET_EV, stream: str = "primary", stop: bool = True,
               metadata: dict | None = None) -> list[tuple[str, dict]]:
    """Documents of one source run, one spectrum per seq_num (1-based), sent as pages of ``page`` events.

    Parameters
    ----------
    spectra : sequence of array-like
        The spectra, in seq_num order (anything: the point is to send bad ones too).
    page : int
        Events per event page (1: plain event documents).
    drop : tuple of int
        seq_nums that are composed but not sent (a lossy link).
    num_events : int, optional
        ``num_events`` of the stop document (default: every composed event).
    offset : float
        Energy of channel 0 (a non-Mn experiment uses another edge).
    stream : str
        Stream name of the descriptor.
    stop : bool
        Send the stop document (False: the publisher "dies").
    metadata : dict, optional
        More start-document metadata (``{"shape": [2, 2]}``: a spectrum image, read as a map).
    """
    b = event_model.compose_run(metadata={"plan_name": "count", "detectors": ["det"], **(metadata or {})})
    keys = {"spec": {"source": "det", "dtype": "array", "shape": [CHANNELS]},
            "off": {"source": "det", "dtype": "number", "shape": []},
            "disp": {"source": "det", "dtype": "number", "shape": []}}
    d = b.compose_descriptor(name=stream, data_keys=keys)
    docs = [("start", b.start_doc), ("descriptor", d.descriptor_doc)]
    events = []
    for s in spectra:
        ev = d.compose_event(data={"spec": s, "off": offset, "disp": DISPERSION_EV},
                             timestamps={"spec": 0.0, "off": 0.0, "disp": 0.0}, validate=False)
        events.append(ev)
    kept = [e for e in events if e["seq_num"] not in drop]
    for i in range(0, len(kept), page):
        chunk = kept[i:i + page]
        if page == 1:
            docs.append(("event", chunk[0]))
        else:
            docs.append(("event_page", event_model.pack_event_page(*chunk)))
    if stop:
        sd = dict(b.compose_stop())
        sd["num_events"] = {stream: len(events) if num_events is None else num_events}
        docs.append(("stop", sd))
    return docs


class RawSender:
    """A 0MQ PUB socket on the proxy's input that sends documents (msgpack) or arbitrary bytes."""

    def __init__(self, port: int, prefix: bytes = b"src"):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.prefix = prefix
        time.sleep(0.5)  # slow joiner: let the proxy's subscription arrive

    def send(self, name: str, doc: dict) -> None:
        """One document, as bluesky's Publisher frames it."""
        self.raw(b" ".join([self.prefix, name.encode(), msgpack_dumps(doc)]))

    def send_all(self, docs: list[tuple[str, dict]], pause: float = 0.0) -> None:
        """Several documents in order."""
        for name, doc in docs:
            self.send(name, doc)
            if pause:
                time.sleep(pause)

    def raw(self, message: bytes) -> None:
        """Any bytes as one message."""
        self.sock.send(message)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def start_proxy_on(pin: int, pout: int, *extra: str) -> subprocess.Popen:
    """``bluesky-0MQ-proxy`` bound to loopback ports ``pin``/``pout`` (restartable on the same ports)."""
    exe = str(Path(sys.executable).parent / "bluesky-0MQ-proxy")
    proc = subprocess.Popen([exe, "--in-address", f"tcp://127.0.0.1:{pin}", "--out-address",
                             f"tcp://127.0.0.1:{pout}", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def proxy_ports() -> tuple[int, int]:
    """Two free loopback ports."""
    return free_port(), free_port()


def final_totals(proc: subprocess.Popen) -> dict:
    """The counters the service logs when it stops (``mnedge live stopped: {...}``)."""
    lines = getattr(proc, "log", [])
    wait_until(lambda: any("mnedge live stopped:" in line for line in lines), 5)  # the reader thread lags
    for line in reversed(lines):
        if "mnedge live stopped:" in line:
            return ast.literal_eval(line.split("mnedge live stopped:", 1)[1].strip())
    raise AssertionError("no final counters in the service log:\n" + "".join(getattr(proc, "log", [])))


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def good_spectra(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` simulated Mn L2,3 EELS spectra on the channel axis above."""
    from mnedge_live.sim import SpectrumSource

    rng = np.random.default_rng(seed)
    fr = rng.dirichlet(np.ones(3), size=n)
    _, spectra = SpectrumSource().draw(fr, eels=True)
    return [np.asarray(s, np.float64) for s in spectra]
