"""Where a spectrum image's spectra lie: scan shape, snaking, each event's pixel, growing maps."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import mnedge_live.callback as callback
from mnedge_live.assembly import ValenceMaps, grid_pixel
from mnedge_live.map_geometry import (
    MAX_MAP_PIXELS,
    MapGeometry,
    checked_snaking,
    grown_extent,
    grown_maps,
    placement_error,
    scan_shape,
)
from mnedge_live.results import SpectrumResult

SIDE = math.isqrt(MAX_MAP_PIXELS)


def test_the_callback_still_exports_the_names_callers_import_from_it():
    assert callback.MAX_MAP_PIXELS == MAX_MAP_PIXELS == 4096 * 4096
    assert callback._grown_extent is grown_extent


@pytest.mark.parametrize("shape, expected", [
    ([3, 4], (3, 4)), ((1, 7), (1, 7)), ([SIDE, SIDE], (SIDE, SIDE)),
    ([5], (1, 5)),                                     # a line scan (bluesky's scan of a stage): one row
    ([2.0, 4], (2, 4)), ([np.int64(2), np.int32(4)], (2, 4)),   # whole numbers as JSON and numpy give them
    (None, None), ([2, 3, 4], None), ([0, 4], None), ([-1, 4], None), ([2.5, 4], None), ([], None),
    ([True, 4], None), ("34", None), ({"rows": 3}, None), ([float("nan"), 4], None),
])
def test_scan_shape_of_the_start_document(shape, expected, caplog):
    start = {"uid": "u"} if shape is None else {"uid": "u", "shape": shape}
    with caplog.at_level(logging.WARNING, logger="mnedge_live.callback"):
        got = scan_shape(start)
    assert got == expected
    if got is not None:
        assert all(type(v) is int for v in got)
    # a shape that gives no map says why (it was passed over in silence); no shape at all is no scan
    assert (len(caplog.records) == 1 and "read out without a map" in caplog.text) is (
        shape is not None and expected is None)


def test_a_scan_shape_larger_than_a_map_may_hold_has_no_map_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="mnedge_live.callback"):
        assert scan_shape({"uid": "big-run", "shape": [SIDE + 1, SIDE]}) is None
    [record] = caplog.records
    assert record.name == "mnedge_live.callback"   # the logger it was logged by before the split
    assert record.getMessage() == (f"run big-run: scan shape [{SIDE + 1}, {SIDE}] is more than the {MAX_MAP_PIXELS} "
                                   "pixels a map may hold: its spectra are read out without a map")


@pytest.mark.parametrize("snaking, expected", [(None, None), ([False, True], (False, True)), ((True,), (True,)),
                                               ([], ())])
def test_a_well_formed_snaking_is_kept_as_a_tuple(snaking, expected):
    start = {} if snaking is None else {"snaking": snaking}
    assert checked_snaking(start) == (expected, "")


@pytest.mark.parametrize("snaking", ["yes", [0, 1], [False, "True"], 1, {"inner": True}])
def test_a_malformed_snaking_is_refused_with_the_reason(snaking):
    value, reason = checked_snaking({"snaking": snaking})
    assert value is None
    assert reason == (f"start document's snaking {str(snaking)[:60]!r} is not a list of booleans: "
                      "the pixel's position in the grid is unknown")


@pytest.mark.parametrize("snake_axes, shape, expected", [
    ("True", [3, 4], (False, True)), ("False", [3, 4], (False, False)), ("None", [3, 4], (False, False)),
    ("[]", [3, 4], (False, False)), ("[SynAxis(prefix='', name='stage_x')]", [3, 4], (False, True)),
    ("{SynAxis(prefix='', name='stage_x')}", [3, 4], (False, True)),     # a set of motors
    ("[SynAxis(prefix='', name='stage_y')]", [3, 4], (False, False)),    # the outer motor: bluesky does not snake it
    ("True", [2, 3, 4], (False, True, True)), (True, [3, 4], (False, True))])
def test_list_grid_scans_snake_axes_stands_in_for_a_missing_snaking(snake_axes, shape, expected):
    """bluesky's list_grid_scan writes the repr of its snake_axes argument and no snaking."""
    motors = ["stage_y", "stage_x", "stage_z"][:len(shape)]
    assert checked_snaking({"shape": shape, "snake_axes": snake_axes, "motors": motors}) == (expected, "")
    assert checked_snaking({"shape": shape, "snake_axes": "True", "snaking": [False] * len(shape)})[0] == (
        (False,) * len(shape))   # snaking, when there, decides


