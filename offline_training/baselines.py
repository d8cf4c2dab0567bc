"""Baselines measured beside our model on the same validation spectra.

1. :class:`MnEdgeNetPublished`: the MnEdgeNet architecture as published
   (Sci. Rep. 2023): three conv layers (64, 64, 128 channels; kernels 13,
   13, 7), each followed by max-pooling by 2, dense layers to 2048, 512 and 3,
   softmax output, MSE loss.  The published input was the 635-665 eV window;
   here it reads channel 0 of our 256-point model grid, so the first dense
   layer is 128 x 32 = 4096 wide instead of 5248 (the rest is unchanged).
2. Non-negative least squares with end-member references, the way users
   work today (:func:`nnls_fractions`): with references "from another
   session" of the same instrument (own broadening, their axis drifted by up
   to +-1.5 eV from the sample's), with and without a shift search; with
   references from another instrument (an axis offset of their own, drawn as
   independently as the sample's) and a shift search over every offset the two
   can differ by; and with perfectly matched references as the upper bound.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from offline_training.forward import VALENCES, ForwardModel


class MnEdgeNetPublished(nn.Module):
    """The published MnEdgeNet CNN (adapted only in its input length)."""

    def __init__(self, input_length: int = 256):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 64, 13, padding=6), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(64, 64, 13, padding=6), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(64, 128, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * (input_length // 8), 2048), nn.ReLU(),
                                  nn.Linear(2048, 512), nn.ReLU(), nn.Linear(512, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fractions (softmax) from the prepared batch (uses channel 0 only)."""
        return torch.softmax(self.head(self.features(x[:, :1])), dim=-1)


def train_mnedgenet(fm: ForwardModel, budget: int, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                    progress: bool = True) -> tuple[MnEdgeNetPublished, int]:
    """Train the published architecture with MSE on about ``budget`` on-the-fly spectra (same stream as ours).

    Returns the model and the number of spectra it was trained on: whole batches, the budget rounded to
    the nearest (at least one).
    """
    from tqdm import tqdm

    from offline_training.generate import make_training_batch

    torch.manual_seed(seed)
    model = MnEdgeNetPublished()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed * 1000)
    steps = max(1, round(budget / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in tqdm(range(steps), disable=not progress, desc="MnEdgeNet baseline"):
        tb = make_training_batch(fm, batch_size, generator=gen)
        loss = nn.functional.mse_loss(model(tb.x), tb.fractions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), steps * batch_size


def nnls_fractions(sample: np.ndarray, refs: np.ndarray, shifts: np.ndarray | None = None,
                   energy: np.ndarray | None = None) -> np.ndarray:
    """Fractions by NNLS of one spectrum on three per-atom references plus a constant and a slope.

    Parameters
    ----------
    sample : (N,) spectrum on ``energy``.
    refs : (3, N) per-atom references (Mn2+, Mn3+, Mn4+) on the same axis.
    shifts : candidate common energy shifts (eV) of the references; the
        best-fitting one is used (None: no search).
    energy : (N,) axis, needed for the shift search.

    Returns
    -------
    (3,) fractions (coefficients normalized to sum 1; equal thirds if all vanish).
    """
    best = (np.inf, np.full(3, 1 / 3))
    for s in (shifts if shifts is not None else [0.0]):
        coef, res = _shifted_fit(sample, refs, energy, s)
        if res < best[0]:
            c = coef[:3]
            best = (res, c / c.sum() if c.sum() > 0 else np.full(3, 1 / 3))
    return best[1]


def searched_nnls_fractions(sample: np.ndarray, refs: np.ndarray, energy: np.ndarray, span: float) -> np.ndarray:
    """:func:`nnls_fractions` with the shift searched over ``+-span`` eV: every 1 eV, then every 0.1 eV
    within 1 eV of the best (references whose axis may differ from the sample's by any offset)."""
    coarse = np.arange(-np.ceil(span), np.ceil(span) + 0.5, 1.0)
    residual = [_shifted_fit(sample, refs, energy, s)[1] for s in coarse]
    best = coarse[int(np.argmin(residual))]
    return nnls_fractions(sample, refs, shifts=np.round(best + np.arange(-1.0, 1.05, 0.1), 4), energy=energy)


def _shifted_fit(sample: np.ndarray, refs: np.ndarray, energy: np.ndarray | None,
                 shift: float) -> tuple[np.ndarray, float]:
    """NNLS coefficients and residual of ``sample`` on ``refs`` shifted by ``shift`` eV, plus a constant and a
    slope of either sign (the design of every least-squares baseline here)."""
    n = sample.size
    ramp = np.linspace(-1, 1, n)
    r = refs if shift == 0.0 else np.array([np.interp(energy, energy + shift, ref) for ref in refs])
    coef, res = nnls(np.column_stack([r.T, np.ones(n), ramp, -np.ones(n), -ramp]), sample)
    return coef, float(res)


def reference_spectra(fm: ForwardModel, batch_params: dict, rows: np.ndarray, matched: bool,
                      seed: int, session_drift_eV: float | None = 1.5) -> np.ndarray:
    """Per-atom pure-valence references on the batch's measured axis, ``(len(rows), 3, N)``.

    ``matched=True`` rebuilds, for every sample, its own three end members
    with all of its instrument and sample parameters (no noise, no
    background): the upper bound.  ``matched=False`` measures references "in
    another session": other family members, their own chemical shift,
    broadening and no noise, as a careful user would have, on an axis drifted by
    up to ``session_drift_eV`` from the sample's (the same instrument); with
    ``session_drift_eV=None`` on an axis of their own (another instrument: an
    offset drawn from the forward model's range, independently of the sample's).
    """
    n = len(rows)
    out = []
    gen = torch.Generator().manual_seed(seed)
    common = ["gauss_fwhm", "lorentz_fwhm", "t_lambda", "plasmon_index", "edge_step", "edge_step_offset",
              "edge_step_width", "saturation",
              "dispersion_error", "nonlinearity", "point_spacing", "is_eels"]
    for j, v in enumerate(VALENCES):
        frac = torch.zeros(n, 3, dtype=torch.float64)
        frac[:, j] = 1.0
        ov = {"fractions": frac, "psnr_db": 150.0, "eels_background": 0.0, "xas_background": 0.0, "xas_slope": 0.0,
              "crop": False, "poisson_share": 0.0}
        if matched:
            for k in common + [f"member_{v}", f"chemical_shift_{v}", f"intrinsic_fwhm_{v}", f"branching_ratio_{v}", "offset"]:
                ov[k] = batch_params[k][rows]
        else:
            u = torch.rand(n, generator=gen, dtype=torch.float64)
            if session_drift_eV is None:
                lo, hi = fm.config.offset
                ov["offset"] = lo + (hi - lo) * u
            else:
                ov["offset"] = batch_params["offset"][rows] + session_drift_eV * (2 * u - 1)
            ov["is_eels"] = batch_params["is_eels"][rows]
            ov["t_lambda"] = 0.0
        b = fm.sample(n, generator=gen, **ov)
        # already per atom: the forward model multiplies each end member by its hole count
        out.append(b.clean.numpy())
    return np.stack(out, axis=1)
