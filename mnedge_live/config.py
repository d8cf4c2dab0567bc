"""Options of the live service: one dataclass, loaded from TOML, overridden by flags, validated at start.

Every bad option is refused with a :class:`ConfigError` whose message names the option.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MODES = ("spectrum", "step")
#: Default ``max_message_mb``: a 4096-pixel row of 4096-channel float64 spectra is 128 MiB.
DEFAULT_MAX_MESSAGE_MB = 256.0
#: Largest ``max_message_mb`` accepted (64 GiB).
MAX_MESSAGE_MB = 65536
#: Default ``maps_dir`` (relative to the working directory); ``--plot DIR`` alone puts the maps in DIR.
DEFAULT_MAPS_DIR = "mnedge_maps"
#: Shortest ``run_timeout_s`` (seconds) other than 0 (off): shorter ones closed runs between their
#: events and turned the service into a busy loop (it checks for silent runs every timeout / 4).
MIN_RUN_TIMEOUT_S = 1.0
#: Longest ``run_timeout_s`` (seconds): a week.
MAX_RUN_TIMEOUT_S = 7 * 86400
#: Values of ``backend``: ``"auto"`` and :data:`mnedge_live.engine.backends.BACKEND_ORDER`.
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


def _number(v: Any) -> bool:
    """An int or a float, not a bool (``True`` is an int to Python, not a number to whoever wrote it)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    """An int, not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (optionally ``tcp://`` in front, IPv6 hosts in brackets) -> (host, port).

    These are the 0MQ proxy addresses the service connects to (``in_address``,
    ``out_address``); what is refused here would stop the service at start-up
    (0MQ refuses it) or connect to no port at all.

    Raises
    ------
    ValueError
        Not a string, blanks in it, a scheme other than ``tcp://``, no host, ``*`` as host
        (it only binds), no port, or a port that is not an integer in 1..65535.
    """
    if not isinstance(address, str):
        raise ValueError(f"{address!r} is not a string HOST:PORT")
    if not address or any(c.isspace() for c in address):
        raise ValueError(f"{address!r} is not [tcp://]HOST:PORT (no blanks)")
    text = address
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    elif "://" in text:
        raise ValueError(f"{address!r}: only tcp:// 0MQ addresses are supported ([tcp://]HOST:PORT)")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not [tcp://]HOST:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{address!r}: unbalanced brackets around the host")
    if host.startswith("["):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{address!r} is not [tcp://]HOST:PORT")
    if host == "*":
        raise ValueError(f"{address!r}: '*' only binds; give the host the proxy runs on")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"{address!r}: port {port!r} is not a number")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"{address!r}: port {number} is outside 1..65535")
    return host, number


class ConfigError(ValueError):
    """A bad option; the message starts with the option's name."""


def certificate_problem(path: str, secret: bool) -> str | None:
    """Why ``path`` is not a usable CurveZMQ certificate file; None when it is.

    Parameters
    ----------
    path : str
        A file made by ``zmq.auth.create_certificates``: ``NAME.key`` (public) or
        ``NAME.key_secret`` (public and secret key).
    secret : bool
        The secret key is needed too (``curve_secret_key``), not only the public one.
    """
    import zmq.auth
    from zmq.utils import z85

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        return f"not a CurveZMQ certificate file ({exc})"
    if secret and secret_key is None:
        return ("holds no secret key (a public certificate?): give the NAME.key_secret file "
                "made by zmq.auth.create_certificates")
    for label, key in (("public-key", public), ("secret-key", secret_key if secret else None)):
        if key is None:
            continue
        try:
            good = len(z85.decode(key)) == 32
        except Exception:  # z85 raises KeyError, ValueError or struct.error on what is not Z85
            good = False
        if not good:
            return f"its {label} is not a 40-character Z85 CurveZMQ key"
    return None


