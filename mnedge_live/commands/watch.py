"""``mnedge watch``: live valence maps of the spectrum images that ``mnedge live`` services read out.

Subscribes to a 0MQ proxy (its subscriber side, as ``mnedge live --in``) and writes, for each
spectrum image, ``OUT/mnedge_<source uid>_live.h5`` and ``.png`` while its rows arrive
(every ``--every`` seconds) and once more at its stop (:mod:`mnedge_live.live_map`). A message
that cannot be read is counted and logged, never fatal. Stops on SIGINT/SIGTERM (writing the
maps of the images still open) or after ``--runs`` images. A proxy whose subscriber side is
secured with CurveZMQ is read with ``--curve-secret-key`` and ``--curve-server-public-key``,
as ``mnedge live`` reads it.

Exit status: 0, or 2 for a bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from mnedge_live.config import DEFAULT_MAX_MESSAGE_MB, MAX_MESSAGE_MB

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mnedge watch``."""
    p = subparsers.add_parser("watch", help="write live valence maps of the spectrum images being read out")
    p.add_argument("--in", dest="in_address", required=True,
                   help="the 0MQ proxy's subscriber side, HOST:PORT (as mnedge live --in)")
    p.add_argument("--out-dir", default="mnedge_live_maps", help="where the maps are written")
    p.add_argument("--every", type=float, default=2.0, help="seconds between two writes of a map (default 2)")
    p.add_argument("--runs", type=int, default=0, help="stop after this many spectrum images (0: until stopped)")
    p.add_argument("--serializer", default="msgpack", choices=("msgpack", "pickle"),
                   help="wire format of the proxy's documents (as mnedge live's)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickle, which executes code from the network (only on a trusted network)")
    p.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_MB,
                   help="largest 0MQ message read, in MiB (default 256; as mnedge live's)")
    p.add_argument("--curve-secret-key", help="CurveZMQ: this reader's secret certificate file")
    p.add_argument("--curve-server-public-key", help="CurveZMQ: the proxy's public certificate (its subscriber side)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Watch until stopped; 0, or 2 for a bad option."""
    from mnedge_live.config import parse_address
    from mnedge_live.dispatching import TolerantRemoteDispatcher
    from mnedge_live.live_map import LiveMapWatcher
    from mnedge_live.serializers import get_serializer

    try:
        try:
            parse_address(args.in_address)   # checked as mnedge live checks its own
        except ValueError as exc:
            raise ValueError(f"--in: {exc}") from None
        _, loads = get_serializer(args.serializer, args.allow_pickle)
        if not args.every > 0 or args.runs < 0:
            raise ValueError("--every must be more than 0 and --runs at least 0")
        if not 0 < args.max_message_mb <= MAX_MESSAGE_MB:
            raise ValueError(f"--max-message-mb must be more than 0 up to {MAX_MESSAGE_MB}")
        curve = _curve(args.curve_secret_key, args.curve_server_public_key)
    except ValueError as exc:
        print(f"mnedge watch: {exc}", file=sys.stderr)
        return 2
    watcher = LiveMapWatcher(args.out_dir, every_s=args.every)

    dispatcher = TolerantRemoteDispatcher(args.in_address, deserializer=loads, curve_config=curve,
                                          max_message_mb=args.max_message_mb)

    def stop() -> None:
        if dispatcher._task is not None:
            dispatcher._task.cancel()

    def on_document(name: str, doc: dict) -> None:
        before = len(watcher.written)
        watcher(name, doc)
        for path in watcher.written[before:]:
            print(f"wrote {path}", flush=True)
        if args.runs and watcher.finished >= args.runs:
            stop()

    dispatcher.subscribe(on_document)
    for sig in (signal.SIGTERM, signal.SIGINT):
        dispatcher.loop.add_signal_handler(sig, stop)
    dispatcher.loop.call_soon(lambda: print(f"mnedge watch: ready, maps in {args.out_dir}", flush=True))
    try:
        dispatcher.start()
    except asyncio.CancelledError:
        pass
    finally:
        watcher.close()
    print(f"mnedge watch stopped: {watcher.finished} image(s) finished, {len(watcher.written)} file(s) written, "
          f"{watcher.skipped} row(s)/document(s) and {dispatcher.bad_messages} message(s) not read", flush=True)
    return 0


def _curve(secret: str | None, server_public: str | None):
    """CurveZMQ client settings from the two certificate files (both or neither); None for plain 0MQ."""
    from pathlib import Path

    from bluesky.callbacks.zmq import ClientCurve

    from mnedge_live.config import certificate_problem

    if secret is None and server_public is None:
        return None
    if secret is None or server_public is None:
        raise ValueError("--curve-secret-key and --curve-server-public-key go together")
    for option, path, is_secret in (("--curve-secret-key", secret, True),
                                    ("--curve-server-public-key", server_public, False)):
        problem = certificate_problem(path, secret=is_secret)
        if problem:
            raise ValueError(f"{option}: {problem}")
    return ClientCurve(secret_path=Path(secret), server_public_key=Path(server_public))
