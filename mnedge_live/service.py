"""The ``mnedge live`` service: 0MQ in (RemoteDispatcher), callback, 0MQ out (Publisher).

Micro-batching: messages already waiting on the socket are taken together (up
to ``max_batch``); the batch goes to the engine as soon as the socket is idle
or ``max_delay_ms`` has passed.  Messages carrying the service's own output
prefix, and runs marked as derived, are never processed.  Undecodable messages
are logged and counted (``bad_messages``, messages over ``max_message_mb`` too), never raise; nor does a readout plot
that fails (``plot_failures``, see :class:`DerivedSink`; a spectrum image's map picture, drawn
off the reading thread: ``picture_failures``) or a derived document the
publisher fails to send (``unpublished_documents``, ``unpublished_rows``).  Runs silent for
``run_timeout_s`` are closed as failed.  SIGTERM/SIGINT flush the batch in
flight, close open derived runs and return 0.  With CurveZMQ keys the
connections are encrypted and authenticated.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from bluesky.callbacks.zmq import ClientCurve
from event_model import DocumentNames

from mnedge_live.background_writer import BackgroundWriter
from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.dispatching import TolerantRemoteDispatcher
from mnedge_live.memory import trim_heap
from mnedge_live.publishing import make_publisher
from mnedge_live.serializers import get_serializer

log = logging.getLogger(__name__)

#: Longest time between two checks for silent runs (seconds).
HOUSEKEEPING_S = 1.0


class SafeRemoteDispatcher(TolerantRemoteDispatcher):
    """Tolerant dispatcher that drains the socket in micro-batches for the valence callback.

    Parameters
    ----------
    address : str
        The proxy's subscriber side.
    callback : MnEdgeCallback
        Receives the documents; flushed when the socket is idle. Messages not
        read count in its ``bad_messages`` total too (a message over ``max_message_mb`` among them).
    ignore_prefix : bytes
        Messages with this prefix (our own output) are dropped unread.
    **kwargs
        Passed to :class:`~mnedge_live.dispatching.TolerantRemoteDispatcher` (``max_message_mb``, ...).
    """

    def __init__(self, address: str, *, callback: MnEdgeCallback, ignore_prefix: bytes, **kwargs: Any):
        super().__init__(address, ignore_prefix=ignore_prefix, on_bad_message=self._count_in_totals, **kwargs)
        self.callback = callback

    def _count_in_totals(self) -> None:
        self.callback.totals["bad_messages"] += 1

    def _deliver(self, doc_name: DocumentNames, doc: dict) -> None:
        self.callback(doc_name.value, doc)

    async def _read(self) -> None:
        sock = self._socket
        max_batch = self.callback.config.max_batch
        delay = self.callback.config.max_delay_ms / 1e3
        timeout = self.callback.config.run_timeout_s
        every = min(HOUSEKEEPING_S, timeout / 4) if timeout else HOUSEKEEPING_S
        next_check = time.monotonic() + every
        while True:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + every
                self._expire()
            if not await sock.poll(timeout=every * 1e3):
                continue
            self._handle(await sock.recv())
            t0 = time.monotonic()
            n = 1
            while n < 4 * max_batch and time.monotonic() - t0 < delay:
                try:
                    msg = await sock.recv(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(msg)
                n += 1
            try:
                self.callback.flush()
            except Exception:
                log.exception("flush failed")

    def _expire(self) -> None:
        """Close runs whose publisher went silent (see ``run_timeout_s``)."""
        try:
            self.callback.expire()
        except Exception:
            log.exception("closing silent runs failed")


class DerivedSink:
    """Where the derived documents go: the 0MQ publisher, then the readout plots (``--plot``).

    A plot is a by-product: a failure to draw or write one is logged and counted
    (:attr:`plot_failures`), never raised into the callback, whose rows, counts,
    PVs and stop documents must not depend on it.

    Parameters
    ----------
    publisher : callable
        ``publisher(name, doc)``: sends every derived document.
    plots : callable, optional
        ``plots(name, doc)``: e.g. :class:`~mnedge_live.plots.RunPlotter`.
    """

    def __init__(self, publisher: Callable[[str, dict], None], plots: Callable[[str, dict], None] | None = None):
        self.publisher = publisher
        self.plots = plots
        self.plot_failures = 0

    def __call__(self, name: str, doc: dict) -> None:
        try:
            self.publisher(name, doc)   # a failure is raised to the caller, which counts it, after the plot
        finally:
            if self.plots is not None:
                try:
                    self.plots(name, doc)
                except Exception:
                    self.plot_failures += 1
                    log.exception("readout plot failed on a derived %s document (readout unaffected)", name)
            if name == "stop":
                trim_heap()  # a run is over: hand its freed buffers back, so memory stays flat run after run


def curve_configs(config: LiveConfig) -> tuple[ClientCurve | None, ClientCurve | None]:
    """CurveZMQ client settings of the (in, out) connections; None where plain 0MQ."""
    def client(server_key: str | None) -> ClientCurve | None:
        if not (config.curve_secret_key and server_key):
            return None
        return ClientCurve(secret_path=Path(config.curve_secret_key), server_public_key=Path(server_key))

    return client(config.curve_server_public_key), client(config.curve_out_server_public_key)


def serve(config: LiveConfig, engine: Any, epics: Any = None, ready: Any = None) -> int:
    """Run the service until SIGTERM/SIGINT.

    The first signal ends the reading; the open runs are then closed and the
    last documents sent, and a repeated signal during that is ignored.

    Parameters
    ----------
    config : LiveConfig
        Validated options.
    engine : object
        The valence engine.
    epics : object, optional
        Has ``update(row, totals)``; receives the latest readout.
    ready : callable, optional
        Called once the sockets are set up.

    Returns
    -------
    int
        0 after a clean shutdown.
    """
    dumps, loads = get_serializer(config.serializer, config.allow_pickle)
    prefix = config.out_prefix.encode()
    curve_in, curve_out = curve_configs(config)
    publisher = make_publisher(config.out_address, prefix=prefix, serializer=dumps, curve_config=curve_out)
    plots = None
    if config.plot_dir:
        from mnedge_live.plots import RunPlotter

        plots = RunPlotter(config.plot_dir)
    publish = DerivedSink(publisher, plots)
    hook = epics.update if epics is not None else None
    pictures = BackgroundWriter() if config.maps_folder() else None
    callback = MnEdgeCallback(engine, config, publish, on_readout=hook, pictures=pictures)
    dispatcher = SafeRemoteDispatcher(config.in_address, callback=callback, ignore_prefix=prefix,
                                      deserializer=loads, curve_config=curve_in,
                                      max_message_mb=config.max_message_mb)
    loop = dispatcher.loop

    def shutdown(signum: int) -> None:
        log.info("signal %d: shutting down", signum)
        if dispatcher._task is not None:
            dispatcher._task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown, sig)
    if ready is not None:
        loop.call_soon(ready)
    log.warning("mnedge live: model %s, in %s (curve %s), out %s (curve %s), mode %s, run timeout %s s",
                getattr(engine, "model_id", "?"), config.in_address, "on" if curve_in else "off",
                config.out_address, "on" if curve_out else "off", config.mode, config.run_timeout_s or "none")
    try:
        dispatcher.start()
    except asyncio.CancelledError:
        pass
    finally:
        keep_shutting_down_on_repeated_signals(loop)
        try:
            callback.flush()
            callback.close_all("abort", "mnedge live service stopped")
        except Exception:
            log.exception("closing open runs failed")
        time.sleep(0.05)  # let the last messages leave
        publisher.close() if hasattr(publisher, "close") else None
        if pictures is not None and not pictures.close():
            log.error("the maps' pictures still being drawn at shutdown were given up (their HDF5 files are whole)")
    log.warning("mnedge live stopped: %s", {**callback.totals, "plot_failures": publish.plot_failures,
                                            "picture_failures": pictures.failures if pictures is not None else 0,
                                            "dropped_connections": dispatcher.dropped_connections,
                                            "refused_handshakes": dispatcher.refused_handshakes})
    return 0


def keep_shutting_down_on_repeated_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Ignore a SIGTERM or SIGINT that arrives during the shutdown, so that it completes.

    The dispatcher's event loop, once closed (or collected, which closes
    it), puts both signals back to their defaults while the open runs are
    still being closed, the last documents sent and the soft IOC stopped: a
    second SIGTERM then killed the service mid-way (exit -15), leaving runs
    without their stop documents. The loop's handlers are taken off here, so
    that its closing later leaves the signals ignored. Ignored, not handled
    in Python: the interpreter puts its own handlers back to the defaults as
    it exits, and a signal then still ended the service with -15. The
    shutdown is bounded (the publisher's linger, the IOC's stop); a
    supervisor that must not wait still has SIGKILL.
    """
    if threading.current_thread() is not threading.main_thread():
        return   # signal handlers belong to the main thread; serve() running elsewhere has none to keep
    for sig in (signal.SIGTERM, signal.SIGINT):
        if not loop.is_closed():
            loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    log.info("shutting down: further SIGTERM and SIGINT are ignored")
