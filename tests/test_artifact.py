"""Export and artifact integrity: ONNX equals PyTorch, checksums refuse tampering, schema is checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnedge_live.artifact import ArtifactError, load_artifact, write_card
from mnedge_live.engine import load_engine


def test_export_writes_card_with_checksums(tiny_artifact):
    art = load_artifact(tiny_artifact)
    card = art.card
    assert card["model_id"] == "tiny-test"
    assert {"model.onnx", "weights.pt"} <= set(card["files"])
    assert card["onnx"]["max_abs_difference_vs_torch"] <= 1e-4
    assert card["input"]["grid_points"] == 256
    # the code that trained (each invocation's, recorded at its start) and the one that exported, apart:
    # the card named the exporting commit, one that did not exist when training began
    runs = card["training"]["runs"]
    assert runs and all(r["git_commit"] and r["processes"] == 1 for r in runs)
    assert card["training"]["git_commit"] == runs[-1]["git_commit"] and card["training"]["export_git_commit"]
    assert len(card["calibration"]["std_scale"]) == 4


def test_onnx_runtime_and_pytorch_agree_within_1e_4(tiny_artifact):
    rng = np.random.default_rng(0)
    e = np.arange(620.0, 680.0, 0.1)
    spectra = [(e, np.exp(-0.5 * ((e - 640 - s) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - 651 - s) / 0.9) ** 2)
                + rng.normal(0, 0.01, e.size)) for s in (-5, 0, 3, 9)]
    a = load_engine(str(tiny_artifact), backend="onnxruntime").predict(spectra)
    b = load_engine(str(tiny_artifact), backend="torch").predict(spectra)
    assert [r.status for r in a] == [r.status for r in b] == ["ok"] * 4
    for ra, rb in zip(a, b):
        assert np.allclose(ra.fractions, rb.fractions, atol=1e-4)
        assert abs(ra.valence - rb.valence) < 1e-4


def test_onnx_graph_runs_the_feature_stages_as_2d(tiny_artifact):
    """The exported graph is the planar view (2-D convolutions: ONNX Runtime's fast CPU kernels)."""
    import onnx

    graph = onnx.load(str(load_artifact(tiny_artifact).file("model.onnx"))).graph
    weights = {t.name: len(t.dims) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]] == 4 for n in convs)
    assert load_artifact(tiny_artifact).card["onnx"]["graph"].startswith("planar")


def test_refresh_onnx_rewrites_the_graph_and_keeps_the_answers(tiny_artifact, tmp_path):
    from mnedge_live.artifact import sha256_file
    from offline_training.cli import main as train_main

    copy = shutil.copytree(tiny_artifact, tmp_path / "old")
    before = load_artifact(copy).card
    (copy / "model.onnx").write_bytes(b"")            # an out-of-date graph: the card no longer matches
    card = json.loads((copy / "model_card.json").read_text())
    card["files"]["model.onnx"] = sha256_file(copy / "model.onnx")
    write_card(copy, card)                            # signed as an old export would have been
    assert train_main(["refresh-onnx", str(copy)]) == 0
    after = load_artifact(copy).card                   # verifies every checksum
    assert after["onnx"]["max_abs_difference_vs_torch"] <= 1e-4 and "refreshed" in after["onnx"]
    assert after["files"]["weights.pt"] == before["files"]["weights.pt"]
    assert after["model_id"] == before["model_id"] and after["calibration"] == before["calibration"]
    e = np.arange(620.0, 680.0, 0.1)
    y = np.exp(-0.5 * ((e - 641) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - 652) / 0.9) ** 2) + 0.05
    a = load_engine(str(copy), backend="onnxruntime").predict_one(e, y)
    b = load_engine(str(tiny_artifact), backend="onnxruntime").predict_one(e, y)
    assert a.ok and abs(a.valence - b.valence) < 1e-5


def test_refresh_onnx_refuses_a_tampered_artifact(tiny_artifact, tmp_path):
    from offline_training.cli import main as train_main

    copy = shutil.copytree(tiny_artifact, tmp_path / "bad")
    (copy / "weights.pt").write_bytes(b"x")
    assert train_main(["refresh-onnx", str(copy)]) == 2


@pytest.mark.parametrize("victim", ["weights.pt", "model.onnx"])
def test_a_changed_byte_is_refused(tiny_artifact, tmp_path, victim):
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_engine(str(copy))


