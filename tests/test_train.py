"""Trainer: loss goes down, checkpoints resume exactly, torchrun DDP runs on 2 CPU processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from live_support import free_port

from offline_training.train import compute_loss, train
from offline_training.train_config import TrainConfig, TrainSettings

TINY = Path(__file__).resolve().parents[1] / "offline_training" / "configs" / "tiny.toml"


def _tiny(**train_overrides) -> TrainConfig:
    cfg = TrainConfig.from_toml(TINY)
    for k, v in train_overrides.items():
        setattr(cfg.train, k, v)
    return cfg


def test_training_lowers_the_loss(tmp_path, forward_model):
    from mnedge_live.network import MnEdgeCNN
    from offline_training.export import load_trained
    from offline_training.generate import make_training_batch

    cfg = _tiny(steps=60, lr=3e-3)
    fixed = make_training_batch(forward_model, 512, seed=99)
    torch.manual_seed(cfg.train.seed)
    untrained = MnEdgeCNN(cfg.network).eval()   # same init as the trainer's (same seed)
    with torch.no_grad():
        before, _ = compute_loss(untrained(fixed.x), fixed, cfg.train)
    final = train(cfg, tmp_path / "run", progress=False)
    model, ck = load_trained(final)
    with torch.no_grad():
        after, _ = compute_loss(model(fixed.x), fixed, cfg.train)
    assert after.item() < 0.8 * before.item()
    assert len(ck["std_scale"]) == 4 and all(s > 0 for s in ck["std_scale"])
    calibration = json.loads(ck["calibration"])      # what export copies into the card
    assert calibration["std_scale"] == ck["std_scale"] and len(calibration["groups"]["std_scale"]) == 4
    assert sum(calibration["groups"]["spectra"]) == calibration["spectra"] == cfg.train.calibration_spectra
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + 60 // cfg.train.log_every


def _two_rows():
    """Network outputs and a training batch of two rows: a pure Mn2+ and a Mn3+/Mn4+ half-and-half
    truth, read as (0.8, 0.2, 0) and (0, 0.3, 0.7)."""
    from types import SimpleNamespace

    truth = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    pred = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.3, 0.7]])
    targets = {"valence": truth @ torch.tensor([2.0, 3.0, 4.0]), "is_eels": torch.tensor([0.0, 1.0]),
               "offset_residual_eV": torch.zeros(2), "resolution_eV": torch.zeros(2), "t_lambda": torch.zeros(2)}
    return (pred, torch.zeros(2, 4), torch.zeros(2, 4)), SimpleNamespace(fractions=truth, targets=targets)


def test_fraction_loss_is_the_squared_or_the_absolute_error():
    """``fraction_loss`` picks the error measure of the fractions and the valence, nothing else."""

    out, tb = _two_rows()
    # errors: fractions (-0.2, 0.2, 0) and (0, -0.2, 0.2); valences +0.2 and +0.2
    _, mse = compute_loss(out, tb, TrainSettings(fraction_loss="mse"))
    _, l1 = compute_loss(out, tb, TrainSettings(fraction_loss="l1"))
    assert mse["frac_loss"] == pytest.approx(4 * 0.04 / 6) and mse["valence_loss"] == pytest.approx(0.04)
    assert l1["frac_loss"] == pytest.approx(4 * 0.2 / 6) and l1["valence_loss"] == pytest.approx(0.2)
    assert l1["frac_mae"] == mse["frac_mae"] and l1["offset"] == mse["offset"]
    # the accuracy surrogate: sigmoid((max |error| - 0.1) / softness), largest errors 0.2 and 0.2 here
    total_off, _ = compute_loss(out, tb, TrainSettings(fraction_loss="l1"))
    total_on, box = compute_loss(out, tb, TrainSettings(fraction_loss="l1", w_box=0.5, box_softness=0.05))
    assert box["box"] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert total_on.item() - total_off.item() == pytest.approx(0.5 * box["box"], rel=1e-5)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    cfg = _tiny(steps=20, checkpoint_every=10, calibration_spectra=64)
    a = train(cfg, tmp_path / "a", progress=False)
    assert train(cfg, tmp_path / "b", progress=False, stop_after=10) is None
    assert not (tmp_path / "b" / "final.pt").exists()
    b = train(cfg, tmp_path / "b", progress=False, resume=True)
    wa = torch.load(a, weights_only=True)["model"]
    wb = torch.load(b, weights_only=True)["model"]
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k
    # each invocation: where it started, its target and where it got to (the first stopped at 10)
    runs = [{k: r[k] for k in ("from_step", "steps", "to_step")}
            for r in json.loads(torch.load(b, weights_only=True)["runs"])]
    assert runs == [{"from_step": 0, "steps": 20, "to_step": 10}, {"from_step": 10, "steps": 20, "to_step": 20}]


def test_data_workers_train_on_the_same_batches(tmp_path):
    """Batches synthesized in a worker process are the ones the trainer would draw itself."""
    cfg = _tiny(steps=6, checkpoint_every=6, calibration_spectra=64)
    a = torch.load(train(cfg, tmp_path / "a", progress=False), weights_only=True)["model"]
    cfg.train.data_workers = 1
    b = torch.load(train(cfg, tmp_path / "b", progress=False), weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    with pytest.raises(ValueError, match="data_workers"):
        TrainConfig.from_dict({**_tiny().to_dict(), "train": {**_tiny().to_dict()["train"], "data_workers": -1}})


def test_compiled_forward_model_trains_in_a_data_worker(tmp_path):
    """``compile_forward``: the stages compile inside the worker process and training runs on its batches."""
    cfg = _tiny(steps=3, checkpoint_every=3, calibration_spectra=64)
    cfg.train.compile_forward = True
    cfg.train.data_workers = 1
    weights = torch.load(train(cfg, tmp_path, progress=False), weights_only=True)["model"]
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    with pytest.raises(ValueError, match="compile_forward"):
        TrainConfig.from_dict({**_tiny().to_dict(), "train": {**_tiny().to_dict()["train"], "compile_forward": "yes"}})


def test_weight_average_is_the_final_model_and_survives_a_resume(tmp_path):
    cfg = _tiny(steps=12, checkpoint_every=6, calibration_spectra=64, ema_decay=0.7)
    a = torch.load(train(cfg, tmp_path / "a", progress=False), weights_only=True)
    last = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    avg = {k[len("module."):]: v for k, v in last["ema"].items() if k.startswith("module.")}
    assert set(avg) == set(a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], avg[k]), k
    moved = [k for k in a["model"] if a["model"][k].is_floating_point()
             and not torch.allclose(a["model"][k], last["model"][k])]
    assert moved, "the average should differ from the last weights"
    assert train(cfg, tmp_path / "b", progress=False, stop_after=6) is None
    b = torch.load(train(cfg, tmp_path / "b", progress=False, resume=True), weights_only=True)
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig.from_dict({**_tiny().to_dict(), "train": {**_tiny().to_dict()["train"], "ema_decay": 1.0}})


def test_fine_tuning_starts_from_the_artifacts_weights(tmp_path, tiny_artifact):
    from mnedge_live.artifact import load_artifact
    from offline_training.export import export_artifact

    cfg = _tiny(steps=1, lr=1e-12, weight_decay=0.0, calibration_spectra=64, init_from=str(tiny_artifact))
    final_pt = train(cfg, tmp_path / "ft", progress=False)
    final = torch.load(final_pt, weights_only=True)["model"]
    start = torch.load(load_artifact(tiny_artifact).file("weights.pt"), weights_only=True)
    learned = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert learned and all(torch.allclose(final[k], start[k], atol=1e-6) for k in learned)
    # the exported card names the parent model, not only a path that may be gone
    card = load_artifact(export_artifact(final_pt, tmp_path / "child", model_id="child")).card
    parent = card["training"]["init_from"]
    assert parent["model_id"] == "tiny-test"
    assert parent["weights_sha256"] == load_artifact(tiny_artifact).card["files"]["weights.pt"]


def test_fine_tuning_into_fewer_channels_starts_from_the_pruned_weights(tmp_path, tiny_artifact):
    from mnedge_live.artifact import load_artifact
    from offline_training.export import artifact_network
    from offline_training.prune import prune

    cfg = _tiny(steps=1, lr=1e-12, weight_decay=0.0, calibration_spectra=64, init_from=str(tiny_artifact))
    cfg.network.channels = (8, 6, 12, 16, 16)
    ck = torch.load(train(cfg, tmp_path / "ft", progress=False), weights_only=True)
    expected = prune(artifact_network(load_artifact(tiny_artifact)), cfg.network.channels).state_dict()
    learned = [k for k in expected if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.allclose(ck["model"][k], expected[k], atol=1e-6) for k in learned)
    assert json.loads(ck["init_from"])["pruned_from_channels"] == [8, 8, 16, 16, 16]


def test_fine_tuning_refuses_a_different_network(tmp_path, tiny_artifact):
    cfg = _tiny(steps=1, init_from=str(tiny_artifact))
    cfg.network.hidden += 1
    with pytest.raises(ValueError, match="network"):
        train(cfg, tmp_path / "ft", progress=False)


def test_a_gelu_artifact_fine_tunes_into_a_relu_network_and_a_teacher_is_recorded(tmp_path, tiny_artifact):
    """The activation has no weights: a GELU parent starts a ReLU network; the teacher's origin reaches the card."""
    from mnedge_live.artifact import load_artifact
    from offline_training.export import export_artifact

    cfg = _tiny(steps=2, calibration_spectra=64, init_from=str(tiny_artifact), teacher=str(tiny_artifact),
                w_teacher=1.0)
    cfg.network.activation = "relu"
    final_pt = train(cfg, tmp_path / "relu", progress=False)
    card = load_artifact(export_artifact(final_pt, tmp_path / "art", model_id="relu-child", ood_spectra=0)).card
    assert card["network"]["activation"] == "relu"
    assert card["training"]["teacher"]["model_id"] == "tiny-test"
    assert card["training"]["init_from"]["model_id"] == "tiny-test"
    rows = (tmp_path / "relu" / "metrics.csv").read_text().splitlines()
    assert "teacher" in rows[0].split(",")


