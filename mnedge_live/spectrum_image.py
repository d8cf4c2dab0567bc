"""Read out spectrum images chunk by chunk on a Dask cluster.

The work is split the LiberTEM-UDF way:

* **per-chunk work** (:func:`process_chunk`) runs on a Dask worker: the
  engine reads out every spectrum of one ``(rows, cols, n)`` block and
  returns one :class:`~mnedge_live.results.SpectrumResult` per pixel;
* **merging** (:class:`MapMerger`) runs in the client as chunks complete:
  it places each chunk's results into the valence and fraction maps.

Workers get the engine through :func:`get_engine`, a per-process cache keyed
by :class:`EngineSpec` (artifact path and backend), so a remote
``dask.distributed`` cluster loads the model once per worker process, and an
in-process local cluster reuses the engine the client already loaded
(:func:`register_engine`).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnedge_live.assembly import MAP_LAYERS, ValenceMaps, map_values
from mnedge_live.readers import SpectrumImage
from mnedge_live.results import SpectrumResult, reason_kind

#: Spectra per chunk handed to one worker task (a few engine batches).
CHUNK_SPECTRA = 4096


@dataclass(frozen=True)
class EngineSpec:
    """How a worker loads the engine: artifact directory (None: embedded model) and backend."""

    path: str | None = None
    backend: str = "auto"


_ENGINES: dict[EngineSpec, Any] = {}
_ENGINES_LOCK = threading.Lock()


def register_engine(spec: EngineSpec, engine: Any) -> None:
    """Make an already loaded engine the one :func:`get_engine` returns for ``spec`` in this process."""
    with _ENGINES_LOCK:
        _ENGINES[spec] = engine


def get_engine(spec: EngineSpec) -> Any:
    """The engine for ``spec`` in this process, loaded on first use."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(spec)
        if engine is None:
            from mnedge_live.engine import load_engine

            engine = load_engine(spec.path, backend=spec.backend)
            _ENGINES[spec] = engine
        return engine


def process_chunk(block: np.ndarray, energy: np.ndarray, engine: Any) -> list[SpectrumResult]:
    """Per-chunk work: read out every spectrum of a ``(rows, cols, n)`` block.

    Parameters
    ----------
    block : numpy.ndarray
        Intensities of the chunk's pixels; the last axis is the energy axis.
    energy : numpy.ndarray
        The image's energy axis ``(n,)``.
    engine : Engine
        Anything with ``predict_shared_axis(energy, rows) -> list of SpectrumResult``.

    Returns
    -------
    list of SpectrumResult
        One per pixel, row-major within the block.
    """
    flat = np.asarray(block, dtype=np.float64).reshape(-1, block.shape[-1])
    return engine.predict_shared_axis(energy, flat)


def _chunk_task(block: np.ndarray, energy: np.ndarray, spec: EngineSpec) -> list[SpectrumResult]:
    """Worker entry point: :func:`process_chunk` with the worker's cached engine."""
    return process_chunk(block, energy, get_engine(spec))


@dataclass
class ImageReadout:
    """The readout of a whole spectrum image.

    Attributes
    ----------
    shape : (int, int)
        Navigation shape ``(rows, cols)``.
    results : list of SpectrumResult
        One per pixel, row-major (empty when not kept).
    maps : ValenceMaps
        Valence, its std and the three fractions per pixel (NaN where rejected).
    counts : dict
        ``spectra``, ``ok``, ``rejected`` and ``low_psnr`` (pixels read out
        with the ``low_psnr`` flag).
    reasons : dict
        Rejected pixels per kind of reason (:func:`~mnedge_live.results.reason_kind`).
    """

    shape: tuple[int, int]
    results: list[SpectrumResult]
    maps: ValenceMaps
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def pixel(self, flat_index: int) -> tuple[int, int]:
        """``(row, col)`` of a row-major pixel index."""
        return divmod(int(flat_index), self.shape[1])


