"""The energy axis of a live spectrum: from the event, the descriptor's configuration or the config."""

from __future__ import annotations

import numpy as np
import pytest

from mnedge_live.config import LiveConfig
from mnedge_live.event_axis import configuration_values, energy_axis

N = 4


def _desc(uid: str = "d1", **conf: object) -> dict:
    """A descriptor whose one configured object carries ``conf``."""
    return {"uid": uid, "configuration": {"det": {"data": dict(conf)}}}


def test_configuration_values_merge_every_object_and_tolerate_empty_ones():
    desc = {"configuration": {"a": {"data": {"x": 1, "y": 2}}, "b": None, "c": {}, "d": {"data": {"y": 3}}}}
    assert configuration_values(desc) == {"x": 1, "y": 3}
    assert configuration_values({"configuration": None}) == {} == configuration_values({})


def test_an_energy_field_of_the_event_is_the_axis():
    cfg = LiveConfig(energy_field="E")
    e = energy_axis(cfg, _desc(E=[9, 9, 9, 9]), {"E": [1, 2, 3, 4]}, N, {})
    assert isinstance(e, np.ndarray) and e.dtype == np.float64
    np.testing.assert_array_equal(e, [1.0, 2.0, 3.0, 4.0])   # the event's field wins over the configuration


def test_an_energy_field_of_the_configuration_is_the_axis_and_is_not_cached():
    cfg, cache = LiveConfig(energy_field="E"), {}
    np.testing.assert_array_equal(energy_axis(cfg, _desc(E=[5, 6, 7, 8]), {}, N, cache), [5, 6, 7, 8])
    assert cache == {}


@pytest.mark.parametrize("row, reason", [
    ({}, "energy field 'E' is in neither the event nor the configuration"),
    ({"E": [1, 2, 3]}, "energy axis has shape (3,), spectrum has 4 points"),
    ({"E": [[1, 2], [3, 4]]}, "energy axis has shape (2, 2), spectrum has 4 points"),
    ({"E": 5.0}, "energy axis has shape (), spectrum has 4 points"),
])
def test_an_unusable_energy_field_is_refused_with_the_reason(row, reason):
    assert energy_axis(LiveConfig(energy_field="E"), _desc(), row, N, {}) == reason


def test_a_non_numeric_energy_field_is_refused_with_the_reason():
    reason = energy_axis(LiveConfig(energy_field="E"), _desc(), {"E": ["a", "b", "c", "d"]}, N, {})
    assert isinstance(reason, str) and reason.startswith("energy field 'E' is not numeric: could not convert")


