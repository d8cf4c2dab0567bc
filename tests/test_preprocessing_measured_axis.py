"""Measured axes onto the uniform work axis: ordering, repeats, dense and coarse axes, shared axes, noise, spikes."""

from __future__ import annotations

import numpy as np
import pytest

from mnedge_live.preprocessing import (
    MN_SPIN_ORBIT_EV,
    WORK_STEP_EV,
    find_spikes,
    measured_noise,
    resample_measured,
    resample_shared_axis,
    rescale_extreme_rows,
    row_median,
    to_uniform,
)
from mnedge_live.preprocessing.measured_axis import bridged_points
from mnedge_live.preprocessing.points import clipped_at_maximum


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


def test_shared_axis_resampling_equals_the_per_spectrum_one():
    rng = np.random.default_rng(4)
    e = np.sort(rng.uniform(630.0, 670.0, 300))
    y = _doublet(e, 641.0)[None, :] * rng.uniform(0.5, 2.0, (5, 1)) + rng.normal(0, 0.02, (5, e.size))
    gaps = np.diff(e)
    k = next(i for i in range(100, 200) if max(gaps[i - 1], gaps[i]) <= 0.15)
    y[2, k] += 3.0  # a spike: repaired the same way on both paths
    start, values, noise, spikes, spacing, bridged, clipped, padded, unordered = resample_shared_axis(e, y)
    assert spikes.tolist() == [0, 0, 1, 0, 0]
    assert spacing.shape == (5,) and spacing == pytest.approx(float(np.median(np.diff(e))))   # per row
    for row, v, z, k, c, d in zip(y, values, noise, spikes, clipped, spacing):
        s1, v1, z1, k1, d1, b1, c1, p1, u1 = resample_measured(e, row)
        assert start == s1 and np.allclose(v, v1, atol=1e-12) and z == pytest.approx(z1, rel=1e-12) and k == k1
        assert d1 == d and np.array_equal(b1, bridged) and c == c1 is False and p1 == padded == 0
        assert u1 is unordered is False


def test_float32_rows_stay_float32_and_read_as_float64_rows():
    """Spectrum images arrive as float32: resampled in float32, within float32 rounding of the float64 path."""
    rng = np.random.default_rng(6)
    e = 630.0 + 0.14 * np.arange(280)
    y = (_doublet(e, 641.0)[None, :] * rng.uniform(0.5, 2.0, (4, 1)) + rng.normal(0, 0.02, (4, e.size))) * 1e4
    y[1, 120] += 5e4   # a spike, repaired in float32 too
    s32, v32, z32, k32, *_ = resample_shared_axis(e, y.astype(np.float32))
    s64, v64, z64, k64, *_ = resample_shared_axis(e, y.astype(np.float32).astype(np.float64))
    assert v32.dtype == np.float32 and v64.dtype == np.float64
    assert s32 == s64 and k32.tolist() == k64.tolist() == [0, 1, 0, 0]
    assert np.allclose(v32, v64, rtol=0, atol=1e-6 * np.abs(v64).max())
    assert np.allclose(z32, z64, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (8,), (5, 9), (5, 10), (300, 558)])
def test_row_median_is_numpy_median(shape):
    a = np.random.default_rng(sum(shape)).normal(size=shape)
    a[..., 0] = a[..., -1]   # ties
    assert np.array_equal(row_median(a), np.median(a, axis=-1))


def test_only_rows_beyond_the_safe_magnitudes_are_rescaled():
    """Rows at 1e-300 or 1e300 come back with a largest magnitude of 1; ordinary units stay bit for bit."""
    base = _doublet(np.linspace(630.0, 670.0, 401)) - 0.2
    y = np.stack([base * 1e-300, base * 1e300, base * 1e9, base * 1e-15])
    out = rescale_extreme_rows(y)
    assert np.allclose(np.abs(out[:2]).max(axis=1), 1.0)
    assert np.array_equal(out[2:], y[2:])
    assert np.allclose(out[0], out[1]) and np.allclose(out[0], base / np.abs(base).max())
    ordinary = base.astype(np.float32)
    assert rescale_extreme_rows(ordinary) is ordinary                      # nothing to do: no copy
    assert rescale_extreme_rows(np.full(5, -32768, np.int16)).dtype == np.int16   # |int16 min| is no overflow here
    assert rescale_extreme_rows(ordinary * np.float32(1e-30)).dtype == np.float32


def test_a_maximum_held_flat_is_clipping_and_a_digitized_line_top_is_not():
    """A line cut at 80 % of its height is clipped; the same line in 8-bit or 12-bit levels, or one tie, is not."""
    e = np.arange(630.0, 670.0, 0.05)
    line = _doublet(e)
    cut = np.minimum(line, 0.8 * line.max())
    digitized = [np.round(line / line.max() * 255), np.round(line / line.max() * 4095)]
    tie = line.copy()
    tie[np.argmax(line) + 1] = line.max()      # two equal points at the top
    got = clipped_at_maximum(e, np.stack([cut, line, tie, *digitized]))
    assert got.tolist() == [True, False, False, False, False]
    assert clipped_at_maximum(e, cut) and not clipped_at_maximum(e, line)   # one spectrum: a 0-d answer
    # separate peaks sharing the maximum (integer counts, a periodic signal) are no flat top, while a
    # flat top broken by one point below it still is (a run of three spanning 0.3 eV remains)
    peaks = np.zeros_like(e)
    peaks[[100, 300, 500]] = 7.0
    broken = cut.copy()
    broken[np.flatnonzero(cut == cut.max())[1]] -= 1e-3
    assert clipped_at_maximum(e, np.stack([peaks, broken])).tolist() == [False, True]


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


