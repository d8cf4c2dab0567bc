"""Training data: on-the-fly batches for the trainer, and HDF5 datasets for ``mnedge-train generate``.

Both go through the forward model and then through the one preprocessing,
:func:`mnedge_live.preprocessing.preprocess`, so the model trains on exactly what
the live engine will feed it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mnedge_live.cores import usable_cores
from mnedge_live.preprocessing import MODEL_GRID, WORK_STEP_EV, Prepared, preprocess
from offline_training.forward import Batch, ForwardModel
from offline_training.values import check_whole

#: Names of the regression targets beside the fractions.
TARGET_NAMES = ("valence", "offset_residual_eV", "resolution_eV", "t_lambda", "is_eels")


@dataclass
class TrainingBatch:
    """Model input, targets, and the synthetic batch they came from."""

    x: torch.Tensor            # (B, 2, L) model input
    fractions: torch.Tensor    # (B, 3)
    targets: dict              # name -> (B,) float32
    batch: Batch
    prepared: Prepared


def make_training_batch(fm: ForwardModel, n: int, generator: torch.Generator | None = None,
                        seed: int | None = None, diagnostics: bool = False, **overrides) -> TrainingBatch:
    """Synthesize ``n`` spectra, preprocess them, and compute every target.

    Training reads the model input and the alignment only, so the edge
    diagnostics the engine's rules read are skipped unless ``diagnostics``
    (the model input is the same either way).
    """
    b = fm.sample(n, seed=seed, generator=generator, **overrides)
    noise = window_noise(b) if diagnostics else None
    prep = preprocess(b.start, b.values, b.valid, diagnostics=diagnostics, noise=noise)
    f = b.fractions
    t = {
        "valence": (2 * f[:, 0] + 3 * f[:, 1] + 4 * f[:, 2]).float(),
        "offset_residual_eV": (b.params["offset"] - prep.shift_ev.double()).float(),
        "resolution_eV": b.params["resolution_fwhm"].float(),
        "t_lambda": b.params["t_lambda"].float(),
        "is_eels": b.params["is_eels"].float(),
    }
    return TrainingBatch(x=prep.x, fractions=f.float(), targets=t, batch=b, prepared=prep)


def window_noise(b: Batch) -> torch.Tensor:
    """Each row's noise as the engine measures it live (:func:`~mnedge_live.preprocessing.measured_noise`)
    on the points of its measured window (:meth:`~offline_training.forward.Batch.measured`: physics 2's
    coarse points, not their interpolation onto the work step), so that the diagnostics (PSNR, edge SNR)
    and the out-of-distribution bands fitted on synthetic spectra read them as the engine will."""
    from mnedge_live.preprocessing import measured_noise

    out = np.full(len(b.values), np.nan)
    for i in range(len(out)):
        e, y = b.measured(i)
        if e.size >= 5:
            out[i] = measured_noise(e, np.asarray(y, np.float64))
    return torch.from_numpy(out)


def batch_generator(seed: int, index: int) -> torch.Generator:
    """Generator of batch ``index`` of the stream ``seed``.

    Every batch gets its own generator, seeded from the pair through
    :class:`numpy.random.SeedSequence` (well-mixed 64-bit seeds, no overlap
    between neighbouring pairs), so batch ``i`` is the same whichever process
    draws it and whatever came before it: worker processes, resumed runs and
    datasets written with any number of workers all reproduce it.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class IndexedBatches(torch.utils.data.IterableDataset):
    """Batches ``start, start + 1, ... stop - 1`` of a seeded stream, split over DataLoader workers.

    Worker ``k`` of ``W`` draws the batches ``start + k, start + k + W, ...``;
    a :class:`torch.utils.data.DataLoader` takes them round-robin, that is in
    index order.  ``sizes(i)`` gives the size of batch ``i`` (the last chunk of a
    dataset is shorter).
    """

    def __init__(self, fm: ForwardModel, sizes: Callable[[int], int], seed: int, start: int,
                 stop: int | None) -> None:
        self.fm, self.sizes, self.seed, self.start, self.stop = fm, sizes, seed, start, stop

    def __iter__(self) -> Iterator[TrainingBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        indices = itertools.count(self.start + worker, workers) if self.stop is None else range(
            self.start + worker, self.stop, workers)
        for i in indices:
            yield make_training_batch(self.fm, self.sizes(i), generator=batch_generator(self.seed, i))


def stream(fm: ForwardModel, batch_size: int | Callable[[int], int], seed: int, start: int = 0,
           stop: int | None = None, workers: int = 0) -> Iterator[TrainingBatch]:
    """Seeded stream of training batches ``start .. stop - 1`` (endless when ``stop`` is None).

    Parameters
    ----------
    fm : ForwardModel
        The forward model that synthesizes every batch.
    batch_size : int or callable
        Spectra per batch, or a function of the batch index.
    seed : int
        Stream seed; batch ``i`` is drawn from :func:`batch_generator` ``(seed, i)``.
    start, stop : int
        First and one-past-last batch index (``start`` lets a resumed run
        continue the stream where it stopped).
    workers : int
        0: draw in this process.  ``W > 0``: draw in ``W`` worker processes
        (one torch thread each) while this process consumes; the batches and
        their order are the same as with 0.  Workers of a compiled forward
        model are started fresh ("spawn"), not forked: a process forked from
        one that has compiled before deadlocks when it compiles in turn
        (inductor's compile workers and locks do not survive a fork).
    """
    sizes = batch_size if callable(batch_size) else functools.partial(_constant, int(batch_size))
    data = IndexedBatches(fm, sizes, seed, start, stop)
    if workers <= 0:
        yield from data
        return
    # the loader's own generator (it seeds the workers' global RNGs, which no batch uses) is a
    # fresh one, so that starting the workers leaves this process's global RNG (dropout) alone
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=2,
                                         collate_fn=_to_numpy, generator=torch.Generator().manual_seed(seed),
                                         multiprocessing_context="spawn" if fm.compiled else None)
    for item in loader:
        yield _map_arrays(item, torch.from_numpy)


