"""The adoption gate of ``evaluate --gate``: probe verdicts, the text of the verdict, the training ranges."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from offline_training.forward import ForwardConfig
from offline_training.gate import compare_with_reference, gate_lines, probe_gate, training_ranges


def _refusals(**refused: int) -> dict:
    """A :func:`~offline_training.evaluate.not_mn_refusals` result: ``refused`` of 5 draws per probe."""
    probes = {name.replace("_", " "): {"refused": n, "draws": 5, "read_as": [3.0] * (5 - n)}
              for name, n in refused.items()}
    return {"probes": probes, "refused": sum(refused.values()), "draws": 5 * len(refused)}


def test_a_candidate_refusing_a_probe_less_often_fails_and_the_probe_is_named():
    reference = _refusals(a_sawtooth=5, one_line=5, an_edge_step=4)
    candidate = _refusals(a_sawtooth=3, one_line=5, an_edge_step=5)   # one more edge step, two fewer sawtooths
    gate = probe_gate(candidate, reference)
    assert gate == {"refused": 13, "reference_refused": 14, "draws": 15, "refused_less_often": ["a sawtooth"],
                    "passed": False}


def test_a_candidate_refusing_every_probe_as_or_more_often_passes():
    reference = _refusals(a_sawtooth=4, one_line=5)
    assert probe_gate(reference, reference)["passed"]
    gate = probe_gate(_refusals(a_sawtooth=5, one_line=5), reference)
    assert gate["passed"] and gate["refused_less_often"] == [] and gate["reference_refused"] == 9


def test_a_probe_the_reference_was_not_shown_counts_as_never_refused_by_it():
    gate = probe_gate(_refusals(a_sawtooth=5, a_new_probe=0), _refusals(a_sawtooth=5))
    assert gate["passed"] and gate["draws"] == 10


def _verdict(passed: bool, probes_passed: bool = True, worse: tuple[str, ...] = ()) -> dict:
    return {"reference_model": "site-v1", "tolerance": 0.01, "valence_tolerance": 0.005, "passed": passed,
            "sets": {"candidate_ranges": {"accuracy_0.1": 0.5, "reference_accuracy_0.1": 0.48127,
                                          "valence_mae": 0.125, "reference_valence_mae": 0.13, "passed": passed}},
            "not_mn_probes": {"refused": 18, "draws": 20, "reference_refused": 20, "passed": probes_passed,
                              "refused_less_often": list(worse)}}


def test_gate_lines_state_the_verdict_each_set_and_the_probes():
    assert gate_lines(_verdict(True)) == [
        "gate against site-v1 (tolerance 0.01 in accuracy_0.1, 0.005 in valence_mae): passed",
        "  candidate ranges: accuracy_0.1 0.5000 against 0.4813, valence_mae 0.1250 against 0.1300: passed",
        "  inputs that are no Mn edge refused: 18 of 20 against 20: passed"]
    lines = gate_lines(_verdict(False, probes_passed=False, worse=("a sawtooth", "one line")))
    assert lines[0] == "gate against site-v1 (tolerance 0.01 in accuracy_0.1, 0.005 in valence_mae): FAILED"
    old = {k: v for k, v in _verdict(True).items() if k != "valence_tolerance"}   # written before the criterion
    assert gate_lines(old)[0] == "gate against site-v1 (tolerance 0.01): passed"
    assert lines[1].endswith(": FAILED")
    assert lines[2] == ("  inputs that are no Mn edge refused: 18 of 20 against 20: FAILED "
                        "(refused less often: a sawtooth, one line)")


def test_training_ranges_are_the_cards_forward_config_or_the_defaults():
    def engine(card: dict) -> SimpleNamespace:
        return SimpleNamespace(artifact=SimpleNamespace(card=card))

    broad = training_ranges(engine({"training": {"config": {"forward": {"gauss_fwhm": [0.05, 2.5]}}}}))
    assert broad == ForwardConfig(gauss_fwhm=(0.05, 2.5), physics=1) and broad != ForwardConfig(physics=1)
    # a card without the forward table, or without its physics key, was written before physics 2
    assert training_ranges(engine({"training": {"config": {}}})) == ForwardConfig(physics=1)
    assert training_ranges(engine({})) == ForwardConfig(physics=1)
    two = training_ranges(engine({"training": {"config": {"forward": {"physics": 2}}}}))
    assert two == ForwardConfig() and two.physics == 2


@pytest.fixture(scope="module")
def tiny_engine(tiny_artifact):
    from mnedge_live.engine import load_engine

    return load_engine(str(tiny_artifact), backend="onnxruntime")


class PulledToThirds:
    """An engine's readings pulled a fifth of the way to equal thirds: the same spectra read worse."""

    def __init__(self, engine):
        self.engine = engine

    def predict(self, spectra):
        import dataclasses

        return [dataclasses.replace(r, fractions=tuple(0.8 * np.asarray(r.fractions) + 0.2 / 3)) if r.ok else r
                for r in self.engine.predict(spectra)]


