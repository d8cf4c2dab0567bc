"""Which column names of a text table mean what (:mod:`mnedge_live.readers.column_names`)."""

import pytest

from mnedge_live.readers.column_names import (
    column_key,
    i0_monitors,
    is_energy_key,
    is_index_key,
    is_known_key,
    is_normalized_yield_key,
    is_raw_yield_key,
    is_units_row,
)


@pytest.mark.parametrize("name, key", [("Mu (a.u.)", "mu"), ("Energy loss (eV)", "energy_loss"),
                                       ("Mono-Energy", "mono_energy"), ("  TEY [nA] ", "tey"), ("E.2", "e_2")])
def test_column_keys_drop_case_units_and_separators(name, key):
    assert column_key(name) == key


@pytest.mark.parametrize("name", ["energy", "Energy (eV)", "Mono Energy", "pgm_energy", "Energy loss (eV)", "E",
                                  "eV", "E2", "hv", "energyloss"])
def test_energy_axis_names(name):
    assert is_energy_key(column_key(name))


@pytest.mark.parametrize("name", ["I0", "TEY", "mu", "index", "time", "norm", "Temperature"])
def test_names_that_are_no_energy_axis(name):
    assert not is_energy_key(column_key(name))


def test_raw_yields_and_yields_already_divided_by_their_monitor():
    for key in ("tey", "tfy", "pfy_mn", "drain_current"):
        assert is_raw_yield_key(key) and not is_normalized_yield_key(key), key
    for name in ("TEY/I0", "TFY / I0", "TEY_norm", "norm TEY", "TEY normalized"):
        key = column_key(name)
        assert is_normalized_yield_key(key) and not is_raw_yield_key(key), name
    assert not is_normalized_yield_key(column_key("mu/I0"))   # only a raw yield over an I0 monitor


def test_index_columns_and_the_i0_monitor():
    for key in ("", "index", "#", "unnamed_0", "count_time", "time_stamp", "pt"):
        assert is_index_key(key), key
    assert not is_index_key("energy")
    keys = ["energy", "i0", "tey", "monitor"]
    assert i0_monitors(keys, [1, 2, 3]) == [1, 3]


def test_a_units_row_and_the_names_known():
    assert is_units_row(["eV", "(a.u.)", "nA", "counts"])
    assert not is_units_row(["energy", "mu"])
    assert all(is_known_key(k) for k in ("energy", "mu", "i0", "tey", "index", "tey/i0"))
    assert not any(is_known_key(k) for k in ("", "sample_x", "comment"))
