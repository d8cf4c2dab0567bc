"""Reading documents off a 0MQ proxy without trusting the network (:class:`TolerantRemoteDispatcher`).

bluesky's ``RemoteDispatcher`` prints and drops a message it cannot split or
whose name is not UTF-8, but a payload its deserializer refuses, or an unknown
document name, ends its loop. Both ``mnedge live`` and ``mnedge watch`` read
from proxies anyone on the network can publish to: one malformed message must
be counted and logged, and the next one read.

Nor may one huge message exhaust the memory: 0MQ reads a whole message before
handing it over, so the socket refuses messages over ``max_message_mb``
(``ZMQ_MAXMSGSIZE``).  libzmq then drops the connection as a protocol error and,
unlike after a network failure, never retries it: :meth:`TolerantRemoteDispatcher._guard_connection`
watches the socket's events and connects again, counting the dropped message.
Documents sent while the connection was down are lost; the valence service counts
their events as missed by their ``seq_num``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from bluesky.callbacks.zmq import RemoteDispatcher
from event_model import DocumentNames
from zmq.utils.monitor import parse_monitor_message

from mnedge_live.config import DEFAULT_MAX_MESSAGE_MB

log = logging.getLogger(__name__)

#: Seconds a dropped connection may go without libzmq retrying it before it is connected again here
#: (libzmq retries a failed network connection at once, by its own events, but never one it dropped
#: for a protocol error such as a message over the limit).
RECONNECT_GRACE_S = 1.0
#: Longest wait (seconds) between two tries of a connection whose handshake failed (a CurveZMQ key the
#: proxy refuses, a peer that speaks no 0MQ): libzmq does not retry those either; the wait doubles from
#: RECONNECT_GRACE_S.
MAX_HANDSHAKE_RETRY_S = 30.0
#: Socket events that tell the connection is being retried or is up again.
_RETRYING = (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED, zmq.EVENT_CONNECTED)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                     zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_WATCHED = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_RETRYING) | sum(_HANDSHAKE_FAILED)


@dataclass
class _Link:
    """What the socket's events tell of its connection (see :meth:`TolerantRemoteDispatcher._watch_connection`).

    ``dropped``: None while the connection is up or 0MQ retries it; after a disconnection 0MQ will not
    retry, whether that connection had completed its handshake (True: a message over the limit or
    another protocol error; False: the handshake failed).  ``refused``: handshakes failed in a row.
    """

    handshaken: bool = False
    dropped: bool | None = None
    refused: int = 0

    def saw(self, event: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.handshaken, self.dropped, self.refused = True, None, 0
        elif event == zmq.EVENT_DISCONNECTED:
            self.dropped, self.handshaken = self.handshaken, False
        elif event in _RETRYING:
            self.dropped = None

    def wait(self) -> float | None:
        """Seconds to wait for 0MQ's own retry before connecting again here; None: nothing to wait for."""
        if self.dropped is None:
            return None
        return RECONNECT_GRACE_S if self.dropped else min(RECONNECT_GRACE_S * 2 ** self.refused, MAX_HANDSHAKE_RETRY_S)


