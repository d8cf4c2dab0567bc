"""``mnedge predict``: Mn valence readout of measured spectrum files.

Reads every FILE (column text: two columns, or named ones such as energy, I0, TEY, mu; EMSA/MSA,
Gatan DM3/DM4, HyperSpy, TIA, NeXus),
reads out each spectrum with the engine and prints a table, or with
``--json`` a JSON list with one object per spectrum.  Spectrum images are
processed chunk by chunk on a Dask cluster (a local in-process one, or the
scheduler given by ``--scheduler``).  A file that cannot be read gets a
rejection row and the other files are still processed.

``--csv`` prints the same rows as CSV (:data:`CSV_COLUMNS`), for a spreadsheet.
JSON rows: ``file``; ``index`` (the spectrum's position in its file, the
row-major pixel index within a spectrum image, null for a file that could not
be read); ``label`` for a spectrum of a table of several (its column's name:
``Energy, MnO, Mn2O3`` reads two spectra); for spectrum images ``signal`` (the image's position in its file: a
DM file may hold several) and, for pixels, ``pixel`` ``[row, col]`` (of the
binned image with ``--bin``, which adds ``bin``, the block side); then the
readout of :meth:`~mnedge_live.results.SpectrumResult.to_dict`; and
``reader_notes`` where reading the file logged what it passed over or
converted (a footer, a raw yield divided by I0, an axis in keV...): the same
warnings as on stderr, kept with the rows they concern.  Every signal
of a file gets rows: a signal that is no spectrum (a survey image beside a
spectrum image) gets a rejection row with its ``signal`` and the reason.  The
table shows one line per spectrum and one summary line per spectrum image.

A ``--scheduler`` is connected to before any file is read, whether or not
the files hold spectrum images: an address that cannot be used (malformed,
an unknown scheme, nothing answering within :data:`SCHEDULER_TIMEOUT_S`) is a
usage error.  A scheduler lost during the run rejects the pixels of the
chunks it had not returned (the reason names the lost connection) and the
images after it (a row each); the other files are still processed.

Exit status: 0 when every spectrum was read out, 1 when anything (a file, a
signal or a spectrum) was rejected, 2 for usage errors (bad options, a model
that cannot be loaded, an unusable plot folder or ``--scheduler`` address),
with the reason on stderr and no output rows, and 3 when a file ``--plot``
asked for (a spectrum's PNG, an image's maps) could not be written: every
spectrum still has its row, each failure is logged with its reason and the
count is the last line on stderr (3 wins over 1: the command did not do all
it was asked; the rows still show any rejection).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnedge_live.plots import display_text
from mnedge_live.readers import MeasuredSpectrum, ReadError, RefusedSignal, SpectrumImage, read_file
from mnedge_live.results import FRACTION_NAMES, SpectrumResult

log = logging.getLogger(__name__)

#: Seconds to wait for a ``--scheduler`` to answer.
SCHEDULER_TIMEOUT_S = 10.0
#: Seconds to wait for a ``--scheduler`` to have a worker (an adaptive cluster may be starting one).
WORKER_WAIT_S = 60.0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mnedge predict``."""
    p = subparsers.add_parser(
        "predict", help="read the Mn valence of measured spectrum files",
        description="Read out Mn2+/Mn3+/Mn4+ fractions and the mean valence of measured Mn L2,3 spectra "
                    "(column text: two columns or named ones such as energy, I0, TEY, mu; EMSA/MSA, Gatan DM3/DM4, "
                    "HyperSpy, TIA .ser/.emi, NeXus; spectrum images included).")
    p.add_argument("files", nargs="+", metavar="FILE", help="spectrum files")
    p.add_argument("--model", dest="model_path", help="model artifact directory (default: the model in use in the store, MNEDGE_HOME, else the embedded one)")
    p.add_argument("--backend", default="auto", help="engine backend: auto, onnxruntime, torch, tensorrt")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list, one object per spectrum")
    out.add_argument("--csv", action="store_true",
                     help="print CSV, a row per spectrum (pixels included) with the JSON object's fields as columns")
    p.add_argument("--column", metavar="NAME|N",
                   help="intensity column of text files with more than two columns: a header name (mu, norm, "
                        "TEY, ...), a 1-based number, or A/B (column A divided by column B, e.g. TEY/I0) "
                        "(default: a spectrum-like name from the header, else a raw yield divided by the one I0 "
                        "column, else the first column after the energy with a warning; a file whose first "
                        "column after the energy is a monitor such as I0 is refused; a table of several "
                        "spectra in named columns reads each); for NeXus files, a dataset of the NXdata "
                        "group, or A/B")
    p.add_argument("--plot", dest="plot_dir", metavar="DIR",
                   help="write a PNG per spectrum and maps (PNG + HDF5) per spectrum image")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask.distributed scheduler for spectrum images, connected to before any file is read "
                        "(exit 2 when it cannot be; default: a local in-process cluster)")
    p.add_argument("--chunk-spectra", type=int, default=4096, metavar="N",
                   help="spectra per Dask chunk of a spectrum image (default 4096)")
    p.add_argument("--bin", type=int, default=1, metavar="K",
                   help="average K x K pixels of each spectrum image into one spectrum before the readout "
                        "(about 20 log10(K) dB more PSNR, K times coarser maps; default 1: no binning)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar for spectrum images")
    p.set_defaults(run=run)
    return p