class MapMerger:
    """Merges chunk results into per-pixel results and maps (client side)."""

    def __init__(self, shape: tuple[int, int], keep_results: bool = True):
        self.shape = (int(shape[0]), int(shape[1]))
        self.maps = ValenceMaps(self.shape)
        self.keep_results = keep_results
        self.results: list[SpectrumResult | None] = [None] * (self.shape[0] * self.shape[1]) if keep_results else []
        self.n_ok = 0
        self.n_low_psnr = 0
        self.answered = np.zeros(self.shape, bool)
        self.reasons: Counter[str] = Counter()

    def merge(self, origin: tuple[int, int], block_shape: tuple[int, int], results: list[SpectrumResult]) -> None:
        """Place one chunk's results.

        Parameters
        ----------
        origin : (int, int)
            Row and column of the chunk's first pixel.
        block_shape : (int, int)
            Rows and columns of the chunk.
        results : list of SpectrumResult
            Row-major results of the chunk.
        """
        r0, c0 = origin
        nr, nc = block_shape
        if len(results) != nr * nc:
            raise ValueError(f"chunk at {origin} has {nr * nc} pixels but {len(results)} results")
        vals = np.array([map_values(r) for r in results], np.float64).reshape(nr, nc, len(MAP_LAYERS))
        for k, name in enumerate(MAP_LAYERS):
            self.maps.layers[name][r0:r0 + nr, c0:c0 + nc] = vals[..., k]
        ok = np.array([r.ok for r in results], bool)
        self.maps.rejected[r0:r0 + nr, c0:c0 + nc] = ~ok.reshape(nr, nc)
        self.answered[r0:r0 + nr, c0:c0 + nc] = True
        self.n_ok += int(ok.sum())
        self.n_low_psnr += sum(1 for r in results if r.ok and "low_psnr" in r.flags)
        self.reasons.update(reason_kind(r.reason) for r in results if not r.ok)
        if not self.keep_results:
            return
        width = self.shape[1]
        for i, res in enumerate(results):
            dr, dc = divmod(i, nc)
            self.results[(r0 + dr) * width + c0 + dc] = res

    def finish(self, model: str = "") -> ImageReadout:
        """The merged readout; pixels no chunk answered count as rejections (in the counts and the map)."""
        missing = SpectrumResult.rejected("internal error: pixel not processed", model=model)
        self.maps.rejected[~self.answered] = True
        results = [r if r is not None else missing for r in self.results]
        n = self.shape[0] * self.shape[1]
        reasons = Counter(self.reasons)
        unanswered = int((~self.answered).sum())
        if unanswered:
            reasons[reason_kind(missing.reason)] += unanswered
        return ImageReadout(self.shape, results, self.maps,
                            {"spectra": n, "ok": self.n_ok, "rejected": n - self.n_ok, "low_psnr": self.n_low_psnr},
                            dict(reasons.most_common()))


