"""The baselines beside our model: the MnEdgeNet architecture's training record and least squares with
references of another session or another instrument."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offline_training.baselines import nnls_fractions, reference_spectra, searched_nnls_fractions
from offline_training.forward import ForwardConfig, ForwardModel


def test_references_of_another_instrument_have_an_axis_of_their_own(bank):
    """References "of another session" sit within the session drift of the sample's offset (the same
    instrument); those of another instrument are drawn over the whole offset range, whatever the sample's."""
    fm = ForwardModel(bank, ForwardConfig(offset=(-15.0, 15.0)))
    b = fm.sample(200, seed=4)
    rows = np.arange(200)
    peak = b.start[0].item() + 0.1 * np.arange(b.values.shape[1])

    def l3(refs):   # each Mn3+ reference's maximum
        return peak[np.argmax(refs[:, 1], axis=1)]

    sample_l3 = peak[np.argmax(reference_spectra(fm, b.params, rows, matched=True, seed=1)[:, 1], axis=1)]
    session = l3(reference_spectra(fm, b.params, rows, matched=False, seed=1))
    other = l3(reference_spectra(fm, b.params, rows, matched=False, seed=1, session_drift_eV=None))
    assert np.corrcoef(sample_l3, session)[0, 1] > 0.9
    assert abs(np.corrcoef(sample_l3, other)[0, 1]) < 0.3
    assert other.max() - other.min() > 20.0


def test_the_searched_shift_finds_references_twelve_electronvolts_off():
    """Least squares over every offset the two axes can differ by: a 12 eV shift, beyond the +-3 eV search."""
    e = np.round(np.arange(620.0, 680.0, 0.1), 4)
    refs = np.array([np.exp(-0.5 * ((e - c) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - c - 11) / 0.9) ** 2)
                     for c in (640.0, 641.5, 643.0)])
    truth = np.array([0.2, 0.5, 0.3])
    shifted = np.array([np.interp(e, e + 12.0, r) for r in refs])   # the references' axis reads 12 eV low
    sample = truth @ refs
    found = searched_nnls_fractions(sample, shifted, e, span=30.0)
    assert np.abs(found - truth).max() < 0.02
    near = nnls_fractions(sample, shifted, shifts=np.arange(-3.0, 3.01, 0.2), energy=e)
    assert np.abs(near - truth).max() > 0.05      # 0.09: the +-3 eV search fits other lines to each other


def test_the_baseline_records_what_it_was_trained_on_and_evaluate_compares_it(tmp_path, tiny_artifact, capsys):
    """A baseline trained on other ranges than the candidate's was compared without a word."""
    from offline_training.cli import main as mnedge_train

    out = tmp_path / "mnedgenet.pt"
    assert mnedge_train(["baseline", "--budget", "300", "--out", str(out), "--no-progress"]) == 0
    ck = torch.load(out, weights_only=True)
    assert ck["spectra"] == 256 and ck["budget"] == 300           # whole batches: one of 256
    assert json.loads(ck["forward"]) == json.loads(json.dumps(ForwardConfig().to_dict()))
    assert len(ck["bank_sha256"]) == 64
    assert mnedge_train(["baseline", "--budget", "300", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "none").mkdir()
    res_file = tmp_path / "e.json"
    assert mnedge_train(["evaluate", "--model", str(tiny_artifact), "--n", "32", "--n-nnls", "0", "--robustness-n",
                         "0", "--real-dir", str(tmp_path / "none"), "--backend", "onnxruntime", "--mnedgenet",
                         str(out), "--out", str(res_file)]) == 0
    base = json.loads(res_file.read_text())["baselines"]["mnedgenet_published"]
    assert base["training_budget_spectra"] == 256 and base["same_bank"] is True
    assert base["same_ranges"] is False                            # the tiny model's ranges are its own
    assert "trained on other forward-model ranges" in capsys.readouterr().err
    assert base["where_ours_answered"]["rows"] <= 32


@pytest.mark.parametrize("drift", [1.5, None])
def test_reference_offsets_stay_within_the_forward_models_range_or_the_drift(bank, drift):
    fm = ForwardModel(bank, ForwardConfig(offset=(-6.0, 6.0)))
    b = fm.sample(64, seed=9)
    refs = reference_spectra(fm, b.params, np.arange(64), matched=False, seed=2, session_drift_eV=drift)
    assert refs.shape == (64, 3, b.values.shape[1]) and np.isfinite(refs).all()
