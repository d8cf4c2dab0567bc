"""The derived run of one source run, composed with event-model.

Start: ``parent_uid`` and ``mnedge_model``; one descriptor, stream ``mnedge``,
hinted so BestEffortCallback plots valence against ``source_seq_num``; events
or event pages; stop with the counts ``processed``, ``rejected``, ``missed``,
``unpublished_rows`` (rows of either stream whose event could not be sent; they
are still counted, mapped and shown on the PVs) and, for spectrum images, ``maps_h5`` /
``maps_png``.  Spectrum images read
with ``map_bin`` add a second stream, ``mnedge_binned``: one row per block of
pixels (``block_row``, ``block_col``, ``pixels``), composed when its first
block is read out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import event_model

from mnedge_live.results import SpectrumResult

log = logging.getLogger(__name__)

#: Name of the derived stream.
STREAM = "mnedge"
#: Name of the stream of block readouts (``map_bin``).
BINNED_STREAM = "mnedge_binned"
#: Number fields of every derived row.
NUMBER_FIELDS = ("valence", "valence_std", "frac_mn2", "frac_mn3", "frac_mn4", "energy_offset_eV", "resolution_eV",
                 "t_lambda", "ood_score")

#: Units of the number fields that have one (valence and fractions are pure numbers; t_lambda is relative).
FIELD_UNITS = {"energy_offset_eV": "eV", "resolution_eV": "eV"}


def result_row(result: SpectrumResult, source_seq_num: int) -> dict:
    """The derived-row values of one result (NaN where rejected)."""
    f = result.fractions
    vals = (result.valence, result.valence_std, f[0], f[1], f[2], result.energy_offset_eV, result.resolution_eV,
            result.t_lambda, result.ood_score)
    row = {k: float(v) if v is not None and math.isfinite(float(v)) else float("nan") for k, v in zip(NUMBER_FIELDS, vals)}
    row["status"] = result.status
    row["reason"] = result.reason or ""
    row["flags"] = ",".join(result.flags)
    row["source_seq_num"] = int(source_seq_num)
    return row


def _data_keys(integer_fields: tuple[str, ...]) -> dict:
    """Descriptor data keys of a derived row: the numbers, ``status``, ``reason``, ``flags`` (the readout's
    quality flags, comma-separated), then ``integer_fields``."""
    keys = {k: {"source": "mnedge", "dtype": "number", "shape": [], **({"units": FIELD_UNITS[k]} if k in FIELD_UNITS else {})}
            for k in NUMBER_FIELDS}
    for k in ("status", "reason", "flags"):
        keys[k] = {"source": "mnedge", "dtype": "string", "shape": []}
    for k in integer_fields:
        keys[k] = {"source": "mnedge", "dtype": "integer", "shape": []}
    return keys


def block_row(result: SpectrumResult, index: tuple[int, int], pixels: int) -> dict:
    """The derived-row values of one block readout (stream :data:`BINNED_STREAM`)."""
    row = result_row(result, 0)
    del row["source_seq_num"]
    row.update(block_row=int(index[0]), block_col=int(index[1]), pixels=int(pixels))
    return row


class DerivedRun:
    """Composes and emits the derived run of one source run.

    Parameters
    ----------
    emit : callable
        ``emit(name, doc)`` receives every derived document.
    parent_uid : str
        uid of the source run.
    model_id : str
        Identifier of the model reading the spectra.
    kind : str
        ``"spectrum"``, ``"map"`` (adds pixel fields) or ``"step"`` (adds ``final``).
    metadata : dict, optional
        Extra start-document metadata.
    on_unsent : callable, optional
        ``on_unsent(documents, rows)`` after a document that ``emit`` failed to send (it raised):
        one document, carrying ``rows`` readouts.  The failure is logged, never raised: the other
        runs' rows, the counts and the stop document must not depend on one send.
    """

    def __init__(self, emit: Callable[[str, dict], None], parent_uid: str, model_id: str, kind: str,
                 metadata: dict | None = None, on_unsent: Callable[[int, int], None] | None = None):
        self.emit = emit
        self.on_unsent = on_unsent
        self.unsent_documents = 0
        self.unsent_rows = 0
        self.kind = kind
        md = dict(metadata or {})
        md.update(parent_uid=parent_uid, mnedge_model=model_id, mnedge_derived=True, mnedge_kind=kind,
                  plan_name="mnedge_live",
                  hints={"dimensions": [(["source_seq_num"], STREAM)]})
        self.bundle = event_model.compose_run(metadata=md)
        self.uid = self.bundle.start_doc["uid"]
        self._send("start", self.bundle.start_doc)
        keys = _data_keys(("source_seq_num",) + (("pixel_row", "pixel_col") if kind == "map" else ()))
        if kind == "step":
            keys["final"] = {"source": "mnedge", "dtype": "boolean", "shape": []}
        self.fields = list(keys)
        hints = {STREAM: {"fields": ["valence", "frac_mn2", "frac_mn3", "frac_mn4"]}}
        self.desc = self.bundle.compose_descriptor(name=STREAM, data_keys=keys, hints=hints)
        self._send("descriptor", self.desc.descriptor_doc)
        self.rows = 0
        self.binned_desc = None
        self.binned_fields: list[str] = []
        self.binned_rows = 0

    def emit_rows(self, rows: list[dict], now: float) -> None:
        """Emit rows: one event for a single row, one event page for several."""
        if not rows:
            return
        self.rows += len(rows)
        if len(rows) == 1:
            doc = self.desc.compose_event(data=rows[0], timestamps={k: now for k in rows[0]}, time=now,
                                          validate=False)
            self._send("event", doc, 1)
            return
        data = {k: [r[k] for r in rows] for k in self.fields}
        ts = {k: [now] * len(rows) for k in self.fields}
        doc = self.desc.compose_event_page(data=data, timestamps=ts, time=[now] * len(rows), validate=False)
        self._send("event_page", doc, len(rows))

    def emit_binned_rows(self, rows: list[dict], now: float) -> None:
        """Emit block readouts (rows with ``block_row``, ``block_col``, ``pixels``) as one event page."""
        if not rows:
            return
        if self.binned_desc is None:
            keys = _data_keys(("block_row", "block_col", "pixels"))
            self.binned_fields = list(keys)
            self.binned_desc = self.bundle.compose_descriptor(
                name=BINNED_STREAM, data_keys=keys, hints={BINNED_STREAM: {"fields": ["valence"]}})
            self._send("descriptor", self.binned_desc.descriptor_doc)
        self.binned_rows += len(rows)
        data = {k: [r[k] for r in rows] for k in self.binned_fields}
        ts = {k: [now] * len(rows) for k in self.binned_fields}
        self._send("event_page", self.binned_desc.compose_event_page(data=data, timestamps=ts, time=[now] * len(rows),
                                                                     validate=False), len(rows))

    def close(self, processed: int, rejected: int, missed: int, exit_status: str = "success", reason: str = "",
              extra: dict | None = None) -> dict:
        """Emit the stop document with the counts; returns it."""
        doc = dict(self.bundle.compose_stop(exit_status=exit_status, reason=reason))
        doc.update(processed=int(processed), rejected=int(rejected), missed=int(missed),
                   unpublished_rows=int(self.unsent_rows))
        doc.update(extra or {})
        self._send("stop", doc)
        return doc

    def _send(self, name: str, doc: dict, rows: int = 0) -> bool:
        """Hand one document to ``emit``; a failure is logged and counted (``on_unsent``), not raised."""
        try:
            self.emit(name, doc)
            return True
        except Exception:
            log.exception("derived %s of run %s (%d readouts) could not be sent", name, self.uid, rows)
            self.unsent_documents += 1
            self.unsent_rows += rows
            if self.on_unsent is not None:
                self.on_unsent(1, rows)
            return False
