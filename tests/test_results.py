"""Counting rejections by kind: measured numbers must not split one kind into many keys."""

from __future__ import annotations

from mnedge_live.results import reason_kind


def test_reasons_that_differ_only_in_measured_numbers_are_one_kind():
    a = "not a Mn L2,3 edge: L3-L2 spacing 14.1 eV is outside 9.6-12.4 eV (Mn 2p spin-orbit splitting is about 11 eV)"
    b = "not a Mn L2,3 edge: L3-L2 spacing 13.5 eV is outside 9.6-12.4 eV (Mn 2p spin-orbit splitting is about 11 eV)"
    assert reason_kind(a) == reason_kind(b) == "not a Mn L2,3 edge: L3-L2 spacing # eV is outside #-# eV"


def test_different_reasons_stay_apart():
    assert reason_kind("no edge detectable above the noise (edge/noise 3.1 < 6.0)") != reason_kind("3 NaN or inf value(s)")
