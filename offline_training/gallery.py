"""``mnedge-train plot-forward``: a PNG gallery to look at the physics.

1. ``bank.png``: the calculated family of each valence.
2. ``stages.png``: one mixture through each forward stage.
3. ``synthetic_vs_measured.png``: random synthetic spectra beside the
   measured spectra of ``real_dir`` (when present), all after the shared
   preprocessing, so they can be compared as the model sees them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from mnedge_live.preprocessing import MODEL_GRID, pack, preprocess
from offline_training.forward import ForwardConfig, ForwardModel
from offline_training.references.bank import Bank


def plot_gallery(bank: Bank, config: ForwardConfig, out_dir: str | Path, real_dir: str | Path | None = None,
                 seed: int = 0) -> list[Path]:
    """Write the gallery PNGs into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    # 1. bank families
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, v in zip(axes, (2, 3, 4)):
        for i in bank.of_valence(v):
            ax.plot(bank.energy, bank.spectra[i], lw=0.6, alpha=0.5)
        ax.set_title(f"Mn{v}+ family ({len(bank.of_valence(v))} spectra)")
        ax.set_xlim(635, 665)
        ax.set_xlabel("energy (eV)")
    axes[0].set_ylabel("unit-area intensity")
    fig.tight_layout()
    paths.append(out / "bank.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 2. stages: one mixture, switching stages on one after another
    fm = ForwardModel(bank, config)
    base = dict(fractions=torch.tensor([[0.3, 0.4, 0.3]], dtype=torch.float64), offset=0.0, dispersion_error=0.0,
                nonlinearity=0.0, point_spacing=0.1, crop=False, psnr_db=150.0, gauss_fwhm=0.05, lorentz_fwhm=0.0,
                t_lambda=0.0, edge_step=0.0, saturation=0.0, eels_background=0.0, xas_background=0.0, xas_slope=0.0,
                is_eels=True, **{f"member_{v}": int(bank.of_valence(v)[0]) for v in (2, 3, 4)},
                **{f"chemical_shift_{v}": 0.0 for v in (2, 3, 4)}, **{f"intrinsic_fwhm_{v}": 0.0 for v in (2, 3, 4)},
                **{f"branching_ratio_{v}": 2.5 for v in (2, 3, 4)})
    steps = [("end members mixed", {}), ("+ intrinsic broadening 1 eV", {f"intrinsic_fwhm_{v}": 1.0 for v in (2, 3, 4)}),
             ("+ instrument 0.8 eV", {"gauss_fwhm": 0.8}), ("+ edge steps", {"edge_step": 0.15}),
             ("+ plural scattering t/l=1", {"t_lambda": 1.0}), ("+ power-law background", {"eels_background": 1.5}),
             ("+ offset 5 eV", {"offset": 5.0}), ("+ noise PSNR 25 dB", {"psnr_db": 25.0})]
    fig, ax = plt.subplots(figsize=(8, 5))
    ov = dict(base)
    axis = config.axis_start + 0.1 * np.arange(config.axis_points)
    for k, (label, change) in enumerate(steps):
        ov.update(change)
        b = fm.sample(1, seed=seed, **ov)
        y = b.values[0].numpy()
        ax.plot(axis, y / np.abs(y).max() + 0.6 * k, lw=0.8, label=label)
    ax.set_xlim(625, 685)
    ax.set_xlabel("axis reading (eV)")
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    paths.append(out / "stages.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 3. synthetic vs measured, as the model sees them
    cfg = dataclasses.replace(config, psnr_db=(25.0, 45.0), crop_probability=0.0)
    fm2 = ForwardModel(bank, cfg)
    fig, axes = plt.subplots(2, 4, figsize=(15, 6), sharex=True)
    for j, v in enumerate((2, 3, 4)):
        frac = torch.zeros(1, 3, dtype=torch.float64)
        frac[0, j] = 1
        b = fm2.sample(1, seed=seed + j, fractions=frac)
        x = preprocess(b.start, b.values, b.valid).x[0, 0].numpy()
        axes[0, j].plot(MODEL_GRID, x, color="C0")
        axes[0, j].set_title(f"synthetic pure Mn{v}+")
    b = fm2.sample(1, seed=seed + 7)
    axes[0, 3].plot(MODEL_GRID, preprocess(b.start, b.values, b.valid).x[0, 0].numpy(), color="C0")
    f = b.fractions[0].numpy()
    axes[0, 3].set_title(f"synthetic mix {f[0]:.2f}/{f[1]:.2f}/{f[2]:.2f}")
    if real_dir is not None and Path(real_dir).is_dir():
        from offline_training.realism import read_two_column

        files = sorted(p for p in Path(real_dir).glob("*.csv"))[:4]
        for k, path in enumerate(files):
            e, y = read_two_column(path)
            s, vals, m = pack([(e, y)])
            x = preprocess(s, vals, m).x[0, 0].numpy()
            axes[1, k].plot(MODEL_GRID, x, color="C3")
            axes[1, k].set_title(f"measured {path.stem}")
    for ax in axes.ravel():
        ax.set_xlabel("aligned energy (eV)")
    fig.tight_layout()
    paths.append(out / "synthetic_vs_measured.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