@pytest.mark.parametrize("start", [{"shape": [3, 4], "snake_axes": "[SynAxis(name='x')]"},   # no motors to match
                                   {"shape": [3, 4], "snake_axes": "[SynAxis(name='q')]", "motors": ["y", "x"]},
                                   {"shape": [3, 4], "snake_axes": "[<motor>]", "motors": ["y", "x"]},
                                   {"shape": [3, 4], "snake_axes": "sometimes"}, {"snake_axes": "True"}])
def test_a_snake_axes_that_does_not_say_which_axes_snake_is_refused(start):
    value, reason = checked_snaking(start)
    assert value is None and "does not say which axes snake" in reason


def test_a_snaking_of_another_length_than_the_shape_or_of_numpy_booleans():
    value, reason = checked_snaking({"shape": [3, 4], "snaking": [True]})
    assert value is None and "has 1 entries for a 2-axis shape" in reason
    assert checked_snaking({"shape": [3, 4], "snaking": [np.False_, np.True_]}) == ((False, True), "")


def test_points_not_in_the_grids_order_cannot_be_placed_by_their_event_number():
    spiral = {"uid": "s", "shape": [5, 5], "hints": {"gridding": "rectilinear_nonsequential"}}
    assert "rectilinear_nonsequential" in placement_error(spiral) and "pixel_fields" in placement_error(spiral)
    assert placement_error({"hints": {"gridding": "rectilinear"}}) == placement_error({}) == ""
    g = MapGeometry.from_start(spiral)
    pixel, reason = g.pixel(1, {}, None)
    assert pixel is None and reason == placement_error(spiral)
    assert g.pixel(1, {"r": 2, "c": 3}, ("r", "c")) == ((2, 3), "")   # the events' own indices still place them


def test_the_reason_for_a_malformed_snaking_quotes_at_most_60_characters_of_it():
    _, reason = checked_snaking({"snaking": "x" * 500})
    assert f"{'x' * 60!r}" in reason and "x" * 61 not in reason


def test_the_geometry_of_a_start_document():
    g = MapGeometry.from_start({"uid": "u", "shape": [3, 4], "snaking": [False, True]})
    assert (g.shape, g.snaking, g.snaking_error, g.extent) == ((3, 4), (False, True), "", (3, 4))
    g = MapGeometry.from_start({"uid": "u"})
    assert (g.shape, g.snaking, g.snaking_error, g.extent) == (None, None, "", (0, 0))
    g = MapGeometry.from_start({"uid": "u", "shape": [2, 2], "snaking": "yes"})
    assert g.shape == (2, 2) and g.snaking is None and "not a list of booleans" in g.snaking_error


def test_grid_pixels_follow_the_scan_order_and_snaking():
    g = MapGeometry.from_start({"uid": "u", "shape": [3, 4], "snaking": [False, True]})
    pixels = [g.pixel(seq, {}, None) for seq in range(1, 13)]
    assert all(reason == "" for _, reason in pixels)
    assert [p for p, _ in pixels] == [grid_pixel(s, (3, 4), (False, True)) for s in range(1, 13)]
    assert [p for p, _ in pixels[4:8]] == [(1, 3), (1, 2), (1, 1), (1, 0)]   # the odd row reversed
    assert g.extent == (3, 4)   # grid pixels never widen the extent


@pytest.mark.parametrize("seq", [0, 13, -2])
def test_a_seq_num_outside_the_scan_shape_has_no_pixel(seq):
    g = MapGeometry.from_start({"uid": "u", "shape": [3, 4]})
    assert g.pixel(seq, {}, None) == (None, f"seq_num {seq} is outside the scan shape (3, 4)")


def test_without_a_scan_shape_no_event_has_a_grid_pixel():
    g = MapGeometry.from_start({"uid": "u", "snaking": "yes"})
    assert g.pixel(1, {}, None) == (None, "seq_num 1 is outside the scan shape None")


def test_a_malformed_snaking_leaves_every_grid_pixel_unknown():
    g = MapGeometry.from_start({"uid": "u", "shape": [2, 3], "snaking": "yes"})
    for seq in (1, 2, 6, 7):
        assert g.pixel(seq, {}, None) == (None, g.snaking_error)