def default_workers() -> int:
    """One synthesizing process per CPU core this process may use (at most 8)."""
    return min(8, usable_cores())


def _constant(value: int, _index: int) -> int:
    return value


def _chunk_size(n: int, chunk: int, index: int) -> int:
    return min(chunk, n - index * chunk)


def _map_arrays(obj, fn: Callable):
    """``obj`` with ``fn`` applied to every tensor or array in it (dataclasses and dicts walked)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_arrays(v, fn) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _map_arrays(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def _to_numpy(item: TrainingBatch) -> TrainingBatch:
    """DataLoader collate function (run in the worker): tensors as NumPy arrays.

    A worker's tensors would travel as shared-memory segments, one file
    descriptor each (about sixty per batch); arrays travel as bytes in one
    pickle, which costs less than the descriptor handshakes.
    """
    return _map_arrays(item, lambda t: t.numpy())


def write_dataset(fm: ForwardModel, n: int, seed: int, out: str | Path, chunk: int = 1024,
                  progress: bool = True, workers: int = 0) -> Path:
    """Write ``n`` synthetic spectra to an HDF5 file.

    Datasets: ``spectra`` (N x L float32, the model input channel 0 on the
    model grid), ``held`` (N x L bool, model-grid points outside the measured
    window), ``fractions`` (N x 3, Mn2+, Mn3+, Mn4+), ``energy`` (L, eV),
    ``raw/values`` and ``raw/valid`` (the measured-axis spectra before
    preprocessing, axis in ``raw`` attributes), and ``params/<name>`` for
    every nuisance parameter.  The forward configuration, seed, bank
    checksum and whether the forward model ran compiled (``compiled_forward``)
    are attributes.  Chunk ``i`` is batch ``i`` of :func:`stream`
    ``(seed)``: the same seed and chunk size give the same file, with any
    number of ``workers`` (processes that synthesize chunks while this one
    writes).

    The file is written under a temporary name in the same directory and
    renamed to ``out`` only once every chunk is in it: an interrupted or
    failed run leaves no file that looks complete (nor replaces an earlier
    ``out``). ``n`` and ``seed`` are checked before anything is written.
    """
    check_whole("n (--n)", n, 1)
    check_whole("seed (--seed)", seed, 0)
    check_whole("chunk", chunk, 1)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        _write_h5(fm, n, seed, tmp, chunk, progress, workers)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _write_h5(fm: ForwardModel, n: int, seed: int, path: Path, chunk: int, progress: bool, workers: int) -> None:
    """The body of :func:`write_dataset`: every dataset and attribute, written to ``path``."""
    from tqdm import tqdm

    length = len(MODEL_GRID)
    with h5py.File(path, "w") as h5:
        h5.attrs["seed"] = seed
        h5.attrs["forward_config"] = json.dumps(fm.config.to_dict())
        h5.attrs["bank_sha256"] = fm.bank_sha256
        h5.attrs["compiled_forward"] = fm.compiled
        h5.attrs["fraction_order"] = "Mn2+,Mn3+,Mn4+"
        h5.attrs["psnr_definition"] = "20*log10(peak/sigma) dB; peak = max-min of the noise-free spectrum in the window"
        c = min(chunk, n)
        h5.create_dataset("energy", data=MODEL_GRID.astype(np.float64))
        ds = h5.create_dataset("spectra", (n, length), np.float32, chunks=(c, length), compression="lzf")
        held = h5.create_dataset("held", (n, length), bool, chunks=(c, length), compression="lzf")
        fr = h5.create_dataset("fractions", (n, 3), np.float32, chunks=(c, 3))
        raw = h5.create_group("raw")
        raw.attrs["start_eV"] = fm.config.axis_start
        raw.attrs["step_eV"] = WORK_STEP_EV
        rv = raw.create_dataset("values", (n, fm.config.axis_points), np.float32,
                                chunks=(c, fm.config.axis_points), compression="lzf")
        rm = raw.create_dataset("valid", (n, fm.config.axis_points), bool, chunks=(c, fm.config.axis_points),
                                compression="lzf")
        params = h5.create_group("params")
        h5.attrs["chunk"] = c
        done = 0
        batches = stream(fm, functools.partial(_chunk_size, n, c), seed, stop=-(-n // c), workers=workers)
        with tqdm(total=n, disable=not progress, desc="generate", unit="spectra") as bar:
            for tb in batches:
                m = len(tb.fractions)
                sl = slice(done, done + m)
                ds[sl] = tb.x[:, 0].numpy()
                held[sl] = tb.x[:, 1].numpy() > 0.5
                fr[sl] = tb.fractions.numpy()
                rv[sl] = tb.batch.values.numpy()
                rm[sl] = tb.batch.valid.numpy()
                for k, v in {**tb.batch.params, **tb.targets}.items():
                    if k not in params:
                        params.create_dataset(k, (n,), np.float32, chunks=(c,))
                    params[k][sl] = v.numpy().astype(np.float32)
                done += m
                bar.update(m)
