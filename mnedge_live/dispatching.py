"""Reading documents off a 0MQ proxy without trusting the network (:class:`TolerantRemoteDispatcher`).

bluesky's ``RemoteDispatcher`` prints and drops a message it cannot split or
whose name is not UTF-8, but a payload its deserializer refuses, or an unknown
document name, ends its loop. Both ``mnedge live`` and ``mnedge watch`` read
from proxies anyone on the network can publish to: one malformed message must
be counted and logged, and the next one read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bluesky.callbacks.zmq import RemoteDispatcher
from event_model import DocumentNames

log = logging.getLogger(__name__)


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
    **kwargs
        Passed to ``RemoteDispatcher`` (``deserializer``, ``curve_config``, ...).

    Attributes
    ----------
    bad_messages : int
        Messages dropped because they could not be split into prefix, name and payload,
        named no document type, or whose payload the deserializer refused.
    callback_errors : int
        Documents on which a subscribed callback raised (bluesky's own loop would end there).
    """

    def __init__(self, address: str, *, ignore_prefix: bytes | None = None,
                 on_bad_message: Callable[[], None] | None = None, **kwargs: Any):
        super().__init__(address, **kwargs)
        self.ignore_prefix = ignore_prefix
        self.on_bad_message = on_bad_message
        self.bad_messages = 0
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
        while True:
            self._handle(await self._socket.recv())
