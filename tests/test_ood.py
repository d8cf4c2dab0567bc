"""The out-of-distribution score: fitted from the training distribution, refusing what is not a Mn L2,3 edge."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from mnedge_live.artifact import ArtifactError, load_artifact
from mnedge_live.engine import load_engine
from mnedge_live.engine.ood import OodScore

E = np.arange(620.0, 680.0, 0.1)


def _gauss(center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((E - center) / width) ** 2)


def _psnr(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The PSNR (dB) the engine measures for one spectrum, as a 1-row array."""
    from mnedge_live.engine.core import model_input

    return model_input(e, y).psnr_db.numpy()


@pytest.fixture(scope="module")
def default_engine():
    return load_engine(None, backend="onnxruntime")


@pytest.fixture(scope="module")
def tiny_with_ood(tiny_artifact, tmp_path_factory):
    """The tiny artifact with OOD statistics added by ``mnedge-train fit-ood``."""
    from offline_training.cli import main as train_main

    copy = shutil.copytree(tiny_artifact, tmp_path_factory.mktemp("ood") / "art")
    assert train_main(["fit-ood", str(copy), "--spectra", "600"]) == 0
    return copy


def test_scores_are_mahalanobis_distances_and_the_threshold_the_held_out_quantile(tiny_artifact, tmp_path):
    from offline_training.export import artifact_network, training_forward_model
    from offline_training.ood import fit_ood, trunk_features

    art = load_artifact(tiny_artifact)
    model = artifact_network(art)
    fm = training_forward_model(art.card["training"]["config"])
    info = fit_ood(model, fm, tmp_path, n_fit=512, n_threshold=1000, seed=5, quantile=0.99)
    # the same two seeded sets again
    gen = torch.Generator().manual_seed(5)
    fit, held = trunk_features(model, fm, 512, gen), trunk_features(model, fm, 1000, gen)
    z = np.load(tmp_path / info["file"])
    score = OodScore(mean=z["mean"], whitening=z["whitening"], threshold=info["threshold"], quantile=0.99)
    cov = np.cov(fit, rowvar=False)
    cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    d = held[:5] - fit.mean(0)
    direct = np.sqrt(np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d))
    assert np.allclose(score(held[:5]), direct, rtol=1e-3)
    above = int((score(held) > info["threshold"]).sum())
    assert 5 <= above <= 10   # 1 % of 1,000 (float32 scoring moves a score at the boundary at most)


def test_band_thresholds_are_the_quantile_within_each_psnr_band():
    from offline_training.ood import band_thresholds

    rng = np.random.default_rng(0)
    psnr = np.concatenate([rng.uniform(5, 10, 400), rng.uniform(10, 40, 400), np.full(3, np.nan)])
    scores = np.concatenate([rng.normal(50, 5, 400), rng.normal(20, 2, 400), [1e3, 1e3, 1e3]])
    bands, counts = band_thresholds(scores, psnr, (10.0, 40.0), 0.99)
    assert counts == [400, 400, 0]                            # NaN PSNR in no band
    assert bands[0] == pytest.approx(np.quantile(scores[:400], 0.99))
    assert bands[1] == pytest.approx(np.quantile(scores[400:800], 0.99))
    assert bands[2] == pytest.approx(np.quantile(scores, 0.99))   # empty band: the overall quantile
    assert bands[1] < bands[0]


def test_fit_ood_sets_one_threshold_per_psnr_band(tiny_artifact, tmp_path):
    from offline_training.export import artifact_network, training_forward_model
    from offline_training.ood import fit_ood, trunk_features, trunk_features_and_psnr

    art = load_artifact(tiny_artifact)
    model = artifact_network(art)
    fm = training_forward_model(art.card["training"]["config"])
    info = fit_ood(model, fm, tmp_path, n_fit=512, n_threshold=1500, seed=6, quantile=0.95,
                   psnr_edges_db=(20.0, 35.0))
    gen = torch.Generator().manual_seed(6)
    trunk_features(model, fm, 512, gen)
    held, psnr = trunk_features_and_psnr(model, fm, 1500, gen)
    assert np.isfinite(psnr).all() and psnr.min() < 20 < 35 < psnr.max()
    z = np.load(tmp_path / info["file"])
    score = OodScore(mean=z["mean"], whitening=z["whitening"], threshold=info["threshold"], quantile=0.95,
                     psnr_edges_db=tuple(info["psnr_edges_db"]), band_thresholds=tuple(info["band_thresholds"]))
    s = score(held)
    band = np.digitize(psnr, [20.0, 35.0])
    assert info["band_counts"] == [int((band == k).sum()) for k in range(3)]
    for k in range(3):
        assert info["band_thresholds"][k] == pytest.approx(np.quantile(s[band == k], 0.95), rel=1e-3)
    # each band lets its own 95 % through
    assert abs(float((s > score.thresholds_for(psnr)).mean()) - 0.05) < 0.01


