"""Realism fits: the edge step stays within the forward model's range, as training sees it."""

from __future__ import annotations

import numpy as np
import pytest

from offline_training.realism import _fit_with_bounded_step


def _case(height: float):
    e = np.linspace(630.0, 670.0, 400)
    line = np.exp(-0.5 * ((e - 641.0) / 0.8) ** 2) + 0.4 * np.exp(-0.5 * ((e - 652.0) / 1.0) ** 2)
    step = 0.5 + np.arctan(e - 640.0) / np.pi
    e_norm = (e - e.mean()) / np.ptp(e)
    y = 2.0 * line + 0.3 - 0.1 * e_norm + height * 2.0 * line.max() * step
    return line[None, :], step[None, :], e_norm, y


@pytest.mark.parametrize("height, allowed, fits", [
    (-0.2, (-0.25, 0.25), True),     # inside the range: reproduced exactly
    (-0.2, (0.0, 0.25), False),      # a negative step the forward model never draws: not available to the fit
    (0.1, (0.0, 0.25), True),
    (0.4, (0.0, 0.25), False),       # above the range
])
def test_step_height_is_held_within_the_forward_models_range(height, allowed, fits):
    cand, step, e_norm, y = _case(height)
    rss = _fit_with_bounded_step(cand, step, e_norm, y, allowed)[0]
    sst = float(((y - y.mean()) ** 2).sum())
    if fits:
        assert rss / sst < 1e-10
    else:
        assert rss / sst > 1e-4


def test_a_spectrum_that_needs_a_negative_scale_never_fits():
    """An upside-down line (absorption read as a dip) is no fit at any step height."""
    cand, step, e_norm, _ = _case(0.0)
    y = 1.0 - cand[0]
    assert np.isinf(_fit_with_bounded_step(cand, step, e_norm, y, (0.0, 0.25))[0])
