"""TolerantRemoteDispatcher against a real bluesky-0MQ-proxy: bad messages counted, the good ones after them read."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import zmq
from live_support import start_proxy, stop, wait_for_subscription

from mnedge_live.dispatching import RECONNECT_GRACE_S, TolerantRemoteDispatcher
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


@contextlib.contextmanager
def _reading(address: str, **kwargs):
    """A TolerantRemoteDispatcher on ``address`` (msgpack) reading on a thread, the uids it read in a list;
    cancelled and joined on leaving."""
    _, loads = get_serializer("msgpack")
    seen: list[str] = []
    dispatcher = TolerantRemoteDispatcher(address, deserializer=loads, **kwargs)
    dispatcher.subscribe(lambda name, doc: seen.append(doc["uid"]))
    thread = threading.Thread(target=_run, args=(dispatcher,), daemon=True)
    thread.start()
    try:
        yield dispatcher, thread, seen
    finally:
        dispatcher.loop.call_soon_threadsafe(lambda: dispatcher._task and dispatcher._task.cancel())
        thread.join(5)


@contextlib.contextmanager
def _sender(pin: int):
    """A PUB socket connected to the proxy's publisher side; closed on leaving."""
    sender = zmq.Context.instance().socket(zmq.PUB)
    sender.connect(f"tcp://127.0.0.1:{pin}")
    try:
        yield sender
    finally:
        sender.close(linger=0)


def _send_until_seen(sender: zmq.Socket, seen: list, uid: str, timeout: float = 30) -> None:
    """Send stop documents ``uid``-0, -1, ... every 0.1 s until one is read (a reconnected SUB socket
    misses what is sent before its subscription reaches the proxy)."""
    deadline, i = time.monotonic() + timeout, 0
    while not any(u.startswith(uid) for u in seen) and time.monotonic() < deadline:
        sender.send(b"src stop " + msgpack_dumps({"uid": f"{uid}-{i}"}))
        i += 1
        time.sleep(0.1)


