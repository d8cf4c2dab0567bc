"""Live spatial binning: ``BlockBinner`` and the callback's ``mnedge_binned`` stream with a real RunEngine."""

from __future__ import annotations

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from live_support import derived_rows, real_engine

from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import ConfigError, LiveConfig
from mnedge_live.live_binning import BlockBinner
from mnedge_live.sim import SpectrumSource, make_eels

E = np.arange(5.0)


def binned_grid_scan(engine, det, sy, sx, shape: tuple[int, int], tmp_path) -> list[tuple[str, dict]]:
    """The documents of a RunEngine grid scan of ``shape`` read live with 3 x 3 blocks (``map_bin``)."""
    cfg = LiveConfig(mode="spectrum", spectrum_field="eels_spectrum", dispersion_field="eels_dispersion",
                     offset_field="eels_offset", maps_dir=str(tmp_path), map_bin=3, max_batch=6)
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(MnEdgeCallback(engine, cfg, lambda n, d: docs.append((n, d))))
    RE(bp.grid_scan([det], sy, 0, 1, shape[0], sx, 0, 1, shape[1]))
    return docs


def spectrum(value: float) -> np.ndarray:
    return np.full(E.size, value)


def test_blocks_complete_with_their_last_pixel_including_edge_blocks():
    b = BlockBinner(2, shape=(3, 3))
    assert b.binned_shape() == (2, 2)
    assert [b.block_size(i) for i in ((0, 0), (0, 1), (1, 0), (1, 1))] == [4, 2, 2, 1]
    out = []
    for r in range(3):
        for c in range(3):
            out += b.add((r, c), E, spectrum(10 * r + c))
    assert sorted(blk.index for blk in out) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    by = {blk.index: blk for blk in out}
    np.testing.assert_allclose(by[(0, 0)].intensity, spectrum(np.mean([0, 1, 10, 11])))
    np.testing.assert_allclose(by[(0, 1)].intensity, spectrum(np.mean([2, 12])))
    np.testing.assert_allclose(by[(1, 1)].intensity, spectrum(22))
    assert [by[i].pixels for i in ((0, 0), (0, 1), (1, 0), (1, 1))] == [4, 2, 2, 1]
    assert b.remaining() == [] and b.skipped == 0


def test_a_block_beyond_the_announced_shape_is_complete_at_all_its_pixels():
    """Pixel fields past the scan's shape: the block took 0 pixels to complete, closed on its first and
    counted its other three as "block already read out"."""
    b = BlockBinner(2, shape=(2, 2))
    assert b.block_size((1, 0)) == b.block_size((0, 5)) == 4
    out = []
    for pixel in ((2, 0), (2, 1), (3, 0), (3, 1)):
        out += b.add(pixel, E, spectrum(1.0))
    assert [(blk.index, blk.pixels) for blk in out] == [((1, 0), 4)] and b.skipped == 0
    # a block across the shape's edge closes with the announced map's pixels; one past it is counted so
    b = BlockBinner(2, shape=(3, 3))
    out = []
    for pixel in ((2, 0), (2, 1), (3, 0)):
        out += b.add(pixel, E, spectrum(1.0))
    assert [(blk.index, blk.pixels) for blk in out] == [((1, 0), 2)]
    assert b.skip_reasons == {"pixel beyond the scan's announced shape, its block read out at the shape's edge": 1}


def test_unknown_extent_and_aborted_scans_hand_over_open_blocks_at_the_end():
    b = BlockBinner(2)                       # no shape: a block is complete at 4 pixels
    assert b.binned_shape() is None
    assert b.add((0, 0), E, spectrum(1)) == [] and b.add((0, 1), E, spectrum(3)) == []
    assert b.add((2, 5), E, spectrum(7)) == []
    rest = b.remaining()
    assert [(blk.index, blk.pixels) for blk in rest] == [((0, 0), 2), ((1, 2), 1)]
    np.testing.assert_allclose(rest[0].intensity, spectrum(2))
    assert b.remaining() == []


def test_pixels_that_cannot_join_their_block_are_counted_with_the_reason():
    b = BlockBinner(2, shape=(2, 2))
    b.add((0, 0), E, spectrum(1))
    assert b.add((0, 0), E, spectrum(1)) == []                 # the same pixel again
    assert b.add((0, 1), E + 0.5, spectrum(1)) == []           # another energy axis
    assert b.skipped == 2 and b.skip_reasons == {"pixel repeated within its block": 1,
                                                  "energy axis unlike the rest of its block": 1}
    assert b.add((1, 0), E, spectrum(1)) == []
    done = b.add((1, 1), E, spectrum(1))          # the pixel on another axis counted too: the block is complete
    assert [blk.index for blk in done] == [(0, 0)] and done[0].pixels == 3
    assert b.add((1, 1), E, spectrum(1)) == [] and b.skip_reasons["block already read out (repeated pixel)"] == 1
    with pytest.raises(ValueError, match="block factor"):
        BlockBinner(1)