@dataclass
class LiveConfig:
    """Every option of ``mnedge live`` (TOML keys use the same names).

    Attributes
    ----------
    in_address, out_address : str
        0MQ proxy addresses: where source documents come from (the proxy's
        subscriber side) and where derived documents go (its publisher side).
        ``HOST:PORT``, optionally with ``tcp://`` in front (IPv6 hosts in brackets),
        port 1..65535 (see :func:`parse_address`).
    mode : str
        ``"spectrum"`` (one spectrum per event) or ``"step"`` (one energy point per event).
    stream : str
        Source stream read (others are ignored).
    detectors : list of str or None
        Only runs whose start document lists one of these detectors are read
        (None: every run), so several services can share one proxy.  An empty
        list (no run read) is refused.
    spectrum_field : str or None
        Array field holding a spectrum; None picks the first 1-D array field of the descriptor.
    energy_field : str or None
        Spectrum mode: array field (event data or descriptor configuration) with the energy
        axis.  Step mode: the energy readback field (None: the first hinted motor).
    dispersion_field, offset_field : str or None
        Spectrum mode: scalar fields (event data or descriptor configuration) giving
        ``energy = offset + dispersion * channel``.
    energy_axis : list of float or None
        Spectrum mode: a fixed energy axis (not together with ``dispersion_eV``/``offset_eV``).
    dispersion_eV, offset_eV : float or None
        Spectrum mode: fixed dispersion and offset, given together (not with ``energy_axis``).
    signal_field, norm_field : str or None
        Step mode: detector field and optional I0 field it is divided by.
    pixel_fields : list of str or None
        Spectrum images: two integer fields (row, column) giving the pixel; by default
        the pixel follows from the start document's ``shape``.  A pixel whose index would
        grow the map past :data:`~mnedge_live.map_geometry.MAX_MAP_PIXELS` (4096 x 4096) pixels
        in total is rejected with the reason.
    map_bin : int
        Spectrum images: besides every pixel, read out the mean spectrum of each
        ``map_bin x map_bin`` block of pixels as soon as the scan completes it (stream
        ``mnedge_binned``, maps ``*_binK``): about ``20 log10(map_bin)`` dB more PSNR for
        low-dose images whose single pixels are too noisy.  1: off; more than 1 is
        refused in step mode (no pixels to bin).
    max_batch : int
        Most spectra per engine call.
    max_delay_ms : float
        Longest time a spectrum waits for its batch (0..10000; numbers here and below
        are refused when given as booleans).
    max_message_mb : float
        Largest 0MQ message read (MiB, more than 0 up to 65536): a larger one is dropped
        unread, counted in ``bad_messages`` and logged, and the connection 0MQ cuts for
        it is made again (its events count as missed).  One message never makes the
        service allocate more (see :mod:`mnedge_live.dispatching`).
    step_readout_every : int
        Step mode: read out every this many new points once L3 and L2 are covered.
    l3_window_eV, l2_window_eV : list of float
        Step mode: the scan covers the edge once it has points at or below the L3
        window's low end and at or above the L2 window's high end.  Each is ``[low, high]``
        (finite, low < high); the L2 window lies above the L3 window (both ends higher).
    maps_dir, plot_dir : str or None
        Where spectrum-image maps (HDF5 + PNG) and readout plots are written; None or ``""``:
        none are written (the derived rows carry every pixel's readout all the same).
        ``plot_dir`` alone (``maps_dir`` left at ``"mnedge_maps"``) takes the maps too
        (:meth:`maps_folder`).  Folders are made when first needed; ``--check`` tells one
        that cannot be made or written to (under a regular file, no permission).
    serializer : str
        ``"msgpack"`` or ``"pickle"``.
    allow_pickle : bool
        Permit the pickle wire format; refused with ``serializer = "msgpack"``, where it
        would mean nothing.
    epics_prefix : str or None
        Serve the latest readout as PVs with this prefix.
    epics_mode : str
        ``"ioc"`` (caproto soft IOC started by the service) or ``"pyepics"`` (write to an existing IOC).
    epics_interfaces : list of str
        Addresses the soft IOC binds to (IPv4; empty: ``127.0.0.1``).  ``--check`` binds a TCP
        and a UDP socket on each (port 0) and fails for one this host cannot bind.
    model_path : str or None
        Model artifact directory (None: the model in use in the store, else the embedded one).
    backend : str
        Engine backend: one of :data:`BACKENDS` (``"auto"``, ``"tensorrt"``, ``"onnxruntime"``, ``"torch"``).
    out_prefix : str
        0MQ prefix of the derived documents; messages with it are never processed.
    run_timeout_s : float or None
        A source run that sends no document for this many seconds (its publisher died,
        no stop document will come) is closed: its derived run gets a stop document with
        ``exit_status="fail"`` and the counts so far.  None or 0: wait forever.  Otherwise
        1 s (:data:`MIN_RUN_TIMEOUT_S`) to a week: a shorter one closed runs between their
        events and kept the service busy checking for silent runs.
    curve_secret_key, curve_server_public_key : str or None
        CurveZMQ: this service's certificate with its secret key and the public
        certificate of the proxy side it subscribes to (files made by
        ``zmq.auth.create_certificates``: ``NAME.key_secret`` and ``NAME.key``; the
        keys in them are checked at validation, a public certificate given as the
        secret key is refused).  Given together, the connection the source
        documents arrive on is encrypted and authenticated (proxy started with
        ``--out-curve-secret``).  None: plain 0MQ.
    curve_out_server_public_key : str or None
        CurveZMQ for the connection the derived documents leave on: public
        certificate of the proxy side they are published to (``--in-curve-secret``).
        With ``curve_secret_key``, alone or besides ``curve_server_public_key``: each
        connection is secured on its own (a server public key without the secret key, or
        the secret key without either server public key, is refused).  bluesky 1.15's
        proxy cannot secure both of its sides in one process (its two ZAP authenticators
        collide), hence two options.
    """

    in_address: str = "127.0.0.1:5568"
    out_address: str = "127.0.0.1:5567"
    mode: str = "spectrum"
    stream: str = "primary"
    detectors: list[str] | None = None
    spectrum_field: str | None = None
    energy_field: str | None = None
    dispersion_field: str | None = None
    offset_field: str | None = None
    energy_axis: list[float] | None = None
    dispersion_eV: float | None = None
    offset_eV: float | None = None
    signal_field: str | None = None
    norm_field: str | None = None
    pixel_fields: list[str] | None = None
    map_bin: int = 1
    max_batch: int = 256
    max_delay_ms: float = 5.0
    max_message_mb: float = DEFAULT_MAX_MESSAGE_MB
    step_readout_every: int = 1
    l3_window_eV: list[float] = field(default_factory=lambda: [636.0, 646.0])
    l2_window_eV: list[float] = field(default_factory=lambda: [648.0, 658.0])
    maps_dir: str | None = DEFAULT_MAPS_DIR
    plot_dir: str | None = None
    serializer: str = "msgpack"
    allow_pickle: bool = False
    epics_prefix: str | None = None
    epics_mode: str = "ioc"
    epics_interfaces: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    model_path: str | None = None
    backend: str = "auto"
    out_prefix: str = "mnedge"
    run_timeout_s: float | None = 600.0
    curve_secret_key: str | None = None
    curve_server_public_key: str | None = None
    curve_out_server_public_key: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def maps_folder(self) -> str | None:
        """Where spectrum-image maps are written: ``maps_dir``, or ``plot_dir`` when ``maps_dir`` is
        left at its default (``--plot DIR`` alone puts maps and plots together); None or ``""``: none."""
        if self.plot_dir and self.maps_dir == DEFAULT_MAPS_DIR:
            return self.plot_dir
        return self.maps_dir

    @classmethod
    def names(cls) -> list[str]:
        """All option names."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                     unused: tuple[str, ...] = ()) -> LiveConfig:
        """Options from a TOML file, then ``overrides`` (flags; None values are ignored).

        ``unused``: options the caller does not use, left out of the file's values (they are
        neither read nor checked: ``mnedge replay`` reads a live service's file without its
        addresses, EPICS and CurveZMQ key files, which may exist only on the service's host).

        The file holds the options either under a ``[live]`` table (then nothing else:
        another table or a top-level key beside it is refused, naming it) or at its top
        level, without tables.

        Raises
        ------
        ConfigError
            Unknown or invalid option, or an unreadable file.
        """
        values: dict[str, Any] = {}
        if toml_path is not None:
            try:
                with open(toml_path, "rb") as fh:
                    data = tomllib.load(fh)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"config: cannot read {toml_path}: {exc}") from exc
            if "live" in data:
                outside = [k for k in data if k != "live"]
                data = data["live"]
                if not isinstance(data, dict):
                    raise ConfigError(f"live: must be a table ([live] with the options under it) in {toml_path}, "
                                      f"got {type(data).__name__} {data!r}")
                if outside:
                    raise ConfigError(f"{', '.join(outside)}: outside the [live] table in {toml_path}: a file with "
                                      "a [live] table holds every option under it, and no other key or table")
            for k, v in data.items():
                key = k.replace("-", "_")
                if key not in cls.names():
                    raise ConfigError(f"{k}: unknown option in {toml_path} (known: {', '.join(cls.names())})")
                if key not in unused:
                    values[key] = v
        for k, v in (overrides or {}).items():
            if v is not None:
                values[k] = v
        return cls(**values)

    def validate(self) -> None:
        """Check every option; raise :class:`ConfigError` naming the first bad one."""
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{name}: {msg} (got {getattr(self, name)!r})")

        for name in ("in_address", "out_address", "stream", "out_prefix", "backend"):
            need(isinstance(getattr(self, name), str) and bool(getattr(self, name)), name, "must be a non-empty string")
        ends = {}
        for name in ("in_address", "out_address"):
            try:
                ends[name] = parse_address(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        need(ends["in_address"] != ends["out_address"], "out_address",
             "is in_address: the service subscribes to the proxy's output and publishes to its input, two ports")
        need(b" " not in self.out_prefix.encode(), "out_prefix", "may not contain spaces")
        need(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}")
        need(self.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}")
        for name in ("spectrum_field", "energy_field", "dispersion_field", "offset_field", "signal_field",
                     "norm_field", "epics_prefix", "model_path"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, str) and v != ""), name, "must be a non-empty string")
        for name in ("maps_dir", "plot_dir"):   # "" (TOML has no None): none written
            v = getattr(self, name)
            need(v is None or isinstance(v, str), name, 'must be a folder (a string; "" for none)')
        for name in ("dispersion_eV", "offset_eV"):
            v = getattr(self, name)
            need(v is None or (_number(v) and math.isfinite(v)), name, "must be a finite number")
        need(self.dispersion_eV is None or self.dispersion_eV != 0, "dispersion_eV", "must not be zero")
        need((self.dispersion_eV is None) == (self.offset_eV is None), "offset_eV",
             "dispersion_eV and offset_eV must be given together")
        if self.energy_axis is not None:
            ok = isinstance(self.energy_axis, list) and len(self.energy_axis) >= 2 and all(
                _number(v) and math.isfinite(v) for v in self.energy_axis)
            need(ok, "energy_axis", "must be a list of at least two finite numbers")
            need(self.dispersion_eV is None and self.offset_eV is None, "energy_axis",
                 "give either energy_axis or dispersion_eV/offset_eV (two fixed energy axes), not both")
        if self.detectors is not None:
            need(isinstance(self.detectors, list) and len(self.detectors) > 0
                 and all(isinstance(v, str) and v for v in self.detectors),
                 "detectors", "must be a non-empty list of detector names (leave it out to read every run: "
                 "an empty list reads none)")
        if self.pixel_fields is not None:
            need(isinstance(self.pixel_fields, list) and len(self.pixel_fields) == 2
                 and all(isinstance(v, str) and v for v in self.pixel_fields), "pixel_fields",
                 "must be two field names (row, column)")
            need(self.pixel_fields[0] != self.pixel_fields[1], "pixel_fields",
                 "names one field twice: row and column would always be equal")
        need(isinstance(self.map_bin, int) and not isinstance(self.map_bin, bool) and 1 <= self.map_bin <= 64,
             "map_bin", "must be an integer in 1..64")
        need(self.map_bin == 1 or self.mode == "spectrum", "map_bin",
             "bins the pixels of spectrum images, mode 'spectrum' only: a step scan has none (give 1)")
        need(isinstance(self.max_batch, int) and not isinstance(self.max_batch, bool) and 1 <= self.max_batch <= 65536,
             "max_batch", "must be an integer in 1..65536")
        need(_number(self.max_delay_ms) and 0 <= self.max_delay_ms <= 10_000, "max_delay_ms",
             "must be a number of milliseconds in 0..10000")
        need(_number(self.max_message_mb) and 0 < self.max_message_mb <= MAX_MESSAGE_MB, "max_message_mb",
             f"must be a number of MiB, more than 0 up to {MAX_MESSAGE_MB}")
        need(_integer(self.step_readout_every) and self.step_readout_every >= 1, "step_readout_every",
             "must be a positive integer")
        for name in ("l3_window_eV", "l2_window_eV"):
            v = getattr(self, name)
            need(isinstance(v, list) and len(v) == 2 and all(_number(x) and math.isfinite(x) for x in v)
                 and v[0] < v[1], name, "must be [low, high], two finite numbers in eV, low < high")
        need(self.l3_window_eV[0] < self.l2_window_eV[0] and self.l3_window_eV[1] < self.l2_window_eV[1],
             "l2_window_eV", f"must lie above l3_window_eV {self.l3_window_eV!r} (L2 is about 11 eV above L3)")
        need(self.serializer in ("msgpack", "pickle"), "serializer", "must be 'msgpack' or 'pickle'")
        need(isinstance(self.allow_pickle, bool), "allow_pickle", "must be true or false")
        need(self.serializer != "pickle" or self.allow_pickle, "serializer",
             "pickle executes code from the network when loaded; give allow_pickle (--allow-pickle) to use it")
        need(not self.allow_pickle or self.serializer == "pickle", "allow_pickle",
             "permits serializer 'pickle' only; with 'msgpack' nothing is ever unpickled: leave it out")
        need(self.run_timeout_s is None or (_number(self.run_timeout_s) and (
            self.run_timeout_s == 0 or MIN_RUN_TIMEOUT_S <= self.run_timeout_s <= MAX_RUN_TIMEOUT_S)),
             "run_timeout_s", f"must be 0 (no timeout) or a number of seconds in {MIN_RUN_TIMEOUT_S:g}.."
             f"{MAX_RUN_TIMEOUT_S}: shorter timeouts close runs between their events and keep the service "
             "busy checking for silent runs")
        for name in ("curve_secret_key", "curve_server_public_key", "curve_out_server_public_key"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, str) and Path(v).is_file()), name, "must be an existing key file")
            problem = None if v is None else certificate_problem(v, secret=name == "curve_secret_key")
            need(problem is None, name, problem or "")
        # each connection is secured on its own: this service's secret key plus the public key of its proxy side
        for name in ("curve_server_public_key", "curve_out_server_public_key"):
            need(getattr(self, name) is None or self.curve_secret_key is not None, name,
                 "needs curve_secret_key (this service's secret certificate)")
        need(self.curve_secret_key is None or self.curve_server_public_key is not None
             or self.curve_out_server_public_key is not None, "curve_server_public_key",
             "curve_secret_key secures nothing alone: give curve_server_public_key (the subscription, --in) "
             "and/or curve_out_server_public_key (the publication, --out)")
        need(self.epics_mode in ("ioc", "pyepics"), "epics_mode", "must be 'ioc' or 'pyepics'")
        need(isinstance(self.epics_interfaces, list) and all(isinstance(v, str) for v in self.epics_interfaces),
             "epics_interfaces", "must be a list of addresses")