def test_the_runtimes_use_the_bytes_that_were_verified_not_the_files_again(tiny_artifact, tmp_path):
    """Files changed or removed after the check (a reinstall under the same id) cannot reach a session."""
    from mnedge_live.engine import make_backend

    copy = shutil.copytree(tiny_artifact, tmp_path / "art")
    art = load_artifact(copy)
    x = np.random.default_rng(0).normal(size=(4, 2, art.card["input"]["grid_points"])).astype(np.float32)
    for victim in ("model.onnx", "weights.pt"):
        (copy / victim).write_bytes(b"not the file that was verified")
    for name in ("onnxruntime", "torch"):
        ref = make_backend(load_artifact(tiny_artifact), name).run(x)
        out = make_backend(art, name).run(x)
        assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(out[:3], ref[:3]))
    shutil.rmtree(copy)
    assert np.allclose(make_backend(art, "onnxruntime").run(x)[0], ref[0], atol=1e-4)
    assert art.read("weights.pt") == (tiny_artifact / "weights.pt").read_bytes()


def test_partial_and_unknown_schema_artifacts_are_refused(tiny_artifact, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_artifact, partial)
    (partial / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="partial"):
        load_artifact(partial)
    future = tmp_path / "future"
    shutil.copytree(tiny_artifact, future)
    card = json.loads((future / "model_card.json").read_text())
    card["schema_version"] = 99
    (future / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="schema version"):
        load_artifact(future)
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(tmp_path)


def test_an_edited_card_is_refused_and_an_unsigned_one_loads_with_a_warning(tiny_artifact, tmp_path, caplog):
    edited = shutil.copytree(tiny_artifact, tmp_path / "edited")
    card = json.loads((edited / "model_card.json").read_text())
    card["calibration"]["std_scale"] = [20.0 * v for v in card["calibration"]["std_scale"]]
    (edited / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="changed after it was written"):
        load_artifact(edited)
    del card["card_sha256"]                           # a card written before cards carried their checksum
    (edited / "model_card.json").write_text(json.dumps(card))
    with caplog.at_level("WARNING", logger="mnedge_live.artifact"):
        assert load_artifact(edited).card["calibration"] == card["calibration"]
    assert "has no checksum of its own" in caplog.text


@pytest.mark.parametrize("change, reason", [
    (lambda card: [], "a JSON object was expected, not list"),
    (lambda card: dict(card, files={**card["files"], "weights.pt": 123}), "not a SHA-256 hex digest"),
    (lambda card: dict(card, files={**card["files"], "../outside.bin": "0" * 64}), "not a relative path inside"),
])
def test_a_malformed_card_is_refused_with_a_clear_message(tiny_artifact, tmp_path, change, reason):
    bad = shutil.copytree(tiny_artifact, tmp_path / "bad")
    card = json.loads((bad / "model_card.json").read_text())
    card.pop("card_sha256")
    (bad / "model_card.json").write_text(json.dumps(change(card)))
    with pytest.raises(ArtifactError, match=reason):
        load_artifact(bad)


def test_tensorrt_export_refuses_clearly_without_a_gpu(tiny_artifact, tmp_path):
    import torch

    from offline_training.export import build_tensorrt_engines, load_trained

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the refusal path does not apply")
    model, _ = load_trained(tiny_artifact.parent / "run" / "final.pt")
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        build_tensorrt_engines(model, tmp_path)


def test_the_network_exports_with_a_dynamic_batch_for_tensorrt(tiny_artifact):
    """What torch-tensorrt compiles, checked on the CPU: the TorchScript frontend scripted the module, which
    failed on its tuple outputs, so no engine could ever be built; the export runs at any batch size and
    gives the network's own outputs (the tiny model and the shipped default's architecture)."""
    import torch

    from mnedge_live.network import MnEdgeCNN, NetworkConfig
    from offline_training.export import exported_for_tensorrt, load_trained

    tiny, _ = load_trained(tiny_artifact.parent / "run" / "final.pt")
    shipped = MnEdgeCNN(NetworkConfig.from_dict(load_artifact(None).card["network"]))
    for model in (tiny.eval(), shipped.eval()):
        length = model.config.input_length
        program = exported_for_tensorrt(model, torch.randn(8, 2, length))
        for batch in (1, 3, 1024):
            x = torch.randn(batch, 2, length)
            got = program.module()(x)
            want = model.forward_with_features(x)
            assert len(got) == len(want) == 4
            assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


def test_tensorrt_backend_is_skipped_with_a_reason_and_auto_falls_back(tiny_artifact):
    import torch

    from mnedge_live.engine import BackendUnavailable, make_backend

    # the reason names what is missing: no GPU here (CI), or, on a GPU machine, TensorRT or the engine
    reason = "no CUDA GPU is present" if not torch.cuda.is_available() else "TensorRT|torch-tensorrt|engine"
    with pytest.raises(BackendUnavailable, match=reason):
        make_backend(load_artifact(tiny_artifact), "tensorrt")
    engine = load_engine(str(tiny_artifact), backend="auto")
    assert engine.backend.name in ("onnxruntime", "torch")