def test_a_pixel_without_a_finite_spectrum_completes_its_block_unsummed():
    b = BlockBinner(2, shape=(2, 4))
    bad = spectrum(1.0)
    bad[2] = np.nan
    assert b.add((0, 0), E, bad) == []                          # a dead channel
    assert b.add((0, 1), E, spectrum(1)) == [] and b.add((1, 0), None, None) == []   # rejected before readout
    (blk,) = b.add((1, 1), E, spectrum(3))
    assert blk.pixels == 2 and np.isfinite(blk.intensity).all()
    np.testing.assert_allclose(blk.intensity, spectrum(2))
    for p in ((0, 2), (0, 3), (1, 2)):                          # a block of nothing but unusable pixels
        assert b.add(p, E + np.inf if p == (0, 3) else E, spectrum(np.inf)) == []
    (empty,) = b.add((1, 3), None, None)
    assert empty.index == (0, 1) and empty.pixels == 0 and empty.intensity.size == 0
    assert b.skipped == 6 and b.skip_reasons == {"NaN or inf values": 4, "no spectrum (rejected before readout)": 2}


def test_a_dead_pixel_does_not_spoil_its_block_readout(tmp_path):
    """One pixel with a dead channel: its block is read from the other eight; a block of dead pixels
    gets a rejection saying so."""
    engine = real_engine()
    det, sy, sx = make_eels((3, 6), SpectrumSource(seed=5))
    det.prefetch()
    det._cache[(1, 1)][100] = np.nan                            # the simulated camera's dead channel
    for r in range(3):
        for c in range(3, 6):
            det._cache[(r, c)][:] = np.nan                      # a second block beam-blanked
    docs = binned_grid_scan(engine, det, sy, sx, (3, 6), tmp_path)
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "mnedge_binned")
    pages = [d for n, d in docs if n == "event_page" and d["descriptor"] == desc["uid"]]
    blocks = {(p["data"]["block_row"][i], p["data"]["block_col"][i]): {k: v[i] for k, v in p["data"].items()}
              for p in pages for i in range(len(p["seq_num"]))}
    assert blocks[(0, 0)]["pixels"] == 8 and "NaN" not in blocks[(0, 0)]["reason"], blocks[(0, 0)]
    assert blocks[(0, 0)]["status"] == "ok" or "tiny" in engine.model_id
    assert blocks[(0, 1)]["pixels"] == 0 and blocks[(0, 1)]["status"] == "rejected"
    assert blocks[(0, 1)]["reason"] == "no pixel of the block has a finite spectrum"
    stop = docs[-1][1]
    assert stop["binned_skipped_pixels"] == 10 and stop["binned_processed"] + stop["binned_rejected"] == 2


def test_map_bin_is_validated():
    assert LiveConfig(map_bin=4).map_bin == 4
    for bad in (0, 65, 2.5, True):
        with pytest.raises(ConfigError, match="map_bin"):
            LiveConfig(map_bin=bad)


def test_a_low_dose_spectrum_image_reads_out_in_blocks_during_the_scan(tmp_path):
    engine = real_engine()
    det, sy, sx = make_eels((6, 6), SpectrumSource(seed=4))
    det.prefetch(psnr_db=4.0)                # single pixels mostly below the detection limit
    docs = binned_grid_scan(engine, det, sy, sx, (6, 6), tmp_path)
    pixels = derived_rows(docs)
    assert len(pixels) == 36                 # every pixel still gets its own row
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "mnedge_binned")
    assert {"block_row", "block_col", "pixels", "valence", "status", "reason"} <= set(desc["data_keys"])
    pages = [d for n, d in docs if n == "event_page" and d["descriptor"] == desc["uid"]]
    blocks = [{k: v[i] for k, v in p["data"].items()} for p in pages for i in range(len(p["seq_num"]))]
    # Rows are filled one after another: the first two blocks complete with row 2, the last two with row 5.
    assert [(b["block_row"], b["block_col"]) for b in blocks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(b["pixels"] == 9 for b in blocks)
    stop = docs[-1][1]
    assert stop["map_bin"] == 3 and stop["binned_skipped_pixels"] == 0
    assert stop["binned_processed"] + stop["binned_rejected"] == 4
    assert stop["processed"] + stop["rejected"] == 36
    with h5py.File(stop["binned_maps_h5"]) as f:
        assert f["valence"].shape == (2, 2) and f.attrs["map_bin"] == 3
    if "tiny" in engine.model_id:
        return
    ok_pixels = sum(r["status"] == "ok" for r in pixels)
    truth = det.truth().reshape(2, 3, 2, 3).mean(axis=(1, 3))
    read = [b for b in blocks if b["status"] == "ok"]
    # At 4 dB a pixel is rarely read (2 of 36 with mnedge-default-v7); every block of 9 is (about +9.5 dB).
    assert len(read) == 4 and ok_pixels <= 9, (ok_pixels, blocks)
    assert np.mean([abs(b["valence"] - truth[b["block_row"], b["block_col"]]) for b in read]) < 0.3
