"""``mnedge replay``: read the Mn valence of saved Bluesky runs, as ``mnedge live`` read them live.

Each FILE holds saved documents (bluesky's ``JSONLinesWriter`` or ``JSONWriter``, suitcase-jsonl:
:mod:`mnedge_live.document_files`). They go, in file order, through the live service's own
callback (:class:`~mnedge_live.callback.MnEdgeCallback`) with the same options (``--config``, the
same flags and TOML keys as ``mnedge live``; the file's :data:`NOT_USED` options, its addresses, wire
format, EPICS and CurveZMQ options and its map and plot folders, are not read: maps go to
``--maps-dir``, default :data:`REPLAY_MAPS_DIR` (with ``--plot DIR`` alone, DIR), plots to ``--plot``):
a past scan re-read with a new model, a site's retrained one checked against the runs it will see,
a run the service missed. Every source run gets its derived run, written with ``--out`` as JSON
Lines in ``JSONLinesWriter``'s layout (which this command reads too); spectrum images get their
maps (``maps_dir``) and ``--plot`` its plots, as live.

A run whose stop document is not in the files is closed with ``exit_status`` ``fail``. What is
not a document (a line that is not JSON, an unknown document name) and documents the callback
refuses are counted and reported, and the rest is still read; a file that cannot be opened is
reported and the others read.

Prints one line per derived run (source uid, exit status, counts, a step scan's final valence or
the median of the valences read out, maps), or with ``--json`` one JSON object (``runs``: each
derived stop document with ``source_uid``, ``median_valence`` and a step scan's ``final``; ``totals``;
``bad_lines``; ``unreadable_files``; ``runs_without_stop``; ``out``; ``model``). A source run
that ended badly (an operator's abort, a lost beam) keeps its own ``exit_status`` in its derived
stop, as live; it is no failure of the replay (nor is the rejected final readout of such a step scan).

Exit status: 0 when every source spectrum was read out (a step scan's final readout too) and every
run ended with its stop document, 1 when no source run was read or anything was rejected, missed or not readable (a spectrum, a line, a document,
a file, a run without its stop, a run read already, a map that could not be written), 2 for usage errors
(bad options, ``--out`` existing without ``--overwrite`` or naming a file read, a ``--plot`` folder
that cannot be made, a model that cannot be loaded).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from mnedge_live.commands.live import add_reading_options, config_and_engine
from mnedge_live.derived import STREAM

log = logging.getLogger(__name__)

#: Lines that are not documents logged one by one per file; the rest are counted only.
MAX_LOGGED_BAD_LINES = 20
#: Where a replay's maps go unless ``--maps-dir`` or ``--plot`` says: not the live service's default
#: folder (``mnedge_maps``), whose map of the same run (same file name) a replay would replace.
REPLAY_MAPS_DIR = "mnedge_replay_maps"
#: Exit status and reason of a derived run whose source run has no stop document in the files.
UNSTOPPED = ("fail", "the saved documents end before the run's stop document")
#: Options of a live service's configuration file that a replay does not use: they are neither read nor
#: checked (its CurveZMQ key files, say, may exist only on the service's host). Its map and plot folders
#: are the service's: a replay writing there would replace the maps the service wrote for the same run;
#: ``--maps-dir`` and ``--plot`` say where a replay's go.
NOT_USED = ("in_address", "out_address", "serializer", "allow_pickle", "epics_prefix", "epics_mode",
            "epics_interfaces", "out_prefix", "run_timeout_s", "curve_secret_key", "curve_server_public_key",
            "curve_out_server_public_key", "maps_dir", "plot_dir")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float as None: ``--json`` prints strict JSON (no ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mnedge replay``."""
    p = subparsers.add_parser("replay", help="read the Mn valence of saved Bluesky runs (JSON Lines) as live would")
    p.add_argument("files", nargs="+", metavar="FILE", help="saved documents (JSON Lines or a JSON array)")
    add_reading_options(p)
    p.add_argument("--out", help="write the derived documents here (JSON Lines, bluesky's JSONLinesWriter layout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line per run")
    p.set_defaults(run=run)
    return p