@pytest.mark.parametrize("failure", [
    'OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")',
    'OSError("torch_tensorrt/lib/libtorchtrt.so: undefined symbol: _ZN3c1017RegisterOperators")',
    'RuntimeError("CUDA driver version is insufficient for CUDA runtime version")'])
def test_a_broken_torch_tensorrt_falls_back_under_auto_and_fails_clearly_when_asked_for(
        tiny_artifact, tmp_path, monkeypatch, caplog, failure):
    """A torch-tensorrt that fails its import with something else than ImportError (a build for another
    torch, TensorRT libraries missing) on a GPU host: auto falls back to ONNX Runtime and says why."""
    import logging
    import sys

    import torch

    from mnedge_live.engine import BackendUnavailable, make_backend

    fake = tmp_path / "fakemods"
    fake.mkdir()
    for name in ("tensorrt", "torch_tensorrt"):
        (fake / f"{name}.py").write_text(f"raise {failure}\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host, as far as the check goes
    art = load_artifact(tiny_artifact)
    message = failure.split('"')[1]
    with caplog.at_level(logging.INFO, logger="mnedge_live.engine.backends"):
        backend = make_backend(art, "auto")
    assert backend.name == "onnxruntime" and backend.device == "cpu"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("backend onnxruntime chosen" in m and "cannot be imported" in m and message in m for m in warned)
    with pytest.raises(BackendUnavailable, match="cannot be imported") as info:
        make_backend(art, "tensorrt")
    assert message in str(info.value)


def test_a_tensorrt_failure_while_setting_up_falls_back_under_auto(tiny_artifact, tmp_path, monkeypatch):
    """torch-tensorrt imports, but CUDA fails once it is used: still a reason to fall back, not a crash."""
    import dataclasses
    import sys

    import torch

    from mnedge_live.engine import BackendUnavailable, make_backend

    fake = tmp_path / "fakemods"
    fake.mkdir()
    (fake / "tensorrt.py").write_text("__version__ = '10.0'\n")
    (fake / "torch_tensorrt.py").write_text("")
    for name in ("tensorrt", "torch_tensorrt"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def no_device(*args):
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    monkeypatch.setattr(torch.cuda, "get_device_name", no_device)
    art = load_artifact(tiny_artifact)
    art = dataclasses.replace(art, card={**art.card, "tensorrt": {"fp16": {"file": "weights.pt", "gpu": "X"}}})
    assert make_backend(art, "auto").name == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="TensorRT cannot run here: RuntimeError: CUDA error"):
        make_backend(art, "tensorrt")


def test_a_card_naming_a_scratch_bank_gets_the_shipped_bank_only_when_its_checksum_matches(tmp_path):
    from offline_training.export import card_forward_model
    from offline_training.forward import ForwardModel
    from offline_training.references.bank import Bank

    shipped = Bank.load()
    config = {"bank": str(tmp_path / "gone.npz")}
    fm = card_forward_model({"training": {"config": config, "bank_sha256": shipped.sha256()}})
    assert isinstance(fm, ForwardModel)
    with pytest.raises(RuntimeError, match="gone.npz, which is not here"):
        card_forward_model({"training": {"config": config, "bank_sha256": "0" * 64}})
    with pytest.raises(RuntimeError, match="not here"):
        card_forward_model({"training": {"config": config}})


def test_a_failed_overwrite_keeps_the_existing_artifact_and_a_retry_succeeds(tiny_artifact, tmp_path, capsys):
    """``export --overwrite`` removed the artifact before the new export ran: one that then failed (here the
    checkpoint's bank is gone, found when the OOD statistics are fitted) left no artifact but a
    half-written directory. Now it builds in a temporary sibling and swaps it in only when verified."""
    import torch

    from offline_training.cli import main as mnedge_train
    from offline_training.export import export_artifact

    final_pt = tiny_artifact.parent / "run" / "final.pt"
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    before = (art / "model_card.json").read_bytes()
    ck = torch.load(final_pt, weights_only=True)
    config = json.loads(ck["config"])
    config["bank"] = str(tmp_path / "gone.npz")
    broken = tmp_path / "broken_final.pt"
    torch.save({**ck, "config": json.dumps(config), "bank_sha256": "0" * 64}, broken)
    with pytest.raises(RuntimeError, match="not here"):
        export_artifact(broken, art, model_id="broken", overwrite=True, ood_spectra=16)
    assert mnedge_train(["export", str(broken), "--out", str(art), "--overwrite", "--ood-spectra", "16"]) == 2
    assert "not here" in capsys.readouterr().err
    assert (art / "model_card.json").read_bytes() == before and load_artifact(art).model_id == "tiny-test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "broken_final.pt"]   # nothing left behind
    assert export_artifact(final_pt, art, model_id="retry", overwrite=True, ood_spectra=0) == art
    assert load_artifact(art).model_id == "retry"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "broken_final.pt"]


