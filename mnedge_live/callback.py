"""The live callback: Bluesky documents in, valence readouts out (as a derived run).

One method per document type.  Every source spectrum gets exactly one derived
row, a readout or a rejection with its reason; sequence gaps are counted as
missed (a late event filling a gap is read and uncounted again, a repeated
seq_num is dropped as a duplicate).  Malformed documents are logged and never
raise; a value of one event that cannot be read (a non-numeric energy axis, ...)
rejects that event with the reason, never the rest of its page.  A run silent for ``run_timeout_s`` is closed as failed by :meth:`MnEdgeCallback.expire`.

The rules the documents are read by live in modules of their own: where a spectrum lies in a
spectrum image (:mod:`mnedge_live.map_geometry`), its energy axis (:mod:`mnedge_live.event_axis`)
and the ``seq_num`` accounting (:mod:`mnedge_live.sequence`); this module routes, batches, emits
and closes runs.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from event_model import DocumentRouter

from mnedge_live.assembly import StepAssembler, ValenceMaps, run_file_stem
from mnedge_live.background_writer import BackgroundWriter
from mnedge_live.config import LiveConfig
from mnedge_live.derived import DerivedRun, block_row, result_row
from mnedge_live.event_axis import AxisCache, energy_axis
from mnedge_live.external import ExternalReader
from mnedge_live.live_binning import Block, BlockBinner
from mnedge_live.map_geometry import MAX_MAP_PIXELS as MAX_MAP_PIXELS  # re-exported: imported from here
from mnedge_live.map_geometry import MAX_OPEN_MAP_BYTES, MapGeometry, grown_extent, grown_maps, map_refusal
from mnedge_live.results import SpectrumResult
from mnedge_live.sequence import MAX_GAPS as MAX_GAPS  # re-exported: imported from here
from mnedge_live.sequence import SequenceCounter, whole_number
from mnedge_live.stream_pairing import MAX_WAITING, StreamPairs, event_fields_needed

log = logging.getLogger(__name__)

#: Most channels of one spectrum; longer arrays are rejected before any copy or resampling.
MAX_CHANNELS = 65536
#: Source runs whose uids are remembered after they closed, so that the same run sent again is not
#: read a second time (its derived run and maps would replace the first ones).
MAX_CLOSED_RUNS = 4096
#: Ignored runs (derived runs, other detectors' runs, runs sent again) kept until their stop; beyond, the
#: oldest is forgotten: runs whose stop never comes would otherwise be kept for good.
MAX_IGNORED_RUNS = 4096
#: Most events one ``stream_datum`` may announce: a forged range of 10^9 ``seq_nums`` owed a row each
#: (hours of the service's time); its events then count as missed at the stop.
MAX_STREAM_DATUM_EVENTS = 65536
#: The name by which callers import :func:`~mnedge_live.map_geometry.grown_extent` from here.
_grown_extent = grown_extent


@dataclass(frozen=True)
class FrameError:
    """A streamed frame that could not be read, and why."""

    reason: str


@dataclass
class _Run:
    """Bookkeeping of one source run."""

    start: dict
    derived: DerivedRun
    kind: str
    descriptors: dict[str, dict] = field(default_factory=dict)
    #: last seq_num and open gaps per stream (:class:`~mnedge_live.sequence.SequenceCounter`)
    sequence: SequenceCounter = field(default_factory=SequenceCounter)
    last_activity: float = field(default_factory=time.monotonic)
    processed: int = 0
    rejected: int = 0
    missed_live: int = 0
    last_seq_num: int = 0
    assembler: StepAssembler | None = None
    since_readout: int = 0
    maps: ValenceMaps | None = None
    #: energy axes by descriptor uid and channels (:func:`~mnedge_live.event_axis.energy_axis`)
    axis_cache: AxisCache = field(default_factory=dict)
    #: scan shape, snaking and pixel extent of a spectrum image (:mod:`mnedge_live.map_geometry`)
    geometry: MapGeometry = field(default_factory=MapGeometry)
    #: spectrum field per descriptor uid (looked up once, not per event)
    spectrum_fields: dict[str, str | None] = field(default_factory=dict)
    #: ``map_bin``: the blocks being filled, their maps and readout counts
    binner: BlockBinner | None = None
    binned_maps: ValenceMaps | None = None
    binned_processed: int = 0
    binned_rejected: int = 0
    #: readouts put in a pixel of the map that held one already (the events' pixel fields repeated it)
    overwritten_pixels: int = 0
    #: streamed spectra and the events that describe them, each kept until the other arrives
    stream_pairs: StreamPairs = field(default_factory=StreamPairs)
    #: why the run keeps no maps (the open runs' maps would pass MAX_OPEN_MAP_BYTES); "" while it may
    maps_refused: str = ""

    def map_bytes(self) -> int:
        """Memory this run's maps take."""
        return sum(m.nbytes for m in (self.maps, self.binned_maps) if m is not None)


@dataclass
class _Closed:
    """What is kept of a closed source run: its descriptors, and how many of its documents came later."""

    descriptors: tuple[str, ...]
    late: int = 0


