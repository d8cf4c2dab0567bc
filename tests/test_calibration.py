"""Calibrated uncertainties: group-conditional factors fitted, stored in the card and applied per spectrum."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mnedge_live.artifact import load_artifact, write_card
from mnedge_live.calibration import (
    GROUP_EDGES,
    TARGET_COVERAGE,
    StdCalibration,
    calibration_group,
    fit_calibration,
)
from mnedge_live.engine import load_engine


def _pure_or_mixed(rng: np.random.Generator, n: int, largest: float) -> np.ndarray:
    """``n`` fraction rows whose largest fraction is ``largest``, the rest split evenly."""
    f = np.full((n, 3), (1.0 - largest) / 2.0)
    f[np.arange(n), rng.integers(0, 3, n)] = largest
    return f


def test_groups_follow_the_largest_fraction_read():
    f = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.97, 0.02, 0.01], [0.0, 0.005, 0.995], [0.0, 0.0, 1.0]])
    assert calibration_group(f).tolist() == [0, 1, 2, 3, 3]
    assert GROUP_EDGES == (0.8, 0.95, 0.99)


def test_under_covered_groups_are_widened_to_the_target_and_none_is_narrowed():
    rng = np.random.default_rng(0)
    mixed, pure = _pure_or_mixed(rng, 6000, 0.5), _pure_or_mixed(rng, 6000, 1.0)
    z = np.concatenate([np.abs(rng.normal(0, 2.0, (6000, 4))), np.abs(rng.normal(0, 0.1, (6000, 4)))])
    cal = fit_calibration(z, np.concatenate([mixed, pure]))
    overall = np.array(cal["std_scale"])
    scales = np.array(cal["groups"]["std_scale"])
    assert np.allclose(overall, np.quantile(z, TARGET_COVERAGE, axis=0))
    # the mixed group gets its own 68.27 % quantile: its errors fall inside the widened interval as often as asked
    assert np.all(scales[0] > overall)
    assert abs(np.mean(z[:6000] <= scales[0]) - TARGET_COVERAGE) < 0.002
    # the pure group's own quantile (about 0.1) lies below the global factor: floored, not narrowed
    assert np.allclose(scales[3], overall)
    assert cal["groups"]["spectra"] == [6000, 0, 0, 6000]
    assert np.allclose(scales[1], overall) and np.allclose(scales[2], overall)  # empty groups: the global factor


def test_groups_with_too_few_spectra_take_the_global_factor():
    rng = np.random.default_rng(1)
    f = np.concatenate([_pure_or_mixed(rng, 1000, 0.5), _pure_or_mixed(rng, 50, 0.9)])
    z = np.concatenate([np.abs(rng.normal(0, 1.0, (1000, 4))), np.full((50, 4), 40.0)])
    cal = fit_calibration(z, f, min_group=200)
    assert np.allclose(cal["groups"]["std_scale"][1], cal["std_scale"])
    # a group of exactly min_group spectra is enough for its own factors
    assert not np.allclose(fit_calibration(z, f, min_group=50)["groups"]["std_scale"][1], cal["std_scale"])


def test_a_card_without_groups_applies_its_global_factor_to_every_row():
    cal = StdCalibration({"std_scale": [0.5, 0.6, 0.7, 0.8]})
    f = np.array([[1.0, 0.0, 0.0], [0.4, 0.3, 0.3]])
    assert np.allclose(cal.factors(f), [[0.5, 0.6, 0.7, 0.8]] * 2)
    with pytest.raises(ValueError, match="3 rows of factors for 4 groups"):
        StdCalibration({"std_scale": [1, 1, 1, 1], "groups": {"edges": [0.8, 0.95, 0.99], "std_scale": [[1] * 4] * 3}})


def _spectra() -> list[tuple[np.ndarray, np.ndarray]]:
    e = np.arange(620.0, 680.0, 0.1)
    out = []
    for c3, h2 in ((641.0, 0.5), (642.0, 0.35), (640.2, 0.6), (643.0, 0.45)):
        y = np.exp(-0.5 * ((e - c3) / 0.8) ** 2) + h2 * np.exp(-0.5 * ((e - c3 - 11) / 1.0) ** 2) + 0.05
        out.append((e, y))
    return out


def test_the_engine_applies_each_spectrums_group_factor(tiny_artifact, tmp_path):
    plain, grouped = (shutil.copytree(tiny_artifact, tmp_path / name) for name in ("plain", "grouped"))
    spectra = _spectra()
    largest = np.array([max(r.fractions) for r in load_engine(str(tiny_artifact)).predict(spectra)])
    edges = sorted(np.unique(np.round(largest, 6)))[:3]  # edges between the tiny model's own readings
    assert len(edges) >= 2, "the tiny model reads these spectra alike; the test needs different readings"
    edges = (np.array(edges[1:]) - 1e-7).tolist()
    for d, calibration in ((plain, {"std_scale": [1.0] * 4}),
                           (grouped, {"std_scale": [1.0] * 4,
                                      "groups": {"edges": edges, "std_scale": [[k + 1.0] * 4 for k in range(len(edges) + 1)]}})):
        card = {k: v for k, v in load_artifact(d).card.items() if k not in ("files", "schema_version")}
        write_card(d, dict(card, calibration=calibration))
    a = load_engine(str(plain)).predict(spectra)
    b = load_engine(str(grouped)).predict(spectra)
    want = 1.0 + np.searchsorted(edges, largest, side="right")
    assert len(set(want)) >= 2
    got = np.array([rb.valence_std / ra.valence_std for ra, rb in zip(a, b)])
    assert np.allclose(got, want, rtol=1e-6)
    assert all(ra.fractions == rb.fractions for ra, rb in zip(a, b))


def test_recalibrate_refits_the_card_and_keeps_weights_graph_and_readings(tiny_artifact, tmp_path):
    from offline_training.cli import main as train_main

    copy = shutil.copytree(tiny_artifact, tmp_path / "art")
    before = load_artifact(copy).card
    evaluation = {"model": before["model_id"], "weights_sha256": before["files"]["weights.pt"], "accuracy_0.1": 0.5,
                  "coverage": {"valence_1sigma": 0.7}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    assert train_main(["recalibrate", str(copy), "--spectra", "600", "--seed", "5",
                       "--evaluation", str(tmp_path / "eval.json")]) == 0
    after = load_artifact(copy).card                   # every checksum verified
    assert after["evaluation"] == evaluation
    cal = after["calibration"]
    assert cal["spectra"] == 600 and cal["seed"] == 5 and sum(cal["groups"]["spectra"]) == 600
    assert np.all(np.array(cal["groups"]["std_scale"]) >= np.array(cal["std_scale"])[None, :])
    for name in ("weights.pt", "model.onnx"):
        assert after["files"][name] == before["files"][name]
    assert json.dumps(after["training"], sort_keys=True) == json.dumps(before["training"], sort_keys=True)
    spectra = _spectra()
    old, new = load_engine(str(tiny_artifact)).predict(spectra), load_engine(str(copy)).predict(spectra)
    assert all(o.fractions == n.fractions for o, n in zip(old, new))
    assert train_main(["recalibrate", str(tmp_path / "missing")]) == 2