def test_a_spike_takes_its_neighbours_mean_and_shot_noise_is_rarely_taken_for_one():
    """The repaired value and the false-repair rate were untested: a spike replaced by one neighbour, or
    thresholds halved (five times the false repairs on shot-noise spectra), went unnoticed."""
    from mnedge_live.preprocessing.spikes import remove_spikes

    e = np.arange(630.0, 670.0, 0.1)
    y = _doublet(e, 641.0, width=0.4 / 2.3548) + np.random.default_rng(5).normal(0, 0.003, e.size)
    bad = y.copy()
    bad[50] += 2.0
    fixed, n = remove_spikes(e, bad, measured_noise(e, bad))
    assert n == 1 and fixed[50] == pytest.approx(0.5 * (y[49] + y[51]))
    assert np.array_equal(np.delete(fixed, 50), np.delete(bad, 50))
    rng = np.random.default_rng(0)
    line = (np.exp(-0.5 * ((e - 641.0) / 0.255) ** 2) + 0.5 * np.exp(-0.5 * ((e - 652.0) / 0.33) ** 2) + 0.05)
    for peak in (400, 40):   # shot noise only, 200 spectra each: 1 and 2 repairs (halved thresholds: 6-9)
        repaired = sum(int(resample_measured(e, rng.poisson(peak * line).astype(float)).spikes) for _ in range(200))
        assert repaired <= 3, (peak, repaired)


def test_work_points_inside_a_wide_gap_are_marked_bridged():
    """Points 0.1 eV apart with one 2 eV gap (640.0-642.0): only the work points strictly inside it."""
    e = np.round(np.concatenate([np.arange(630.0, 640.05, 0.1), np.arange(642.0, 660.0, 0.1)]), 4)
    r = resample_measured(e, _doublet(e, 641.0))
    grid = r.start + 0.1 * np.arange(len(r.values))
    assert np.allclose(grid[r.bridged], np.arange(640.1, 641.95, 0.1))
    dense = resample_measured(np.arange(630.0, 660.0, 1.4), _doublet(np.arange(630.0, 660.0, 1.4), 641.0))
    assert not dense.bridged.any()                     # 1.4 eV apart is not a wide gap
    assert bridged_points(np.array([0.0, 2.0, 2.5, 5.0]), 0.0, 51).sum() == 19 + 24


@pytest.mark.parametrize("spacing_ev", [0.2, 0.4, 0.8])
def test_noisy_points_handed_over_linearly_interpolated_keep_their_noise_and_spacing(spacing_ev):
    """Points interpolated onto a finer grid before they reach the engine (an export on a common grid) are
    straight between the original points: the median second difference was zero, the PSNR read about 90 dB
    instead of 14 and the coarse axis went unflagged. The noise and spacing are now the original points'."""
    rng = np.random.default_rng(11)
    points = np.arange(628.0, 672.0, spacing_ev)
    noisy = _doublet(points, 641.0) + rng.normal(0, 0.03, points.size)
    fine = np.round(np.arange(points[0], points[-1], 0.1), 6)
    handed = np.interp(fine, points, noisy)
    own, interpolated = resample_measured(points, noisy), resample_measured(fine, handed)
    assert interpolated.noise == pytest.approx(own.noise, rel=0.25)
    assert interpolated.spacing == pytest.approx(spacing_ev, rel=0.05)
    # the same in a shared-axis batch, row by row (one row not interpolated)
    rows = np.stack([handed, _doublet(fine, 641.0) + rng.normal(0, 0.03, fine.size)])
    shared = resample_shared_axis(fine, rows)
    assert shared.noise[0] == pytest.approx(interpolated.noise) and shared.spacing[0] == interpolated.spacing
    assert shared.spacing[1] == pytest.approx(0.1) and shared.noise[1] == pytest.approx(0.03, rel=0.25)


def test_a_noiseless_spectrum_with_flat_stretches_is_not_taken_for_an_interpolation():
    e = np.round(np.arange(620.0, 680.0, 0.1), 6)
    y = np.where(e < 636.0, 0.0, _doublet(e, 641.0))           # flat pre-edge, smooth lines
    out = resample_measured(e, y)
    assert out.spacing == pytest.approx(0.1)


@pytest.mark.parametrize("peak", [3.0, 10.0])
def test_low_counts_are_not_taken_for_an_interpolation(peak):
    """Integer counts repeat their values: many straight (flat) triples, but no interpolation. Taken for one,
    their noise read 0 in 58 % of spectra and their spacing up to 12 times too coarse."""
    rng = np.random.default_rng(13)
    e = np.round(np.arange(630.0, 670.0, 0.05), 6)
    for _ in range(20):
        counts = rng.poisson(peak * _doublet(e, 641.0) + 0.05).astype(float)
        out = resample_measured(e, counts)
        plain = 1.4826 * np.median(np.abs(np.diff(counts, 2))) / np.sqrt(6.0) * np.sqrt(0.05 / WORK_STEP_EV)
        assert out.spacing == pytest.approx(0.05) and out.noise == pytest.approx(plain)


def test_dense_noisy_points_are_not_repaired_as_spikes():
    """The spike test got the work axis's noise (smaller by sqrt(spacing / 0.1) for dense points): at 0.01 eV
    it "repaired" plain noise in 79 % of spectra. A true spike is still found."""
    rng = np.random.default_rng(12)
    e = np.round(np.arange(630.0, 670.0, 0.01), 6)
    clean = _doublet(e, 641.0)
    repaired = sum(int(resample_measured(e, clean + rng.normal(0, 0.03, e.size)).spikes) for _ in range(20))
    assert repaired == 0
    y = clean + rng.normal(0, 0.03, e.size)
    y[2000] += 1.5
    assert int(resample_measured(e, y).spikes) == 1
