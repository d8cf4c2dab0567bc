"""Background removal: the pre/post-edge chord, or a constant without a post-edge."""

from __future__ import annotations

import numpy as np
import pytest

from mnedge_live.preprocessing import (
    L3_REFERENCE_EV,
    MN_SPIN_ORBIT_EV,
    MODEL_GRID,
    pack,
    preprocess,
)


def _doublet(e, l3=640.0, width=0.6):
    return np.exp(-0.5 * ((e - l3) / width) ** 2) + 0.5 * np.exp(-0.5 * ((e - l3 - MN_SPIN_ORBIT_EV) / 0.8) ** 2)


@pytest.mark.parametrize("background", ["sloped_line", "power_law"])
def test_background_removal_keeps_l2_under_a_noisy_pre_edge(background):
    """The background cannot run away: a noisy pre-edge with a slope or a power law leaves L2 and the tail intact.

    A background extrapolated from the 5.5 eV pre-edge alone turned pre-edge
    noise into slopes of several L3 heights across the window; the chord
    through the pre- and post-edge windows keeps the L2 line within a tenth
    of its height.
    """
    rng = np.random.default_rng(5)
    e = np.arange(620.0, 680.0, 0.1)
    l3 = 641.0
    clean = _doublet(e, l3)
    bg = 0.8 + 0.02 * (e - l3) if background == "sloped_line" else 3.0 * (e / l3) ** -4.0
    rel = MODEL_GRID - L3_REFERENCE_EV
    at_l2 = np.abs(rel - MN_SPIN_ORBIT_EV) < 0.1
    tail = rel > 18.0
    ref = preprocess(*pack([(e, clean)])).x[0, 0].numpy()
    for _ in range(10):
        y = clean + bg + rng.normal(0.0, 0.05, e.size)     # PSNR 26 dB
        x = preprocess(*pack([(e, y)])).x[0, 0].numpy()
        assert abs(x[at_l2].mean() - ref[at_l2].mean()) < 0.1
        assert np.abs(x[tail]).mean() < 0.1


def test_background_is_a_constant_when_no_post_edge_was_measured():
    e = np.arange(630.0, 650.0, 0.1)          # pre-edge and L3 only
    y = _doublet(e, 641.0) + 0.5 + 0.03 * (e - 641.0)
    p = preprocess(*pack([(e, y)]))
    x = p.x[0, 0].numpy()
    pre = (MODEL_GRID > L3_REFERENCE_EV - 7) & (MODEL_GRID < L3_REFERENCE_EV - 3)
    # the pre-edge mean is removed, its slope is not extrapolated across the held region
    assert abs(x[pre].mean()) < 0.02
    held = p.x[0, 1].numpy() > 0.5
    assert np.ptp(x[held & (MODEL_GRID > 650)]) < 1e-6
    assert bool(p.pre_edge_covered[0]) and not bool(p.post_edge_covered[0])


@pytest.mark.parametrize("end, covered", [(658.0, False), (659.5, False), (660.5, True), (670.0, True)])
def test_the_post_edge_counts_as_measured_from_one_ev_of_its_window(end, covered):
    """The post-edge window starts 18 eV above L3 (641 eV here); one eV of it is enough for the chord."""
    e = np.arange(630.0, end, 0.1)
    p = preprocess(*pack([(e, _doublet(e, 641.0) + 0.5)]))
    assert bool(p.post_edge_covered[0]) == covered