class RefusingWorst:
    """An engine that refuses the 16 validation spectra it reads worst (as a model refusing its hard cases)."""

    def __init__(self, engine, bank, fcfg, n, seed):
        import dataclasses

        from offline_training.evaluate import batch_spectra, validation_model

        self.engine, self.replace = engine, dataclasses.replace
        b = validation_model(fcfg, bank).sample(n, seed=seed)
        res = engine.predict(batch_spectra(b))
        err = [abs(r.valence - v) if r.ok else -1.0 for r, v in zip(res, b.fractions.numpy() @ np.array([2.0, 3.0, 4.0]))]
        self.worst = set(np.argsort(err)[-16:].tolist())

    def predict(self, spectra):
        res = self.engine.predict(spectra)
        return [self.replace(r, status="rejected", reason="refused for the test", fractions=(np.nan,) * 3)
                if i in self.worst else r for i, r in enumerate(res)]


def test_the_same_model_passes_unless_it_must_beat_itself_or_refuses_a_probe_less_often(tiny_engine, bank):
    from offline_training.evaluate import evaluate

    fcfg = training_ranges(tiny_engine)
    res = evaluate(tiny_engine, fcfg, bank, n=64, seed=3, n_nnls=0, robustness_n=0, real_dir=None)
    gate = compare_with_reference(tiny_engine, res, tiny_engine, fcfg, bank, n=64, seed=3, tolerance=0.0)
    assert gate["passed"] and gate["tolerance"] == 0.0 and gate["reference_model"] == "tiny-test"
    assert set(gate["sets"]) == {"candidate_ranges"}   # the same ranges: one set
    first = gate["sets"]["candidate_ranges"]
    assert first["accuracy_0.1"] == pytest.approx(first["reference_accuracy_0.1"])
    assert gate["reference_accuracy_0.1"] == first["reference_accuracy_0.1"]

    gate = compare_with_reference(tiny_engine, res, tiny_engine, fcfg, bank, n=64, seed=3, tolerance=-1.5)
    assert not gate["passed"] and not gate["sets"]["candidate_ranges"]["passed"] and gate["tolerance"] == -1.5

    # larger valence errors (accuracy not asked for here): fails unless the valence tolerance allows it
    pulled = PulledToThirds(tiny_engine)
    gate = compare_with_reference(pulled, res, tiny_engine, fcfg, bank, n=64, seed=3, tolerance=1.0)
    first = gate["sets"]["candidate_ranges"]
    assert not gate["passed"] and not first["passed"] and gate["valence_tolerance"] == 0.0
    excess = first["valence_mae"] - first["reference_valence_mae"]
    assert excess > 0
    gate = compare_with_reference(pulled, res, tiny_engine, fcfg, bank, n=64, seed=3, tolerance=1.0,
                                  valence_tolerance=excess + 1e-6)
    assert gate["passed"] and gate["valence_tolerance"] == excess + 1e-6

    # the same readings, the hardest quarter refused: the valence MAE over what it answers is smaller, but the
    # gate compares the spectra both answer (equal here) and counts the refusals in accuracy_0.1
    refusing = RefusingWorst(tiny_engine, bank, fcfg, n=64, seed=3)
    gate = compare_with_reference(refusing, res, tiny_engine, fcfg, bank, n=64, seed=3, tolerance=0.0)
    first = gate["sets"]["candidate_ranges"]
    assert first["answered"] < first["reference_answered"] == first["both_answered"] + 16
    assert first["valence_mae"] == pytest.approx(first["reference_valence_mae"])
    assert first["accuracy_0.1"] <= first["reference_accuracy_0.1"]

    probes = res["not_mn_probes"]
    name = next(iter(probes["probes"]))
    # the same readings, but one probe refused less often than the reference can refuse it (-1 times)
    worse = {**probes, "probes": {**probes["probes"], name: {**probes["probes"][name], "refused": -1}}}
    gate = compare_with_reference(tiny_engine, {**res, "not_mn_probes": worse}, tiny_engine, fcfg, bank, n=64,
                                  seed=3, tolerance=0.0)
    assert gate["sets"]["candidate_ranges"]["passed"] and not gate["passed"]
    assert gate["not_mn_probes"]["refused_less_often"] == [name]
