"""Spatial binning of spectrum images (``mnedge_live.image_binning``)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from mnedge_live.image_binning import bin_pixels
from mnedge_live.readers import SpectrumImage

E = np.arange(4.0)


def image(a: np.ndarray, chunks=(2, 3, -1)) -> SpectrumImage:
    return SpectrumImage("x.hspy", 0, E, da.from_array(a, chunks=chunks))


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(0).random((5, 7, 4)).astype(np.float32)


def test_full_blocks_are_the_mean_of_their_pixels(data):
    out = bin_pixels(image(data), 2)
    assert out.shape == (3, 4) and out.data.dtype == np.float32
    assert out.file == "x.hspy" and out.energy is E
    got = out.data.compute()
    for r in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[r, c], data[2 * r:2 * r + 2, 2 * c:2 * c + 2].mean((0, 1)), rtol=1e-6)


def test_edge_blocks_average_the_pixels_they_hold(data):
    got = bin_pixels(image(data), 2).data.compute()
    np.testing.assert_allclose(got[2, 3], data[4, 6], rtol=1e-6)                 # one pixel
    np.testing.assert_allclose(got[2, 1], data[4, 2:4].mean(0), rtol=1e-6)       # a half block (bottom)
    np.testing.assert_allclose(got[0, 3], data[0:2, 6].mean(0), rtol=1e-6)       # a half block (right)
    # Every pixel counts once: the pixel-count-weighted sum of the blocks is the image's sum.
    counts = np.outer([2, 2, 1], [2, 2, 2, 1])
    np.testing.assert_allclose((got * counts[..., None]).sum((0, 1)), data.sum((0, 1)), rtol=1e-5)


def test_a_bad_pixel_spoils_only_its_block(data):
    data[1, 1, 2] = np.nan
    got = bin_pixels(image(data), 2).data.compute()
    assert np.isnan(got[0, 0, 2]) and np.isfinite(got[0, 0, [0, 1, 3]]).all()
    assert np.isfinite(np.delete(got.reshape(-1, 4), 0, axis=0)).all()


def test_line_scan_and_numpy_data(data):
    line = SpectrumImage("x", 0, E, data[:1])  # a NumPy array, one row
    out = bin_pixels(line, 3)
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out.data.compute()[0, 0], data[0, :3].mean(0), rtol=1e-6)


def test_factor_one_is_the_image_itself_and_bad_factors_are_refused(data):
    im = image(data)
    assert bin_pixels(im, 1) is im
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="bin factor"):
            bin_pixels(im, bad)


def test_chunks_hold_whole_blocks_and_whole_stored_chunks():
    a = da.zeros((256, 256, 8), chunks=(21, 21, 8), dtype=np.uint16)
    out = bin_pixels(SpectrumImage("x", 0, np.arange(8.0), a), 4)
    assert out.shape == (64, 64) and out.data.dtype == np.float32
    # 84 pixels (4 stored chunks of 21, 21 blocks of 4) per chunk: no stored chunk read twice, no block cut.
    assert out.data.chunks[0] == (21, 21, 21, 1) and out.data.chunks[1] == (21, 21, 21, 1)
    odd = bin_pixels(SpectrumImage("x", 0, np.arange(8.0), da.zeros((300, 300, 8), chunks=(97, 97, 8))), 11)
    assert odd.data.chunks[0] == (9, 9, 9, 1)   # lcm(97, 11) is too large: 99 pixels, whole blocks near 97


def test_float64_images_beyond_float32_range_are_binned_without_overflow(data):
    # intensities may be in any unit: a float64 image at 1e40 binned into float32 gave inf everywhere
    big = data.astype(np.float64) * 1e40
    out = bin_pixels(image(big), 2)
    assert out.data.dtype == np.float64
    got = out.data.compute()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0, 0], big[:2, :2].mean((0, 1)), rtol=1e-12)