class ReplaySummary:
    """The derived documents' side of a replay: writes them (``--out``) and sums up each run.

    Keeps, per derived run, its source uid, the valences read out (stream ``mnedge``) and a step
    scan's final readout, and adds them to the run's stop document (:attr:`runs`).

    Parameters
    ----------
    writer : callable, optional
        ``writer(name, doc)`` for every derived document (e.g. a
        :class:`~mnedge_live.document_files.DocumentFileWriter`).
    """

    def __init__(self, writer: Any = None):
        self.writer = writer
        self.parents: dict[str, str] = {}
        self.readouts: dict[str, array] = {}   # 8 bytes a readout: a 4096 x 4096 image holds 134 MB
        self.finals: dict[str, dict] = {}
        self.streams: dict[str, tuple[str, str]] = {}
        self.runs: list[dict] = []

    def __call__(self, name: str, doc: dict) -> None:
        if self.writer is not None:
            self.writer(name, doc)
        if name == "start":
            self.parents[doc["uid"]] = doc.get("parent_uid", "")
            self.readouts[doc["uid"]] = array("d")
        elif name == "descriptor":
            self.streams[doc["uid"]] = (doc["run_start"], doc.get("name", ""))
        elif name in ("event", "event_page"):
            run_uid, stream = self.streams.get(doc["descriptor"], ("", ""))
            if stream != STREAM or run_uid not in self.readouts:
                return
            data = doc["data"] if name == "event_page" else {k: [v] for k, v in doc["data"].items()}
            for i, status in enumerate(data["status"]):
                if status == "ok":
                    self.readouts[run_uid].append(float(data["valence"][i]))
                if data.get("final", [False] * (i + 1))[i]:
                    self.finals[run_uid] = {k: data[k][i] for k in ("status", "reason", "valence", "valence_std")}
        elif name == "stop":
            uid = doc["run_start"]
            valences = self.readouts.pop(uid, array("d"))
            summary = {"source_uid": self.parents.pop(uid, ""), **doc,
                       "median_valence": float(np.median(valences)) if valences else None}
            if uid in self.finals:
                summary["final"] = self.finals.pop(uid)
            self.runs.append(summary)


def replay_files(paths: list[str], callback: Any) -> tuple[int, int, int]:
    """Hand every document of ``paths`` to ``callback``.

    Runs left open at the end (no stop document in the files) are closed with :data:`UNSTOPPED`.

    Returns
    -------
    tuple of int
        Lines that are not documents, files that could not be read, runs closed without their stop.
    """
    from mnedge_live.document_files import BadEntry, read_documents

    bad_lines = unreadable = 0
    for path in paths:
        bad_here = 0
        try:
            for item in read_documents(path):
                if isinstance(item, BadEntry):
                    bad_here += 1
                    if bad_here <= MAX_LOGGED_BAD_LINES:
                        log.warning("%s:%d: %s", path, item.line, item.reason)
                    continue
                callback(*item)
        except OSError as exc:
            unreadable += 1
            log.error("%s: cannot be read: %s", path, exc)
        if bad_here > MAX_LOGGED_BAD_LINES:
            log.warning("%s: %d more lines that are not documents", path, bad_here - MAX_LOGGED_BAD_LINES)
        bad_lines += bad_here
        callback.flush()
    unstopped = list(callback.runs)
    for uid in unstopped:
        log.warning("run %s: no stop document in the files; closed as %s", uid, UNSTOPPED[0])
        callback.close_run(uid, *UNSTOPPED)
    return bad_lines, unreadable, len(unstopped)


