"""Bank assembly from cached calculations: the L3 width models (``build_bank(l3_lifetime=...)``)."""

import numpy as np
import pytest

from offline_training.references import bank as B
from offline_training.references.parameters import draw_parameters

SIZES = {"Mn2+ Oh": 1, "Mn3+ Oh-JT": 1, "Mn4+ Oh": 1}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A calculation cache holding a two-line spectrum for every job of SIZES (no multiplet solver)."""
    d = tmp_path_factory.mktemp("multiplets")
    x = B._CALC_GRID
    for k, (family, n) in enumerate(sorted(SIZES.items())):
        for i, p in enumerate(draw_parameters(family, n, 1000 * k)):
            lines = 1.0 / (1 + ((x - 60.0 - i) / 0.3) ** 2) + 0.5 / (1 + ((x - 71.0 - i) / 0.3) ** 2)
            np.savez(d / f"{B._cache_key(p)}.npz", intensity=lines, occupancy=5.0 - p.valence + 2)
    return d


def build(cache, mode):
    return B.build_bank(SIZES, seed=0, workers=1, cache_dir=cache, progress=False, l3_lifetime=mode)


def test_both_is_the_constant_rows_then_the_ramp_rows(cache):
    constant, ramp, both = (build(cache, m) for m in ("constant", "ramp", "both"))
    n = len(constant.spectra)
    assert n == len(SIZES) * B.LIFETIME_VARIANTS and len(both.spectra) == 2 * n
    np.testing.assert_array_equal(both.spectra[:n], constant.spectra)
    np.testing.assert_array_equal(both.spectra[n:], ramp.spectra)
    np.testing.assert_array_equal(both.valence, np.concatenate([constant.valence, ramp.valence]))
    assert not np.allclose(constant.spectra, ramp.spectra)   # the two width models differ


def test_an_unknown_width_model_is_refused(cache):
    with pytest.raises(ValueError, match="l3_lifetime must be one of"):
        build(cache, "linear")