def test_each_spectrum_is_judged_by_the_threshold_of_its_psnr_band():
    score = OodScore(mean=np.zeros(2, np.float32), whitening=np.eye(2, dtype=np.float32), threshold=30.0,
                     quantile=0.999, psnr_edges_db=(10.0, 20.0), band_thresholds=(55.0, 33.0, 25.0))
    got = score.thresholds_for(np.array([5.0, 10.0, 15.0, 20.0, 48.0, np.nan]))
    assert got.tolist() == [55.0, 33.0, 33.0, 25.0, 25.0, 30.0]
    assert score.band_of(15.0) == "PSNR 10-20 dB" and score.band_of(3.0) == "PSNR below 10 dB"
    assert score.band_of(np.nan) == ""
    plain = OodScore(mean=np.zeros(2, np.float32), whitening=np.eye(2, dtype=np.float32), threshold=30.0,
                     quantile=0.999)
    assert plain.thresholds_for(np.array([5.0, np.nan])).tolist() == [30.0, 30.0] and plain.band_of(5.0) == ""
    with pytest.raises(ValueError, match="band thresholds"):
        OodScore(mean=np.zeros(2, np.float32), whitening=np.eye(2, dtype=np.float32), threshold=30.0,
                 quantile=0.999, psnr_edges_db=(10.0,), band_thresholds=(1.0,))


def test_fit_refuses_too_few_spectra(tiny_artifact, tmp_path):
    from offline_training.export import artifact_network, training_forward_model
    from offline_training.ood import fit_ood

    art = load_artifact(tiny_artifact)
    with pytest.raises(ValueError, match="n_fit"):
        fit_ood(artifact_network(art), training_forward_model(art.card["training"]["config"]), tmp_path, n_fit=10)


def test_fit_ood_adds_signed_statistics_and_the_onnx_features_match_torch(tiny_with_ood):
    card = load_artifact(tiny_with_ood).card          # verifies every checksum, ood.npz included
    assert "ood.npz" in card["files"] and card["ood"]["quantile"] == 0.999
    spectra = [(E, _gauss(641, 0.7) + 0.5 * _gauss(652, 0.9) + 0.05), (E, _gauss(640, 1.5) + 0.1 * (E % 5))]
    a = load_engine(str(tiny_with_ood), backend="onnxruntime").predict(spectra)
    b = load_engine(str(tiny_with_ood), backend="torch").predict(spectra)
    for ra, rb in zip(a, b):
        assert np.isfinite(ra.ood_score) and ra.ood_score == pytest.approx(rb.ood_score, rel=1e-3)


