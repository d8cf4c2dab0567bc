"""The text report of ``mnedge-train evaluate``: every section's line, sections without results left out."""

from __future__ import annotations

from offline_training.evaluation_report import evaluation_lines
from offline_training.gate import gate_lines


def _res() -> dict:
    """An :func:`~offline_training.evaluate.evaluate` result without measured spectra."""
    return {"model": "tiny-test", "accuracy_0.1": 0.51234, "fraction_mae": 0.0876, "valence_mae": 0.1234,
            "rejected": 3,
            "coverage": {"valence_1sigma": 0.6912, "valence_2sigma": 0.9501,
                         "valence_1sigma_by_largest_fraction": {"Mn2+": 0.7, "Mn3+": None},
                         "valence_1sigma_by_kind": {"pure": 0.91, "binary": 0.65}},
            "baselines": {"nnls_matched": {"accuracy_0.1": 0.25, "valence_mae": 0.5}},
            "not_mn_probes": {"refused": 19, "draws": 20,
                              "probes": {"a sawtooth": {"refused": 4, "draws": 5, "read_as": [3.1]},
                                         "one line": {"refused": 5, "draws": 5, "read_as": []}}}}


def test_the_synthetic_results_in_order():
    assert evaluation_lines(_res()) == [
        "model tiny-test  accuracy_0.1 0.5123  fraction_mae 0.0876  valence_mae 0.1234  rejected 3",
        "  valence 1-sigma coverage 0.691 (ideal 0.683; by largest fraction read: Mn2+ 0.700, Mn3+ -; "
        "by truth: pure 0.910, binary 0.650), 2-sigma 0.950",
        f"  {'nnls_matched':32s} accuracy_0.1 0.2500  valence_mae 0.5000",
        "  inputs that are no Mn edge refused: 19 of 20 (a sawtooth read as [3.1])"]


def test_probes_all_refused_name_none():
    res = _res()
    res["not_mn_probes"] = {"refused": 5, "draws": 5, "probes": {"one line": {"refused": 5, "draws": 5,
                                                                               "read_as": []}}}
    assert evaluation_lines(res)[-1] == "  inputs that are no Mn edge refused: 5 of 5"


def test_measured_spectra_their_robustness_and_mixtures():
    res = _res()
    res["real_spectra"] = [{"file": "MnO.csv", "status": "ok", "valence": 2.01, "reason": ""}]
    res["real_spectra_robustness"] = [{"file": "MnO.csv", "axis_scale": {"0.99": 2.02},
                                       "extra_blur_fwhm_eV": {"0.5": 2.0},
                                       "added_noise_psnr_dB": {"20": {"mean": 2.1, "std": 0.05, "refused": 1}}}]
    res["real_spectra_mixtures"] = {"mean_abs_deviation": 0.04, "pairs": [
        {"files": ["MnO.csv", "Mn2O3.csv"], "mixtures": [{"share": 0.25, "expected": 2.754, "read": 2.8}]}]}
    assert evaluation_lines(res)[4:] == [
        f"  {'MnO.csv':28s} {'ok':8s} valence 2.01  ",
        f"  {'MnO.csv':28s} axis scale 0.99: 2.02, +0.5 eV blur: 2.0, 20 dB: 2.1 +- 0.05 (1 refused)",
        "  measured mixtures, mean |read - expected| 0.04",
        "    MnO.csv + Mn2O3.csv: 0.25: 2.75 -> 2.8"]
    res["real_spectra_mixtures"]["pairs"] = []   # no pairs: no mixture lines
    assert len(evaluation_lines(res)) == 6


def test_the_gates_verdict_comes_last():
    gate = {"reference_model": "site-v1", "tolerance": 0.0, "passed": True,
            "sets": {"candidate_ranges": {"accuracy_0.1": 0.5, "reference_accuracy_0.1": 0.5, "valence_mae": 0.1,
                                          "reference_valence_mae": 0.1, "passed": True}},
            "not_mn_probes": {"refused": 20, "draws": 20, "reference_refused": 20, "passed": True,
                              "refused_less_often": []}}
    lines = evaluation_lines({**_res(), "gate": gate})
    assert lines[4:] == gate_lines(gate) and lines[4] == "gate against site-v1 (tolerance 0): passed"
    assert len(evaluation_lines(_res())) == 4