def _wait(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


HUGE = b"src start " + msgpack_dumps({"uid": "huge", "data": "x" * 20_000})   # 20 kB: over 0.01 MiB, under 0.05


def _huge_after_one_read(dispatcher, thread, seen: list, sender: zmq.Socket) -> None:
    """Once the subscription reaches the proxy and one message was read, send :data:`HUGE`."""
    wait_for_subscription(dispatcher, thread, 0.5)
    _send_until_seen(sender, seen, "before")
    sender.send(HUGE)


def test_a_message_over_the_limit_is_counted_and_the_connection_made_again(proxy):
    """0MQ drops the connection on a message over ``MAXMSGSIZE`` and never retries it by itself."""
    pin, pout = proxy
    reported = []
    with _reading(f"127.0.0.1:{pout}", max_message_mb=0.01, on_bad_message=lambda: reported.append(1)) as (
            dispatcher, thread, seen), _sender(pin) as sender:
        _huge_after_one_read(dispatcher, thread, seen, sender)
        _wait(lambda: dispatcher.dropped_connections > 0)
        _send_until_seen(sender, seen, "after")
    assert "huge" not in seen and seen[0].startswith("before") and seen[-1].startswith("after")
    assert dispatcher.dropped_connections == 1 and dispatcher.bad_messages == 1 == len(reported)


def test_a_message_under_the_limit_is_read(proxy):
    pin, pout = proxy
    with _reading(f"127.0.0.1:{pout}", max_message_mb=0.05) as (dispatcher, thread, seen), _sender(pin) as sender:
        _huge_after_one_read(dispatcher, thread, seen, sender)
        _wait(lambda: "huge" in seen)
    assert "huge" in seen and dispatcher.dropped_connections == 0 == dispatcher.bad_messages


def test_a_restarted_proxy_is_reconnected_by_0mq_alone():
    """A network failure is retried by 0MQ itself: the dispatcher must neither connect again (libzmq would
    ignore a second connect to the endpoint, but a disconnect-and-connect would lose what 0MQ buffered) nor
    count a dropped message."""
    proc, pin, pout = start_proxy()
    try:
        with _reading(f"127.0.0.1:{pout}") as (dispatcher, thread, seen), _sender(pin) as sender:
            wait_for_subscription(dispatcher, thread, 0.5)
            _send_until_seen(sender, seen, "before")
            stop(proc)
            proc, _, _ = start_proxy((pin, pout))
            _send_until_seen(sender, seen, "after")
            time.sleep(3 * RECONNECT_GRACE_S)   # past the grace time: a wrong reconnection would be made by now
            n = len(seen)
            sender.send(b"src stop " + msgpack_dumps({"uid": "last"}))
            _wait(lambda: "last" in seen, 10)
            time.sleep(0.5)
    finally:
        stop(proc)
    assert seen[n:] == ["last"] and dispatcher.dropped_connections == 0 == dispatcher.bad_messages


def test_the_limit_must_be_positive():
    with pytest.raises(ValueError, match="max_message_mb"):
        TolerantRemoteDispatcher("127.0.0.1:5000", max_message_mb=0)


@contextlib.contextmanager
def _curve_publisher(tmp_path, allow_reader: bool):
    """A PUB socket with a CurveZMQ server key whose authenticator accepts the reader's key or not; yields
    (socket, port, the reader's ClientCurve)."""
    import shutil

    import zmq.auth
    from bluesky.callbacks.zmq import ClientCurve
    from zmq.auth.thread import ThreadAuthenticator

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    reader_public, reader_secret = zmq.auth.create_certificates(tmp_path, "reader")
    if allow_reader:
        shutil.copy(reader_public, allowed)
    else:
        zmq.auth.create_certificates(allowed, "someone_else")
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    pub = ctx.socket(zmq.PUB)
    pub.curve_publickey, pub.curve_secretkey = zmq.auth.load_certificate(server_secret)
    pub.curve_server = True
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield pub, port, ClientCurve(secret_path=reader_secret, server_public_key=server_public)
    finally:
        pub.close(linger=0)
        auth.stop()
        ctx.term()


def test_a_refused_curve_key_is_no_message_over_the_limit(tmp_path, caplog):
    """A handshake the proxy refuses ends the connection as a message over the limit does (0MQ retries
    neither): it is logged once as an error and tried again at growing intervals, never counted as a message."""
    with _curve_publisher(tmp_path, allow_reader=False) as (pub, port, curve):
        with _reading(f"127.0.0.1:{port}", curve_config=curve) as (dispatcher, thread, seen):
            deadline = time.monotonic() + 4.5 * RECONNECT_GRACE_S
            while time.monotonic() < deadline:
                pub.send(b"src stop " + msgpack_dumps({"uid": "x"}))
                time.sleep(0.1)
    assert seen == [] and dispatcher.bad_messages == 0 == dispatcher.dropped_connections
    assert 2 <= dispatcher.refused_handshakes <= 3   # tried again after 1, 2 (and 4) s
    assert caplog.text.count("the handshake with") == 1 and "HANDSHAKE_FAILED" in caplog.text


def test_over_curve_a_message_over_the_limit_is_counted_and_the_connection_keeps_its_keys(tmp_path):
    with _curve_publisher(tmp_path, allow_reader=True) as (pub, port, curve):
        with _reading(f"127.0.0.1:{port}", curve_config=curve, max_message_mb=0.01) as (dispatcher, thread, seen):
            _send_until_seen(pub, seen, "before")
            pub.send(HUGE)
            _wait(lambda: dispatcher.dropped_connections > 0)
            _send_until_seen(pub, seen, "after")
    assert seen[0].startswith("before") and seen[-1].startswith("after") and "huge" not in seen
    assert dispatcher.dropped_connections == 1 == dispatcher.bad_messages and dispatcher.refused_handshakes == 0


def test_a_message_over_the_limit_just_before_the_stop_is_still_counted(proxy):
    pin, pout = proxy
    with _reading(f"127.0.0.1:{pout}", max_message_mb=0.01) as (dispatcher, thread, seen), _sender(pin) as sender:
        _huge_after_one_read(dispatcher, thread, seen, sender)
        time.sleep(0.3 * RECONNECT_GRACE_S)   # stopped within the grace time
    assert dispatcher.dropped_connections == 1 == dispatcher.bad_messages
