"""Training data: on-the-fly batches for the trainer, and HDF5 datasets for ``mnedge-train generate``.

Both go through the forward model and then through the one preprocessing,
:func:`mnedge_live.preprocessing.preprocess`, so the model trains on exactly what
the live engine will feed it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mnedge_live.preprocessing import MODEL_GRID, WORK_STEP_EV, Prepared, preprocess
from offline_training.forward import Batch, ForwardModel

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
                        seed: int | None = None, **overrides) -> TrainingBatch:
    """Synthesize ``n`` spectra, preprocess them, and compute every target."""
    b = fm.sample(n, seed=seed, generator=generator, **overrides)
    prep = preprocess(b.start, b.values, b.valid)
    f = b.fractions
    t = {
        "valence": (2 * f[:, 0] + 3 * f[:, 1] + 4 * f[:, 2]).float(),
        "offset_residual_eV": (b.params["offset"] - prep.shift_ev.double()).float(),
        "resolution_eV": b.params["resolution_fwhm"].float(),
        "t_lambda": b.params["t_lambda"].float(),
        "is_eels": b.params["is_eels"].float(),
    }
    return TrainingBatch(x=prep.x, fractions=f.float(), targets=t, batch=b, prepared=prep)


def stream(fm: ForwardModel, batch_size: int, seed: int) -> Iterator[TrainingBatch]:
    """Endless seeded stream of training batches (one generator; reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield make_training_batch(fm, batch_size, generator=gen)


def write_dataset(fm: ForwardModel, n: int, seed: int, out: str | Path, chunk: int = 1024,
                  progress: bool = True) -> Path:
    """Write ``n`` synthetic spectra to an HDF5 file.

    Datasets: ``spectra`` (N x L float32, the model input channel 0 on the
    model grid), ``held`` (N x L bool, model-grid points outside the measured
    window), ``fractions`` (N x 3, Mn2+, Mn3+, Mn4+), ``energy`` (L, eV),
    ``raw/values`` and ``raw/valid`` (the measured-axis spectra before
    preprocessing, axis in ``raw`` attributes), and ``params/<name>`` for
    every nuisance parameter.  The forward configuration, seed and bank
    checksum are attributes.  The same seed gives the same file.
    """
    from tqdm import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out)
    gen = torch.Generator().manual_seed(seed)
    length = len(MODEL_GRID)
    with h5py.File(out, "w") as h5:
        h5.attrs["seed"] = seed
        h5.attrs["forward_config"] = json.dumps(fm.config.to_dict())
        h5.attrs["bank_sha256"] = fm.bank_sha256
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
        done = 0
        with tqdm(total=n, disable=not progress, desc="generate", unit="spectra") as bar:
            while done < n:
                m = min(chunk, n - done)
                tb = make_training_batch(fm, m, generator=gen)
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
    return out