def test_pixel_fields_give_the_pixel_and_widen_the_extent():
    g = MapGeometry.from_start({"uid": "u"})
    assert g.pixel(1, {"r": 2, "c": 3}, ["r", "c"]) == ((2, 3), "")
    assert g.extent == (3, 4)
    assert g.pixel(2, {"r": np.int64(0), "c": 5.0}, ["r", "c"]) == ((0, 5), "")   # a whole float is an index
    assert g.extent == (3, 6)   # widened, never narrowed
    assert g.pixel(3, {"r": 0, "c": 0}, ["r", "c"]) == ((0, 0), "")
    assert g.extent == (3, 6)


def test_pixel_fields_win_over_the_scan_shape_and_its_snaking():
    g = MapGeometry.from_start({"uid": "u", "shape": [2, 2], "snaking": "yes"})
    assert g.pixel(99, {"r": 5, "c": 1}, ["r", "c"]) == ((5, 1), "")
    assert g.extent == (6, 2)


@pytest.mark.parametrize("row, reason", [
    ({"r": 1}, "no valid pixel index in fields 'r', 'c': 'c'"),
    ({"r": "one", "c": 1}, "no valid pixel index in fields 'r', 'c': 'one' is not a whole number"),
    ({"r": None, "c": 1}, "no valid pixel index in fields 'r', 'c': None is not a whole number"),
    ({"r": float("inf"), "c": 1}, "no valid pixel index in fields 'r', 'c': inf is not a whole number"),
    # taken as indices these would put the spectrum where it was not measured (int() truncates)
    ({"r": 2.7, "c": 1}, "no valid pixel index in fields 'r', 'c': 2.7 is not a whole number"),
    ({"r": 1, "c": True}, "no valid pixel index in fields 'r', 'c': True is not a whole number"),
    ({"r": 1, "c": np.bool_(True)}, "no valid pixel index in fields 'r', 'c': np.True_ is not a whole number"),
    ({"r": "5", "c": 1}, "no valid pixel index in fields 'r', 'c': '5' is not a whole number"),
    ({"r": -1, "c": 0}, "pixel index (-1, 0) is negative"),
    ({"r": 0, "c": -3}, "pixel index (0, -3) is negative"),
])
def test_an_unusable_pixel_index_is_refused_with_the_reason(row, reason):
    g = MapGeometry.from_start({"uid": "u"})
    assert g.pixel(1, row, ["r", "c"]) == (None, reason)
    assert g.extent == (0, 0)


def test_a_pixel_that_would_grow_the_map_past_its_limit_is_refused_and_leaves_the_extent():
    g = MapGeometry.from_start({"uid": "u"})
    assert g.pixel(1, {"r": 0, "c": 0}, ["r", "c"]) == ((0, 0), "")
    assert g.pixel(2, {"r": 0, "c": MAX_MAP_PIXELS}, ["r", "c"]) == (
        None, f"pixel index (0, {MAX_MAP_PIXELS}) would grow the map to 1 x {MAX_MAP_PIXELS + 1} pixels, "
              f"more than the {MAX_MAP_PIXELS} accepted")
    assert g.extent == (1, 1)
    assert g.pixel(3, {"r": SIDE - 1, "c": SIDE - 1}, ["r", "c"]) == ((SIDE - 1, SIDE - 1), "")   # just fits
    assert g.extent == (SIDE, SIDE)
    pix, reason = g.pixel(4, {"r": SIDE, "c": 0}, ["r", "c"])
    assert pix is None and f"would grow the map to {SIDE + 1} x {SIDE} pixels" in reason
    assert g.extent == (SIDE, SIDE)


