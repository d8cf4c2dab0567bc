"""``mnedge live``: the live valence service (see :mod:`mnedge_live.service`).

With ``--check`` it only runs the pre-flight checks of :mod:`mnedge_live.health`
(options, model, proxy addresses, output folders, soft IOC interfaces) and exits 0 (all pass), 1 (one fails) or 2
(bad options), as the systemd unit's ``ExecStartPre`` does.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mnedge live``."""
    p = subparsers.add_parser("live", help="read the Mn valence of Bluesky documents live (0MQ in, 0MQ out)")
    p.add_argument("--in", dest="in_address", help="0MQ proxy address to subscribe to (its subscriber side)")
    p.add_argument("--out", dest="out_address", help="0MQ proxy address to publish derived documents to")
    add_reading_options(p)
    p.add_argument("--serializer", help="msgpack (default) | pickle")
    p.add_argument("--allow-pickle", dest="allow_pickle", action="store_true", default=None,
                   help="permit the pickle wire format (it executes code from the network)")
    p.add_argument("--epics-prefix", dest="epics_prefix", help="serve the latest readout as EPICS PVs")
    p.add_argument("--run-timeout", dest="run_timeout_s", type=float,
                   help="close a source run as failed after this many seconds without a document "
                        "(at least 1; 0: never; default 600)")
    p.add_argument("--max-message-mb", dest="max_message_mb", type=float,
                   help="largest 0MQ message read, in MiB (default 256): a larger one is dropped, counted and "
                        "logged, and the connection it cut is made again")
    p.add_argument("--curve-secret-key", dest="curve_secret_key",
                   help="CurveZMQ: this service's secret certificate file (with --curve-server-public-key "
                        "and/or --curve-out-server-public-key)")
    p.add_argument("--curve-server-public-key", dest="curve_server_public_key",
                   help="CurveZMQ: public certificate file of the proxy side subscribed to (--in)")
    p.add_argument("--curve-out-server-public-key", dest="curve_out_server_public_key",
                   help="CurveZMQ: public certificate file of the proxy side published to (--out)")
    p.add_argument("--check", action="store_true",
                   help="only check the options, the model, the proxy addresses, the plot/map folders and the "
                        "soft IOC's interfaces; print one line per check "
                        "and exit 0 when all pass, 1 when one fails, 2 for bad options")
    p.set_defaults(run=run)
    return p


def add_reading_options(p: argparse.ArgumentParser) -> None:
    """The options that say how documents are read and where readouts go (``live`` and ``replay`` share them).

    Each one's ``dest`` is a :class:`~mnedge_live.config.LiveConfig` name, so a flag given
    overrides the same option of the ``--config`` file.
    """
    p.add_argument("--config", help="TOML file with any option (flags override it)")
    p.add_argument("--mode", help="spectrum | step")
    p.add_argument("--spectrum-field", dest="spectrum_field")
    p.add_argument("--energy-field", dest="energy_field")
    p.add_argument("--signal-field", dest="signal_field")
    p.add_argument("--norm-field", dest="norm_field")
    p.add_argument("--map-bin", dest="map_bin", type=int,
                   help="spectrum images: also read out the mean of each K x K block of pixels (low dose)")
    p.add_argument("--maps-dir", dest="maps_dir",
                   help='where spectrum-image maps are written ("" for none; default: live mnedge_maps, replay '
                        'mnedge_replay_maps; with --plot DIR alone, DIR)')
    p.add_argument("--plot", dest="plot_dir", help="write readout plots (and maps) into this folder")
    p.add_argument("--model", dest="model_path", help="model artifact directory (default: the model in use in the store, MNEDGE_HOME, else the embedded one)")
    p.add_argument("--backend", help="engine backend (auto, onnxruntime, torch, tensorrt)")


def config_and_engine(args: argparse.Namespace, command: str, unused: tuple[str, ...] = ()) -> tuple[Any, Any] | None:
    """The options (the ``--config`` file, then the flags) and the engine they name.

    None after printing why not to stderr (a bad option, a model that cannot be loaded):
    a usage error, exit status 2, for ``command`` (``live``, ``replay``). ``unused``: options
    of the file that ``command`` does not use (see :meth:`~mnedge_live.config.LiveConfig.from_sources`).
    """
    from mnedge_live.config import ConfigError, LiveConfig

    overrides = {k: v for k, v in vars(args).items() if k in LiveConfig.names()}
    try:
        config = LiveConfig.from_sources(args.config, overrides, unused=unused)
    except (ConfigError, TypeError) as exc:
        print(f"mnedge {command}: bad option: {exc}", file=sys.stderr)
        return None
    from mnedge_live.engine import load_engine

    try:
        return config, load_engine(config.model_path, backend=config.backend)
    except Exception as exc:
        print(f"mnedge {command}: cannot load the model: {exc}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Validate the options, load the engine, serve until SIGTERM."""
    if getattr(args, "check", False):
        from mnedge_live.config import LiveConfig

        return _check(args.config, {k: v for k, v in vars(args).items() if k in LiveConfig.names()})
    loaded = config_and_engine(args, "live")
    if loaded is None:
        return 2
    config, engine = loaded
    epics = None
    if config.epics_prefix:
        from mnedge_live.epics import PyepicsWriter, SoftIOC

        if config.epics_mode == "ioc" and all(i.startswith("127.") for i in config.epics_interfaces):
            # an IOC served on loopback only announces itself (CA beacons) on loopback only
            os.environ.setdefault("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
            os.environ.setdefault("EPICS_CAS_BEACON_ADDR_LIST", " ".join(config.epics_interfaces))
        try:
            epics = (SoftIOC(config.epics_prefix, config.epics_interfaces).start() if config.epics_mode == "ioc"
                     else PyepicsWriter(config.epics_prefix))
        except RuntimeError as exc:
            print(f"mnedge live: cannot serve the EPICS PVs: {exc}", file=sys.stderr)
            return 2
    from mnedge_live.service import serve

    try:
        return serve(config, engine, epics=epics, ready=ready)
    finally:
        if epics is not None:
            epics.stop()


def ready() -> None:
    """Called once the service listens: hide what start-up made from the garbage collector, then say so.

    The model, the libraries and the service's own objects live as long as
    the process; a full collection walked them all, and one in 1,500 readouts
    took 75 ms instead of 1.6 ms (benchmarks/RESULTS.md). ``gc.freeze`` moves
    them to a generation that collections skip.
    """
    gc.freeze()
    print("mnedge live: ready", flush=True)


def _check(config_path: str | None, overrides: dict) -> int:
    """``--check``: print every check of :mod:`mnedge_live.health`; 0 all ok, 1 one failed, 2 bad options."""
    from mnedge_live.health import run_checks

    checks = run_checks(config_path, overrides)
    for c in checks:
        print(c.line(), flush=True)
    if not checks[0].ok:
        return 2
    return 0 if all(c.ok for c in checks) else 1
