"""EPICS output of the latest readout, the ophyd device that reads it, and a feedback plan.

PVs (``PREFIX`` + name): ``VALENCE``, ``VALENCE_STD``, ``FRAC_MN2``, ``FRAC_MN3``,
``FRAC_MN4``, ``OOD_SCORE`` (how unlike the model's training spectra the last one
was; its threshold is in the model card), ``ENERGY_OFFSET`` and ``RESOLUTION`` (eV: the
model's estimate of the energy axis error at L3, axis reading minus truth, and of the
instrument resolution: a monochromator or spectrometer calibration check with every scan),
``STATUS`` (status and reason, cut to an EPICS string's 39 characters), ``REASON`` and
``FLAGS`` (the whole rejection reason and the comma-separated quality flags, as char
arrays of up to :data:`LONG_STRING` bytes: ``caget -S``; text in ASCII, which every EPICS client decodes alike), ``PROCESSED``, ``REJECTED``, ``MISSED``,
``READOUTS`` (increments with every readout, so a plan can wait for a new one) and
``FINAL_READOUTS`` (increments only with the final readout of a step scan, written after the
pixel PVs of that readout, since with ``step_readout_every`` the progressive readouts raise
``READOUTS`` during the scan) and ``FINAL_UID`` (the uid of the source run whose final readout the
pixel PVs show, written with them: a plan waits for its own scan's uid, so a late readout of an
earlier scan, or counters restarted with the service, cannot pass for it).  Spectrum images
read with ``map_bin`` also show their latest block readout (stream ``mnedge_binned``):
``BINNED_VALENCE``, ``BINNED_VALENCE_STD``, ``BINNED_STATUS`` and ``BINNED_READOUTS``; a block
row never changes the pixel PVs.

Served by a caproto soft IOC started in a thread (:class:`SoftIOC`), or written
to PVs of an existing IOC with pyepics (:class:`PyepicsWriter`).  The soft IOC gives every
number PV whose value is not a number (a rejected readout, or none yet) the alarm severity
INVALID with status UDF, as an EPICS record with an undefined value has, and NO_ALARM
otherwise: displays, archivers and alarm handlers see a refused readout as invalid, not as
a value.  An existing IOC's records set their own alarms.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignalRO

log = logging.getLogger(__name__)

#: Longest wait for the soft IOC to bind its sockets (seconds).
START_TIMEOUT_S = 10.0
#: Float PVs and the derived-row field each shows.
FLOAT_PVS = {"VALENCE": "valence", "VALENCE_STD": "valence_std", "FRAC_MN2": "frac_mn2",
             "FRAC_MN3": "frac_mn3", "FRAC_MN4": "frac_mn4", "OOD_SCORE": "ood_score",
             "ENERGY_OFFSET": "energy_offset_eV", "RESOLUTION": "resolution_eV"}
#: Float PVs of the latest block readout (``map_bin``) and the field each shows.
BINNED_FLOAT_PVS = {"BINNED_VALENCE": "valence", "BINNED_VALENCE_STD": "valence_std"}
#: Counter PVs and the total each shows (written after the float and string PVs of the same update;
#: served as doubles: exact to 2**53, where a 32-bit integer record wraps negative after 2**31).
COUNT_PVS = {"PROCESSED": "processed", "REJECTED": "rejected", "MISSED": "missed", "READOUTS": "readouts",
             "FINAL_READOUTS": "final_readouts", "BINNED_READOUTS": "binned_readouts"}
#: String PVs: the status of the latest readout and of the latest block readout.
STRING_PVS = ("STATUS", "BINNED_STATUS")
#: String PV with the source run uid of the latest final readout (written before the counters).
FINAL_UID_PV = "FINAL_UID"
#: Longest value of an EPICS string PV (40 bytes with the terminating zero).
MAX_STRING = 39
#: Char-array PVs with the whole text of the latest readout's field (a rejection reason runs to 200
#: characters and more, far past an EPICS string): the PV and the derived-row field.
LONG_STRING_PVS = {"REASON": "reason", "FLAGS": "flags"}
#: Bytes of a char-array PV; its text is cut to one less.
LONG_STRING = 512


def epics_text(text: str, limit: int) -> str:
    """``text`` as every EPICS client reads an EPICS string alike: ASCII, at most ``limit`` characters.

    Channel Access carries bytes without an encoding; pyepics decodes them as UTF-8, caproto as
    Latin-1, so any other character (a field name from the network in another script, say) becomes
    ``?`` rather than bytes one client misreads and another cannot decode at all.
    """
    return text.encode("ascii", errors="replace").decode("ascii")[:limit]


def written_pvs() -> list[str]:
    """Names (after the prefix) of every PV the service writes: the records a site's IOC needs for
    ``epics_mode = "pyepics"`` (``deploy/epics/mnedge_readout.db``)."""
    return [*FLOAT_PVS, *BINNED_FLOAT_PVS, *STRING_PVS, *LONG_STRING_PVS, FINAL_UID_PV, *COUNT_PVS]


def connect_all(pvs: dict, timeout: float) -> dict:
    """Wait for pyepics PVs to connect, all within one ``timeout``; returns ``pvs``.

    The connections proceed in parallel: PVs no IOC serves cost ``timeout`` once, not once each.
    """
    deadline = time.monotonic() + timeout
    for pv in pvs.values():
        pv.wait_for_connection(timeout=max(deadline - time.monotonic(), 0.01))
    return pvs


def alarm_of(value: float) -> dict:
    """Alarm metadata of a number PV showing ``value``: INVALID / UDF where it is not a number (a refused
    readout, or none yet), else none."""
    from caproto import AlarmSeverity, AlarmStatus

    if math.isfinite(value):
        return {"severity": AlarmSeverity.NO_ALARM, "status": AlarmStatus.NO_ALARM}
    return {"severity": AlarmSeverity.INVALID_ALARM, "status": AlarmStatus.UDF}


def _values(row: dict, totals: dict) -> dict[str, object]:
    """PV values for the latest derived row (a pixel's or, with ``block_row``, a block's) and the totals."""
    out: dict[str, object] = {}
    if row:
        binned = "block_row" in row
        for pv, key in (BINNED_FLOAT_PVS if binned else FLOAT_PVS).items():
            v = row.get(key, math.nan)
            out[pv] = float(v) if v is not None else math.nan
        status = str(row.get("status", ""))
        reason = str(row.get("reason", ""))
        out["BINNED_STATUS" if binned else "STATUS"] = epics_text(status if not reason else f"{status}: {reason}",
                                                                  MAX_STRING)
        if not binned:
            for pv, key in LONG_STRING_PVS.items():
                out[pv] = epics_text(str(row.get(key, "")), LONG_STRING - 1)
        if row.get("final") is True:
            out[FINAL_UID_PV] = epics_text(str(row.get("source_uid", "")), MAX_STRING)
    for pv, key in COUNT_PVS.items():
        out[pv] = int(totals.get(key, 0))
    return out


def make_pvgroup(prefix: str, read_only: bool = True):
    """A caproto PVGroup with the readout PVs under ``prefix``.

    ``read_only=False`` gives PVs that Channel Access clients may write: the records a site's own IOC
    serves for ``epics_mode = "pyepics"`` (:class:`PyepicsWriter`), for testing that mode.
    """
    from caproto import ChannelType
    from caproto.server import PVGroup, pvproperty

    def number(name: str, precision: int, **metadata):
        # each number PV with an alarm of its own: a PVGroup's properties share one unless told otherwise,
        # and one refused number would mark them all
        return pvproperty(value=math.nan, dtype=float, read_only=read_only, alarm_group=name, precision=precision,
                          **metadata)

    def count(name: str):
        # counters as doubles, exact to 2**53: Channel Access has no 64-bit integer, and a 32-bit one
        # wraps negative after 2**31 spectra (two and a half days at 10,000 spectra/s)
        return pvproperty(value=0.0, dtype=float, read_only=read_only, alarm_group=name, precision=0)

    valence_range = {"lower_disp_limit": 2.0, "upper_disp_limit": 4.0}   # what displays scale to
    fraction_range = {"lower_disp_limit": 0.0, "upper_disp_limit": 1.0}

    class MnEdgeIOC(PVGroup):
        VALENCE = number("VALENCE", 3, **valence_range)
        VALENCE_STD = number("VALENCE_STD", 3)
        FRAC_MN2 = number("FRAC_MN2", 3, **fraction_range)
        FRAC_MN3 = number("FRAC_MN3", 3, **fraction_range)
        FRAC_MN4 = number("FRAC_MN4", 3, **fraction_range)
        OOD_SCORE = number("OOD_SCORE", 1)
        ENERGY_OFFSET = number("ENERGY_OFFSET", 2, units="eV")
        RESOLUTION = number("RESOLUTION", 2, units="eV")
        STATUS = pvproperty(value="idle", dtype=ChannelType.STRING, read_only=read_only)
        REASON = pvproperty(value="", dtype=ChannelType.CHAR, max_length=LONG_STRING, read_only=read_only)
        FLAGS = pvproperty(value="", dtype=ChannelType.CHAR, max_length=LONG_STRING, read_only=read_only)
        PROCESSED = count("PROCESSED")
        REJECTED = count("REJECTED")
        MISSED = count("MISSED")
        READOUTS = count("READOUTS")
        FINAL_READOUTS = count("FINAL_READOUTS")
        BINNED_VALENCE = number("BINNED_VALENCE", 3, **valence_range)
        BINNED_VALENCE_STD = number("BINNED_VALENCE_STD", 3)
        BINNED_STATUS = pvproperty(value="idle", dtype=ChannelType.STRING, read_only=read_only)
        BINNED_READOUTS = count("BINNED_READOUTS")
        FINAL_UID = pvproperty(value="", dtype=ChannelType.STRING, read_only=read_only)

    return MnEdgeIOC(prefix=prefix)


class BeaconFailureFilter(logging.Filter):
    """Turns caproto's repeated "Failed to send beacon" tracebacks into one warning per address.

    caproto sends its server beacons through connected UDP sockets, so where no Channel Access
    repeater listens on the beacon port (a host with no CA client running, a container) every
    other beacon fails with "connection refused", logged as an error with a traceback: one every
    ~30 s for as long as the service runs.  Beacons only tell clients that a server (re)started;
    clients still find the PVs by search.  So the first failure per address is logged once as a
    warning that says so, and later ones are counted in :attr:`failures`, not logged.
    """

    MESSAGE = "Failed to send beacon to"

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[object, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        address = record.args[0] if isinstance(record.args, tuple) and record.args else None
        seen = self.failures.get(address, 0)
        self.failures[address] = seen + 1
        if seen:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = ("Channel Access beacons to %r are not delivered (no CA repeater listens there: %s); "
                      "clients still find the PVs by search. Later failures are not logged.")
        record.args = (address, record.exc_info[1] if record.exc_info else "refused")
        record.exc_info = record.exc_text = None
        return True


#: The filter installed on caproto's server logger by the first :class:`SoftIOC` of a process.
BEACON_FILTER = BeaconFailureFilter()


class SoftIOC:
    """A caproto soft IOC serving the readout PVs from a background thread.

    Parameters
    ----------
    prefix : str
        PV prefix, e.g. ``"BL:MN:"``.
    interfaces : list of str
        Addresses to bind (default loopback only).
    """

    def __init__(self, prefix: str, interfaces: list[str] | None = None):
        self.prefix = prefix
        self.interfaces = interfaces or ["127.0.0.1"]
        self.group = make_pvgroup(prefix)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()   # set once the server is bound, or has ended
        self._bound = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mnedge-ioc", daemon=True)
        self._task: asyncio.Task | None = None

    def _run(self) -> None:
        from caproto.asyncio.server import start_server

        ctx_log = logging.getLogger("caproto.ctx")   # the logger of caproto's server context
        if BEACON_FILTER not in ctx_log.filters:
            ctx_log.addFilter(BEACON_FILTER)

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def bound(_async_lib) -> None:  # caproto calls it once its sockets are bound
            for name in (*FLOAT_PVS, *BINNED_FLOAT_PVS):   # no readout yet: undefined, as a record before it runs
                prop = getattr(self.group, name)
                await prop.write(prop.value, **alarm_of(prop.value))
            self._bound = True
            self._started.set()

        async def main() -> None:
            self._task = asyncio.ensure_future(start_server(self.group.pvdb, interfaces=self.interfaces,
                                                            startup_hook=bound))
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # reported by start() (or, after a good start, logged here)
                self._error = exc
                if self._bound:
                    log.exception("EPICS soft IOC %s stopped", self.prefix)
            finally:
                self._started.set()

        try:
            self.loop.run_until_complete(main())
        finally:
            self.loop.close()

    def start(self) -> SoftIOC:
        """Start serving; returns self once the PVs are served.

        Raises
        ------
        RuntimeError
            The server could not bind (an address the host does not have, ...) or was not
            serving after :data:`START_TIMEOUT_S`: a service without its PVs must not say it is ready.
        """
        self._thread.start()
        self._started.wait(START_TIMEOUT_S)
        if self._bound:
            return self
        where = ", ".join(self.interfaces)
        if self._error is None:
            self.stop()
            raise RuntimeError(f"EPICS soft IOC {self.prefix!r} not serving on {where} after {START_TIMEOUT_S:g} s")
        cause = f" ({self._error.__cause__})" if self._error.__cause__ is not None else ""
        raise RuntimeError(f"EPICS soft IOC {self.prefix!r} cannot serve on {where} (epics_interfaces): "
                           f"{self._error}{cause}") from self._error

    def update(self, row: dict, totals: dict) -> None:
        """Publish the latest readout and the counters (thread-safe, non-blocking)."""
        if self.loop is None or self.loop.is_closed():
            return
        vals = _values(row, totals)

        async def write() -> None:
            for name, v in vals.items():
                prop = getattr(self.group, name)
                if name in FLOAT_PVS or name in BINNED_FLOAT_PVS:
                    await prop.write(v, **alarm_of(v))
                elif prop.value != v:
                    await prop.write(v)

        asyncio.run_coroutine_threadsafe(write(), self.loop)

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self.loop is not None and self._task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(5)


class PyepicsWriter:
    """Writes the readout to PVs of an existing IOC with pyepics (``caput``, no wait)."""

    def __init__(self, prefix: str, connect_timeout: float = 2.0):
        import epics

        self.prefix = prefix
        self.pvs = connect_all({n: epics.PV(prefix + n) for n in written_pvs()}, connect_timeout)
        self._warned: set[str] = set()

    def update(self, row: dict, totals: dict) -> None:
        """Write the latest readout and the counters.

        A PV the IOC does not serve (an older database without ``OOD_SCORE``,
        say) or refuses to write is skipped with one warning: pyepics would
        otherwise wait for its connection on every readout and stall the live
        path, or raise into it.
        """
        for name, v in _values(row, totals).items():
            pv = self.pvs[name]
            if name in LONG_STRING_PVS and not v:
                # an empty text as one blank: pyepics sends "" as a char array of zeros, which a caproto
                # IOC refuses, so the previous reason would stay standing (pyepics and ophyd read the
                # blank as "", caget -S shows one space)
                v = " "
            try:
                if not pv.connected:
                    raise ConnectionError("not connected; its values are not written until it is")
                pv.put(v, wait=False)
            except Exception as exc:  # a missing or read-only PV must not stop the live readout
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("PV %s: %s", pv.pvname, exc)

    def stop(self) -> None:
        """Disconnect."""
        for pv in self.pvs.values():
            pv.disconnect()


class MnEdgeReadout(Device):
    """Ophyd device reading the live valence PVs."""

    valence = Cpt(EpicsSignalRO, "VALENCE", kind="hinted")
    valence_std = Cpt(EpicsSignalRO, "VALENCE_STD")
    frac_mn2 = Cpt(EpicsSignalRO, "FRAC_MN2")
    frac_mn3 = Cpt(EpicsSignalRO, "FRAC_MN3")
    frac_mn4 = Cpt(EpicsSignalRO, "FRAC_MN4")
    ood_score = Cpt(EpicsSignalRO, "OOD_SCORE")
    energy_offset = Cpt(EpicsSignalRO, "ENERGY_OFFSET")
    resolution = Cpt(EpicsSignalRO, "RESOLUTION")
    status = Cpt(EpicsSignalRO, "STATUS", string=True)
    reason = Cpt(EpicsSignalRO, "REASON", string=True)
    flags = Cpt(EpicsSignalRO, "FLAGS", string=True)
    processed = Cpt(EpicsSignalRO, "PROCESSED", kind="config")
    rejected = Cpt(EpicsSignalRO, "REJECTED", kind="config")
    missed = Cpt(EpicsSignalRO, "MISSED", kind="config")
    readouts = Cpt(EpicsSignalRO, "READOUTS", kind="config")
    final_readouts = Cpt(EpicsSignalRO, "FINAL_READOUTS", kind="config")
    final_uid = Cpt(EpicsSignalRO, "FINAL_UID", string=True, kind="omitted")
    binned_valence = Cpt(EpicsSignalRO, "BINNED_VALENCE", kind="omitted")
    binned_status = Cpt(EpicsSignalRO, "BINNED_STATUS", string=True, kind="omitted")
    binned_readouts = Cpt(EpicsSignalRO, "BINNED_READOUTS", kind="omitted")


def valence_feedback_plan(detectors, motor, start: float, stop: float, num: int, readout: MnEdgeReadout,
                          threshold: float, above: bool = True, max_scans: int = 10, wait_s: float = 10.0,
                          md: dict | None = None):
    """Repeat an XAS step scan until the live valence crosses ``threshold``.

    E.g. battery cycling: scan the Mn L edge again and again while charging,
    stop as soon as the valence exceeds (``above``) or falls below the threshold.

    Parameters
    ----------
    detectors, motor, start, stop, num
        The step scan (``bluesky.plans.scan``).
    readout : MnEdgeReadout
        Reads the live service's PVs.
    threshold : float
        Valence that ends the series.
    above : bool
        Stop when valence >= threshold (True) or <= threshold (False).
    max_scans : int
        Most scans.
    wait_s : float
        Longest wait for the final readout of each scan (``FINAL_UID`` to show that scan's uid: the
        progressive readouts during the scan raise ``READOUTS``, and their valence is that of a
        partial spectrum; a late final readout of an earlier scan shows that scan's uid).

    Returns
    -------
    list of float
        The final valence of each scan (NaN where it was rejected or did not arrive within ``wait_s``).
    """
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp

    history: list[float] = []
    for i in range(max_scans):
        uid = yield from bp.scan(detectors, motor, start, stop, num, md={**(md or {}), "feedback_iteration": i})
        # the final readout follows the stop document; wait for this scan's (not for any readout)
        # by the clock, not by counting sleeps: a loaded machine's 0.1 s sleeps and reads take longer
        deadline, arrived = time.monotonic() + wait_s, False
        while uid is not None:
            shown = yield from bps.rd(readout.final_uid)
            if shown == str(uid)[:MAX_STRING]:
                arrived = True
                break
            if time.monotonic() >= deadline:
                break
            yield from bps.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        if not arrived:   # VALENCE is still an earlier scan's (or a partial spectrum's): no answer, not a stale one
            log.warning("feedback scan %d: no final readout within %g s; its valence is unknown", i, wait_s)
            history.append(math.nan)
            continue
        v = yield from bps.rd(readout.valence)
        history.append(float(v) if v is not None else math.nan)
        log.info("feedback scan %d: valence %.3f", i, history[-1])
        if math.isfinite(history[-1]) and (history[-1] >= threshold if above else history[-1] <= threshold):
            break
    return history
