"""Rows of text tables split into fields and read as numbers (:mod:`mnedge_live.readers.text_fields`)."""

import math

import pytest

from mnedge_live.readers.text_fields import (
    number_pair,
    numbers_and_gaps,
    parse_number,
    spaced_decimal_commas,
    split_fields,
    tab_fields_with_leading_gaps,
)


@pytest.mark.parametrize("line, fields", [
    ("636.3,0.02", ["636.3", "0.02"]),
    ("636.3\t0.02\t", ["636.3", "0.02"]),                 # a trailing separator adds no field
    ("636,3;0,02", ["636,3", "0,02"]),                    # semicolons: commas are decimal commas, kept for parse_number
    ('"630,5","0,02"', ["630,5", "0,02"]),                # a comma inside quotes does not split
    ("636,4   0,38", ["636,4", "0,38"]),                  # decimal commas between spaces
    ("Energy   mu (a.u.)", ["Energy", "mu (a.u.)"]),      # a bracketed unit stays with its name
    ("636.3 0.02", ["636.3", "0.02"]),
    ("1,2,,", ["1", "2"]),
])
def test_split_fields(line, fields):
    assert split_fields(line) == fields


@pytest.mark.parametrize("line, spaced", [("636,4   0,38", True), ("636,4 1", True), ("640, 1", False),
                                          ("640,1", False), ("636.4 0,38", False), ('"636,4" "0,38"', False)])
def test_decimal_commas_between_spaces_need_two_number_fields_and_no_decimal_point(line, spaced):
    assert spaced_decimal_commas(line) is spaced


def test_numbers_read_with_a_decimal_comma_only_where_it_cannot_be_a_thousands_separator():
    assert parse_number("640,5") == 640.5
    assert parse_number("-1.5e-3") == -1.5e-3
    for text in ("1,234.5", "1,2,3", "mu", ""):
        with pytest.raises(ValueError):
            parse_number(text)


def test_a_row_of_one_or_two_numbers_is_a_pair():
    assert number_pair(["636.3", "0,02"]) == (636.3, 0.02)
    first, second = number_pair(["636.3"])
    assert first == 636.3 and math.isnan(second)
    assert number_pair(["1", "2", "3"]) is None
    assert number_pair(["636.3", "mu"]) is None


def test_x_y_pairs_whose_first_pair_ended_keep_their_empty_leading_cells():
    cells = tab_fields_with_leading_gaps("\t\t657.5\t0.3\t\r\n")
    assert cells == ["", "", "657.5", "0.3"]
    assert numbers_and_gaps(cells)
    assert not numbers_and_gaps(["636.3", "0.02"])        # the first cell is not empty
    assert not numbers_and_gaps(["", "657.5"])            # one number only
    assert not numbers_and_gaps(["", "657.5", "mu"])