def test_the_limit_counts_the_pixels_accepted_so_far_not_only_this_one():
    g = MapGeometry.from_start({"uid": "u"})
    assert g.pixel(1, {"r": 0, "c": SIDE * 2 - 1}, ["r", "c"]) == ((0, SIDE * 2 - 1), "")   # 1 x 8192 fits
    pix, reason = g.pixel(2, {"r": SIDE // 2, "c": 0}, ["r", "c"])   # alone 2049 x 1, with it 2049 x 8192
    assert pix is None and f"would grow the map to {SIDE // 2 + 1} x {2 * SIDE} pixels" in reason


@pytest.mark.parametrize("shape, pixel, seen, expected", [
    ((1, 4), (0, 4), (1, 5), (1, 8)),                  # doubled
    ((1, 8), (0, 9), (1, 10), (1, 16)),                # doubled again: ahead of the pixels, cut at writing
    ((2, 8), (4095, 3), (4096, 8), (4096, 8)),         # far beyond: taken to the pixel
    ((3, 3), (1, 1), (3, 3), (3, 3)),                  # inside: unchanged
    ((2, 2), (2, 5), (3, 6), (4, 6)),                  # both axes at once
    ((2, 2), (2, 2), (3, 3), (4, 4)),
    # doubling would pass the largest map: sized from the pixels seen, the growing axis doubled within it
    ((SIDE // 2 + 1, SIDE), (SIDE // 2 + 1, 0), (SIDE // 2 + 2, SIDE), (SIDE, SIDE)),
    ((2048, 8192), (2048, 0), (2049, 5000), (MAX_MAP_PIXELS // 5000, 5000)),   # columns doubled earlier shrink back
])
def test_grown_extent(shape, pixel, seen, expected):
    assert grown_extent(shape, pixel, seen) == expected


def test_a_large_raster_of_pixel_fields_grows_its_map_a_few_times_and_never_past_the_limit():
    """3000 x 5000 pixels (under the limit): its columns doubled to 8192, and from row 2048 on the map
    passed the limit and was copied once per row."""
    shape, seen, allocations = (1, 1), (1, 1), 0
    pixels = [(0, c) for c in range(5000)] + [(r, c) for r in range(1, 3000) for c in (0, 4999)]
    for r, c in pixels:
        seen = (max(seen[0], r + 1), max(seen[1], c + 1))
        if not (r < shape[0] and c < shape[1]):
            shape = grown_extent(shape, (r, c), seen)
            allocations += 1
            assert shape[0] * shape[1] <= MAX_MAP_PIXELS and r < shape[0] and c < shape[1]
    assert allocations < 30, allocations


def test_grown_maps_exact_cuts_room_beyond_the_pixels():
    maps = ValenceMaps((2, 8))
    maps.set((1, 4), SpectrumResult(status="ok", fractions=(0.2, 0.3, 0.5), valence=3.3, valence_std=0.1))
    grown = grown_maps(maps, (4, 5), exact=True)
    assert grown.shape == (4, 5) and grown.layers["valence"][1, 4] == 3.3
    assert grown_maps(maps, (4, 5)).shape == (4, 8)   # at least: nothing cut


def test_maps_cut_to_their_extent_keep_their_readouts():
    maps = ValenceMaps((4, 6))
    maps.set((1, 2), SpectrumResult(status="ok", fractions=(0.2, 0.3, 0.5), valence=3.3, valence_std=0.1))
    cut = maps.cropped((2, 3))
    assert cut.shape == (2, 3) and cut.layers["valence"][1, 2] == 3.3 and cut.holds((1, 2))
    assert maps.cropped((4, 6)) is maps and maps.cropped((9, 9)) is maps


def test_grown_maps_keep_every_readout_and_leave_the_new_room_empty():
    maps = ValenceMaps((2, 3))
    ok = SpectrumResult(status="ok", fractions=(0.2, 0.3, 0.5), valence=3.3, valence_std=0.1, ood_score=0.4)
    maps.set((1, 2), ok)
    maps.set((0, 0), SpectrumResult.rejected("no edge"))
    new = grown_maps(maps, (4, 2))   # never narrower than the maps it copies
    assert new.shape == (4, 3) and new is not maps
    assert new.layers["valence"][1, 2] == 3.3 and new.layers["frac_mn4"][1, 2] == 0.5
    assert new.layers["ood_score"][1, 2] == 0.4
    assert new.rejected[0, 0] and not new.rejected[1, 2]
    assert np.isnan(new.layers["valence"][2:]).all() and not new.rejected[2:].any()
    assert np.isnan(new.layers["valence"][0, 1])
    assert maps.shape == (2, 3)   # the old maps are left as they were


def test_runs_whose_uids_share_a_prefix_get_files_of_their_own():
    """Maps were named by the uid's first 8 characters: scan_0001 and scan_0002 overwrote each other."""
    from mnedge_live.assembly import run_file_stem

    assert run_file_stem("scan_0001") != run_file_stem("scan_0002")
    assert run_file_stem("0f8e7d6c-1234-4abc-9def-0123456789ab", "_live") == (
        "mnedge_0f8e7d6c-1234-4abc-9def-0123456789ab_live")
    odd = [run_file_stem(u) for u in ("a/b", "a_b", "a b", "x" * 200, "x" * 201)]
    assert len(set(odd)) == 5 and all("/" not in n and " " not in n and len(n) < 120 for n in odd)
    # a uid that runs into another's suffix (a map beside a binned map, a plot beside a live map)
    assert run_file_stem("scan_0001", "_bin2") != run_file_stem("scan_0001_bin2")
    assert run_file_stem("s1", "_live") != run_file_stem("s1_live")
