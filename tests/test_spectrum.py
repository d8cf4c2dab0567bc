"""The shared preprocessing: uniform axes, alignment on the L3/L2 doublet, background, normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnedge_live.spectrum import (
    L2_CENTROID_EV,
    L3_REFERENCE_EV,
    MN_SPIN_ORBIT_EV,
    MN_SPIN_ORBIT_RANGE_EV,
    MODEL_GRID,
    WORK_STEP_EV,
    find_spikes,
    measured_noise,
    pack,
    preprocess,
    resample_measured,
    resample_shared_axis,
    row_median,
    to_uniform,
)


def _doublet(e, l3=640.0, width=0.6):
    return np.exp(-0.5 * ((e - l3) / width) ** 2) + 0.5 * np.exp(-0.5 * ((e - l3 - MN_SPIN_ORBIT_EV) / 0.8) ** 2)


def test_to_uniform_handles_descending_and_repeated_energies():
    e = np.array([650.0, 649.5, 649.5, 649.0, 648.0])
    y = np.array([5.0, 4.0, 2.0, 3.0, 1.0])
    start, v = to_uniform(e, y, step=0.5)
    assert start == 648.0
    assert v.tolist() == pytest.approx([1.0, 2.0, 3.0, 3.0, 5.0])


@pytest.mark.parametrize("energy, intensity, match", [
    ([1.0, 2.0], [1.0], "points"),
    ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "NaN"),
    ([1.0, 1.0], [1.0, 2.0], "distinct"),
])
def test_to_uniform_refuses_bad_input(energy, intensity, match):
    with pytest.raises(ValueError, match=match):
        to_uniform(np.array(energy), np.array(intensity))


@pytest.mark.parametrize("offset", [-15.0, -4.3, 0.0, 7.7, 15.0])
def test_alignment_finds_l3_at_any_offset(offset):
    e = np.arange(610.0, 690.0, 0.1)
    y = _doublet(e, 640.0 + offset) + 0.02
    s, v, m = pack([(e, y)])
    p = preprocess(s, v, m)
    assert float(p.l3_ev[0]) == pytest.approx(640.0 + offset, abs=0.05)
    assert float(p.l2_spacing_ev[0]) == pytest.approx(MN_SPIN_ORBIT_EV, abs=0.3)
    # after alignment the L3 maximum is at the reference point of the model grid
    k = int(np.argmax(p.x[0, 0].numpy()))
    assert MODEL_GRID[k] == pytest.approx(L3_REFERENCE_EV, abs=0.2)


def test_alignment_ignores_a_steep_power_law_background():
    e = np.arange(615.0, 680.0, 0.1)
    y = _doublet(e, 645.0) + 8.0 * (e / 615.0) ** -4
    s, v, m = pack([(e, y)])
    p = preprocess(s, v, m)
    assert float(p.l3_ev[0]) == pytest.approx(645.0, abs=0.1)
    assert bool(p.pre_edge_covered[0])
    x = p.x[0, 0].numpy()
    pre = (MODEL_GRID > L3_REFERENCE_EV - 7) & (MODEL_GRID < L3_REFERENCE_EV - 3)
    assert np.abs(x[pre]).max() < 0.05   # background removed
    assert 1.0 <= x.max() <= 1.25   # normalized by the 0.3 eV-smoothed L3 maximum


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


def test_partial_window_is_edge_held_and_marked():
    e = np.arange(637.0, 646.0, 0.1)          # L3 only, no L2
    y = _doublet(e, 640.0)
    s, v, m = pack([(e, y)])
    p = preprocess(s, v, m)
    assert not bool(p.l2_covered[0])
    held = p.x[0, 1].numpy() > 0.5
    assert held[MODEL_GRID > 647].all() and not held[np.abs(MODEL_GRID - L3_REFERENCE_EV) < 2].any()


@pytest.mark.parametrize("l2_amplitude", [0.0, 0.25, 0.5])
def test_l2_height_measures_the_l2_line_against_l3(l2_amplitude):
    """The band-pass height ratio follows the lines' amplitude ratio (within 0.6-1.3x) and is about 0 with no L2 line."""
    e = np.arange(620.0, 680.0, 0.1)
    y = np.exp(-0.5 * ((e - 640.0) / 0.6) ** 2) + l2_amplitude * np.exp(-0.5 * ((e - 651.0) / 0.8) ** 2)
    p = preprocess(*pack([(e, y)]))
    h = float(p.l2_height[0])
    assert 0.6 * l2_amplitude - 0.01 <= h <= 1.3 * l2_amplitude + 0.01


