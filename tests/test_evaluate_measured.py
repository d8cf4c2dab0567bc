"""The measured-spectra checks of ``mnedge-train evaluate``: axis scale errors and extra instrument blur."""

from __future__ import annotations

import numpy as np
import pytest

from mnedge_live.engine import load_engine
from offline_training.evaluate import (
    ADDED_NOISE_DRAWS,
    ADDED_NOISE_PSNR_DB,
    AXIS_SCALE_ERRORS,
    EXTRA_BLUR_FWHM_EV,
    SCALE_CENTER_EV,
    blurred,
    real_spectra_robustness,
    with_added_noise,
)


def fwhm(e: np.ndarray, y: np.ndarray) -> float:
    o = np.argsort(e)
    g = np.arange(e.min(), e.max(), 0.001)
    u = np.interp(g, e[o], y[o])
    above = g[u >= u.max() / 2]
    return float(above[-1] - above[0])


@pytest.mark.parametrize("width", [1.0, 2.0, 3.0])
def test_blur_has_its_width_on_an_irregular_descending_axis(width):
    """Digitized spectra: uneven spacing (denser on the line), repeated energies, descending order."""
    rng = np.random.default_rng(0)
    e = np.sort(np.concatenate([np.arange(630.0, 660.0, 0.25), rng.uniform(643.0, 647.0, 200), [645.0, 645.0]]))[::-1]
    y = np.exp(-0.5 * ((e - 645.0) / 0.2) ** 2)
    assert fwhm(e, blurred(e, y, width)) == pytest.approx(np.hypot(width, 0.2 * 2.3548), abs=0.03)