def test_teacher_term_is_the_error_against_the_teachers_readings():
    """With ``teacher_fractions`` the loss grows by ``w_teacher`` times their fraction and valence error."""

    out, tb = _two_rows()
    teacher = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.3, 0.7]])
    s = TrainSettings(fraction_loss="l1", teacher="x", w_teacher=2.0)
    plain, _ = compute_loss(out, tb, s)
    total, parts = compute_loss(out, tb, s, teacher)
    # fractions: mean |pred - teacher| = (0.1 + 0.1) / 6; valences 2.2 against 2.1 and 3.7 against 3.7
    expected = (0.2 / 6) + (0.1 / 2)
    assert parts["teacher"] == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(plain.item() + 2.0 * expected, rel=1e-5)


@pytest.mark.parametrize("path", sorted(TINY.parent.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_training_configs_load_with_the_shipped_models_network(path):
    """Every config under configs/ parses and is of the shipped network's family: its layers, fewer channels of
    them (started from its pruned weights), or more (an earlier stage of its chain, pruned to it)."""
    from mnedge_live.artifact import load_artifact
    from mnedge_live.network import NetworkConfig
    from offline_training.prune import prunable

    cfg = TrainConfig.from_toml(path)
    if path.name != "tiny.toml":
        shipped = NetworkConfig.from_dict(load_artifact(None).card["network"])
        assert cfg.network.same_weights_as(shipped) or prunable(shipped, cfg.network) or prunable(cfg.network, shipped)


def test_torchrun_two_cpu_processes_on_gloo(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    # torch elastic keeps a folder per run under TMPDIR: here, inside the test's own folder
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "offline_training.cli", "train",
         "--config", str(TINY), "--steps", "6", "--out", str(tmp_path / "ddp"), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    assert ck["steps"] == 6
    assert [r["processes"] for r in json.loads(ck["runs"])] == [2]   # the batch was 2 x batch_size: say so
    # each rank ends without the interpreter's shutdown (cli.end_if_torchrun_worker): its output still arrives
    assert proc.stdout.count(str(tmp_path / "ddp" / "final.pt")) == 2, proc.stdout


def test_the_gate_also_compares_on_the_references_ranges(tmp_path, tiny_artifact, capsys):
    """A candidate trained on other ranges is scored on its own ranges and on the reference's."""
    import json
    import shutil

    from mnedge_live.artifact import write_card
    from offline_training.cli import main as mnedge_train

    cand = tmp_path / "cand"
    shutil.copytree(tiny_artifact, cand)
    card_path = cand / "model_card.json"
    card = json.loads(card_path.read_text())
    card["training"]["config"].setdefault("forward", {})["gauss_fwhm"] = [0.05, 2.5]  # as a broadened fine-tune
    write_card(cand, card)
    out = tmp_path / "evaluation.json"
    (tmp_path / "none").mkdir()   # an empty folder: no measured spectra to read
    args = ["evaluate", "--model", str(cand), "--gate", str(tiny_artifact), "--n", "128", "--n-nnls", "0",
            "--robustness-n", "0", "--real-dir", str(tmp_path / "none"), "--backend", "onnxruntime", "--out", str(out)]
    assert mnedge_train(args) == 0  # the same weights are not worse on either set
    printed = capsys.readouterr().out
    coverage = json.loads(out.read_text())["coverage"]
    assert f"valence 1-sigma coverage {coverage['valence_1sigma']:.3f}" in printed and "by truth: pure" in printed
    gate = json.loads(out.read_text())["gate"]
    assert set(gate["sets"]) == {"candidate_ranges", "reference_ranges"}
    for s in gate["sets"].values():
        assert s["accuracy_0.1"] == pytest.approx(s["reference_accuracy_0.1"]) and s["passed"]
    assert gate["sets"]["candidate_ranges"]["valence_mae"] != gate["sets"]["reference_ranges"]["valence_mae"]  # two sets


@pytest.mark.parametrize("table, text, field", [
    ("train", 'steps = "100"', "steps"),
    ("train", "steps = 10.0", "steps"),
    ("train", "checkpoint_every = 0", "checkpoint_every"),
    ("train", "log_every = 0", "log_every"),
    ("train", "calibration_spectra = 0", "calibration_spectra"),
    ("train", "calibration_spectra = -5", "calibration_spectra"),
    ("train", "warmup_steps = -10", "warmup_steps"),
    ("train", "weight_decay = -1.0", "weight_decay"),
    ("train", "seed = -1", "seed"),
    ("train", "threads = -1", "threads"),
    ("train", "lr = nan", "lr"),
    ("train", 'compile_forward = "yes"', "compile_forward"),
    ("train", "w_valence = -0.5", "w_valence"),
    ("forward", 'eels_share = "half"', "eels_share"),
    ("forward", "axis_points = 700.5", "axis_points"),
    ("forward", 'axis_start = "615"', "axis_start"),
    ("forward", "offset = 5.0", "offset"),
    ("forward", "branching_ratio = {2 = 3.5, 3 = 2.5, 4 = 2.0}", "branching_ratio"),
    ("forward", "intrinsic_fwhm = [0.0, 1.0]", "intrinsic_fwhm"),
])
def test_a_wrong_type_or_out_of_range_value_is_refused_by_name_and_the_cli_prints_it(tmp_path, capsys, table,
                                                                                     text, field):
    """Every [train] and [forward] value is type- and range-checked when the config is read, so that the
    CLI refuses it with its name (exit 2, no traceback) before a step is trained, not after."""
    from offline_training.cli import main as mnedge_train

    p = tmp_path / "bad.toml"
    p.write_text(f"[{table}]\n{text}\n")
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_toml(p)
    assert mnedge_train(["train", "--config", str(p), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_settings_changed_after_reading_are_checked_again_by_the_trainer(tmp_path):
    cfg = _tiny(steps=2)
    cfg.train.checkpoint_every = 0
    with pytest.raises(ValueError, match="checkpoint_every"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.parametrize("option, value", [("--n", "0"), ("--n", "-5"), ("--n-nnls", "-1"), ("--robustness-n", "-1"),
                                           ("--seed", "-1")])
def test_evaluate_refuses_counts_below_their_minimum(tmp_path, capsys, option, value):
    from offline_training.cli import main as mnedge_train

    args = ["evaluate", "--n", "16", "--n-nnls", "0", "--robustness-n", "0", "--real-dir", str(tmp_path),
            "--backend", "onnxruntime", option, value]
    assert mnedge_train(args) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err


@pytest.mark.parametrize("args, field", [(["--steps", "-3"], "steps"), (["--steps", "0"], "steps"),
                                         (["--stop-after", "-1"], "stop-after"), (["--stop-after", "0"], "stop-after")])
def test_command_line_overrides_are_validated_like_the_config(tmp_path, capsys, args, field):
    """``--steps`` and ``--stop-after`` below 1 are refused by name (exit 2) before anything is written:
    ``--steps -3`` wrote an untrained final.pt, ``--steps 0`` was ignored, ``--stop-after -1`` wrote nothing."""
    from offline_training.cli import main as mnedge_train

    out = tmp_path / "run"
    assert mnedge_train(["train", "--config", str(TINY), "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (out / "final.pt").exists() and not (out / "checkpoint.pt").exists()


def test_a_steps_override_replaces_the_configs_steps(tmp_path):
    from offline_training.cli import main as mnedge_train

    out = tmp_path / "run"
    assert mnedge_train(["train", "--config", str(TINY), "--out", str(out), "--no-progress", "--steps", "2"]) == 0
    assert torch.load(out / "final.pt", weights_only=True)["steps"] == 2


def test_an_unknown_or_unavailable_device_is_refused_and_the_cpu_trains(tmp_path, capsys):
    """``[train] device`` decides where the network trains: a name that is no device is refused when the
    config is read, a CUDA device on a machine without one when training starts (it trained on the CPU
    silently before), and "cpu" trains with the model and the batches on the CPU."""
    from offline_training.cli import main as mnedge_train

    with pytest.raises(ValueError, match="device"):
        TrainSettings(device="banana")
    with pytest.raises(ValueError, match="device"):
        TrainSettings(device="mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda'.*no CUDA"):
            train(_tiny(steps=1, device="cuda"), tmp_path / "cuda", progress=False)
        assert not (tmp_path / "cuda").exists()
        assert mnedge_train(["train", "--config", str(TINY), "--out", str(tmp_path / "cli"), "--no-progress",
                             "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "device" in err and "Traceback" not in err
    ck = torch.load(train(_tiny(steps=1, device="cpu"), tmp_path / "cpu", progress=False), weights_only=True)
    assert all(t.device.type == "cpu" for t in ck["model"].values())


def test_the_loss_and_the_batches_follow_the_models_device(forward_model):
    """``to_device`` moves what the network and the loss read, and nothing else (shown with the "meta"
    device, which needs no GPU: on the CPU alone the same tensors would come back whether moved or not);
    ``compute_loss`` gives its total on the outputs' device (the CPU here)."""
    from offline_training.devices import to_device
    from offline_training.generate import make_training_batch

    tb = make_training_batch(forward_model, 4, seed=1)
    moved = to_device(tb, torch.device("meta"))
    assert moved.x.device.type == "meta" and moved.fractions.device.type == "meta"
    assert set(moved.targets) == set(tb.targets) and all(v.device.type == "meta" for v in moved.targets.values())
    assert moved.x.shape == tb.x.shape and moved.batch is tb.batch   # the synthetic batch stays where it was
    assert tb.x.device.type == "cpu"                                  # the original is not changed
    same = to_device(tb, torch.device("cpu"))
    assert same.x is tb.x and same.targets["valence"] is tb.targets["valence"]   # no copy where it already is
    out, two = _two_rows()
    total, _ = compute_loss(out, two, TrainSettings(teacher="x", w_teacher=1.0), out[0])
    assert total.device == out[0].device


def test_resume_refuses_another_config_and_names_what_differs(tmp_path):
    """The checkpoint's config is compared on resume: another batch size, seed and learning rate were
    taken silently and the record kept only the last invocation's."""
    run = tmp_path / "run"
    assert train(_tiny(steps=4, batch_size=8), run, progress=False, stop_after=2) is None
    before = (run / "checkpoint.pt").read_bytes()
    other = _tiny(steps=4, batch_size=16, seed=7, lr=0.05)
    with pytest.raises(ValueError, match=r"train\.batch_size.*train\.lr.*train\.seed"):
        train(other, run, progress=False, resume=True)
    assert (run / "checkpoint.pt").read_bytes() == before and not (run / "final.pt").exists()
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == 8


def test_resume_refuses_a_changed_bank_file(tmp_path, bank):
    from offline_training.references.bank import Bank

    path = tmp_path / "bank.npz"
    bank.save(path)
    cfg = _tiny(steps=3, batch_size=8)
    cfg.bank = str(path)
    assert train(cfg, tmp_path / "run", progress=False, stop_after=1) is None
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["bank_sha256"] == bank.sha256()
    moved = tmp_path / "moved.npz"           # the same bank under another path, and how the run executes, may change
    shutil.copyfile(path, moved)
    cfg.bank, cfg.train.log_every, cfg.train.checkpoint_every = str(moved), 2, 2
    assert train(cfg, tmp_path / "run", progress=False, resume=True, stop_after=2) is None
    cfg.bank = str(path)
    changed = Bank.load(path)
    changed.weight = changed.weight * 2.0
    changed.save(path)
    with pytest.raises(ValueError, match="bank .*SHA-256"):
        train(cfg, tmp_path / "run", progress=False, resume=True)


def test_stop_after_at_or_below_the_resumed_step_is_refused(tmp_path):
    run = tmp_path / "run"
    assert train(_tiny(steps=4, batch_size=8), run, progress=False, stop_after=2) is None
    with pytest.raises(ValueError, match="at step 2 already"):   # it printed "stopped at step 1"
        train(_tiny(steps=4, batch_size=8), run, progress=False, resume=True, stop_after=1)


def test_an_explicit_steps_extension_resumes_and_every_invocation_is_recorded(tmp_path):
    run = tmp_path / "run"
    train(_tiny(steps=2, batch_size=8, calibration_spectra=16), run, progress=False)
    final = train(_tiny(steps=3, batch_size=8, calibration_spectra=16), run, progress=False, resume=True)
    ck = torch.load(final, weights_only=True)
    assert ck["steps"] == 3 and json.loads(ck["config"])["train"]["steps"] == 3
    runs = json.loads(ck["runs"])
    assert [(r["from_step"], r["steps"]) for r in runs] == [(0, 2), (2, 3)]
    assert all(r["seconds"] > 0 for r in runs)
    # the training time is both invocations', not the last one's
    assert ck["train_seconds"] == pytest.approx(sum(r["seconds"] for r in runs))


def test_a_resume_after_a_kill_during_calibration_writes_the_final_model_of_its_own_step(tmp_path, monkeypatch):
    """A run extended from 2 to 4 steps and killed while calibrating (checkpoint at 4, final.pt still of step 2)
    was taken for finished by the next resume, which returned the final.pt of step 2."""
    import offline_training.train as T

    run = tmp_path / "run"
    train(_tiny(steps=2, batch_size=8, calibration_spectra=16), run, progress=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during calibration")

    monkeypatch.setattr(T, "calibrate_std", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny(steps=4, batch_size=8, calibration_spectra=16), run, progress=False, resume=True)
    monkeypatch.undo()
    final = train(_tiny(steps=4, batch_size=8, calibration_spectra=16), run, progress=False, resume=True)
    assert torch.load(final, weights_only=True)["steps"] == 4


def test_resuming_a_finished_run_keeps_its_final_model_as_it_was(tmp_path):
    """``--resume`` of a run at its last step rewrote final.pt with this invocation's near-zero training time."""
    run = tmp_path / "run"
    final = train(_tiny(steps=2, batch_size=8, calibration_spectra=16), run, progress=False)
    before = final.read_bytes()
    again = train(_tiny(steps=2, batch_size=8, calibration_spectra=16), run, progress=False, resume=True)
    assert again == final and final.read_bytes() == before


def test_a_resume_after_a_crash_logs_every_step_once(tmp_path, monkeypatch):
    """Steps logged between the last checkpoint and a crash are logged again by the resume, which
    restarts at the checkpoint: metrics.csv keeps only the rows up to the checkpoint's step first."""
    import offline_training.train as T

    cfg = _tiny(steps=4, batch_size=8, checkpoint_every=2, log_every=1, calibration_spectra=16)
    calls = {"n": 0}

    def crash_in_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed during step 4")
        return compute_loss(*args, **kwargs)

    monkeypatch.setattr(T, "compute_loss", crash_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, progress=False)
    monkeypatch.setattr(T, "compute_loss", compute_loss)
    train(cfg, tmp_path, progress=False, resume=True)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_evaluate_refuses_a_real_dir_that_does_not_exist(tmp_path, capsys):
    """A mistyped --real-dir was skipped without a word: the JSON then lacked every measured reading."""
    from offline_training.cli import main as mnedge_train

    missing = tmp_path / "real_spectra_typo"
    args = ["evaluate", "--n", "16", "--n-nnls", "0", "--robustness-n", "0", "--real-dir", str(missing),
            "--backend", "onnxruntime"]
    assert mnedge_train(args) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such folder" in err


def test_training_into_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path, capsys):
    """train --out over an existing run replaced its final.pt without a word (export refuses the same)."""
    from offline_training.cli import main as mnedge_train

    run = tmp_path / "run"
    cfg = tmp_path / "site.toml"
    cfg.write_text(TINY.read_text().replace("steps = 30", "steps = 2"))
    base = ["train", "--config", str(cfg), "--out", str(run), "--no-progress"]
    assert mnedge_train(base) == 0
    before = (run / "final.pt").read_bytes()
    capsys.readouterr()
    cfg.write_text(TINY.read_text().replace("steps = 30", "steps = 3"))
    assert mnedge_train(base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {run} holds a training run" in err
    assert "--resume" in err and "--overwrite" in err and (run / "final.pt").read_bytes() == before
    assert mnedge_train([*base, "--resume", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert mnedge_train([*base, "--overwrite", "--stop-after", "1"]) == 0   # replaced: the old final.pt is gone
    assert not (run / "final.pt").exists() and (run / "checkpoint.pt").exists()
    assert mnedge_train([*base, "--resume"]) == 0
    assert torch.load(run / "final.pt", weights_only=True)["steps"] == 3


@pytest.mark.parametrize("bank_file, needles", [
    ("missing.npz", ("the config's bank", "missing.npz", "no such references bank file", "config file's folder")),
    ("MnO.txt", ("the config's bank", "MnO.txt", "is not a references bank")),
    ("other.npz", ("the config's bank", "other.npz", "is not a references bank", "lacks energy")),
])
def test_a_bank_that_is_missing_or_no_bank_is_refused_naming_the_key_and_the_file(tmp_path, capsys, bank_file,
                                                                                   needles):
    import numpy as np

    from offline_training.cli import main as mnedge_train

    np.savetxt(tmp_path / "MnO.txt", np.ones((20, 2)))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    config = tmp_path / "site.toml"
    config.write_text(f'bank = "{bank_file}"\n' + TINY.read_text())
    assert mnedge_train(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "pickled" not in err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "run").exists()   # a refused run leaves no empty --out behind


@pytest.mark.parametrize("text, needles", [
    ('bank = "site_bank.npz"\n[train]\nsteps = [40\n', ("bad.toml", "is not valid TOML")),
    ('bnak = "site_bank.npz"\n[train]\nsteps = 4\n', ("bad.toml", "bnak", "bank, network, forward, train")),
    ("[trian]\nsteps = 4\n", ("bad.toml", "trian", "bank, network, forward, train")),
    ("bank = 5\n", ("bad.toml", "bank must be the path")),
])
def test_a_config_that_is_no_toml_or_has_an_unknown_key_is_refused_naming_the_file_and_the_known_keys(
        tmp_path, capsys, text, needles):
    from offline_training.cli import main as mnedge_train

    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert mnedge_train(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "run").exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, tiny_artifact):
    """--overwrite with a mistyped --init-from deleted the old final.pt before the new run was refused."""
    from offline_training.cli import main as mnedge_train

    old = tmp_path / "run"
    shutil.copytree(tiny_artifact.parent / "run", old)
    before = (old / "final.pt").read_bytes()
    code = mnedge_train(["train", "--config", str(TINY), "--out", str(old), "--steps", "6", "--overwrite",
                         "--init-from", str(tmp_path / "no-such-artifact"), "--no-progress"])
    assert code == 2 and (old / "final.pt").read_bytes() == before


def test_a_training_that_diverges_stops_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"the loss is nan at step \d+: the training diverged"):
        train(_tiny(steps=6, lr=1e12, warmup_steps=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "final.pt").exists()


def test_resume_without_steps_continues_to_the_runs_own_target_and_refuses_one_already_passed(tmp_path, capsys):
    """`--steps 4 --stop-after 2` then the printed hint `--resume`: the run went on to the config
    file's 30 steps; a --steps below the checkpoint's step was accepted and final.pt contradicted it."""
    from offline_training.cli import main as mnedge_train

    out = tmp_path / "run"
    common = ["train", "--config", str(TINY), "--out", str(out), "--no-progress"]
    assert mnedge_train([*common, "--steps", "4", "--stop-after", "3"]) == 0
    assert mnedge_train([*common, "--resume", "--steps", "2"]) == 2   # at step 3 already
    assert mnedge_train([*common, "--resume"]) == 0
    ck = torch.load(out / "final.pt", weights_only=True)
    assert ck["steps"] == 4 and [r["steps"] for r in json.loads(ck["runs"])] == [4, 4]
    assert "resuming to step 4, the run's target" in capsys.readouterr().err   # the file's 30 named, not taken


def test_evaluate_records_its_bank_and_refuses_bad_options_in_one_line(tmp_path, tiny_artifact, capsys):
    """A wrong --mnedgenet was a traceback (exit 1, read as "gate failed"); --out in a missing folder lost
    the evaluation after it ran; a NaN tolerance failed the gate of a model against itself."""
    from offline_training.cli import main as mnedge_train
    from offline_training.references.bank import Bank

    (tmp_path / "none").mkdir()
    base = ["evaluate", "--model", str(tiny_artifact), "--n", "64", "--n-nnls", "0", "--robustness-n", "0",
            "--real-dir", str(tmp_path / "none"), "--backend", "onnxruntime"]
    notpt = tmp_path / "not.pt"
    notpt.write_text("hello")
    assert mnedge_train([*base, "--mnedgenet", str(notpt)]) == 2
    assert "--mnedgenet" in capsys.readouterr().err
    assert mnedge_train([*base, "--gate", str(tiny_artifact), "--gate-tolerance", "nan"]) == 2
    out = tmp_path / "new" / "folder" / "evaluation.json"
    assert mnedge_train([*base, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bank"] == {"path": "(shipped)", "sha256": Bank.load().sha256()}


def test_resume_refuses_a_teacher_whose_weights_changed_since_the_checkpoint(tmp_path, tiny_artifact):
    """`teacher = PATH` (or "default") names a place; another model put there between a stop and its
    resume silently became the teacher of the rest of the run."""
    from offline_training.export import export_artifact

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_artifact, teacher)
    cfg = _tiny(steps=4, calibration_spectra=64, teacher=str(teacher), w_teacher=1.0)
    assert train(cfg, tmp_path / "run", progress=False, stop_after=2) is None
    ck = torch.load(tiny_artifact.parent / "run" / "final.pt", weights_only=True)
    first = next(iter(ck["model"]))
    ck["model"][first] = ck["model"][first] + 0.01   # another model of the same layers
    torch.save(ck, tmp_path / "other.pt")
    export_artifact(tmp_path / "other.pt", teacher, model_id="tiny-other", overwrite=True, ood_spectra=0)
    with pytest.raises(ValueError, match="was distilled from tiny-test.*now holds tiny-other"):
        train(cfg, tmp_path / "run", progress=False, resume=True)


def test_evaluate_draws_from_the_candidates_training_bank_or_says_why_not(tmp_path, tiny_artifact, capsys):
    """A site model was scored on the shipped bank's spectra, whatever it was trained on."""
    from mnedge_live.artifact import write_card
    from offline_training.cli import main as mnedge_train
    from offline_training.references.bank import Bank

    site = Bank.load()
    site.weight = site.weight * np.linspace(0.5, 1.0, site.weight.size)   # another bank, same spectra
    site.save(tmp_path / "site_bank.npz")
    cand = tmp_path / "cand"
    shutil.copytree(tiny_artifact, cand)
    card = json.loads((cand / "model_card.json").read_text())
    card["training"]["config"]["bank"] = str(tmp_path / "site_bank.npz")
    card["training"]["bank_sha256"] = site.sha256()
    write_card(cand, card)
    (tmp_path / "none").mkdir()
    base = ["evaluate", "--model", str(cand), "--n", "64", "--n-nnls", "0", "--robustness-n", "0",
            "--real-dir", str(tmp_path / "none"), "--backend", "onnxruntime", "--out", str(tmp_path / "e.json"),
            "--overwrite"]
    assert mnedge_train(base) == 0
    assert json.loads((tmp_path / "e.json").read_text())["bank"] == {"path": str(tmp_path / "site_bank.npz"),
                                                                      "sha256": site.sha256()}
    (tmp_path / "site_bank.npz").unlink()   # gone: the shipped bank, and the note says so
    capsys.readouterr()
    assert mnedge_train(base) == 0
    assert "is not here: the validation spectra are drawn from the shipped bank" in capsys.readouterr().err
    assert json.loads((tmp_path / "e.json").read_text())["bank"]["path"] == "(shipped)"