@dataclass
class _Pending:
    """A spectrum waiting for its batch."""

    run_uid: str
    seq_num: int
    pixel: tuple[int, int] | None
    energy: np.ndarray | None
    intensity: np.ndarray | None
    rejection: str = ""


class MnEdgeCallback(DocumentRouter):
    """Reads the Mn valence of source runs and emits one derived run per source run.

    Parameters
    ----------
    engine : object
        Has ``predict(list of (energy, intensity)) -> list[SpectrumResult]`` and ``model_id``.
    config : LiveConfig
        Mode, fields, batching.
    publish : callable
        ``publish(name, doc)`` receives every derived document.
    on_readout : callable, optional
        ``on_readout(row, totals)`` after each batch of derived rows (latest row; a block's row, with
        ``block_row``, after each batch of block readouts), and ``{}`` when a run closes; e.g. for EPICS.
        A row handed to it also carries ``source_uid``, the uid of the source run it reads (not part
        of the derived documents), so a plan can tell its own scan's readout from an earlier one.
    pictures : BackgroundWriter, optional
        Draws the PNG of a spectrum image's maps off this thread (the service's: it reads no
        message while drawing); its HDF5 is written before the stop document all the same,
        which names both files.  None: both are written before the stop document.
    """

    def __init__(self, engine: Any, config: LiveConfig, publish: Callable[[str, dict], None],
                 on_readout: Callable[[dict, dict], None] | None = None,
                 pictures: BackgroundWriter | None = None):
        super().__init__()
        self.engine = engine
        self.config = config
        self.publish = publish
        self.on_readout = on_readout
        self.pictures = pictures
        self.runs: dict[str, _Run] = {}
        self.desc_run: dict[str, str] = {}
        self.ignored: set[str] = set()
        #: the runs closed last (at most :data:`MAX_CLOSED_RUNS`) by uid: their start seen again is refused,
        #: their documents arriving later are counted as late (``late_documents``)
        self.closed: OrderedDict[str, _Closed] = OrderedDict()
        #: descriptor uid -> uid of its closed run (the runs in :attr:`closed`)
        self.closed_desc: dict[str, str] = {}
        self.ignored_desc: dict[str, set[str]] = {}
        #: the ignored runs open (no stop yet), oldest first: at most :data:`MAX_IGNORED_RUNS` are kept
        self.ignored_open: OrderedDict[str, None] = OrderedDict()
        self.pending: list[_Pending] = []
        self.pending_since = 0.0
        self.external = ExternalReader(max_values=MAX_CHANNELS)
        self.totals = {"processed": 0, "rejected": 0, "missed": 0, "readouts": 0, "bad_documents": 0, "runs": 0,
                       "duplicates": 0, "timed_out_runs": 0, "bad_messages": 0, "binned_readouts": 0,
                       "final_readouts": 0, "unpublished_documents": 0, "unpublished_rows": 0, "ignored_runs": 0,
                       "late_documents": 0}
        self.last_stop: dict | None = None

    # -- entry point -------------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False):
        """Route one document; never raises (bad documents are logged and counted)."""
        try:
            if not isinstance(doc, dict):
                raise TypeError(f"{name} document is a {type(doc).__name__}, not a dict")
            super().__call__(name, doc, validate)
        except Exception:
            self.totals["bad_documents"] += 1
            log.exception("bad %s document ignored", name)
        try:
            if self.pending and (time.monotonic() - self.pending_since) * 1e3 >= self.config.max_delay_ms:
                self.flush()
        except Exception:
            log.exception("flush failed")
        return name, doc

    # -- documents ---------------------------------------------------------------------------------
    def start(self, doc: dict) -> None:
        uid = doc["uid"]
        if doc.get("mnedge_derived") or "mnedge_model" in doc:
            self._ignore_run(uid)  # our own derived run, seen through a shared proxy
            self.totals["ignored_runs"] += 1
            return
        if self.config.detectors is not None and not set(self.config.detectors) & set(doc.get("detectors") or []):
            self._ignore_run(uid)  # another instrument's run
            self.totals["ignored_runs"] += 1
            return
        if uid in self.runs:
            log.warning("duplicate start %s ignored", uid)
            self.totals["bad_documents"] += 1
            return
        if uid in self.closed:   # the same run again (a file replayed twice, a publisher resending)
            log.warning("run %s was read and closed already: its documents are ignored this time", uid)
            self.totals["bad_documents"] += 1
            self._ignore_run(uid)
            return
        kind = self.config.mode
        geometry = MapGeometry.from_start(doc)   # once: a shape too large for a map is logged once
        if kind == "spectrum" and (geometry.shape is not None or self.config.pixel_fields):
            kind = "map"
        md = {"source_plan": str(doc.get("plan_name", "")), "mnedge_mode": self.config.mode}
        derived = DerivedRun(self.publish, uid, str(self.engine.model_id), kind, md, on_unsent=self._count_unsent)
        run = _Run(start=doc, derived=derived, kind=kind, geometry=geometry)
        if kind == "step":
            run.assembler = StepAssembler(tuple(self.config.l3_window_eV), tuple(self.config.l2_window_eV))
        if kind == "map" and self.config.map_bin > 1:   # the maps themselves come with the first pixel
            run.binner = BlockBinner(self.config.map_bin, run.geometry.shape)
        self.runs[uid] = run
        self.totals["runs"] += 1

    def descriptor(self, doc: dict) -> None:
        run_uid = doc["run_start"]
        if run_uid in self.ignored:
            self.ignored.add(doc["uid"])
            self.ignored_desc.setdefault(run_uid, set()).add(doc["uid"])
            return
        run = self.runs.get(run_uid)
        if run is None:
            if run_uid in self.closed:
                self._late(run_uid, "descriptor")
                return
            log.warning("descriptor %s of unknown run %s ignored", doc.get("uid"), run_uid)
            self.totals["bad_documents"] += 1
            return
        run.last_activity = time.monotonic()
        run.descriptors[doc["uid"]] = doc
        self.desc_run[doc["uid"]] = run_uid

    def event(self, doc: dict) -> None:
        page_like = {"seq_num": [doc["seq_num"]], "data": {k: [v] for k, v in doc["data"].items()},
                     "descriptor": doc["descriptor"], "filled": {k: [v] for k, v in doc.get("filled", {}).items()}}
        self.event_page(page_like)

    def event_page(self, doc: dict) -> None:
        run = self._active_run(doc, "event page")
        if run is None:
            return
        desc = run.descriptors[doc["descriptor"]]
        if desc.get("name", "primary") != self.config.stream:
            return
        seqs = [whole_number(s) for s in doc["seq_num"]]  # all or nothing: a bad seq_num makes a bad document
        data = doc["data"]
        if not isinstance(data, dict):
            raise TypeError(f"event data is a {type(data).__name__}, not a dict")
        for i, seq in enumerate(seqs):
            row = {k: v[i] for k, v in data.items() if i < len(v)}
            if not self._count_seq(run, self.config.stream, seq):
                continue
            self._read_event(run, desc, seq, row)

    def resource(self, doc: dict) -> None:
        self.external.add_resource(doc)

    def datum(self, doc: dict) -> None:
        self.external.add_datum(doc)

    def datum_page(self, doc: dict) -> None:
        self.external.add_datum_page(doc)

    def stream_resource(self, doc: dict) -> None:
        self.external.add_stream_resource(doc)

    def stream_datum(self, doc: dict) -> None:
        run = self._active_run(doc, "stream_datum")
        if run is None:
            return
        desc_uid = doc["descriptor"]
        desc = run.descriptors[desc_uid]
        if desc.get("name", "primary") != self.config.stream or run.kind == "step":
            return
        sr = self.external.stream_resources.get(doc["stream_resource"])
        if sr is None:   # whose data key it holds is unknown: no row can be answered for it
            log.warning("stream_datum %s refers to unknown stream_resource %s: ignored", doc.get("uid"),
                        doc["stream_resource"])
            self.totals["bad_documents"] += 1
            return
        if sr.get("data_key") != self._spectrum_field(desc):
            return
        seq0, seq1 = (whole_number(doc["seq_nums"][k], f"seq_nums[{k!r}]") for k in ("start", "stop"))
        i0, i1 = (whole_number(doc["indices"][k], f"indices[{k!r}]") for k in ("start", "stop"))
        if seq1 - seq0 > MAX_STREAM_DATUM_EVENTS:   # one document must not owe a billion rows
            raise ValueError(f"stream_datum {doc.get('uid')} announces {seq1 - seq0} events ({seq0}..{seq1 - 1}), "
                             f"more than {MAX_STREAM_DATUM_EVENTS} in one document")
        block, err = None, ""
        if i1 - i0 != seq1 - seq0:
            err = (f"stream_datum {doc.get('uid')} pairs {seq1 - seq0} seq_nums ({seq0}..{seq1 - 1}) with "
                   f"{i1 - i0} frames ({i0}..{i1 - 1})")
        else:
            try:
                block = self.external.read_stream(doc)
            except Exception as exc:
                err = f"external data unreadable: {type(exc).__name__}: {exc}"
        wait_for_events = bool(event_fields_needed(desc, self._event_fields()))
        for k, seq in enumerate(range(seq0, seq1)):
            if not self._count_seq(run, "stream:" + self.config.stream, seq):
                continue
            frame = block[k] if block is not None else FrameError(err)
            if not wait_for_events:
                self._read_frame(run, desc, seq, {}, frame)
                continue
            row, evicted = run.stream_pairs.frame_arrived((desc_uid, seq), frame)
            for (_, old_seq), old_frame in evicted:
                self._read_frame(run, desc, old_seq, {}, old_frame)
            if row is not None:
                self._read_frame(run, desc, seq, row, frame)

    def _event_fields(self) -> list[str]:
        """Fields a spectrum's readout takes from its event: pixel indices and energy-axis fields."""
        c = self.config
        return [f for f in (*(c.pixel_fields or ()), c.energy_field, c.dispersion_field, c.offset_field) if f]

    def _read_frame(self, run: _Run, desc: dict, seq: int, row: dict, frame: Any) -> None:
        """Read a streamed spectrum with its event's ``row`` (``{}`` when it has none); an unreadable
        frame is answered with its reason, in its pixel where that is known (a grid pixel still gets its
        rejection in the maps and completes its block)."""
        if not isinstance(frame, FrameError):
            self._read_event(run, desc, seq, row, intensity=frame)
            return
        pixel = None
        if run.kind == "map" and (row or not self.config.pixel_fields):
            pixel = run.geometry.pixel(seq, row, self.config.pixel_fields)[0]
        self._queue(run, seq, pixel, None, None, frame.reason)

    def stop(self, doc: dict) -> None:
        uid = doc["run_start"]
        if uid in self.ignored:
            self._forget_ignored(uid)
            return
        run = self.runs.get(uid)
        if run is None:
            if uid in self.closed:   # after a run timeout or a shutdown closed it
                self._late(uid, "stop")
                return
            log.warning("stop of unknown run %s ignored", uid)
            self.totals["bad_documents"] += 1
            return
        self.flush()
        self.close_run(uid, *source_exit(doc), announced=self._announced_events(uid, doc.get("num_events")))

    def _announced_events(self, uid: str, counts: object) -> int | None:
        """The stop's count of the stream's events; None where it gives none. A malformed count (not a
        mapping, or not a whole number for the stream) is as good as none, so the run still closes, but
        it is counted as a bad document and logged: the events it would have shown missing go uncounted."""
        if counts is None:
            return None
        try:
            if not isinstance(counts, dict):
                raise TypeError(f"num_events is a {type(counts).__name__}, not a mapping")
            announced = counts.get(self.config.stream)
            if announced is None:
                return None
            what = f"num_events[{self.config.stream!r}]"
            count = whole_number(announced, what)
            if count < 0:
                raise ValueError(f"{what} {announced} is negative")
            return count
        except (TypeError, ValueError) as exc:
            self.totals["bad_documents"] += 1
            log.warning("stop of run %s: %s; its missed events are not counted", uid, exc)
            return None

    # -- run closing -------------------------------------------------------------------------------
    def close_run(self, uid: str, exit_status: str = "success", reason: str = "",
                  announced: int | None = None, ended: bool = True) -> dict | None:
        """Last readout (step scans), maps, and the derived stop document with the counts.

        ``ended``: the source's stop arrived, so the scan is over and a step scan's last readout is its
        ``final`` one (``FINAL_UID``).  A run closed without its stop (``run_timeout_s``: a publisher
        gone or a scan paused that long; the service stopping) still gets the readout of what was
        measured, marked not final: the scan may go on, and a feedback plan must not act on part of it.
        """
        open_run = self.runs.get(uid)
        if open_run is not None:   # streamed frames whose events never came: read without them
            for (desc_uid, seq), frame in open_run.stream_pairs.unpaired_frames():
                self._read_frame(open_run, open_run.descriptors[desc_uid], seq, {}, frame)
        self.flush()
        run = self.runs.pop(uid, None)
        if run is None:
            return None
        self.external.forget_run(uid)
        self.closed[uid] = _Closed(tuple(run.descriptors))
        self.closed_desc.update(dict.fromkeys(run.descriptors, uid))
        while len(self.closed) > MAX_CLOSED_RUNS:
            for d in self.closed.popitem(last=False)[1].descriptors:
                self.closed_desc.pop(d, None)
        for d in run.descriptors:
            self.desc_run.pop(d, None)
        extra: dict[str, Any] = {}
        if run.kind == "step" and run.assembler is not None:
            res = self._predict([run.assembler.spectrum()])[0] if len(run.assembler) else SpectrumResult.rejected(
                "no valid point measured")
            row = result_row(res, run.last_seq_num)
            row["final"] = ended
            if ended:
                self.totals["final_readouts"] += 1  # before _emit: on_readout sees it with this row
            self._emit(run, [row])
        if run.binner is not None:
            self._read_blocks(run, run.binner.remaining())
            extra.update(map_bin=run.binner.factor, binned_processed=run.binned_processed,
                         binned_rejected=run.binned_rejected, binned_skipped_pixels=run.binner.skipped)
            if run.binner.skipped:
                log.warning("run %s: %d pixels not binned: %s", uid, run.binner.skipped, run.binner.skip_reasons)
        if run.stream_pairs.dropped_rows:   # their frames, if they came later, were read without them
            extra["unpaired_event_rows"] = run.stream_pairs.dropped_rows
            log.warning("run %s: %d events came more than %d ahead of their streamed spectra and were not kept; "
                        "their spectra are read without the events' fields", uid, run.stream_pairs.dropped_rows,
                        MAX_WAITING)
        if run.kind == "map":
            extra["overwritten_pixels"] = run.overwritten_pixels
            if run.overwritten_pixels:
                log.warning("run %s: %d readouts replaced an earlier one of the same pixel in the map",
                            uid, run.overwritten_pixels)
        folder = self.config.maps_folder()
        if run.maps_refused:
            extra["maps_error"] = run.maps_refused
        if run.maps is not None and self.config.pixel_fields:   # grown ahead of its pixels: cut to them
            run.maps = run.maps.cropped(run.geometry.extent)
        for maps, suffix, key in ((run.maps, "", "maps"), (run.binned_maps, f"_bin{self.config.map_bin}", "binned_maps")):
            if maps is None or not folder:   # None or "": no map files
                continue
            stem = run_file_stem(uid, suffix)
            try:
                h5 = maps.write_h5(folder, stem, {"parent_uid": uid, "model": str(self.engine.model_id),
                                                  "map_bin": self.config.map_bin if suffix else 1,
                                                  "exit_status": exit_status})
                if self.pictures is not None:
                    picture = maps.for_picture()   # the run's full maps need not wait for the picture
                    self.pictures.submit(f"the picture of run {uid}'s {key}", partial(picture.write_png, folder, stem))
                    png = ValenceMaps.picture_path(folder, stem)
                else:
                    png = maps.write_png(folder, stem)
                extra.update({f"{key}_h5": str(Path(h5).resolve()), f"{key}_png": str(Path(png).resolve())})
            except Exception as exc:
                log.exception("writing maps failed")
                extra[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
        missed = run.missed_live
        if isinstance(announced, int):
            missed = max(0, announced - run.processed - run.rejected)
        self.totals["missed"] += missed - run.missed_live
        if missed:
            log.warning("run %s: %d source events missed", uid, missed)
        stop = run.derived.close(run.processed, run.rejected, missed, exit_status, reason, extra)
        self.last_stop = stop
        self._notify({})
        return stop

    def close_all(self, exit_status: str = "abort", reason: str = "service stopped") -> None:
        """Close every open derived run (shutdown)."""
        for uid in list(self.runs):
            self.close_run(uid, exit_status, reason, ended=False)

    def expire(self, now: float | None = None) -> list[str]:
        """Close, as failed, every run silent for longer than ``run_timeout_s``.

        A publisher that dies mid-run never sends its stop document; without this
        its derived run would stay open for good.  Returns the closed source uids.
        """
        timeout = self.config.run_timeout_s
        if not timeout:
            return []
        now = time.monotonic() if now is None else now
        stale = [uid for uid, run in self.runs.items() if now - run.last_activity > timeout]
        for uid in stale:
            log.warning("run %s: no document for %.1f s, closed as failed", uid, timeout)
            self.totals["timed_out_runs"] += 1
            self.close_run(uid, "fail", f"no document from the source for {timeout:g} s (publisher gone, or the "
                                        "scan paused longer than run_timeout_s?)", ended=False)
        return stale

    def _read_event(self, run: _Run, desc: dict, seq: int, row: dict, intensity: Any = None) -> None:
        """Read one counted event (its row is owed); a failure becomes its rejection, never the page's loss."""
        if seq < 1:
            self._reject_event(run, seq, f"seq_num {seq} is not an event number (bluesky numbers events from 1)")
            return
        try:
            if run.kind == "step":
                self._step_point(run, desc, seq, row)
            else:
                self._spectrum_event(run, desc, seq, row, intensity=intensity)
        except Exception as exc:
            log.exception("run %s: seq_num %d could not be read", run.start["uid"], seq)
            self._reject_event(run, seq, f"event could not be read: {type(exc).__name__}: {exc}")

    def _reject_event(self, run: _Run, seq: int, reason: str) -> None:
        """Answer one counted event with a rejection row (a step-scan point, or a spectrum through the batch)."""
        if run.kind == "step":
            self._reject_point(run, seq, reason)
        else:
            self._queue(run, seq, None, None, None, reason)

    # -- spectrum mode -----------------------------------------------------------------------------
    def _spectrum_event(self, run: _Run, desc: dict, seq: int, row: dict, intensity: Any = None) -> None:
        try:
            name = run.spectrum_fields[desc["uid"]]
        except KeyError:
            name = run.spectrum_fields[desc["uid"]] = self._spectrum_field(desc)
        if intensity is None and name is not None and name not in row:
            key = desc.get("data_keys", {}).get(name, {})
            if key.get("external", "").startswith("STREAM:"):
                # arrives by stream_datum (counted there): read once, with this event's fields
                needed = event_fields_needed(desc, self._event_fields())
                if needed:
                    paired, frame = run.stream_pairs.row_arrived((desc["uid"], seq),
                                                                 {f: row[f] for f in needed if f in row})
                    if paired:
                        self._read_frame(run, desc, seq, row, frame)
                return
        pixel = None
        if run.kind == "map":
            pixel, err = run.geometry.pixel(seq, row, self.config.pixel_fields)
            if err:
                self._queue(run, seq, None, None, None, err)
                return
        if intensity is None:
            if name is None:
                self._queue(run, seq, pixel, None, None, "no spectrum field: give spectrum_field")
                return
            if name not in row:
                self._queue(run, seq, pixel, None, None, f"event has no field {name!r}")
                return
            intensity = row[name]
            if isinstance(intensity, str):
                try:
                    intensity = self.external.read_datum(intensity)
                except Exception as exc:
                    self._queue(run, seq, pixel, None, None,
                                f"external data unreadable: {type(exc).__name__}: {exc}")
                    return
        size = getattr(intensity, "size", None) if not isinstance(intensity, (list, tuple)) else len(intensity)
        if isinstance(size, int) and size > MAX_CHANNELS:
            self._queue(run, seq, pixel, None, None,
                        f"field {name!r} has {size} values; at most {MAX_CHANNELS} channels are accepted")
            return
        try:
            raw = np.asarray(intensity)
            complex_valued = np.iscomplexobj(raw)
            y = None if complex_valued else raw.astype(np.float64)
        except (TypeError, ValueError) as exc:
            self._queue(run, seq, pixel, None, None, f"field {name!r} is not numeric: {exc}")
            return
        if complex_valued:  # never drop an imaginary part silently
            self._queue(run, seq, pixel, None, None, f"field {name!r} is complex-valued")
            return
        if y.ndim != 1:
            self._queue(run, seq, pixel, None, None, f"field {name!r} has shape {y.shape}, expected 1-D")
            return
        energy = energy_axis(self.config, desc, row, y.size, run.axis_cache)
        if isinstance(energy, str):
            self._queue(run, seq, pixel, None, None, energy)
            return
        self._queue(run, seq, pixel, energy, y, "")

    def _queue(self, run: _Run, seq: int, pixel, energy, intensity, rejection: str) -> None:
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(_Pending(run.start["uid"], seq, pixel, energy, intensity, rejection))
        if len(self.pending) >= self.config.max_batch:
            self.flush()

    def flush(self) -> None:
        """Read out every pending spectrum and emit its row (one event page per run).

        A readout that cannot be recorded (its map cannot grow: out of memory, say) becomes a
        rejection row with the reason: the spectrum is counted as rejected, never lost behind a count.
        """
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        blocks: dict[str, list[Block]] = {}
        todo = [p for p in batch if not p.rejection]
        results = iter(self._predict([(p.energy, p.intensity) for p in todo]))
        by_run: dict[str, list[dict]] = {}
        for p in batch:
            res = SpectrumResult.rejected(p.rejection) if p.rejection else next(results)
            run = self.runs.get(p.run_uid)
            if run is None:
                continue
            try:
                done = self._record(run, p, res)
            except Exception as exc:
                log.exception("run %s: readout of seq_num %d could not be recorded", p.run_uid, p.seq_num)
                res = SpectrumResult.rejected(f"readout could not be recorded: {type(exc).__name__}: {exc}",
                                              model=str(getattr(self.engine, "model_id", "")))
                if run.maps is not None and p.pixel is not None:
                    run.maps.set(p.pixel, res)  # a no-op outside the map; never raises
                done = []
            row = result_row(res, p.seq_num)
            if res.ok:
                run.processed += 1
                self.totals["processed"] += 1
            else:
                run.rejected += 1
                self.totals["rejected"] += 1
            if run.kind == "map":
                r, c = p.pixel if p.pixel is not None else (-1, -1)
                row["pixel_row"], row["pixel_col"] = int(r), int(c)
            by_run.setdefault(p.run_uid, []).append(row)
            blocks.setdefault(p.run_uid, []).extend(done)
        for uid, rows in by_run.items():
            self._emit(self.runs[uid], rows)
        for uid, done in blocks.items():
            self._read_blocks(self.runs[uid], done)

    def _record(self, run: _Run, p: _Pending, res: SpectrumResult) -> list[Block]:
        """Put a pixel's readout in its run's maps and, with ``map_bin``, its spectrum in its block.

        Returns the blocks this pixel completes.  May raise (a map that cannot grow); the caller
        then answers the spectrum with a rejection.
        """
        if run.kind != "map" or p.pixel is None:
            return []
        if run.maps is None and (run.geometry.shape is not None or self.config.pixel_fields):
            shape = run.geometry.shape or (p.pixel[0] + 1, p.pixel[1] + 1)
            if self._map_room(run, shape, None):
                run.maps = ValenceMaps(shape)
        if run.maps is not None and run.maps.holds(p.pixel):   # measured again (pixel_fields): the last one shows
            run.overwritten_pixels += 1
        if run.maps is not None and not run.maps.set(p.pixel, res) and self.config.pixel_fields:
            shape = grown_extent(run.maps.shape, p.pixel, run.geometry.extent)
            if self._map_room(run, shape, run.maps):   # else the run keeps no maps from now on
                run.maps = grown_maps(run.maps, shape, exact=True)
                run.maps.set(p.pixel, res)
        if run.binner is not None:
            return run.binner.add(p.pixel, p.energy, p.intensity)
        return []

    def _read_blocks(self, run: _Run, blocks: list[Block]) -> None:
        """Read out completed blocks of pixels (``map_bin``): stream ``mnedge_binned`` and the binned maps."""
        if not blocks:
            return
        read = iter(self._predict([(b.energy, b.intensity) for b in blocks if b.pixels]))
        rows = []
        for b in blocks:
            res = next(read) if b.pixels else SpectrumResult.rejected(
                "no pixel of the block has a finite spectrum", model=str(getattr(self.engine, "model_id", "")))
            rows.append(block_row(res, b.index, b.pixels))
            if res.ok:
                run.binned_processed += 1
            else:
                run.binned_rejected += 1
            if run.binned_maps is None:
                shape = run.binner.binned_shape() or (b.index[0] + 1, b.index[1] + 1)
                run.binned_maps = ValenceMaps(shape) if self._map_room(run, shape, None) else None
            if run.binned_maps is not None and not run.binned_maps.set(b.index, res):
                shape = (max(run.binned_maps.shape[0], b.index[0] + 1), max(run.binned_maps.shape[1], b.index[1] + 1))
                if self._map_room(run, shape, run.binned_maps):   # else the run keeps no maps from now on
                    run.binned_maps = grown_maps(run.binned_maps, shape)
                    run.binned_maps.set(b.index, res)
        run.derived.emit_binned_rows(rows, time.time())
        self.totals["binned_readouts"] += len(rows)
        self._notify({**rows[-1], "source_uid": run.start["uid"]})

    def _map_room(self, run: _Run, shape: tuple[int, int], replaced: ValenceMaps | None) -> bool:
        """Whether maps of ``shape`` (replacing ``replaced``) fit in :data:`MAX_OPEN_MAP_BYTES` with the maps
        of every open run; when not, the run keeps no maps from then on and says why (logged once)."""
        if run.maps_refused:
            return False
        held = sum(r.map_bytes() for r in self.runs.values()) - (replaced.nbytes if replaced is not None else 0)
        why = map_refusal(shape, held, MAX_OPEN_MAP_BYTES)
        if not why:
            return True
        run.maps_refused = f"no map kept: {why}; every pixel is still read and published"
        log.warning("run %s: %s", run.start.get("uid"), run.maps_refused)
        run.maps = run.binned_maps = None
        return False

    def _count_unsent(self, documents: int, rows: int) -> None:
        """A derived document that could not be sent (see :class:`~mnedge_live.derived.DerivedRun`)."""
        self.totals["unpublished_documents"] += documents
        self.totals["unpublished_rows"] += rows

    def _notify(self, row: dict) -> None:
        """Hand the latest row (a pixel's, a block's or ``{}``) and the totals to ``on_readout``; never raises."""
        if self.on_readout is None:
            return
        try:
            self.on_readout(row, dict(self.totals))
        except Exception:
            log.exception("readout hook failed")

    def _predict(self, spectra: list) -> list[SpectrumResult]:
        """The engine's results; a failing engine rejects every spectrum with the reason."""
        if not spectra:
            return []
        model = str(getattr(self.engine, "model_id", ""))
        try:
            out = list(self.engine.predict(spectra))
            if len(out) != len(spectra):
                raise RuntimeError(f"engine returned {len(out)} results for {len(spectra)} spectra")
            return out
        except Exception as exc:
            log.exception("engine failed on a batch of %d", len(spectra))
            return [SpectrumResult.rejected(f"model backend failed: {type(exc).__name__}: {exc}", model=model)
                    for _ in spectra]

    def _emit(self, run: _Run, rows: list[dict]) -> None:
        run.derived.emit_rows(rows, time.time())
        self.totals["readouts"] += len(rows)
        self._notify({**rows[-1], "source_uid": run.start["uid"]})

    # -- step mode ---------------------------------------------------------------------------------
    def _step_point(self, run: _Run, desc: dict, seq: int, row: dict) -> None:
        assert run.assembler is not None
        run.last_seq_num = max(run.last_seq_num, seq)
        e_name = self.config.energy_field or next(iter(run.start.get("motors") or []), None)
        s_name = self.config.signal_field or self._hinted_signal(run, desc)
        n_name = self.config.norm_field
        missing = [n for n in (e_name, s_name, n_name) if n is not None and n not in row]
        if e_name is None or s_name is None:
            reason = "energy or signal field unknown: give energy_field and signal_field"
        elif missing:
            reason = f"event has no field(s) {', '.join(map(repr, missing))}"
        else:
            reason = run.assembler.add(row[e_name], row[s_name], row[n_name] if n_name else None)
        if reason:
            self._reject_point(run, seq, reason)
            return
        run.processed += 1
        self.totals["processed"] += 1
        run.since_readout += 1
        if run.assembler.covered() and run.since_readout >= self.config.step_readout_every:
            run.since_readout = 0
            res = self._predict([run.assembler.spectrum()])[0]
            r = result_row(res, seq)
            r["final"] = False
            self._emit(run, [r])

    def _reject_point(self, run: _Run, seq: int, reason: str) -> None:
        """Answer one point of a step scan with a rejection row."""
        run.rejected += 1
        self.totals["rejected"] += 1
        r = result_row(SpectrumResult.rejected(reason), seq)
        r["final"] = False
        self._emit(run, [r])

    def _hinted_signal(self, run: _Run, desc: dict) -> str | None:
        hints = desc.get("hints") or {}
        for det in run.start.get("detectors") or []:
            for f in (hints.get(det) or {}).get("fields", []):
                if f != self.config.norm_field:
                    return f
        return None

    # -- helpers -----------------------------------------------------------------------------------
    def _late(self, run_uid: str, what: str) -> None:
        """Count a document of a run closed already (``late_documents``); log the first of each run.

        A scan paused past ``run_timeout_s`` goes on sending after its derived run was closed as
        failed: each of its later documents is counted, one warning says so.
        """
        closed = self.closed[run_uid]
        closed.late += 1
        self.totals["late_documents"] += 1
        if closed.late == 1:
            log.warning("run %s was closed already (its stop or the run timeout): its later documents "
                        "are counted in late_documents, not read (the first: a %s)", run_uid, what)

    def _ignore_run(self, uid: str) -> None:
        """Ignore the run ``uid`` (and, as they come, its descriptors) until its stop.

        Runs of other instruments whose stop never comes would otherwise be kept for good: beyond
        :data:`MAX_IGNORED_RUNS` the oldest is forgotten (its later documents count as bad ones).
        """
        self.ignored.add(uid)
        self.ignored_open[uid] = None
        while len(self.ignored_open) > MAX_IGNORED_RUNS:
            self._forget_ignored(next(iter(self.ignored_open)))

    def _forget_ignored(self, uid: str) -> None:
        """Stop ignoring the run ``uid`` and its descriptors (its stop came, or it is the oldest kept)."""
        self.ignored.discard(uid)
        self.ignored -= self.ignored_desc.pop(uid, set())
        self.ignored_open.pop(uid, None)

    def _active_run(self, doc: dict, what: str) -> _Run | None:
        """The open run of a document that names its descriptor (an event page, a stream_datum), marked active;
        None for a run being ignored, a closed run (a late document) or an unknown descriptor (a bad document)."""
        desc_uid = doc["descriptor"]
        if desc_uid in self.ignored:
            return None
        run = self._run_of(desc_uid)
        if run is None:
            if desc_uid in self.closed_desc:
                self._late(self.closed_desc[desc_uid], what)
                return None
            uid = doc.get("uid")
            log.warning("%s of unknown descriptor %s ignored", f"{what} {uid}" if uid else what, desc_uid)
            self.totals["bad_documents"] += 1
            return None
        run.last_activity = time.monotonic()
        return run

    def _run_of(self, desc_uid: str) -> _Run | None:
        uid = self.desc_run.get(desc_uid)
        return None if uid is None else self.runs.get(uid)

    def _count_seq(self, run: _Run, key: str, seq: int) -> bool:
        """Account for ``seq`` of stream ``key``; False when it is a duplicate (no row is owed).

        The key is the stream's name, not its descriptor's uid: bluesky numbers a stream's events on
        across the new descriptor a detector's reconfiguration mid-scan brings.
        """
        counted = run.sequence.count(key, seq)
        if not counted.owed:
            self.totals["duplicates"] += 1
            log.warning("run %s: seq_num %d of stream %s seen before, duplicate dropped", run.start["uid"], seq, key)
            return False
        run.missed_live += counted.missed  # a late event filling a gap: -1, no longer missed
        self.totals["missed"] += counted.missed
        if counted.missed > 0:
            log.warning("run %s: sequence gap, %d event(s) missed before seq_num %d", run.start["uid"],
                        counted.missed, seq)
        return True

    def _spectrum_field(self, desc: dict) -> str | None:
        if self.config.spectrum_field:
            return self.config.spectrum_field
        for k, v in desc.get("data_keys", {}).items():
            shape = v.get("shape") or []
            if len(shape) == 1 and (shape[0] or 0) >= 16 and k != self.config.energy_field:
                return k
        return None


#: Exit statuses of a bluesky stop document (event-model's schema).
EXIT_STATUSES = ("success", "abort", "fail")
#: Most characters of the source run's stop reason copied into the derived stop.
MAX_SOURCE_REASON = 500


def source_exit(stop: dict) -> tuple[str, str]:
    """The derived run's ``exit_status`` and ``reason``: the source run's, so an aborted or failed scan
    (beam lost, stopped by the operator) is not reported as a successful readout of a whole image.
    A stop without a valid exit status ends the derived run as ``fail``, saying so."""
    status, reason = stop.get("exit_status"), stop.get("reason")
    reason = reason[:MAX_SOURCE_REASON] if isinstance(reason, str) else ""
    if status in EXIT_STATUSES:
        return status, reason
    return "fail", f"the source run's stop has no valid exit_status ({str(status)[:60]!r})"