class _Recording:
    """The real engine, remembering every spectrum it was asked to read (a spy: the readings are its own)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def predict_one(self, e, y):
        self.calls.append((np.array(e, copy=True), np.array(y, copy=True)))
        return self.engine.predict_one(e, y)


def test_measured_files_are_read_with_scaled_axes_and_blur(tmp_path, tiny_artifact):
    e = np.round(np.arange(625.0, 670.0, 0.1), 4)
    y = np.exp(-0.5 * ((e - 641.0) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - 652.0) / 0.9) ** 2) + 0.05
    (tmp_path / "a.csv").write_text("".join(f"{a},{b:.6f}\n" for a, b in zip(e, y)))
    (tmp_path / "notes.md").write_text("not a spectrum")
    engine = load_engine(str(tiny_artifact))
    spy = _Recording(engine)
    out = real_spectra_robustness(spy, tmp_path)
    assert [r["file"] for r in out] == ["a.csv"]
    r = out[0]
    assert set(r["axis_scale"]) == {f"{d:+.2f}" for d in AXIS_SCALE_ERRORS}
    assert set(r["extra_blur_fwhm_eV"]) == {f"{w:g}" for w in EXTRA_BLUR_FWHM_EV}
    assert set(r["added_noise_psnr_dB"]) == {f"{db:g}" for db in ADDED_NOISE_PSNR_DB}
    e_read, y_read = spy.calls[0][0], spy.calls[0][1]   # the file as read (text rounding of the intensities)
    assert np.allclose(e_read, e) and np.allclose(y_read, y, atol=1e-6)

    def reading(ex, yx):
        res = engine.predict_one(ex, yx)
        return round(float(res.valence), 4) if res.ok else None

    # the file as measured, then each condition: the spectrum the engine was given is the stated
    # transformation of the file (axis scaled about SCALE_CENTER_EV, the intensities blurred), and the
    # reported reading is the engine's reading of it
    asked = iter(spy.calls)
    ex, yx = next(asked)
    assert r["valence"] == reading(ex, yx) and r["valence"] is not None
    for d in AXIS_SCALE_ERRORS:
        ex, yx = next(asked)
        assert np.allclose(ex, SCALE_CENTER_EV + (e_read - SCALE_CENTER_EV) * (1 + d)) and np.array_equal(yx, y_read), d
        assert r["axis_scale"][f"{d:+.2f}"] == reading(ex, yx)
    for w in EXTRA_BLUR_FWHM_EV:
        ex, yx = next(asked)
        assert np.array_equal(ex, e_read) and np.allclose(yx, blurred(e_read, y_read, w)), w
        assert not np.allclose(yx, y_read), w
        assert r["extra_blur_fwhm_eV"][f"{w:g}"] == reading(ex, yx)
    # the noise rows: ADDED_NOISE_DRAWS draws per level, their mean and spread as read, refusals counted
    for db in ADDED_NOISE_PSNR_DB:
        draws = [reading(*next(asked)) for _ in range(ADDED_NOISE_DRAWS)]
        ok = [v for v in draws if v is not None]
        row = r["added_noise_psnr_dB"][f"{db:g}"]
        assert row["refused"] == ADDED_NOISE_DRAWS - len(ok)
        assert row["mean"] == (round(float(np.mean(ok)), 4) if ok else None)
    assert next(asked, None) is None


def test_added_noise_has_the_stated_psnr_on_a_uniform_axis():
    """Irregular descending input: the result is on the 0.1 eV axis and its noise sigma matches the PSNR."""
    e = np.sort(np.concatenate([np.arange(630.0, 660.0, 0.3), np.linspace(640.0, 642.0, 50)]))[::-1]
    y = np.exp(-0.5 * ((e - 641.0) / 0.5) ** 2)
    rng = np.random.default_rng(1)
    g, noisy = with_added_noise(e, y, 20.0, rng)
    np.testing.assert_allclose(np.diff(g), 0.1, atol=1e-9)
    clean = np.interp(g, e[::-1], y[::-1])
    sigma = (clean.max() - clean.min()) / 10.0
    assert np.std(noisy - clean) == pytest.approx(sigma, rel=0.1)


def test_a_per_atom_mixture_weights_each_spectrum_by_its_3d_holes():
    """Area weights share * holes: the atomic share recovered from the weights is the share asked for."""
    from offline_training.evaluate import holes_at, mix_per_atom
    from offline_training.forward.composition import HOLES

    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])      # unit-area spectra, one channel each
    for share in (0.25, 0.5, 0.75):
        m = mix_per_atom(a, b, share, HOLES[2], HOLES[4])
        assert m.sum() == pytest.approx(1.0)
        atoms_a, atoms_b = m[0] / HOLES[2], m[1] / HOLES[4]
        assert atoms_a / (atoms_a + atoms_b) == pytest.approx(share)
    assert holes_at(3.0) == pytest.approx(HOLES[3]) and HOLES[2] < holes_at(2.5) < HOLES[3]
    assert holes_at(1.5) == HOLES[2] and holes_at(4.5) == HOLES[4]    # held at the ends


def test_a_per_atom_mixture_of_spectra_with_a_continuum_scales_each_by_its_line_area():
    """The continuum per Mn atom does not depend on the valence: each file is scaled by the area of its lines
    above it (:func:`line_area`), not by its whole area, or a mixture of two files with an edge jump is
    not the share of atoms asked for (by whole areas, the mixture below is off by 0.11 of its maximum)."""
    from offline_training.evaluate import line_area, mix_per_atom
    from offline_training.forward.composition import HOLES

    e = np.round(np.arange(630.0, 670.0, 0.1), 4)

    def lines(l3):   # unit line area, L3:L2 2:1
        g = [np.exp(-0.5 * ((e - c) / 0.8) ** 2) for c in (l3, l3 + 11.0)]
        return sum(x / np.trapezoid(x, e) * w for x, w in zip(g, (2 / 3, 1 / 3)))

    def continuum(l3):   # per atom, the same for every valence
        return 0.3 * sum(h * (0.5 + np.arctan((e - c) / 0.5) / np.pi) for h, c in ((2 / 3, l3), (1 / 3, l3 + 11.0)))

    la, lb = lines(641.0), lines(644.0)
    atom_a, atom_b = HOLES[2] * la + continuum(641.0), HOLES[4] * lb + continuum(644.0)
    a, b = 7.0 * atom_a, 0.3 * atom_b       # files on scales of their own
    assert line_area(e, a) == pytest.approx(7.0 * HOLES[2], rel=0.02)
    assert line_area(e, b) == pytest.approx(0.3 * HOLES[4], rel=0.02)
    for share in (0.25, 0.5, 0.75):
        m = mix_per_atom(a / line_area(e, a), b / line_area(e, b), share, HOLES[2], HOLES[4])
        truth = share * atom_a + (1 - share) * atom_b
        np.testing.assert_allclose(m / m.max(), truth / truth.max(), atol=0.01)
    # a continuum-subtracted file (ends within a percent of zero) keeps its whole area
    assert line_area(e, la - 0.005) == pytest.approx(np.trapezoid(la - 0.005, e))


def test_mixtures_of_the_measured_spectra_read_close_to_the_mean_of_their_readings(real_dir):
    from offline_training.evaluate import MIXTURE_MIN_SEPARATION, MIXTURE_SHARES, measured_mixtures

    out = measured_mixtures(load_engine(), real_dir)
    pairs = {tuple(p["files"]) for p in out["pairs"]}
    assert ("Data2_MnO.csv", "Data2_SrMnO3.csv") in pairs and ("Data2_LaMnO3.csv", "Data2_SrMnO3.csv") in pairs
    assert ("Data2_MnO.csv", "Data2_YBaMn3AlO7.csv") not in pairs          # both read Mn2+: nothing to mix
    for p in out["pairs"]:
        assert abs(p["valences"][0] - p["valences"][1]) >= MIXTURE_MIN_SEPARATION
        assert [m["share"] for m in p["mixtures"]] == list(MIXTURE_SHARES)
        assert all(m["read"] is not None for m in p["mixtures"])
    # measured with mnedge-default-v12: 0.066 (largest single deviation 0.22, LaMnO3 + SrMnO3)
    assert out["mean_abs_deviation"] <= 0.10