def _edited_final(tiny_artifact, tmp_path, edit) -> Path:
    """The tiny model's final.pt with ``edit(checkpoint)`` applied, saved in ``tmp_path``."""
    import torch

    ck = torch.load(tiny_artifact.parent / "run" / "final.pt", weights_only=True)
    edit(ck)
    path = tmp_path / "final.pt"
    torch.save(ck, path)
    return path


def test_weights_of_a_diverged_training_are_not_exported(tiny_artifact, tmp_path):
    from offline_training.export import export_artifact

    def poison(ck):
        name = next(iter(ck["model"]))
        ck["model"][name] = ck["model"][name].clone().fill_(float("nan"))

    with pytest.raises(ValueError, match="not finite.*diverged"):
        export_artifact(_edited_final(tiny_artifact, tmp_path, poison), tmp_path / "out", ood_spectra=0)
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_bank_changed_since_training(tiny_artifact, tmp_path):
    """The out-of-distribution fit and the calibration draw from the training bank: a file replaced since
    (a new 'references --out' of the same name) would describe another model."""
    from offline_training.export import export_artifact

    final = _edited_final(tiny_artifact, tmp_path, lambda ck: ck.update(bank_sha256="0" * 64))
    with pytest.raises(RuntimeError, match="has changed since the model was trained"):
        export_artifact(final, tmp_path / "out", ood_spectra=64)


def test_export_overwrite_replaces_an_artifact_only(tiny_artifact, tmp_path):
    """--overwrite pointed at a training run's folder (even the one holding the final.pt being exported)
    replaced it whole: checkpoint, weights and metrics gone."""
    from offline_training.export import export_artifact

    run = tmp_path / "run"
    shutil.copytree(tiny_artifact.parent / "run", run)
    for out in (run, tmp_path):   # the run's own folder; a folder of other files
        with pytest.raises(FileExistsError, match="holds .*final.pt|is no artifact"):
            export_artifact(run / "final.pt", out, overwrite=True, ood_spectra=0)
    assert (run / "final.pt").is_file() and (run / "checkpoint.pt").is_file()
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    assert export_artifact(run / "final.pt", art, overwrite=True, ood_spectra=0) == art   # an artifact: replaced
    load_artifact(art)



def test_export_fits_as_many_ood_spectra_as_the_training_config_asks(tiny_artifact, tmp_path, monkeypatch):
    """``export`` without ``--ood-spectra`` takes ``[train] ood_spectra`` of the checkpoint's config (a tiny model
    needs far fewer than the default's 20,000); a config from before the key gets the default; the option wins."""
    import offline_training.ood as ood
    from offline_training.export import DEFAULT_OOD_SPECTRA, export_artifact
    from offline_training.train_config import TrainSettings

    assert DEFAULT_OOD_SPECTRA == TrainSettings().ood_spectra == 20000

    def with_ood(n):
        def edit(ck):
            config = json.loads(ck["config"])
            config["train"].pop("ood_spectra", None)
            if n is not None:
                config["train"]["ood_spectra"] = n
            ck["config"] = json.dumps(config)
        return edit

    card = load_artifact(export_artifact(_edited_final(tiny_artifact, tmp_path, with_ood(80)), tmp_path / "a")).card
    assert (card["ood"]["n_fit"], card["ood"]["n_threshold"]) == (80, 400)
    card = load_artifact(export_artifact(_edited_final(tiny_artifact, tmp_path, with_ood(80)), tmp_path / "b",
                                         ood_spectra=0)).card
    assert "ood" not in card
    asked = []

    def stop_at_the_fit(model, fm, out, n_fit, n_threshold, **kw):
        asked.append((n_fit, n_threshold))
        raise RuntimeError("stopped at the fit")
    monkeypatch.setattr(ood, "fit_ood", stop_at_the_fit)
    with pytest.raises(RuntimeError, match="stopped at the fit"):
        export_artifact(_edited_final(tiny_artifact, tmp_path, with_ood(None)), tmp_path / "c")
    assert asked == [(DEFAULT_OOD_SPECTRA, 5 * DEFAULT_OOD_SPECTRA)]
