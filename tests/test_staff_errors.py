"""Facility-staff commands refuse bad input with one line naming the cause and exit 2 (1 is the gate's)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from offline_training.cli import main as mnedge_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "offline_training" / "configs" / "tiny.toml"


def one_line_error(capsys, *needles: str) -> str:
    """The stderr of the last command: one line, no traceback, holding every needle."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_evaluate_with_a_wrong_model_path_exits_2_not_the_gates_1(tmp_path, capsys):
    missing = tmp_path / "site-v1x"
    assert mnedge_train(["evaluate", "--model", str(missing), "--gate", "default", "--n", "16"]) == 2
    one_line_error(capsys, "--model", str(missing), "not a model artifact")


def test_a_wrong_gate_model_is_refused_before_the_candidate_is_evaluated(tmp_path, capsys, tiny_artifact,
                                                                        monkeypatch):
    import offline_training.evaluate

    def never(*args, **kwargs):
        raise AssertionError("the candidate was evaluated before the gate model was loaded")

    monkeypatch.setattr(offline_training.evaluate, "evaluate", never)
    missing = tmp_path / "nope"
    assert mnedge_train(["evaluate", "--model", str(tiny_artifact), "--gate", str(missing), "--n", "16",
                         "--backend", "onnxruntime"]) == 2
    one_line_error(capsys, "--gate", str(missing))


def test_init_from_a_training_run_folder_exits_2_naming_it(tmp_path, capsys):
    run = tmp_path / "runs" / "site"
    run.mkdir(parents=True)
    (run / "final.pt").write_bytes(b"")
    assert mnedge_train(["train", "--config", str(TINY), "--out", str(tmp_path / "ft"), "--init-from", str(run),
                         "--no-progress"]) == 2
    one_line_error(capsys, "init_from", str(run), "not a model artifact")


def test_evaluate_without_model_when_the_model_in_use_was_deleted_exits_2(tmp_path, capsys, tiny_artifact,
                                                                          monkeypatch):
    from mnedge_live.model_store import HOME_ENV, ModelStore

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    store = ModelStore()
    store.install(tiny_artifact, use=True)
    shutil.rmtree(store.model_path("tiny-test"))
    assert mnedge_train(["evaluate", "--n", "16", "--backend", "onnxruntime"]) == 2
    one_line_error(capsys, "tiny-test", "is not installed")


def test_evaluate_gate_without_json_prints_the_verdict_and_each_criterion(tmp_path, capsys, tiny_artifact):
    """Without --json a failed gate exited 1 and printed nothing about the gate."""
    (tmp_path / "none").mkdir()   # an empty folder: no measured spectra to read
    common = ["evaluate", "--model", str(tiny_artifact), "--gate", str(tiny_artifact), "--n", "64", "--n-nnls", "0",
              "--robustness-n", "0", "--real-dir", str(tmp_path / "none"), "--backend", "onnxruntime"]
    assert mnedge_train([*common, "--gate-tolerance", "-1.5"]) == 1   # must beat itself by 1.5: fails
    out = capsys.readouterr().out
    assert "gate against tiny-test (tolerance -1.5 in accuracy_0.1, 0 in valence_mae): FAILED" in out
    assert "  candidate ranges: accuracy_0.1 " in out and " against " in out and "valence_mae" in out
    assert "  inputs that are no Mn edge refused: " in out
    assert mnedge_train(common) == 0
    out = capsys.readouterr().out
    assert "gate against tiny-test (tolerance 0 in accuracy_0.1, 0 in valence_mae): passed" in out and "FAILED" not in out


def test_export_of_an_intermediate_or_a_non_checkpoint_says_so_and_exits_2(tmp_path, capsys):
    """checkpoint.pt (left by --stop-after) failed with KeyError 'std_scale', a JSON file with torch's
    advice to load it with weights_only=False."""
    from offline_training.train import train
    from offline_training.train_config import TrainConfig

    cfg = TrainConfig.from_toml(TINY)
    cfg.train.steps, cfg.train.batch_size = 2, 8
    run = tmp_path / "run"
    assert train(cfg, run, progress=False, stop_after=1) is None
    for name, needles in (("checkpoint.pt", ("is an intermediate checkpoint (step 1 of 2)", "--resume", "final.pt")),
                          ("config.json", ("is not a training checkpoint",)),
                          ("metrics.csv", ("is not a training checkpoint",))):
        out = tmp_path / f"artifact-{name}"
        assert mnedge_train(["export", str(run / name), "--out", str(out), "--model-id", "x", "--ood-spectra", "0"]) == 2
        err = one_line_error(capsys, str(run / name), *needles)
        assert "weights_only" not in err and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary folder left


