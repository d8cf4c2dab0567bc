"""Noise correlated over several points, told from independent noise and from smooth signal where Mn has no lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from mnedge_live.preprocessing import WORK_STEP_EV
from mnedge_live.preprocessing.line_free_noise import MAX_SPACING_EV, correlated_noise

E = np.arange(620.0, 680.0, WORK_STEP_EV)
L3 = 641.0


def _edge(e: np.ndarray = E, replica: float = 0.0) -> np.ndarray:
    """L3 and L2 lines on a step, with an optional broad plural-scattering replica 22 eV above L3."""
    lines = np.exp(-0.5 * ((e - L3) / 0.8) ** 2) + 0.5 * np.exp(-0.5 * ((e - L3 - 11.0) / 1.0) ** 2)
    step = 0.1 / (1 + np.exp(-(e - L3) / 0.5))
    return lines + step + replica * np.exp(-0.5 * ((e - L3 - 22.0) / 2.5) ** 2)


def _measure(rows: list[np.ndarray], spacing: float = WORK_STEP_EV) -> tuple[np.ndarray, np.ndarray]:
    values = torch.tensor(np.array(rows), dtype=torch.float32)
    l3_pos = torch.full((len(rows),), (L3 - E[0]) / WORK_STEP_EV, dtype=torch.float64)
    sigma, ratio = correlated_noise(values, torch.ones_like(values, dtype=torch.bool), l3_pos, WORK_STEP_EV,
                                    torch.full((len(rows),), spacing, dtype=torch.float64))
    return sigma.numpy(), ratio.numpy()


def test_independent_noise_reads_about_one_and_its_sigma():
    rng = np.random.default_rng(0)
    sigma, ratio = _measure([_edge() + rng.normal(0.0, 0.01, E.size) for _ in range(20)])
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio
    assert np.median(sigma) == pytest.approx(0.01, rel=0.15)


@pytest.mark.parametrize("smoothed_ev", [0.2, 0.4])
def test_noise_smoothed_over_several_points_reads_several(smoothed_ev):
    """The same per-point noise sigma, smoothed over ``smoothed_ev``: the point-to-point noise is small, the
    noise at the lines' scale is not."""
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(20):
        z = gaussian_filter1d(rng.normal(size=E.size), smoothed_ev / WORK_STEP_EV)
        rows.append(_edge() + 0.01 * z / z.std())
    _, ratio = _measure(rows)
    assert np.all(ratio > 3.0), ratio


def test_a_smooth_signal_in_the_line_free_stretches_is_no_noise():
    """A strong plural-scattering replica past L2 (a curvature the lags' scaling removes) over weak independent
    noise: the ratio stays that of the noise."""
    rng = np.random.default_rng(2)
    _, ratio = _measure([_edge(replica=0.4) + rng.normal(0.0, 1e-4, E.size) for _ in range(10)])
    assert np.all(ratio < 2.0), ratio


def test_coarse_points_and_unmeasured_stretches_give_nan():
    rng = np.random.default_rng(3)
    row = _edge() + rng.normal(0.0, 0.01, E.size)
    assert np.isnan(_measure([row], spacing=MAX_SPACING_EV + 0.05)[1]).all()
    values = torch.tensor(row[None], dtype=torch.float32)
    valid = torch.from_numpy(((E > L3 - 4.0) & (E < L3 + 16.0))[None])   # only the lines measured
    sigma, ratio = correlated_noise(values, valid, torch.tensor([(L3 - E[0]) / WORK_STEP_EV], dtype=torch.float64),
                                    WORK_STEP_EV, torch.tensor([WORK_STEP_EV], dtype=torch.float64))
    assert np.isnan(sigma.numpy()).all() and np.isnan(ratio.numpy()).all()


@pytest.mark.parametrize("spacing", [0.12, 0.14, 0.2])
def test_independent_noise_on_coarser_points_reads_about_one(spacing):
    """Noisy points 0.12-0.2 eV apart, interpolated onto the 0.1 eV work axis: the points' own lag is rounded up
    (a lag of one work step read the interpolation between them: ratios of 1.4-1.8 at 0.12-0.15 eV)."""
    rng = np.random.default_rng(5)
    points = np.arange(E[0], E[-1] + 1e-9, spacing)
    rows = [np.interp(E, points, _edge(points) + rng.normal(0.0, 0.01, points.size)) for _ in range(20)]
    _, ratio = _measure(rows, spacing=spacing)
    assert np.all(ratio < 1.6), ratio
