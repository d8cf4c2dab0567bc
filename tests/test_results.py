"""Results: the engine's constructor of readings, and counting rejections by kind."""

from __future__ import annotations

import dataclasses

import pytest

from mnedge_live.results import SpectrumResult, reason_kind


def test_a_reading_is_the_dataclass_with_every_field_set():
    got = SpectrumResult.reading((0.1, 0.2, 0.7), (0.01, 0.02, 0.03), 3.6, 0.05, -1.5, 0.4, 0.3, 12.0,
                                 ("low_psnr",), "m")
    want = SpectrumResult(status="ok", fractions=(0.1, 0.2, 0.7), fractions_std=(0.01, 0.02, 0.03), valence=3.6,
                          valence_std=0.05, energy_offset_eV=-1.5, resolution_eV=0.4, t_lambda=0.3, ood_score=12.0,
                          flags=("low_psnr",), model="m")
    assert got == want and got.ok and got.to_dict() == want.to_dict()
    assert set(vars(got)) == {f.name for f in dataclasses.fields(SpectrumResult)}  # a new field must be set here too
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.valence = 2.0


def test_reasons_that_differ_only_in_measured_numbers_are_one_kind():
    a = "not a Mn L2,3 edge: L3-L2 spacing 14.1 eV is outside 9.6-12.4 eV (Mn 2p spin-orbit splitting is about 11 eV)"
    b = "not a Mn L2,3 edge: L3-L2 spacing 13.5 eV is outside 9.6-12.4 eV (Mn 2p spin-orbit splitting is about 11 eV)"
    assert reason_kind(a) == reason_kind(b) == "not a Mn L2,3 edge: L3-L2 spacing # eV is outside #-# eV"


def test_reasons_that_differ_only_in_counts_are_one_kind():
    """Twelve pixels with 1 to 12 dead channels were listed as twelve reasons."""
    kinds = {reason_kind(f"{k} NaN or inf value(s)") for k in range(1, 13)}
    assert kinds == {"# NaN or inf value"}
    assert reason_kind("only 3 points in the Mn L2,3 region 630-665 eV; at least 20 are needed") == \
        "only # points in the Mn L2,3 region #-# eV; at least # are needed"


def test_different_reasons_stay_apart():
    assert reason_kind("no edge detectable above the noise (edge/noise 3.1 < 6.0)") != reason_kind("3 NaN or inf value(s)")