class TolerantRemoteDispatcher(RemoteDispatcher):
    """RemoteDispatcher that counts and logs a message it cannot read instead of stopping.

    Parameters
    ----------
    address : str
        The proxy's subscriber side.
    ignore_prefix : bytes, optional
        Messages with this prefix (a service's own output) are dropped unread and not counted; so are,
        as in bluesky, messages without ``prefix`` where one is given.
    on_bad_message : callable, optional
        Called (no arguments) for each message not read, besides :attr:`bad_messages`.
    max_message_mb : float or None
        Largest message read (MiB); a larger one is dropped, counted and logged, and the
        connection it cut is made again. None: no limit (0MQ's default; a peer can then
        make the process allocate any size).
    **kwargs
        Passed to ``RemoteDispatcher`` (``deserializer``, ``curve_config``, ...).

    Attributes
    ----------
    bad_messages : int
        Messages dropped because they could not be split into prefix, name and payload,
        named no document type, or whose payload the deserializer refused; and each
        connection dropped on a message over ``max_message_mb``.
    dropped_connections : int
        Connections 0MQ dropped for a message over the limit (or another protocol error) and
        made again here.
    refused_handshakes : int
        Tries of the connection whose handshake failed (e.g. the proxy refused this reader's
        CurveZMQ key); not messages, so not in ``bad_messages``.
    callback_errors : int
        Documents on which a subscribed callback raised (bluesky's own loop would end there).
    """

    def __init__(self, address: str, *, ignore_prefix: bytes | None = None,
                 on_bad_message: Callable[[], None] | None = None,
                 max_message_mb: float | None = DEFAULT_MAX_MESSAGE_MB, **kwargs: Any):
        if max_message_mb is not None and not max_message_mb > 0:
            raise ValueError(f"max_message_mb must be more than 0 (or None: no limit), not {max_message_mb!r}")
        super().__init__(address, **kwargs)
        self.ignore_prefix = ignore_prefix
        self.on_bad_message = on_bad_message
        self.max_message_bytes = None if max_message_mb is None else max(1, int(max_message_mb * 2**20))
        self.bad_messages = 0
        self.dropped_connections = 0
        self.refused_handshakes = 0
        self.callback_errors = 0

    def _decode(self, message: bytes) -> tuple[DocumentNames, dict] | None:
        """The message's document type and document; None when it is ignored or not readable (then counted)."""
        try:
            prefix, name, payload = message.split(b" ", 2)
        except ValueError:
            self._count_bad("message without prefix/name/payload dropped (%d bytes)", len(message))
            return None
        if (self.ignore_prefix is not None and prefix == self.ignore_prefix) or (self._prefix and prefix != self._prefix):
            return None   # our own output, or another publisher's when RemoteDispatcher's prefix= is given
        try:
            doc_name = DocumentNames[name.decode()]
            doc = self._deserializer(payload)
        except Exception as exc:
            self._count_bad("undecodable %r message dropped (%d bytes): %s: %s", name[:40], len(payload),
                            type(exc).__name__, exc)
            return None
        return doc_name, doc

    def _count_bad(self, msg: str, *args: Any) -> None:
        self.bad_messages += 1
        if self.on_bad_message is not None:
            self.on_bad_message()
        log.warning(msg, *args)

    def _handle(self, message: bytes) -> None:
        """Decode one message and hand its document on (:meth:`_deliver`); a callback that raises is logged and
        counted (:attr:`callback_errors`), and the next message is read."""
        decoded = self._decode(message)
        if decoded is None:
            return
        try:
            self._deliver(*decoded)
        except Exception:
            self.callback_errors += 1
            log.exception("a callback failed on a %s document (the next message is read)", decoded[0].value)

    def _deliver(self, doc_name: DocumentNames, doc: dict) -> None:
        """Give one document to the subscribed callbacks."""
        self.process(doc_name, doc)

    async def _poll(self) -> None:
        """bluesky's entry point, run once the socket is connected: :meth:`_read` under the size limit."""
        guard = self._guard_connection() if self.max_message_bytes is not None else None
        try:
            await self._read()
        finally:
            if guard is not None:
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await guard

    async def _read(self) -> None:
        """Read and hand on messages until cancelled."""
        while True:
            self._handle(await self._socket.recv())

    def _guard_connection(self) -> asyncio.Task:
        """Put the size limit on the socket and start :meth:`_watch_connection`; returns its task.

        bluesky connects the socket before :meth:`_poll` runs, and 0MQ applies the
        limit to connections made after it is set, so the socket connects again
        (before any message is read).
        """
        sock = self._socket
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        monitor = sock.get_monitor_socket(_WATCHED)
        self._reconnect()
        return asyncio.ensure_future(self._watch_connection(monitor))

    def _reconnect(self) -> None:
        sock = self._socket
        with contextlib.suppress(zmq.ZMQError):   # gone already when 0MQ ended it for a protocol error
            sock.disconnect(self.address)
        sock.connect(self.address)

    async def _watch_connection(self, monitor: zmq.Socket) -> None:
        """Connect again after a drop that 0MQ does not retry, counting the message that caused it.

        A connection dropped after its handshake (a message over the limit) is made again after
        :data:`RECONNECT_GRACE_S`; one whose handshake failed (a refused CurveZMQ key) is logged as an
        error once and tried again at growing intervals, up to :data:`MAX_HANDSHAKE_RETRY_S`, without
        counting a message.
        """
        link = _Link()
        try:
            while True:
                try:
                    frames = await asyncio.wait_for(monitor.recv_multipart(), link.wait())
                except TimeoutError:
                    for event in self._queued_events(monitor):   # the loop may have been busy past the wait
                        link.saw(event)
                    if link.dropped is None:
                        continue
                    if link.dropped:
                        self._count_dropped()
                    else:
                        link.refused += 1
                        self.refused_handshakes += 1
                    link.dropped = None
                    self._reconnect()
                    continue
                event = parse_monitor_message(frames)["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED and link.refused:
                    log.warning("the handshake with %s succeeded after %d failed tries", self.address, link.refused)
                if event in _HANDSHAKE_FAILED and link.refused == 0:
                    log.error("the handshake with %s failed (%s: a CurveZMQ key the proxy does not accept, or a peer "
                              "that is no 0MQ proxy); trying again every %g s at most, nothing is read meanwhile",
                              self.address, zmq.Event(event).name, MAX_HANDSHAKE_RETRY_S)
                link.saw(event)
        finally:
            for event in self._queued_events(monitor):
                link.saw(event)
            if link.dropped:   # dropped on a message over the limit within the grace time before the stop
                self._count_dropped()
            with contextlib.suppress(zmq.ZMQError):
                self._socket.disable_monitor()
            monitor.close(linger=0)

    def _count_dropped(self) -> None:
        self.dropped_connections += 1
        self._count_bad("the connection to %s was dropped on a message over %.6g MiB (or another 0MQ protocol "
                        "error) and is made again; documents sent meanwhile are lost (events counted as missed by "
                        "their seq_num)", self.address, self.max_message_bytes / 2**20)

    @staticmethod
    def _queued_events(monitor: zmq.Socket) -> list[int]:
        """The socket events already waiting on ``monitor``, taken without waiting."""
        events = []
        while True:
            try:
                frames = monitor.recv_multipart(flags=zmq.NOBLOCK)
                if not isinstance(frames, list):   # zmq.asyncio returns a future, done at once with NOBLOCK
                    frames = frames.result()
            except zmq.Again:
                return events
            events.append(parse_monitor_message(frames)["event"])
