"""Export and artifact integrity: ONNX equals PyTorch, checksums refuse tampering, schema is checked."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mnedge_live.artifact import ArtifactError, load_artifact
from mnedge_live.engine import load_engine


def test_export_writes_card_with_checksums(tiny_artifact):
    art = load_artifact(tiny_artifact)
    card = art.card
    assert card["model_id"] == "tiny-test"
    assert {"model.onnx", "weights.pt"} <= set(card["files"])
    assert card["onnx"]["max_abs_difference_vs_torch"] <= 1e-4
    assert card["input"]["grid_points"] == 256
    assert card["training"]["git_commit"]
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


@pytest.mark.parametrize("victim", ["weights.pt", "model.onnx"])
def test_a_changed_byte_is_refused(tiny_artifact, tmp_path, victim):
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_engine(str(copy))


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


def test_tensorrt_export_refuses_clearly_without_a_gpu(tiny_artifact, tmp_path):
    import torch

    from offline_training.export import build_tensorrt_engines, load_trained

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the refusal path does not apply")
    model, _ = load_trained(tiny_artifact.parent / "run" / "final.pt")
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        build_tensorrt_engines(model, tmp_path)


def test_tensorrt_backend_is_skipped_with_a_reason_and_auto_falls_back(tiny_artifact):
    from mnedge_live.engine import BackendUnavailable, make_backend

    with pytest.raises(BackendUnavailable):
        make_backend(load_artifact(tiny_artifact), "tensorrt")
    engine = load_engine(str(tiny_artifact), backend="auto")
    assert engine.backend.name in ("onnxruntime", "torch")