def _line(run: dict) -> str:
    """One printed line of a derived run."""
    text = (f"{run['source_uid']}  {run.get('exit_status', '?')}  read {run.get('processed', 0)}  "
            f"rejected {run.get('rejected', 0)}  missed {run.get('missed', 0)}")
    final = run.get("final")
    if final is not None:
        text += (f"  final valence {final['valence']:.3f} +- {final['valence_std']:.3f}" if final["status"] == "ok"
                 else f"  final readout rejected: {final['reason']}")
    elif run.get("median_valence") is not None:
        text += f"  median valence {run['median_valence']:.3f}"
    if run.get("reason"):
        text += f"  ({run['reason']})"
    for key in ("maps_h5", "binned_maps_h5"):
        if key in run:
            text += f"  {key.removesuffix('_h5')}: {run[key]}"
    for key in ("maps_error", "binned_maps_error"):
        if key in run:
            text += f"  {key}: {run[key]}"
    return text


def run(args: argparse.Namespace) -> int:
    """Replay the files; 0 all read out, 1 anything rejected or unread, 2 usage errors."""
    out = Path(args.out) if args.out else None
    if out is not None:
        why = ""
        if out.is_dir():
            why = "is a folder"
        elif any(Path(f).resolve() in (out.resolve(), out.resolve().with_name(out.name + ".partial"))
                 for f in args.files):
            why = "is one of the files read (or its .partial, written while replaying)"
        elif out.exists() and not args.overwrite:
            why = "exists (give --overwrite to replace it)"
        if why:
            print(f"mnedge replay: --out {out} {why}", file=sys.stderr)
            return 2
    if args.maps_dir is None and args.plot_dir is None:   # never the service's default folder
        args.maps_dir = REPLAY_MAPS_DIR
    loaded = config_and_engine(args, "replay", unused=NOT_USED)
    if loaded is None:
        return 2
    config, engine = loaded
    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.document_files import DocumentFileWriter
    from mnedge_live.service import DerivedSink

    plots = None
    if config.plot_dir:
        from mnedge_live.plots import RunPlotter

        try:
            plots = RunPlotter(config.plot_dir)
        except OSError as exc:
            print(f"mnedge replay: --plot {config.plot_dir}: {exc}", file=sys.stderr)
            return 2
    try:
        writer = DocumentFileWriter(out) if out is not None else None
    except OSError as exc:
        print(f"mnedge replay: --out {out}: {exc}", file=sys.stderr)
        return 2
    summary = ReplaySummary(writer)
    sink = DerivedSink(summary, plots)
    callback = MnEdgeCallback(engine, config, sink)
    bad_lines, unreadable, unstopped = replay_files(args.files, callback)
    written = None
    if writer is not None and writer.documents:
        written = str(writer.close())
    elif writer is not None:   # nothing read: no empty file in the way of the next try
        writer.discard()
    totals = {**callback.totals, "plot_failures": sink.plot_failures}
    if args.json:
        print(json.dumps(finite({"runs": summary.runs, "totals": totals, "bad_lines": bad_lines,
                                 "unreadable_files": unreadable, "runs_without_stop": unstopped, "out": written,
                                 "model": str(engine.model_id)}), default=str, allow_nan=False))
    else:
        for r in summary.runs:
            print(_line(r))
        print(f"{len(summary.runs)} runs, {totals['processed']} spectra read out, {totals['rejected']} rejected, "
              f"{totals['missed']} missed; {totals['ignored_runs']} runs not read (derived runs, other detectors); "
              f"{bad_lines} lines not documents, {totals['bad_documents']} documents refused, {totals['late_documents']} after their run had closed, "
              f"{unreadable} files unreadable, {unstopped} runs without their stop; model {engine.model_id}"
              + (f"; derived documents in {written}" if written else ""))
    if not callback.totals["runs"]:
        print("mnedge replay: no source run read from the files", file=sys.stderr)
    failed = (not callback.totals["runs"] or bad_lines or unreadable or unstopped or totals["rejected"] or totals["missed"]
              or totals["bad_documents"] or totals["late_documents"] or totals["unpublished_documents"]
              or sink.plot_failures
              or any(k.endswith("_error") for r in summary.runs for k in r)
              or any(r.get("final", {}).get("status", "ok") != "ok" and r.get("exit_status") == "success"
                     for r in summary.runs))
    return 1 if failed else 0