def test_a_changed_byte_in_the_statistics_is_refused(tiny_with_ood, tmp_path):
    copy = shutil.copytree(tiny_with_ood, tmp_path / "bad")
    data = bytearray((copy / "ood.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "ood.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_engine(str(copy))


def test_statistics_of_the_wrong_shape_are_refused_at_load(tiny_with_ood, tmp_path):
    import json

    from mnedge_live.artifact import CARD_NAME, write_card

    copy = shutil.copytree(tiny_with_ood, tmp_path / "odd")
    np.savez(copy / "ood.npz", mean=np.zeros(5, np.float32), whitening=np.eye(4, dtype=np.float32))
    card = json.loads((copy / CARD_NAME).read_text())
    card.pop("files")
    write_card(copy, card)                    # signed: only the content is wrong
    with pytest.raises(ArtifactError, match="does not match"):
        load_engine(str(copy))


def test_band_thresholds_that_do_not_match_their_edges_are_refused_at_load(tiny_with_ood, tmp_path):
    import json

    from mnedge_live.artifact import CARD_NAME, write_card

    copy = shutil.copytree(tiny_with_ood, tmp_path / "bands")
    card = json.loads((copy / CARD_NAME).read_text())
    card.pop("files")
    card["ood"]["band_thresholds"] = card["ood"]["band_thresholds"][:-1]
    write_card(copy, card)
    with pytest.raises(ArtifactError, match="thresholds"):
        load_engine(str(copy))


def test_a_model_without_statistics_reads_out_with_no_score(tiny_artifact):
    engine = load_engine(str(tiny_artifact), backend="onnxruntime")
    assert engine.ood is None
    r = engine.predict_one(E, _gauss(641, 0.7) + 0.5 * _gauss(652, 0.9) + 0.05)
    assert r.ok and np.isnan(r.ood_score) and r.to_dict()["ood_score"] is None



def test_a_model_without_statistics_still_refuses_a_sawtooth(tiny_artifact):
    """The rule on lines where Mn has none needs no score: a sawtooth is refused by a model without one."""
    engine = load_engine(str(tiny_artifact), backend="onnxruntime")
    r = engine.predict_one(E, E % 5.0)
    assert engine.ood is None and r.status == "rejected" and "where Mn has none" in r.reason, r.reason
    # the reason gives the second line's height and where the strongest lies (a sawtooth: lines every 5 eV)
    found = re.search(r"the second (\d\.\d{3}) of the L3 line's height.*the strongest ([+-]\d+\.\d) eV from the L3 "
                      r"maximum at (\d+\.\d) eV", r.reason)
    assert found and float(found[1]) > 0.5 and float(found[2]) % 5.0 == pytest.approx(0.0, abs=0.3), r.reason

#: The rules that may refuse each of :func:`offline_training.evaluate.not_mn_probes` (the first that applies
#: words the reason): two lines at Mn's spacing pass every rule but the score; a sawtooth has lines where Mn has
#: none; without an L2 line the L2 rule comes first, unless the noise makes a bump there that it lets through.
PROBE_RULES = {"two equal lines 11 eV apart": ("out-of-distribution score",),
               "a sawtooth": ("where Mn has none",),
               "one line": ("no L2 line", "out-of-distribution score"),
               "an edge step": ("no L3 line", "no L2 line", "out-of-distribution score")}


@pytest.mark.parametrize("name", list(PROBE_RULES))
def test_the_default_model_refuses_lines_that_are_not_a_mn_edge(default_engine, name):
    """Every noise draw of every probe is refused, each by the rule that should."""
    from offline_training.evaluate import PROBE_ENERGY, not_mn_probes

    y0 = not_mn_probes()[name]
    for seed in range(5):
        y = y0 + np.random.default_rng(seed).normal(0, 0.01, y0.size)
        r = default_engine.predict_one(PROBE_ENERGY, y)
        assert r.status == "rejected" and any(rule in r.reason for rule in PROBE_RULES[name]), (name, seed, r.reason)
        if "out-of-distribution score" in r.reason:
            assert r.ood_score > default_engine.ood.thresholds_for(_psnr(PROBE_ENERGY, y))[0]
            assert "of synthetic training spectra of PSNR" in r.reason


def test_evaluate_counts_the_refused_probes_and_the_gate_compares_them(default_engine):
    from offline_training.evaluate import not_mn_refusals
    from offline_training.gate import probe_gate

    out = not_mn_refusals(default_engine, draws=3)
    assert set(out["probes"]) == set(PROBE_RULES) and out["draws"] == 12
    assert out["refused"] == 12 and all(p["read_as"] == [] for p in out["probes"].values())
    worse = {**out, "refused": 11, "probes": {**out["probes"], "a sawtooth": {"refused": 2, "draws": 3, "read_as": [3.1]}}}
    assert probe_gate(out, out)["passed"]
    gate = probe_gate(worse, out)
    assert not gate["passed"] and gate["refused_less_often"] == ["a sawtooth"]
    assert probe_gate(out, worse)["passed"]          # refusing more often than the reference is no failure


def test_the_default_model_keeps_spectra_of_its_training_ranges(default_engine):
    from offline_training.evaluate import batch_spectra
    from offline_training.export import card_forward_model

    fm = card_forward_model(default_engine.artifact.card)
    res = default_engine.predict(batch_spectra(fm.sample(2000, seed=77)))
    ood = sum("out-of-distribution" in r.reason for r in res)
    assert ood <= 6    # the threshold lets 99.9 % through: about 2 of 2,000 expected
    assert all(np.isfinite(r.ood_score) for r in res if r.ok)


def test_measured_spectra_score_below_the_threshold(default_engine, real_dir):
    from offline_training.realism import read_two_column

    files = sorted(real_dir.glob("*.csv"))
    assert len(files) == 4, files
    for path in files:
        e, y = read_two_column(path)
        r = default_engine.predict_one(e, y)
        limit = default_engine.ood.thresholds_for(_psnr(e, y))[0]
        assert r.ok and r.ood_score < limit, (path.name, r, limit)