def test_dispersion_and_offset_fields_give_the_axis_and_it_is_cached_per_descriptor_and_length():
    cfg, cache = LiveConfig(dispersion_field="disp", offset_field="off"), {}
    e = energy_axis(cfg, _desc(disp=0.5, off=600.0), {}, N, cache)
    np.testing.assert_array_equal(e, [600.0, 600.5, 601.0, 601.5])
    assert set(cache) == {("d1", N)} and cache[("d1", N)] is e
    assert energy_axis(cfg, _desc(disp=9.0, off=0.0), {}, N, cache) is e      # same descriptor and length: cached
    other = energy_axis(cfg, _desc("d2", disp=1.0, off=0.0), {}, N, cache)  # another descriptor: its own
    np.testing.assert_array_equal(other, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(energy_axis(cfg, _desc(disp=0.5, off=600.0), {}, 2, cache), [600.0, 600.5])


def test_an_event_carrying_its_dispersion_or_offset_gets_its_own_axis_and_leaves_the_cache_alone():
    """An offset recorded per event (a drift tube, an energy shift per pixel) moved nothing before: the
    first event's axis was reused for every later one that carried only its offset."""
    cfg, cache = LiveConfig(dispersion_field="disp", offset_field="off"), {}
    conf_axis = energy_axis(cfg, _desc(disp=0.5, off=600.0), {}, N, cache)
    e = energy_axis(cfg, _desc(disp=0.5, off=600.0), {"disp": 1.0, "off": 10}, N, cache)
    np.testing.assert_array_equal(e, [10.0, 11.0, 12.0, 13.0])
    # the offset alone, per event: each event its own axis, the configuration's dispersion
    for off in (600.0, 610.0, 620.0):
        np.testing.assert_array_equal(energy_axis(cfg, _desc(disp=0.5, off=0.0), {"off": off}, N, cache),
                                      off + 0.5 * np.arange(N))
    np.testing.assert_array_equal(energy_axis(cfg, _desc(disp=0.5, off=600.0), {"disp": 0.25}, N, cache),
                                  600.0 + 0.25 * np.arange(N))
    # an event with neither field still reads the configuration's axis, not the last event's
    assert cache[("d1", N)] is conf_axis
    assert energy_axis(cfg, _desc(disp=0.5, off=600.0), {}, N, cache) is conf_axis


@pytest.mark.parametrize("conf, row, reason", [
    ({"disp": 0.5}, {}, "dispersion/offset fields 'disp', 'off' not found"),
    ({}, {"off": 1.0}, "dispersion/offset fields 'disp', 'off' not found"),
])
def test_missing_dispersion_or_offset_is_refused_with_the_reason(conf, row, reason):
    cache: dict = {}
    assert energy_axis(LiveConfig(dispersion_field="disp", offset_field="off"), _desc(**conf), row, N, cache) == reason
    assert cache == {}


def test_a_non_numeric_dispersion_is_refused_with_the_reason():
    cfg = LiveConfig(dispersion_field="disp", offset_field="off")
    reason = energy_axis(cfg, _desc(off=1.0), {"disp": "wide"}, N, {})
    assert reason == ("dispersion/offset fields 'disp', 'off' are not numbers: "
                      "could not convert string to float: 'wide'")


def test_a_configured_axis_must_match_the_spectrum():
    cfg, cache = LiveConfig(energy_axis=[1.0, 2.0, 3.0, 4.0]), {}
    np.testing.assert_array_equal(energy_axis(cfg, _desc(), {}, N, cache), [1, 2, 3, 4])
    assert ("d1", N) in cache
    assert energy_axis(cfg, _desc(), {}, 5, cache) == "configured energy_axis has 4 points, spectrum has 5"
    assert ("d1", 5) not in cache


def test_a_configured_dispersion_and_offset_give_the_axis():
    e = energy_axis(LiveConfig(dispersion_eV=0.125, offset_eV=615.0), _desc(), {}, N, {})
    np.testing.assert_array_equal(e, [615.0, 615.125, 615.25, 615.375])


def test_dispersion_fields_come_before_a_configured_axis():
    cfg = LiveConfig(dispersion_field="disp", offset_field="off", dispersion_eV=1.0, offset_eV=0.0)
    np.testing.assert_array_equal(energy_axis(cfg, _desc(disp=0.5, off=600.0), {}, 2, {}), [600.0, 600.5])


def test_a_dispersion_field_without_an_offset_field_falls_back_to_the_configured_axis():
    cfg = LiveConfig(dispersion_field="disp", dispersion_eV=1.0, offset_eV=0.0)
    np.testing.assert_array_equal(energy_axis(cfg, _desc(disp=0.5, off=600.0), {}, 2, {}), [0.0, 1.0])


def test_without_any_axis_source_the_spectrum_is_refused():
    assert energy_axis(LiveConfig(), _desc(), {}, N, {}) == (
        "no energy axis: give energy_field, dispersion/offset fields, energy_axis or dispersion_eV/offset_eV")


def test_the_axis_cache_of_a_run_stays_small_whatever_lengths_arrive():
    """One axis was kept per spectrum length for the whole run: spectra of ever new lengths (up to 65,536
    channels each) could hold gigabytes."""
    from mnedge_live.event_axis import MAX_CACHED_AXES

    cfg, cache = LiveConfig(dispersion_eV=0.1, offset_eV=630.0), {}
    last = 16 + 5 * MAX_CACHED_AXES - 1
    for n in range(16, last + 1):
        e = energy_axis(cfg, _desc(), {}, n, cache)
        assert e.shape == (n,) and e[1] - e[0] == pytest.approx(0.1)
    assert len(cache) == MAX_CACHED_AXES and max(k[1] for k in cache) == last
    assert energy_axis(cfg, _desc(), {}, last, cache) is cache[("d1", last)]   # the recent ones are reused
