"""The measured-spectra checks of ``mnedge-train evaluate``: axis scale errors and extra instrument blur."""

from __future__ import annotations

import numpy as np
import pytest

from mnedge_live.engine import load_engine
from offline_training.evaluate import AXIS_SCALE_ERRORS, EXTRA_BLUR_FWHM_EV, blurred, real_spectra_robustness


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


def test_measured_files_are_read_with_scaled_axes_and_blur(tmp_path, tiny_artifact):
    e = np.round(np.arange(625.0, 670.0, 0.1), 4)
    y = np.exp(-0.5 * ((e - 641.0) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - 652.0) / 0.9) ** 2) + 0.05
    (tmp_path / "a.csv").write_text("".join(f"{a},{b:.6f}\n" for a, b in zip(e, y)))
    (tmp_path / "notes.md").write_text("not a spectrum")
    out = real_spectra_robustness(load_engine(str(tiny_artifact)), tmp_path)
    assert [r["file"] for r in out] == ["a.csv"]
    r = out[0]
    assert set(r["axis_scale"]) == {f"{d:+.2f}" for d in AXIS_SCALE_ERRORS}
    assert set(r["extra_blur_fwhm_eV"]) == {f"{w:g}" for w in EXTRA_BLUR_FWHM_EV}
    readings = [r["valence"], *r["axis_scale"].values(), *r["extra_blur_fwhm_eV"].values()]
    assert all(v is None or 2.0 <= v <= 4.0 for v in readings) and r["valence"] is not None
