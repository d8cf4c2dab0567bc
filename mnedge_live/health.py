"""Pre-flight checks of ``mnedge live --check``: configuration, model, proxy addresses,
output folders and the soft IOC's interfaces.

A 0MQ SUB or PUB socket "connects" even when nothing listens (it retries in
the background), so the proxy is checked with a plain TCP connection to each
address with a short timeout: that is what tells a wrong host or port, or a
proxy that is not running, before the service is started.  The plot and map
folders are looked at, not made: the nearest existing folder on each path must be
a folder the service may write into.  The soft IOC's addresses (``epics_interfaces``,
with ``epics_prefix`` and ``epics_mode = "ioc"``) are bound on port 0 by a TCP and a
UDP socket, as caproto binds them (IPv4): an address the host does not have would
stop the service at start-up.  With ``epics_mode = "pyepics"`` every PV the service
writes is connected to over Channel Access: the site's IOC must serve them (some at
least: the ones it lacks are noted, the service skips them), writable and of a record
type that keeps what is written (``deploy/epics/mnedge_readout.db``); it must be up, as
the proxy must.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnedge_live.config import parse_address

#: Seconds a TCP connection to a proxy address may take.
CONNECT_TIMEOUT_S = 2.0
#: Seconds the PVs of a site's IOC may take to connect, all together (Channel Access searches by UDP and
#: retries with a back-off: one of the test suite's checks saw none of 21 PVs within 2 s under load).
PV_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """Outcome of one check: its name, whether it passed, and what was found or what is wrong."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """One printable line: ``ok   NAME: DETAIL`` or ``FAIL NAME: DETAIL``."""
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check_config(toml_path: str | None, overrides: dict[str, Any]) -> tuple[Check, Any]:
    """Load and validate the options; returns the check and the config (None when invalid)."""
    from mnedge_live.config import ConfigError, LiveConfig

    try:
        config = LiveConfig.from_sources(toml_path, overrides)
    except (ConfigError, TypeError) as exc:
        return Check("config", False, str(exc)), None
    source = toml_path or "defaults and flags"
    return Check("config", True, f"{source} is valid (mode {config.mode})"), config


def check_model(model_path: str | None, backend: str) -> Check:
    """Load and verify the model (the store's model in use or the embedded one when no path) on ``backend``."""
    from mnedge_live.engine import load_engine

    try:
        engine = load_engine(model_path, backend=backend, warmup=True)
    except Exception as exc:  # any reason the service could not start with this model
        return Check("model", False, f"cannot load the model: {exc}")
    return Check("model", True, f"{engine.model_id} from {engine.artifact.path} on {engine.backend_name}")


def check_address(name: str, address: str, timeout: float = CONNECT_TIMEOUT_S) -> Check:
    """Open (and close) a TCP connection to a proxy address."""
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        return Check(name, False, str(exc))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return Check(name, False, f"nothing accepts a connection at {host}:{port} ({reason}); "
                                  "is the 0MQ proxy running there?")
    except (UnicodeError, ValueError) as exc:   # a host name the resolver cannot encode ("bad..host")
        return Check(name, False, f"{host!r} is not a valid host name: {exc}")
    return Check(name, True, f"{host}:{port} accepts connections")


def check_folder(name: str, path: str) -> Check:
    """Whether the service can make the folder ``path`` (or write into it when it exists); nothing is made here.

    Parameters
    ----------
    name : str
        The option (``plot_dir``, ``maps_dir``).
    path : str
        The folder, relative to the working directory or absolute.
    """
    target = Path(path).absolute()
    probe = target
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        is_dir = probe.is_dir()
    except OSError as exc:
        return Check(name, False, f"cannot look at {probe}: {exc.strerror or exc}")
    if not is_dir:
        what = "is not a folder" if probe == target else "is not a folder, so nothing can be made under it"
        return Check(name, False, f"{target} cannot be used: {probe} {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        return Check(name, False, f"{target} cannot be {'written to' if probe == target else 'made'}: "
                                  f"no permission to write in {probe}")
    if probe == target:
        return Check(name, True, f"{target} is a folder the service may write into")
    return Check(name, True, f"{target} can be made (in {probe})")


def check_interfaces(interfaces: list[str]) -> Check:
    """Bind (and close) a TCP and a UDP socket on port 0 of each soft IOC address (``epics_interfaces``)."""
    addresses = interfaces or ["127.0.0.1"]   # what SoftIOC binds for an empty list
    problems = []
    for address in addresses:
        for kind, label in ((socket.SOCK_STREAM, "TCP"), (socket.SOCK_DGRAM, "UDP")):
            try:
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind((address, 0))
            except OSError as exc:  # an address the host does not have, a name that does not resolve
                problems.append(f"{address!r} ({label}: {exc.strerror or exc})")
                break
            except (UnicodeError, ValueError, TypeError) as exc:  # a name the resolver cannot encode
                problems.append(f"{address!r} ({exc})")
                break
    if problems:
        return Check("epics_interfaces", False, f"this host cannot bind {', '.join(problems)}: the soft IOC "
                                                "would stop the service at start-up")
    return Check("epics_interfaces", True, f"{', '.join(addresses)} can be bound (TCP and UDP)")


def check_site_pvs(prefix: str, timeout: float = PV_CONNECT_TIMEOUT_S) -> Check:
    """Connect to every PV the pyepics writer writes (``epics_mode = "pyepics"``), all within ``timeout``.

    Fails when no IOC serves any of them (a wrong prefix, an IOC that is down), and names the served
    PVs that clients may not write or whose record type would damage what is written (a number
    rounded by an integer record, a reason cut to an EPICS string). PVs not served pass with a note:
    the service skips each with one warning (an IOC made for an older PV list lacks the newer ones).
    """
    import epics

    from mnedge_live.epics import (
        BINNED_FLOAT_PVS,
        COUNT_PVS,
        FLOAT_PVS,
        LONG_STRING,
        LONG_STRING_PVS,
        MAX_STRING,
        connect_all,
        written_pvs,
    )

    pvs = connect_all({name: epics.PV(prefix + name, auto_monitor=False) for name in written_pvs()}, timeout)
    try:
        served = {n: pv for n, pv in pvs.items() if pv.connected}
        native = {n: str(pv.type).rsplit("_", 1)[-1] for n, pv in served.items()}   # "time_double": double
        counts = {n: int(pv.nelm) for n, pv in served.items()}
        writable = {n: bool(pv.write_access) for n, pv in served.items()}
    finally:
        for pv in pvs.values():
            pv.disconnect()
    if not served:
        return Check("epics_pvs", False, f"no IOC serves any of the {len(pvs)} PVs under {prefix} (within "
                                         f"{timeout:g} s); is the site's IOC running with them?")

    def expected(name: str) -> tuple[set[str], str]:
        if name in FLOAT_PVS or name in BINNED_FLOAT_PVS:
            return {"double", "float"}, "a floating-point number"
        if name in COUNT_PVS:
            return {"long", "double"}, "a 32-bit integer or a number"
        if name in LONG_STRING_PVS:
            return {"char"}, f"a char array of more than {MAX_STRING + 1} elements"
        return {"string"}, "a string"

    wrong = [f"{prefix}{n} ({native[n]}, {counts[n]} element(s); expected {expected(n)[1]})" for n in served
             if native[n] not in expected(n)[0] or (n in LONG_STRING_PVS and counts[n] <= MAX_STRING + 1)]
    read_only = [prefix + n for n in served if not writable[n]]
    problems = []
    if read_only:
        problems.append(f"clients may not write {', '.join(read_only)}")
    if wrong:
        problems.append(f"wrong record type: {', '.join(wrong)}")
    if problems:
        return Check("epics_pvs", False, "; ".join(problems) + " (deploy/epics/mnedge_readout.db has every record)")
    notes = []
    missing = [prefix + n for n in pvs if n not in served]
    if missing:
        notes.append(f"not served, skipped with a warning each: {', '.join(missing)}")
    short = [f"{prefix}{n} ({counts[n]})" for n in LONG_STRING_PVS if n in served and counts[n] < LONG_STRING]
    if short:
        notes.append(f"texts longer than these arrays are cut: {', '.join(short)}")
    wrapping = [prefix + n for n in COUNT_PVS if n in served and native[n] == "long"]
    if wrapping:
        notes.append(f"32-bit counters, negative after 2**31 counts: {', '.join(wrapping)}")
    detail = f"{len(served)} of {len(pvs)} PVs under {prefix} are served and writable"
    return Check("epics_pvs", True, detail + ("; " + "; ".join(notes) if notes else ""))


def run_checks(toml_path: str | None, overrides: dict[str, Any], timeout: float = CONNECT_TIMEOUT_S) -> list[Check]:
    """Every check in order; stops after the configuration check when the configuration is invalid.

    After the configuration: the model, both proxy addresses, ``plot_dir`` (when set), the
    folder maps are written to (spectrum mode, when not ``plot_dir``; see
    :meth:`~mnedge_live.config.LiveConfig.maps_folder`) and, for a soft IOC, ``epics_interfaces``, for
    a site's IOC (``epics_mode = "pyepics"``) its PVs.
    """
    first, config = check_config(toml_path, overrides)
    if config is None:
        return [first]
    checks = [first,
              check_model(config.model_path, config.backend),
              check_address("in_address", config.in_address, timeout),
              check_address("out_address", config.out_address, timeout)]
    if config.plot_dir:
        checks.append(check_folder("plot_dir", config.plot_dir))
    maps = config.maps_folder()
    if config.mode == "spectrum" and maps and maps != config.plot_dir:   # step scans make no maps
        checks.append(check_folder("maps_dir", maps))
    if config.epics_prefix and config.epics_mode == "ioc":
        checks.append(check_interfaces(config.epics_interfaces))
    if config.epics_prefix and config.epics_mode == "pyepics":
        checks.append(check_site_pvs(config.epics_prefix, max(timeout, PV_CONNECT_TIMEOUT_S)))
    return checks