def test_batches_answer_rows_independently():
    e1 = np.arange(620.0, 680.0, 0.1)
    e2 = np.arange(630.0, 670.0, 0.3)[::-1]
    s, v, m = pack([(e1, _doublet(e1, 642.0)), (e2, _doublet(e2, 633.0))])
    p = preprocess(s, v, m)
    single = preprocess(*pack([(e2, _doublet(e2, 633.0))]))
    assert float(p.l3_ev[1]) == pytest.approx(float(single.l3_ev[0]), abs=1e-4)
    assert torch.allclose(p.x[1], single.x[0], atol=1e-5)


def test_training_and_serving_share_this_preprocessing():
    import offline_training.generate as gen

    assert gen.preprocess is preprocess


@pytest.mark.parametrize("spacing_ev", [0.01, 0.02, 0.05, 0.1, 0.25, 0.5])
def test_measured_noise_survives_coarse_axes(spacing_ev):
    """Resampling hides noise; the estimate on the measured points does not (white-noise sigma on the work axis).

    Dense points are averaged per work step, which lowers the noise by the
    square root of the points per step; the estimate says so, and the
    resampled noise matches it.
    """
    rng = np.random.default_rng(3)
    e = np.arange(620.0, 680.0, spacing_ev)
    noise = rng.normal(0.0, 0.05, e.size)
    y = _doublet(e, 641.0) + noise
    if spacing_ev <= WORK_STEP_EV / 2:
        expected = 0.05 * np.sqrt(spacing_ev / WORK_STEP_EV)
        # bins whose mean energy falls between work points are interpolated, which
        # averages a little further: the estimate may be high by up to a third, never low
        assert 0.75 * expected <= np.std(to_uniform(e, noise)[1]) <= 1.1 * expected
    else:
        expected = 0.05 * np.sqrt(max(spacing_ev, WORK_STEP_EV) / WORK_STEP_EV)
    assert measured_noise(e, y) == pytest.approx(expected, rel=0.2)


def test_dense_axes_are_averaged_not_picked():
    """A 0.01 eV axis reads like the same spectrum on 0.1 eV, with ten times the counts behind each point."""
    e = np.arange(620.0, 680.0, 0.01)
    clean = _doublet(e, 641.0)
    start, values = to_uniform(e, clean + np.random.default_rng(8).normal(0.0, 0.05, e.size))
    grid = start + WORK_STEP_EV * np.arange(values.size)
    residual = values - np.interp(grid, e, clean)
    assert np.std(residual[5:-5]) == pytest.approx(0.05 / np.sqrt(10), rel=0.15)
    start, binned = to_uniform(e, clean)
    assert np.max(np.abs(binned - np.interp(grid, e, clean))) < 2e-3  # no shift, no visible broadening


@pytest.mark.parametrize("l2_spacing, mn", [(8.7, False), (11.0, True), (13.1, False), (15.0, False)])
def test_l2_spacing_tells_mn_from_neighbouring_elements(l2_spacing, mn):
    """Cr (8.7 eV), Fe (13.1 eV) and Co (15 eV) show their own spin-orbit spacing; Mn shows about 11 eV."""
    e = np.arange(620.0, 680.0, 0.1)
    y = np.exp(-0.5 * ((e - 641.0) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - 641.0 - l2_spacing) / 0.9) ** 2) + 0.05
    y = y + np.random.default_rng(0).normal(0.0, 0.01, e.size)
    p = preprocess(*pack([(e, y)]), noise=torch.tensor([measured_noise(e, y)]))
    d = float(p.l2_spacing_ev[0])
    assert (MN_SPIN_ORBIT_RANGE_EV[0] <= d <= MN_SPIN_ORBIT_RANGE_EV[1]) == mn
    if l2_spacing < L2_CENTROID_EV[1] - 1.0:  # Co's L2 lies past the centroid window: only the verdict counts
        assert d == pytest.approx(l2_spacing, abs=0.3)


@pytest.mark.parametrize("fractions", [(0.5, 0.0, 0.5), (0.6, 0.0, 0.4), (0.34, 0.33, 0.33)])
def test_mixed_valence_spectra_keep_a_mn_l2_spacing(forward_model, fractions):
    """Mn2+ beside Mn4+ puts the L3 and L2 maxima 13-14 eV apart; the line centroids keep it Mn.

    Measured with maxima alone (before the centroids): 1.8 % of 50/50 mixtures were refused as "not Mn".
    """
    n = 1500
    b = forward_model.sample(n, seed=21, fractions=[list(fractions)] * n, psnr_db=torch.linspace(15.0, 60.0, n))
    p = preprocess(b.start, b.values, b.valid)
    d = p.l2_spacing_ev[p.l2_covered].numpy()
    inside = (d >= MN_SPIN_ORBIT_RANGE_EV[0]) & (d <= MN_SPIN_ORBIT_RANGE_EV[1])
    assert inside.mean() >= 0.99, np.sort(d[~inside])