@pytest.mark.parametrize("model_id", ["../site v1", ".hidden", "site/v1", "site-v1\n"])
def test_export_refuses_a_model_id_the_store_would_refuse(tmp_path, capsys, tiny_artifact, model_id):
    """export accepted '../site v1', which 'mnedge models install' then refused."""
    from mnedge_live.model_store import MODEL_ID_RULE, ModelStore, StoreError, is_model_id

    assert not is_model_id(model_id)
    out = tmp_path / "bad"
    final = tiny_artifact.parent / "run" / "final.pt"
    assert mnedge_train(["export", str(final), "--out", str(out), "--model-id", model_id, "--ood-spectra", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and repr(model_id) in err and "--model-id" in err and MODEL_ID_RULE in err
    assert not out.exists()
    with pytest.raises(StoreError, match="not a model id"):   # the same rule as the store's
        ModelStore(tmp_path / "store").model_path(model_id)


@pytest.mark.parametrize("command", [["refresh-onnx"], ["fit-ood"], ["recalibrate"]])
def test_artifact_maintenance_commands_exit_2_on_a_path_that_is_no_artifact(tmp_path, capsys, command):
    missing = tmp_path / "no-artifact"
    assert mnedge_train([*command, str(missing)]) == 2
    one_line_error(capsys, str(missing))


@pytest.mark.parametrize("module, extra", [("edrixs", "references"), ("onnx", "train")])
def test_a_command_missing_an_optional_package_names_the_extra_and_exits_2(tmp_path, capsys, monkeypatch,
                                                                         module, extra):
    """Without the package's extra installed a command died with a traceback (exit 1)."""
    import sys

    monkeypatch.setitem(sys.modules, module, None)   # "import module" raises ModuleNotFoundError
    if module == "edrixs":
        argv = ["references", "--out", str(tmp_path / "bank.npz"), "--scale", "0.01", "--no-progress"]
    else:
        monkeypatch.setattr("offline_training.cli.build_parser", _parser_whose_command_imports(module))
        argv = ["fails"]
    assert mnedge_train(argv) == 2
    err = capsys.readouterr().err
    assert f"pip install 'mnedge-live[{extra}]'" in err and "Traceback" not in err


def _parser_whose_command_imports(module: str):
    """A parser with one command, ``fails``, that imports ``module`` (as export and fit-ood import onnx)."""
    import argparse
    import importlib

    def build():
        p = argparse.ArgumentParser()
        sub = p.add_subparsers(dest="command", required=True)
        s = sub.add_parser("fails")
        s.set_defaults(run=lambda args: importlib.import_module(module))
        p.add_argument("--verbose", "-v", action="count", default=0)
        return p

    return build


def test_an_evaluation_of_other_weights_is_refused_and_a_recalibration_marks_the_metrics_stale(tmp_path, capsys,
                                                                                              tiny_artifact):
    """Any JSON was recorded as a card's evaluation (another model's 0.99 accuracy, exit 0), and a recalibration
    kept metrics whose coverage it had just made stale."""
    import json

    from mnedge_live.artifact import load_artifact

    final = Path(tiny_artifact).parent / "run" / "final.pt"
    ev = tmp_path / "ev.json"
    export = ["export", str(final), "--out", str(tmp_path / "a"), "--model-id", "site-v1", "--evaluation", str(ev),
              "--ood-spectra", "0"]
    for evaluation, needle in (({"model": "mnedge-default-v12", "accuracy_0.1": 0.99}, "is of model 'mnedge-default-v12'"),
                               ({"model": "site-v1", "accuracy_0.1": 0.9, "weights_sha256": "0" * 64}, "other weights"),
                               ({"model": "site-v1"}, "not the JSON of")):
        ev.write_text(json.dumps(evaluation))
        assert mnedge_train(export) == 2
        assert needle in capsys.readouterr().err
        assert not (tmp_path / "a").exists()
    ev.write_text(json.dumps({"model": "site-v1", "accuracy_0.1": 0.5}))   # written before evaluations named weights
    assert mnedge_train(export) == 0
    capsys.readouterr()
    assert load_artifact(tmp_path / "a").card["evaluation"]["accuracy_0.1"] == 0.5
    assert mnedge_train(["recalibrate", str(tmp_path / "a"), "--spectra", "256"]) == 0
    evaluation = load_artifact(tmp_path / "a").card["evaluation"]
    assert evaluation["accuracy_0.1"] == 0.5 and "no longer apply" in evaluation["stale"]
