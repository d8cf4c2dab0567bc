"""TolerantRemoteDispatcher against a real bluesky-0MQ-proxy: bad messages counted, the good ones after them read."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq
from live_support import start_proxy, stop, wait_for_subscription

from mnedge_live.dispatching import TolerantRemoteDispatcher
from mnedge_live.serializers import get_serializer, msgpack_dumps

#: Each unreadable in its own way; none may stop the dispatcher.
BAD = [
    b"no-spaces-at-all",                                                   # not prefix/name/payload
    b"src nonsense " + msgpack_dumps({"uid": "x"}),                        # no such document type
    b"src start \xc1\xc1\xc1",                                             # not msgpack
    b"src \xff\xfe " + msgpack_dumps({"uid": "x"}),                        # name not UTF-8
    b"src start " + msgpack_dumps({"a": np.array([object()], dtype=object)}),  # would be unpickled
    b"src start " + msgpack_dumps([1, 2, 3]),                              # not a document
]


@pytest.fixture
def proxy():
    proc, pin, pout = start_proxy()
    yield pin, pout
    stop(proc)


def _run(dispatcher: TolerantRemoteDispatcher) -> None:
    try:
        dispatcher.start()
    except BaseException:   # cancelled at the end of the test
        pass


def test_bad_messages_are_counted_and_the_next_ones_read(proxy):
    pin, pout = proxy
    _, loads = get_serializer("msgpack")
    seen, reported = [], []
    dispatcher = TolerantRemoteDispatcher(f"127.0.0.1:{pout}", deserializer=loads, ignore_prefix=b"own",
                                          on_bad_message=lambda: reported.append(1))
    dispatcher.subscribe(lambda name, doc: seen.append((name, doc["uid"])))
    dispatcher.subscribe(lambda name, doc: 1 / 0 if doc["uid"] == "a" else None)   # a callback that fails once
    thread = threading.Thread(target=_run, args=(dispatcher,), daemon=True)
    thread.start()
    sender = zmq.Context.instance().socket(zmq.PUB)
    try:
        sender.connect(f"tcp://127.0.0.1:{pin}")
        wait_for_subscription(dispatcher, thread, 0.5)
        for message in BAD:
            sender.send(message)
        sender.send(b"own start " + msgpack_dumps({"uid": "ours"}))   # our own output: dropped unread, not counted
        sender.send(b"src start " + msgpack_dumps({"uid": "a"}))
        sender.send(b"src stop " + msgpack_dumps({"uid": "b"}))
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.close(linger=0)
        dispatcher.loop.call_soon_threadsafe(lambda: dispatcher._task and dispatcher._task.cancel())
        thread.join(5)
    assert seen == [("start", "a"), ("stop", "b")]
    assert dispatcher.bad_messages == len(BAD) == len(reported) and dispatcher.callback_errors == 1


def test_a_prefix_keeps_other_publishers_out(proxy):
    """As bluesky's RemoteDispatcher: with ``prefix=``, messages of other publishers are not read (nor counted)."""
    pin, pout = proxy
    _, loads = get_serializer("msgpack")
    seen = []
    dispatcher = TolerantRemoteDispatcher(f"127.0.0.1:{pout}", deserializer=loads, prefix=b"want")
    dispatcher.subscribe(lambda name, doc: seen.append(doc["uid"]))
    thread = threading.Thread(target=_run, args=(dispatcher,), daemon=True)
    thread.start()
    sender = zmq.Context.instance().socket(zmq.PUB)
    try:
        sender.connect(f"tcp://127.0.0.1:{pin}")
        time.sleep(0.5)
        sender.send(b"other start " + msgpack_dumps({"uid": "theirs"}))
        sender.send(b"want start " + msgpack_dumps({"uid": "ours"}))
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        sender.close(linger=0)
        dispatcher.loop.call_soon_threadsafe(lambda: dispatcher._task and dispatcher._task.cancel())
        thread.join(5)
    assert seen == ["ours"] and dispatcher.bad_messages == 0
