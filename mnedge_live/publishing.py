"""bluesky 0MQ publishers that can always be closed.

bluesky's :class:`~bluesky.callbacks.zmq.Publisher` keeps ZeroMQ's default
``LINGER`` of -1: closing it (or garbage-collecting its context) waits forever
for messages queued for a proxy that has gone away.  A service must never hang
on shutdown, so every publisher of this project is made here, with a bounded
linger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from bluesky.callbacks.zmq import Publisher

#: How long queued messages may still be delivered after close (ms).
DEFAULT_LINGER_MS = 1000


def make_publisher(address: str, *, serializer: Callable[[Any], bytes], prefix: bytes = b"",
                   linger_ms: int = DEFAULT_LINGER_MS, **kwargs: Any) -> Publisher:
    """A bluesky ``Publisher`` whose close returns within ``linger_ms``.

    Parameters
    ----------
    address : str
        The proxy's publisher side (``host:port``).
    serializer : callable
        Document serializer (see :mod:`mnedge_live.serializers`).
    prefix : bytes
        Message prefix (the proxy forwards it; subscribers may filter on it).
    linger_ms : int
        Longest wait for queued messages when closing.
    **kwargs
        Passed on to ``Publisher`` (e.g. ``curve_config``).
    """
    publisher = Publisher(address, prefix=prefix, serializer=serializer, **kwargs)
    publisher._socket.setsockopt(zmq.LINGER, int(linger_ms))
    publisher._context.setsockopt(zmq.LINGER, int(linger_ms))
    return publisher