def test_synthetic_mn_spectra_show_a_mn_l2_spacing(forward_model):
    """Noise, plural scattering and L3 fine structure must not move L2 out of Mn's range (PSNR >= 15 dB)."""
    b = forward_model.sample(600, seed=11, psnr_db=torch.linspace(15.0, 60.0, 600))
    p = preprocess(b.start, b.values, b.valid)
    d = p.l2_spacing_ev[p.l2_covered].numpy()
    inside = (d >= MN_SPIN_ORBIT_RANGE_EV[0]) & (d <= MN_SPIN_ORBIT_RANGE_EV[1])
    assert inside.mean() >= 0.99, np.sort(d[~inside])


def test_shared_axis_resampling_equals_the_per_spectrum_one():
    rng = np.random.default_rng(4)
    e = np.sort(rng.uniform(630.0, 670.0, 300))
    y = _doublet(e, 641.0)[None, :] * rng.uniform(0.5, 2.0, (5, 1)) + rng.normal(0, 0.02, (5, e.size))
    gaps = np.diff(e)
    k = next(i for i in range(100, 200) if max(gaps[i - 1], gaps[i]) <= 0.15)
    y[2, k] += 3.0  # a spike: repaired the same way on both paths
    start, values, noise, spikes, spacing = resample_shared_axis(e, y)
    assert spikes.tolist() == [0, 0, 1, 0, 0]
    assert spacing == pytest.approx(float(np.median(np.diff(e))))
    for row, v, z, k in zip(y, values, noise, spikes):
        s1, v1, z1, k1, d1 = resample_measured(e, row)
        assert start == s1 and np.allclose(v, v1, atol=1e-12) and z == pytest.approx(z1, rel=1e-12) and k == k1
        assert d1 == spacing


def test_float32_rows_stay_float32_and_read_as_float64_rows():
    """Spectrum images arrive as float32: resampled in float32, within float32 rounding of the float64 path."""
    rng = np.random.default_rng(6)
    e = 630.0 + 0.14 * np.arange(280)
    y = (_doublet(e, 641.0)[None, :] * rng.uniform(0.5, 2.0, (4, 1)) + rng.normal(0, 0.02, (4, e.size))) * 1e4
    y[1, 120] += 5e4   # a spike, repaired in float32 too
    s32, v32, z32, k32, _ = resample_shared_axis(e, y.astype(np.float32))
    s64, v64, z64, k64, _ = resample_shared_axis(e, y.astype(np.float32).astype(np.float64))
    assert v32.dtype == np.float32 and v64.dtype == np.float64
    assert s32 == s64 and k32.tolist() == k64.tolist() == [0, 1, 0, 0]
    assert np.allclose(v32, v64, rtol=0, atol=1e-6 * np.abs(v64).max())
    assert np.allclose(z32, z64, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (8,), (5, 9), (5, 10), (300, 558)])
def test_row_median_is_numpy_median(shape):
    a = np.random.default_rng(sum(shape)).normal(size=shape)
    a[..., 0] = a[..., -1]   # ties
    assert np.array_equal(row_median(a), np.median(a, axis=-1))


def test_single_point_spikes_are_found_and_sharp_lines_are_not():
    e = np.arange(630.0, 670.0, 0.1)
    y = _doublet(e, 641.0, width=0.4 / 2.3548) + np.random.default_rng(5).normal(0, 0.003, e.size)  # 0.4 eV FWHM L3
    assert not find_spikes(e, y, measured_noise(e, y)).any()
    bad = y.copy()
    bad[50] += 2.0     # cosmic ray in the pre-edge
    bad[200] -= 0.8    # dead channel on the L2 flank
    found = find_spikes(e, bad, measured_noise(e, bad))
    assert np.flatnonzero(found).tolist() == [50, 200]
    # on a 0.3 eV axis a true line can be a single point: nothing is called a spike there
    coarse = np.arange(630.0, 670.0, 0.3)
    yc = _doublet(coarse, 641.0, width=0.4 / 2.3548)
    yc[20] += 2.0
    assert not find_spikes(coarse, yc, measured_noise(coarse, yc)).any()
