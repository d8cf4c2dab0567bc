"""What ``mnedge-train evaluate`` writes: refusals of unusable output paths before the work, strict JSON
robustness curves naming their model, a row for every measured file, and errors compared on the same rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

import offline_training.evaluate as E
from offline_training.cli import main as mnedge_train


def _args(tiny_artifact, real: str, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(tiny_artifact), "--n", "16", "--n-nnls", "0", "--robustness-n", "0",
            "--real-dir", real, "--backend", "onnxruntime", *extra]


def test_unusable_output_paths_are_refused_before_the_evaluation(tmp_path, tiny_artifact, capsys):
    """--out naming a folder was a traceback after the whole evaluation (exit 1, read as "gate failed"); an
    existing --out or robustness plots were replaced without a word; --plot-dir naming a file failed late."""
    (tmp_path / "none").mkdir()
    real = str(tmp_path / "none")
    assert mnedge_train(_args(tiny_artifact, real, "--out", str(tmp_path))) == 2
    assert "is a folder" in capsys.readouterr().err
    done = tmp_path / "e.json"
    done.write_text("{}")
    assert mnedge_train(_args(tiny_artifact, real, "--out", str(done))) == 2
    assert "--overwrite" in capsys.readouterr().err and done.read_text() == "{}"
    assert mnedge_train(_args(tiny_artifact, real, "--out", str(done), "--overwrite")) == 0
    assert json.loads(done.read_text())["n"] == 16
    assert mnedge_train(_args(tiny_artifact, real, "--plot-dir", str(done))) == 2
    assert "is a file" in capsys.readouterr().err
    # a path through a file: refused at once, naming the option (it failed after the work, or named nothing)
    assert mnedge_train(_args(tiny_artifact, real, "--plot-dir", str(done / "plots"))) == 2
    assert "--plot-dir" in capsys.readouterr().err
    assert mnedge_train(_args(tiny_artifact, real, "--out", str(done / "x.json"))) == 2
    assert "--out" in capsys.readouterr().err


def test_robustness_curves_are_strict_json_naming_their_model_and_cover_every_spectrum(tmp_path, tiny_artifact):
    """robustness.json held NaN (a bin whose spectra were all refused) and only the curves; resolutions above
    the last edge (2.6 eV; training reaches about 2.7) fell in no bin."""
    (tmp_path / "none").mkdir()
    plots = tmp_path / "plots"
    args = _args(tiny_artifact, str(tmp_path / "none"), "--plot-dir", str(plots))
    args[args.index("--robustness-n") + 1] = "400"
    assert mnedge_train(args) == 0
    text = (plots / "robustness.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["model"] == "tiny-test" and data["n"] == 400
    for name, rows in data["curves"].items():
        total = sum(r["n"] for r in rows)
        assert total == (400 if name != "t_lambda" else total) and total > 0, name
    assert sorted(p.name for p in plots.glob("*.png")) == sorted(f"robustness_{k}.png" for k in data["curves"])
    assert mnedge_train(args) == 2          # the plots are there now: --overwrite to replace them


def test_a_file_beside_the_measured_spectra_that_is_no_spectrum_gets_a_row_not_an_abort(tmp_path, tiny_artifact):
    """A notes.txt in --real-dir ended the evaluation after all the synthetic work (exit 2, nothing written)."""
    from offline_training.forward import ForwardConfig, ForwardModel
    from offline_training.references.bank import Bank

    real = tmp_path / "real"
    real.mkdir()
    b = ForwardModel(Bank.load(), ForwardConfig()).sample(1, seed=3)
    e = b.start[0].item() + 0.1 * np.arange(b.values.shape[1])
    keep = b.valid[0].numpy()
    np.savetxt(real / "spectrum.csv", np.column_stack([e[keep], b.values[0].numpy()[keep]]), delimiter=",")
    (real / "notes.txt").write_text("measured on 2026-12-01, sample B\n")
    out = tmp_path / "e.json"
    assert mnedge_train(_args(tiny_artifact, str(real), "--out", str(out))) == 0
    rows = {r["file"]: r for r in json.loads(out.read_text())["real_spectra"]}
    assert set(rows) == {"notes.txt", "spectrum.csv"}
    assert rows["notes.txt"]["status"] == "rejected" and rows["notes.txt"]["reason"].startswith("unreadable")
    assert rows["spectrum.csv"]["status"] in ("ok", "rejected") and "unreadable" not in rows["spectrum.csv"]["reason"]


def test_paired_errors_compare_two_methods_on_the_rows_both_answered():
    true = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    a = np.array([[0.9, 0.1, 0], [np.nan] * 3, [0, 0, 1.0]])      # refused the second row
    b = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 0.5, 0.5]])       # answered all, the second off by one
    p = E.paired_errors(a, b, true)
    assert p["both_answered"] == 2
    assert p["valence_mae"] == pytest.approx(0.05) and p["other_valence_mae"] == pytest.approx(0.25)
    assert E.fraction_metrics(b, true)["valence_mae"] == pytest.approx(0.5)   # over all three answered


def test_every_spectrum_falls_in_a_robustness_bin_beyond_the_last_edge(tiny_artifact, bank):
    from mnedge_live.engine import load_engine
    from offline_training.forward import ForwardConfig, ForwardModel

    tiny_engine = load_engine(str(tiny_artifact), backend="onnxruntime")
    fm = ForwardModel(bank, ForwardConfig(gauss_fwhm=(2.5, 2.9), offset=(-17.0, 17.0)))
    res = fm.sample(64, seed=1).params["resolution_fwhm"].numpy()
    assert (res > E.ROBUSTNESS_BINS["resolution_fwhm"][-1]).any()     # beyond the last edge
    curves = E.robustness(tiny_engine, fm, 64, seed=1)
    assert sum(r["n"] for r in curves["resolution_fwhm"]) == 64
    assert sum(r["n"] for r in curves["offset"]) == 64
    assert curves["resolution_fwhm"][-1]["high"] == pytest.approx(float(res.max()))


def test_accuracy_0_1_counts_rows_whose_three_errors_are_all_at_most_0_1():
    """The definition the README states (the paper's accuracy made exact); every other test compares two
    models through this function, so a changed definition went unnoticed."""
    true = np.array([[0.5, 0.5, 0.0]] * 6)
    pred = np.array([[0.6, 0.4, 0.0],      # every error 0.1: counts
                     [0.61, 0.39, 0.0],    # 0.11: does not
                     [0.5, 0.3, 0.2],      # one error within, two beyond: does not
                     [0.5, 0.5, 0.0],      # exact: counts
                     [np.nan] * 3,         # rejected: a failure
                     [0.45, 0.5, 0.05]])   # counts
    m = E.fraction_metrics(pred, true)
    assert m["accuracy_0.1"] == pytest.approx(3 / 6) and m["answered"] == 5 and m["n"] == 6
    assert m["valence_mae"] == pytest.approx(np.mean([0.1, 0.11, 0.2, 0.0, 0.1]))

