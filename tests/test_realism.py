"""Realism fits: the edge step stays within the forward model's range, as training sees it."""

from __future__ import annotations

import numpy as np
import pytest

from offline_training.realism import _fit_with_bounded_step


def _case(height: float):
    e = np.linspace(630.0, 670.0, 400)
    line = np.exp(-0.5 * ((e - 641.0) / 0.8) ** 2) + 0.4 * np.exp(-0.5 * ((e - 652.0) / 1.0) ** 2)
    step = 0.5 + np.arctan(e - 640.0) / np.pi
    e_norm = (e - e.mean()) / np.ptp(e)
    y = 2.0 * line + 0.3 - 0.1 * e_norm + height * 2.0 * line.max() * step
    return line[None, :], step[None, :], e_norm, y


@pytest.mark.parametrize("height, allowed, fits", [
    (-0.2, (-0.25, 0.25), True),     # inside the range: reproduced exactly
    (-0.2, (0.0, 0.25), False),      # a negative step the forward model never draws: not available to the fit
    (0.1, (0.0, 0.25), True),
    (0.4, (0.0, 0.25), False),       # above the range
])
def test_step_height_is_held_within_the_forward_models_range(height, allowed, fits):
    cand, step, e_norm, y = _case(height)
    rss = _fit_with_bounded_step(cand, step, e_norm, y, allowed)[0]
    sst = float(((y - y.mean()) ** 2).sum())
    if fits:
        assert rss / sst < 1e-10
    else:
        assert rss / sst > 1e-4


def test_a_spectrum_that_needs_a_negative_scale_never_fits():
    """An upside-down line (absorption read as a dip) is no fit at any step height."""
    cand, step, e_norm, _ = _case(0.0)
    y = 1.0 - cand[0]
    assert np.isinf(_fit_with_bounded_step(cand, step, e_norm, y, (0.0, 0.25))[0])


def test_files_the_engine_would_refuse_get_a_reason_not_a_best_valence(tmp_path, capsys, monkeypatch):
    """realism named a best valence (and exited 0) for a single Gaussian, an Fe edge 68 eV off, a keV axis,
    flat noise and NaN values; one unreadable file aborted the whole run."""
    import json

    from offline_training import realism as realism_module
    from offline_training.cli import main as mnedge_train

    e = np.arange(630.0, 670.0, 0.1)
    rng = np.random.default_rng(0)
    files = {
        "gaussian.csv": np.exp(-0.5 * ((e - 642.0) / 0.8) ** 2) + rng.normal(0, 0.005, e.size),
        "flat.csv": 1.0 + rng.normal(0, 0.01, e.size),
        "nan.csv": np.where(np.arange(e.size) == 50, np.nan, np.exp(-0.5 * ((e - 642.0) / 0.8) ** 2)),
    }
    for name, y in files.items():
        np.savetxt(tmp_path / name, np.column_stack([e, y]), delimiter=",")
    fe = e + 70.0   # an Fe-like doublet at 708 / 721 eV
    np.savetxt(tmp_path / "iron.csv", np.column_stack([fe, np.exp(-0.5 * ((fe - 708.0) / 1.0) ** 2)
                                                       + 0.5 * np.exp(-0.5 * ((fe - 721.0) / 1.2) ** 2)]), delimiter=",")
    (tmp_path / "one_column.csv").write_text("1\n2\n3\n")
    monkeypatch.setattr(realism_module, "best_fit", lambda *a, **k: pytest.fail("a refused file was fitted"))
    assert mnedge_train(["realism", str(tmp_path), "--json"]) == 1
    rows = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {*files, "iron.csv", "one_column.csv"}
    for r in rows.values():
        assert r["ok"] is False and r["reason"] and r["best"] is None and set(r["misfit"].values()) == {None}
    assert "no L2 line" in rows["gaussian.csv"]["reason"] and "NaN" in rows["nan.csv"]["reason"]
    assert "misses the Mn L2,3 edge" in rows["iron.csv"]["reason"]
    assert "cannot read the file" in rows["one_column.csv"]["reason"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mnedge_train(["realism", str(empty)]) == 2


def test_the_measured_spectra_pass_the_engines_screen(real_dir):
    from mnedge_live.engine.core import edge_rejection
    from offline_training.realism import read_two_column

    for path in sorted(real_dir.glob("*.csv")):
        assert edge_rejection(*read_two_column(path)) == "", path.name
