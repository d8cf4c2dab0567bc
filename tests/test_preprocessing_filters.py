"""Row filters: FFT correlation equals direct convolution, shared-FFT smoothing equals one-at-a-time, edge holding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnedge_live.preprocessing.filters import (
    correlate_rows,
    edge_hold,
    fft_size,
    gauss_kernel,
    pad_edges,
    smooth,
    smooth_many,
)


@pytest.mark.parametrize("n", [9, 100, 871, 1000, 1153])
def test_fft_size_is_a_5_smooth_multiple_of_8_at_least_n(n):
    m = fft_size(n)
    assert m >= n and m % 8 == 0
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    assert m == 1


@pytest.mark.parametrize("length, taps", [(700, 171), (910, 211), (480, 33), (961, 961)])
def test_fft_correlation_equals_direct_convolution(length, taps):
    """Valid-mode correlation by an FFT only as long as the row: no wrap-around reaches the outputs."""
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(16, length, generator=gen, dtype=torch.float64)
    k = torch.randn(taps, generator=gen, dtype=torch.float64)
    want = F.conv1d(x[:, None], k.view(1, 1, -1))[:, 0]
    got = correlate_rows(x, k)
    assert got.shape == want.shape == (16, length - taps + 1)
    assert torch.allclose(got, want, atol=1e-9 * float(want.abs().max()))


@pytest.mark.parametrize("left, right", [(0, 0), (0, 5), (30, 140), (105, 105)])
def test_edge_padding_repeats_the_end_values_as_replicate_padding(left, right):
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(left + right))
    want = F.pad(x[:, None], (left, right), mode="replicate")[:, 0]
    assert torch.equal(pad_edges(x, left, right), want)


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_short_kernels_correlate_each_row_as_a_one_channel_convolution(rows):
    """The direct path (rows as the groups of one convolution) gives each row's own correlation."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 45, generator=gen)
    k = torch.randn(19, generator=gen)
    got = correlate_rows(x, k)
    want = torch.cat([F.conv1d(row.view(1, 1, -1), k.view(1, 1, -1))[0] for row in x])
    assert got.shape == (rows, 45 - 19 + 1)
    assert torch.allclose(got, want, atol=1e-5)


def test_smoothing_at_several_widths_equals_smoothing_one_at_a_time():
    gen = torch.Generator().manual_seed(3)
    x = torch.cumsum(torch.randn(32, 700, generator=gen, dtype=torch.float64), dim=1)
    widths = (0.3, 3.0)
    for got, sigma in zip(smooth_many(x, widths), widths):
        k = gauss_kernel(sigma / 0.1).to(x).view(-1)
        half = k.numel() // 2
        want = F.conv1d(pad_edges(x, half, half)[:, None], k.view(1, 1, -1))[:, 0]
        assert torch.allclose(got, want, atol=1e-9 * float(want.abs().max()))
        assert torch.allclose(smooth(x, sigma), want, atol=1e-9 * float(want.abs().max()))


def test_edge_hold_repeats_the_nearest_valid_value():
    values = torch.arange(24, dtype=torch.float32).view(3, 8)
    valid = torch.zeros(3, 8, dtype=torch.bool)
    valid[0, 2:5] = True          # a window inside the row
    valid[1, :] = True            # everything measured
    held, first, last = edge_hold(values, valid)
    assert held[0].tolist() == [2, 2, 2, 3, 4, 4, 4, 4]
    assert held[1].tolist() == values[1].tolist()
    assert held[2].tolist() == [16] * 8           # no valid point: the row's first value
    assert first.tolist() == [2, 0, 8] and last.tolist() == [4, 7, -1]
