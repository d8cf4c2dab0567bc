"""Checks of configuration and command-line values (``offline_training.values``)."""

from __future__ import annotations

import math

import pytest

from offline_training.values import check_whole, is_number, is_whole


def test_numbers_and_whole_numbers_exclude_bools_strings_and_non_finite_values():
    assert is_number(1) and is_number(2.5) and not is_number(True) and not is_number("1")
    assert not is_number(math.nan) and not is_number(math.inf)
    assert is_whole(3) and not is_whole(True) and not is_whole(3.0) and not is_whole("3")


@pytest.mark.parametrize("value", [True, 0, -1, 2.0, "5", None])
def test_check_whole_refuses_by_name(value):
    with pytest.raises(ValueError, match=r"n \(--n\) must be a whole number >= 1"):
        check_whole("n (--n)", value, 1)
    check_whole("n (--n)", 1, 1)


def test_generate_refuses_a_count_given_as_true(tmp_path, forward_model):
    from offline_training.generate import write_dataset

    with pytest.raises(ValueError, match="n \\(--n\\)"):
        write_dataset(forward_model, True, 1, tmp_path / "d.h5")
    assert not list(tmp_path.iterdir())