def chunk_image(image: SpectrumImage, chunk_spectra: int = CHUNK_SPECTRA):
    """The image's lazy array rechunked to about ``chunk_spectra`` pixels per chunk, whole spectra per chunk.

    Chunk edges follow the file's own storage chunks where the target is at
    least half a stored chunk: a chunk that cuts stored chunks makes them be
    read and decompressed for two tasks (a gzip HyperSpy 256 x 256 image
    stored in 21 x 21 blocks: 1.48 s to read in chunks of 16 rows, 0.76 s
    in chunks of 21).
    """
    rows, cols = image.shape
    stored = getattr(image.data, "chunks", None)
    r0 = stored[0][0] if stored else 1
    c0 = stored[1][0] if stored else 1
    if cols >= chunk_spectra:
        rc, cc = 1, _aligned(chunk_spectra, c0, cols)
    else:
        rc, cc = _aligned(max(1, chunk_spectra // max(cols, 1)), r0, rows), cols
    return image.data.rechunk((rc, cc, -1))


def _aligned(target: int, stored: int, total: int) -> int:
    """``target`` rounded to a multiple of ``stored`` when it is at least half of it; within ``[1, total]``."""
    if 2 * target >= stored > 1:
        target = max(1, round(target / stored)) * stored
    return max(1, min(total, target))


def run_image(image: SpectrumImage, client: Any, spec: EngineSpec, progress: bool = True,
              chunk_spectra: int = CHUNK_SPECTRA, model: str = "", keep_results: bool = True) -> ImageReadout:
    """Read out a spectrum image on a Dask cluster, merging chunks into maps as they finish.

    Parameters
    ----------
    image : SpectrumImage
        The (lazy) spectrum image.
    client : distributed.Client
        Client of the local or remote cluster that runs the per-chunk work.
    spec : EngineSpec
        How workers get the engine (see :func:`get_engine`).
    progress : bool
        Show a tqdm progress bar (spectra) on stderr.
    chunk_spectra : int
        Target number of spectra per chunk.
    model : str
        Model id used for pixels no chunk answered.
    keep_results : bool
        Keep every pixel's :class:`SpectrumResult` (for per-pixel output); False keeps
        only the maps and counts, for images too large to hold one object per pixel.

    Returns
    -------
    ImageReadout
    """
    import dask
    from distributed import as_completed
    from tqdm import tqdm

    arr = chunk_image(image, chunk_spectra)
    energy = np.asarray(image.energy, np.float64)
    row_starts = np.concatenate([[0], np.cumsum(arr.chunks[0])])
    col_starts = np.concatenate([[0], np.cumsum(arr.chunks[1])])
    blocks = arr.to_delayed()
    tasks, places = [], []
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            task = dask.delayed(_chunk_task, pure=True)(blocks[i, j, 0], energy, spec)
            tasks.append(task)
            places.append(((int(row_starts[i]), int(col_starts[j])), (arr.chunks[0][i], arr.chunks[1][j])))
    merger = MapMerger(image.shape, keep_results)
    futures = client.compute(tasks)
    where = {fut.key: place for fut, place in zip(futures, places)}
    with tqdm(total=image.n_pixels, unit="spectra", desc=_short(image.file), file=sys.stderr,
              disable=not progress, leave=False) as bar:
        for fut in as_completed(futures, loop=client.loop):
            origin, shape = where[fut.key]
            try:
                results = fut.result()
            except Exception as exc:  # a failed chunk rejects its pixels; the others still count
                reason = f"chunk failed: {_chunk_error(exc)}"
                results = [SpectrumResult.rejected(reason, model=model)] * (shape[0] * shape[1])
            merger.merge(origin, shape, results)
            bar.update(shape[0] * shape[1])
    return merger.finish(model)


def _chunk_error(exc: Exception) -> str:
    """``Type: message`` on one line, without the task key a future cancelled by distributed starts with.

    A lost scheduler cancels every chunk's future with ``KEY cancelled for reason: scheduler-connection-lost.``
    and a second line: with the key each chunk was a kind of reason of its own (the table listed one cause
    once per chunk), and the line break split the table's line.
    """
    text = str(exc)
    key = getattr(exc, "key", None)
    if key is not None:
        text = text.removeprefix(str(key))
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def _short(path: str, n: int = 24) -> str:
    return path if len(path) <= n else "..." + path[-(n - 3):]


def local_thread_plan(cores: int | None = None) -> tuple[int, int]:
    """Worker threads of the local cluster and CPU threads per chunk, for ``cores`` cores (default: all).

    Two chunks at once with ``cores // 2`` threads each: one chunk's Python and
    NumPy steps overlap the other's network run, and the cores are not
    oversubscribed (2 cores: 10.4k spectra/s, against 7.8k/s for two chunks
    with the libraries' default of 2 threads each and 6.9k/s for one chunk).
    """
    from mnedge_live.cores import usable_cores

    cores = max(1, cores or usable_cores())
    workers = min(2, cores)
    return workers, max(1, cores // workers)


def local_client(threads: int | None = None):
    """A client of an in-process local Dask cluster (threads, no dashboard); close it with :func:`close_client`.

    ``threads``: worker threads (default: :func:`local_thread_plan`).  The scheduler's and the
    worker's HTTP servers, which distributed starts even without a dashboard, listen on loopback
    only: on every interface they served the scheduler's pages to the network for the whole run.
    """
    import logging

    from distributed import Client, LocalCluster

    threads = threads or local_thread_plan()[0]
    cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                           dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
                           silence_logs=logging.WARNING)
    return Client(cluster, set_as_default=False)   # used explicitly (client.compute): no process-wide default


def close_client(client: Any) -> None:
    """Close a client and, when it started one, its local cluster.

    A client whose scheduler was lost is still trying to reconnect; closing it cancels that attempt,
    which distributed logs as an error with the CancelledError's traceback. That record is dropped:
    the loss is reported already, in the rows of what it cost.
    """
    import asyncio
    import logging

    def not_a_cancelled_reconnect(record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))

    cluster = getattr(client, "cluster", None)
    client_log = logging.getLogger("distributed.client")
    client_log.addFilter(not_a_cancelled_reconnect)
    try:
        client.close()
    finally:
        client_log.removeFilter(not_a_cancelled_reconnect)
    if cluster is not None:
        cluster.close()