@dataclass
class Row:
    """One output row: a spectrum's readout, or a file that could not be read."""

    file: str
    index: int | None
    result: SpectrumResult
    pixel: tuple[int, int] | None = None
    bin: int = 1
    signal: int | None = None
    notes: tuple[str, ...] = ()
    label: str | None = None

    def to_dict(self) -> dict:
        """The ``--json`` object: ``file``, ``index`` (``label`` for a column of a table of several; ``signal``,
        ``pixel``, and ``bin`` when binned, for images), then the readout."""
        d: dict[str, Any] = {"file": self.file, "index": self.index}
        if self.label is not None:
            d["label"] = self.label
        if self.signal is not None:
            d["signal"] = int(self.signal)
        if self.pixel is not None:
            d["pixel"] = [int(self.pixel[0]), int(self.pixel[1])]
            if self.bin > 1:
                d["bin"] = int(self.bin)
        d.update(self.result.to_dict())
        if self.notes:
            d["reader_notes"] = list(self.notes)
        return d


class _ReaderNotes(logging.Handler):
    """Collects the warnings logged while one file is read (they still reach stderr as well)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def reader_notes() -> Iterator[list[str]]:
    """The warnings the package logs inside the block (what a reader passed over or converted), as a list."""
    handler = _ReaderNotes()
    logger = logging.getLogger("mnedge_live")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


@dataclass
class ImageSummary:
    """Table line of a spectrum image."""

    file: str
    index: int
    shape: tuple[int, int]
    counts: dict[str, int]
    mean_valence: float
    outputs: list[str] = field(default_factory=list)
    bin: int = 1
    source_shape: tuple[int, int] | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    #: median, 5th and 95th percentile of the pixels' energy offset (eV; None when no pixel was read out)
    offset: tuple[float, float, float] | None = None


def run(args: argparse.Namespace) -> int:
    """Read the files, read out every spectrum, print the results; returns the exit status."""
    if args.chunk_spectra < 1:
        print("mnedge predict: --chunk-spectra must be at least 1", file=sys.stderr)
        return 2
    if args.bin < 1:
        print("mnedge predict: --bin must be at least 1", file=sys.stderr)
        return 2
    plot_dir = Path(args.plot_dir) if args.plot_dir else None
    if plot_dir is not None:
        try:
            plot_dir.mkdir(parents=True, exist_ok=True)
            # a folder that exists but takes no file (read-only, a full disk, /proc): every plot failed after
            # the whole run, exit 3, instead of the documented refusal before any work
            with tempfile.NamedTemporaryFile(dir=plot_dir, prefix=".mnedge-write-test-"):
                pass
        except OSError as exc:
            print(f"mnedge predict: cannot use --plot {plot_dir}: {exc}", file=sys.stderr)
            return 2
    from mnedge_live.engine import load_engine
    from mnedge_live.spectrum_image import EngineSpec, local_thread_plan, register_engine

    # On the local cluster its worker threads share this engine: size the engine's CPU threads for
    # that. Workers of a remote scheduler load their own engine (default threads).
    threads = None if args.scheduler is not None else local_thread_plan()[1]
    try:
        engine = load_engine(args.model_path, backend=args.backend, threads=threads)
    except Exception as exc:
        print(f"mnedge predict: cannot load the model: {exc}", file=sys.stderr)
        return 2
    # The resolved absolute path: workers of a remote cluster share neither our working directory
    # nor our model store, so they must load exactly the artifact we loaded.
    spec = EngineSpec(str(Path(engine.artifact.path).resolve()), args.backend)
    register_engine(spec, engine)
    model = engine.model_id

    client = None
    client_error = ""
    if args.scheduler is not None:   # checked up front: exit 2 for an unusable address, whatever the files hold
        client, why = _client(args.scheduler)
        if client is None:
            print(f"mnedge predict: cannot use --scheduler {args.scheduler}: {why}", file=sys.stderr)
            return 2
    rows: list[Row] = []
    summaries: list[ImageSummary] = []
    plots = _PlotNames(plot_dir) if plot_dir is not None else None
    try:
        for path in args.files:
            first_row = len(rows)
            try:
                with reader_notes() as notes:
                    items = read_file(path, column=args.column)
            except ReadError as exc:
                rows.append(Row(str(path), None, SpectrumResult.rejected(f"cannot read the file: {exc}", model)))
                continue
            except Exception as exc:  # a reader bug must not stop the other files
                log.exception("reading %s failed", path)
                rows.append(Row(str(path), None, SpectrumResult.rejected(
                    f"cannot read the file: {type(exc).__name__}: {exc}", model)))
                continue
            singles = [it for it in items if isinstance(it, MeasuredSpectrum)]
            read = iter(_predict_singles(engine, singles, plots) if singles else [])
            for it in items:   # in the file's order: its spectra, and its signals that are no spectrum with the reason
                if isinstance(it, MeasuredSpectrum):
                    rows.append(next(read))
                elif isinstance(it, RefusedSignal):
                    rows.append(Row(it.file, it.index, SpectrumResult.rejected(
                        f"signal {it.index} of the file not read: {it.reason}", model), signal=it.index))
            images = [it for it in items if isinstance(it, SpectrumImage)]
            try:
                for image in images:
                    if client is None and not client_error:   # the local cluster, started for the first image
                        client, why = _client(None)
                        if client is None:
                            client_error = f"cannot process the spectrum image: no connection to a local Dask cluster: {why}"
                    if client is not None and client.status != "running" and not client_error:
                        # the scheduler went away during the run (distributed tries to reconnect): an image
                        # handed to it now waited for that to time out, then had every chunk "cancelled"
                        client_error = ("cannot process the spectrum image: the connection to the Dask scheduler "
                                        f"{args.scheduler or '(local cluster)'} was lost during the run")
                    if client is None or client_error:
                        rows.append(Row(image.file, image.index, SpectrumResult.rejected(client_error, model),
                                        signal=image.index))
                        continue
                    try:
                        img_rows, summary = _predict_image(image, client, spec, model, plots, args)
                    except Exception as exc:  # e.g. the cluster went away: reject this image, go on
                        log.exception("spectrum image %s failed", image.file)
                        rows.append(Row(image.file, image.index, SpectrumResult.rejected(
                            f"spectrum image not processed: {type(exc).__name__}: {exc}", model), signal=image.index))
                        continue
                    rows.extend(img_rows)
                    summaries.append(summary)
            finally:
                if images:
                    images[0].close()   # the file of this item list: one open file per file read otherwise
            if notes:
                for row in rows[first_row:]:
                    row.notes = tuple(notes)
    finally:
        if client is not None:
            from mnedge_live.spectrum_image import close_client

            close_client(client)

    if args.json:
        out = [r.to_dict() for r in rows]
        # dumps, not dump: only the one-shot encoder is the fast C one (matters for spectrum images).
        sys.stdout.write(json.dumps(out, indent=2 if len(out) <= 1000 else None))
        sys.stdout.write("\n")
    elif args.csv:   # file names with bytes that are not UTF-8 as \xNN (a strict UTF-8 stdout refused them)
        text = io.StringIO()
        write_csv(rows, text)
        sys.stdout.write(display_text(text.getvalue()))
    else:
        sys.stdout.write(display_text(format_table(rows, summaries)))
    sys.stdout.flush()
    rejected = any(not r.result.ok for r in rows) or any(s.counts.get("rejected", 0) for s in summaries)
    if plots is not None and plots.failed:
        print(f"mnedge predict: {len(plots.failed)} output file(s) asked for with --plot could not be written "
              f"(the warnings above say why): {', '.join(plots.failed[:3])}{', ...' if len(plots.failed) > 3 else ''}",
              file=sys.stderr)
        return 3
    return 1 if rejected else 0


def _predict_singles(engine: Any, spectra: list[MeasuredSpectrum], plots: _PlotNames | None) -> list[Row]:
    results = engine.predict([(s.energy, s.intensity) for s in spectra])
    rows = []
    for s, res in zip(spectra, results):
        rows.append(Row(s.file, s.index, res, label=s.label))
        if plots is not None:
            from mnedge_live.plots import plot_spectrum

            png = plots.next(s.file, f"{s.index}" + ("" if s.label is None else f"_{s.label}"), ".png")
            title = f"{Path(s.file).name} #{s.index}" + ("" if s.label is None else f" ({s.label})")
            try:
                plot_spectrum(png, s.energy, s.intensity, res, title=title)
            except Exception as exc:  # a plot failure is reported and counted, not fatal
                log.warning("plot of %s #%s failed: %s", s.file, s.index, exc)
                plots.failed.append(png.name)
    return rows


def _predict_image(image: SpectrumImage, client: Any, spec: Any, model: str, plots: _PlotNames | None,
                   args: argparse.Namespace) -> tuple[list[Row], ImageSummary]:
    import numpy as np

    from mnedge_live.image_binning import bin_pixels
    from mnedge_live.spectrum_image import run_image

    source_shape = image.shape
    image = bin_pixels(image, args.bin)
    readout = run_image(image, client, spec, progress=args.progress, chunk_spectra=args.chunk_spectra,
                        model=model, keep_results=args.json or args.csv)
    rows = [Row(image.file, i, res, readout.pixel(i), args.bin, image.index) for i, res in enumerate(readout.results)]
    val = readout.maps.layers["valence"]
    mean = float(np.nanmean(val)) if np.isfinite(val).any() else float("nan")
    offsets = readout.maps.layers["energy_offset_eV"]
    offsets = offsets[np.isfinite(offsets)]
    offset = (float(np.median(offsets)), *(float(v) for v in np.percentile(offsets, [5, 95]))) if offsets.size else None
    summary = ImageSummary(image.file, image.index, image.shape, readout.counts, mean, bin=args.bin,
                           source_shape=source_shape, reasons=readout.reasons, offset=offset)
    if plots is not None:
        from mnedge_live.plots import write_image_maps

        name = plots.next(image.file, f"{image.index}_maps", "").name
        try:
            summary.outputs.extend(write_image_maps(plots.directory, name, readout.maps,
                                                    attrs={"source_file": str(image.file), "model": model,
                                                           "signal_index": image.index, "bin": args.bin,
                                                           "source_shape": list(source_shape)}))
        except Exception as exc:  # reported and counted, not fatal
            log.warning("maps of %s failed: %s", image.file, exc)
            plots.failed.append(name)
    return rows, summary


def _client(address: str | None) -> tuple[Any, str]:
    """A Dask client (of a local cluster, or of the scheduler at ``address``) and '', or None and why not."""
    import distributed  # noqa: F401  (configures its loggers on first import; quiet them after)

    from mnedge_live.spectrum_image import local_client

    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("distributed").setLevel(logging.WARNING)  # no cluster chatter unless -v
    try:
        if address is not None:
            from distributed import Client

            _answers_as_a_scheduler(address)
            # not the process's default scheduler: a Client that fails to connect leaves that setting behind,
            # and every later dask computation in the process then asks for a client that is not there
            client = Client(address, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
            try:   # a scheduler without workers took every image and never computed it: a silent hang
                client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except Exception:
                client.close()
                raise OSError(f"the scheduler at {address} has no worker (none joined within {WORKER_WAIT_S:g} s); "
                              "start one with: dask worker ADDRESS") from None
            return client, ""
        return local_client(), ""
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
    # The half-made client is garbage now; finalize it here, where nothing holds distributed's loop lock:
    # left to a later collection, its __del__ (close) can run while another Client starts and deadlock it.
    gc.collect()
    return None, why


def _answers_as_a_scheduler(address: str) -> None:
    """Raise ``OSError`` unless ``address`` completes distributed's handshake within :data:`SCHEDULER_TIMEOUT_S`.

    ``Client(address, timeout=...)`` waits for the handshake's reply without a limit: a port that
    accepts connections but is no scheduler (a dashboard's HTTP port, another service) hung
    ``mnedge predict`` for good.
    """
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=SCHEDULER_TIMEOUT_S), SCHEDULER_TIMEOUT_S)
        await comm.close()

    try:
        asyncio.run(probe())
    except TimeoutError as exc:
        raise OSError(f"no Dask scheduler answered at {address} within {SCHEDULER_TIMEOUT_S:g} s "
                      "(the port accepts connections but does not speak the scheduler protocol?)") from exc


#: Longest output name stem (characters): file systems allow 255 bytes for a whole name.
MAX_PLOT_STEM = 120


class _PlotNames:
    """Output names ``STEM_SUFFIX.EXT`` in the plot folder, unique also where case is not told apart (a label
    ``MnO`` beside ``mno``), a long one cut with a hash of the whole; and the outputs that failed."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.used: set[str] = set()   # case-folded
        self.failed: list[str] = []   # names of the outputs that could not be written

    def next(self, file: str, suffix: str, ext: str) -> Path:
        import hashlib

        from mnedge_live.plots import safe_name

        base = safe_name(f"{Path(file).stem}_{suffix}")
        if len(base) > MAX_PLOT_STEM:
            base = f"{base[:MAX_PLOT_STEM - 9]}-{hashlib.sha1(base.encode()).hexdigest()[:8]}"
        name, k = base, 1
        while name.casefold() in self.used:
            k += 1
            name = f"{base}-{k}"
        self.used.add(name.casefold())
        return self.directory / f"{name}{ext}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


#: Columns of ``--csv``: the ``--json`` object flattened (fractions and their std by name, a pixel's row and column).
CSV_COLUMNS = ("file", "index", "label", "signal", "pixel_row", "pixel_col", "bin", "status", "reason", "valence",
               "valence_std", *FRACTION_NAMES, *(f"{n} std" for n in FRACTION_NAMES), "energy_offset_eV",
               "resolution_eV", "t_lambda", "ood_score", "flags", "model", "reader_notes")


def write_csv(rows: list[Row], stream: Any) -> None:
    """Write the rows as CSV (:data:`CSV_COLUMNS`; empty cells where a value is missing, flags joined by ``;``)."""
    import csv

    w = csv.writer(stream, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        d = r.to_dict()
        pixel = d.get("pixel") or ("", "")
        flat = {**d, "pixel_row": pixel[0], "pixel_col": pixel[1], "flags": ";".join(d["flags"]),
                "reader_notes": " | ".join(d.get("reader_notes", ())),
                **{n: d["fractions"][n] for n in FRACTION_NAMES},
                **{f"{n} std": d["fractions_std"][n] for n in FRACTION_NAMES}}
        w.writerow([_csv_cell(flat.get(c)) for c in CSV_COLUMNS])


def _csv_cell(value: Any) -> Any:
    """A CSV cell: empty for None; text that a spreadsheet would run as a formula (``=HYPERLINK(...)`` from a
    file's column name, ``+``, ``-``, ``@``) behind a quote, so it shows as the text it is."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def format_table(rows: list[Row], summaries: list[ImageSummary]) -> str:
    """Human-readable table: one line per single spectrum or unreadable file, one per spectrum image.

    Under each image's line: the pixels' energy offset (median and 5-95 %: a calibration error, and a
    spectrometer drift during the scan as a spread), its three commonest rejection reasons, and where a
    tenth or more of its pixels are too noisy, the ``--bin`` that averages twice as many pixels per side.
    """
    from mnedge_live.engine.checks import NO_EDGE_REASON

    head = (f"{'file':<32} {'index':>5} {'status':<8} {'valence':>13} "
            + " ".join(f"{n:>6}" for n in FRACTION_NAMES) + f" {'dE(eV)':>7} {'res(eV)':>7}  flags / reason")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.pixel is not None:  # spectrum-image pixels: summarized below
            continue
        d = r.result.to_dict()
        val = "-" if d["valence"] is None else f"{d['valence']:.2f} ± {_num(d['valence_std'], '.2f')}"
        fr = " ".join(f"{_num(d['fractions'][n], '.2f'):>6}" for n in FRACTION_NAMES)
        note = r.result.reason if not r.result.ok else ", ".join(d["flags"])
        idx = "-" if r.index is None else str(r.index)
        shown = r.file if r.label is None else f"{r.file} [{r.label}]"
        lines.append(f"{_short(shown, 32):<32} {idx:>5} {d['status']:<8} {val:>13} {fr} "
                     f"{_num(d['energy_offset_eV'], '+.2f'):>7} {_num(d['resolution_eV'], '.2f'):>7}  {note}")
    for s in summaries:
        c = s.counts
        mean = "-" if s.mean_valence != s.mean_valence else f"{s.mean_valence:.2f}"
        binned = ""
        if s.bin > 1 and s.source_shape:  # a line scan's single row is not binned across rows
            block = f"{min(s.bin, s.source_shape[0])}x{min(s.bin, s.source_shape[1])}"
            binned = f", binned {block} from {s.source_shape[0]}x{s.source_shape[1]}"
        lines.append(f"{_short(s.file, 32):<32} map {s.shape[0]}x{s.shape[1]} (signal {s.index}{binned}): "
                     f"{c.get('ok', 0)} of {c.get('spectra', 0)} spectra read out, "
                     f"{c.get('rejected', 0)} rejected, mean valence {mean}")
        if s.offset is not None:   # the model's reading of the axis error; its spread includes any drift
            lines.append(f"    energy offset: median {s.offset[0]:+.2f} eV, 5-95 % of pixels {s.offset[1]:+.2f} to "
                         f"{s.offset[2]:+.2f} eV")
        for kind, count in list(s.reasons.items())[:3]:
            lines.append(f"    {count} rejected: {kind}")
        if len(s.reasons) > 3:
            lines.append(f"    {sum(list(s.reasons.values())[3:])} rejected for {len(s.reasons) - 3} other reasons")
        noisy = s.reasons.get(NO_EDGE_REASON, 0) + c.get("low_psnr", 0)
        if noisy and 10 * noisy >= c.get("spectra", 0):
            lines.append(f"    {noisy} pixels too noisy (no edge above the noise, or flagged low_psnr): "
                         f"--bin {2 * s.bin} averages {2 * s.bin}x{2 * s.bin} pixels into one spectrum (vacuum "
                         "and regions without Mn stay unread at any binning)")
        for o in s.outputs:
            lines.append(f"    wrote {o}")
    return "\n".join(lines) + "\n"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]
