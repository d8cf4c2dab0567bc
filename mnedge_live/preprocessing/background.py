"""Background removal on the model grid: a chord through the pre- and post-edge windows."""

from __future__ import annotations

import functools

import torch

from mnedge_live.preprocessing.constants import (
    L3_REFERENCE_EV,
    MIN_BACKGROUND_WINDOW_EV,
    MODEL_GRID,
    POST_EDGE_WINDOW,
    PRE_EDGE_WINDOW,
    WORK_STEP_EV,
)


@functools.lru_cache(maxsize=8)
def model_grid_constants(device: torch.device) -> dict[str, torch.Tensor]:
    """Constants of :data:`MODEL_GRID` on ``device``, made once: energies relative to L3 (eV and
    work-axis points), the background windows as 0/1 weights and the line-fit basis ``[1, rel, rel^2]``."""
    rel = torch.as_tensor(MODEL_GRID - L3_REFERENCE_EV, dtype=torch.float64, device=device)
    return {
        "rel_points": (rel / WORK_STEP_EV).to(torch.float32),
        "pre": ((rel >= PRE_EDGE_WINDOW[0]) & (rel <= PRE_EDGE_WINDOW[1])).to(torch.float32),
        "post": ((rel >= POST_EDGE_WINDOW[0]) & (rel <= POST_EDGE_WINDOW[1])).to(torch.float32),
        "basis": torch.stack([torch.ones_like(rel), rel, rel**2], dim=1),
        "rel": rel,
    }


def remove_background(spec: torch.Tensor, held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Subtract the background from model-grid rows: a chord through the pre- and post-edge windows.

    The line is fitted by least squares to the measured points of
    :data:`PRE_EDGE_WINDOW` and :data:`POST_EDGE_WINDOW`, each window weighted
    equally.  Its lever arm is the whole 32 eV model window, so it cannot
    diverge: a slope or power law fitted to the 5.5 eV pre-edge alone and
    extrapolated 30 eV up amplified pre-edge noise and curvature into
    backgrounds several times the L3 height, which erased the L2 line and the
    continuum (the branching ratio, a main valence marker).  Over this window
    an EELS power law ``A E^-r`` (r <= 5) departs from its chord by less than
    1 % of ``A``, and an XAS sloped pre-edge is a line, so the chord removes
    both; the edge-step continuum stays in as a tilt the network learns.
    Where the post-edge window is not measured, the background is the
    pre-edge mean (a constant: no extrapolated slope); where the pre-edge is
    not measured either, the median of the first (held) eV.

    The weighted sums of the fit are two small matrix products in float64
    (rows of raw counts would lose digits in float32 sums).

    Parameters
    ----------
    spec : torch.Tensor
        ``(B, len(MODEL_GRID))`` rows on :data:`MODEL_GRID`.
    held : torch.Tensor
        ``(B, len(MODEL_GRID))`` bool: points outside the measured window.

    Returns the corrected rows and, per row, booleans "pre-edge covered" and "post-edge covered".
    """
    c = model_grid_constants(spec.device)
    step = float(MODEL_GRID[1] - MODEL_GRID[0])
    measured = (~held).to(spec.dtype)
    w_pre, w_post = measured * c["pre"], measured * c["post"]
    n_pre, n_post = w_pre.sum(1), w_post.sum(1)
    pre_cov = n_pre * step >= MIN_BACKGROUND_WINDOW_EV
    post_cov = n_post * step >= MIN_BACKGROUND_WINDOW_EV
    w_pre = w_pre / n_pre.clamp(min=1)[:, None]
    w = (w_pre + w_post / n_post.clamp(min=1)[:, None]).double()
    y = spec.double()
    s0, s1, s2 = (w @ c["basis"]).unbind(1)            # sum w, sum w e, sum w e^2 (e: eV from L3)
    t0, t1 = ((w * y) @ c["basis"][:, :2]).unbind(1)   # sum w y, sum w y e
    mean_e = s1 / s0.clamp(min=1e-9)
    slope = (t1 - mean_e * t0) / (s2 - mean_e * s1).clamp(min=1e-12)
    chord = ((t0 / s0.clamp(min=1e-9) - slope * mean_e)[:, None] + slope[:, None] * c["rel"]).to(spec.dtype)
    pre_level = (w_pre * spec).sum(1, keepdim=True)
    first_ev = spec[:, : int(1.0 / step)].median(dim=1, keepdim=True).values
    const = torch.where(pre_cov[:, None], pre_level, first_ev)
    bg = torch.where((pre_cov & post_cov)[:, None], chord, const)
    return spec - bg, pre_cov, post_cov
