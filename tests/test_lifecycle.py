"""Facility-staff workflow end to end with a tiny model on CPU.

Measured references -> bank -> synthetic data -> training -> export -> gated
evaluation against the model in use -> release export with its evaluation ->
``mnedge models install / use / list / rollback``, every step through the real
command-line entry points, with ``MNEDGE_HOME`` set to a temporary store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mnedge_live.artifact import load_artifact
from mnedge_live.cli import main as mnedge
from mnedge_live.model_store import HOME_ENV
from offline_training.cli import main as mnedge_train

ROOT = Path(__file__).resolve().parents[1]


def write_measured_references(folder: Path) -> dict[int, Path]:
    """One two-column file per valence, as staff would measure them: a bank spectrum on an edge step, with noise."""
    from offline_training.references.bank import Bank

    bank = Bank.load()
    rng = np.random.default_rng(0)
    files = {}
    for v in (2, 3, 4):
        i = int(np.flatnonzero(bank.valence == v)[0])
        e = bank.energy[::2]
        y = bank.spectra[i, ::2] / bank.spectra[i].max()
        y = y + 0.05 + 0.2 / (1 + np.exp(-(e - 642.0))) + rng.normal(0, 0.003, e.size)
        path = folder / f"Mn{v}_reference.txt"
        np.savetxt(path, np.column_stack([e, y]), header="energy_eV intensity", fmt="%.5f")
        files[v] = path
    return files


def out_of(capsys) -> str:
    return capsys.readouterr().out


def test_staff_lifecycle(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "mnedge_home"))
    refs = write_measured_references(tmp_path)

    # 1. measured references joined to the shipped bank
    bank = tmp_path / "bank.npz"
    assert mnedge_train(["references", "--measured-only", "--measured", *[f"{v}:{p}" for v, p in refs.items()],
                         "--out", str(bank), "--no-progress"]) == 0
    summary = json.loads(out_of(capsys))
    from offline_training.references.bank import Bank

    shipped = Bank.load()
    assert summary["spectra"] == len(shipped.spectra) + 3
    assert summary["per_valence"] == {f"Mn{v}+": int((shipped.valence == v).sum()) + 1 for v in (2, 3, 4)}

    # 2. a synthetic dataset from that bank
    config = tmp_path / "site.toml"
    config.write_text(f'bank = "{bank}"\n' + (ROOT / "offline_training" / "configs" / "tiny.toml").read_text())
    data = tmp_path / "data.h5"
    assert mnedge_train(["generate", "--n", "64", "--seed", "1", "--config", str(config), "--out", str(data),
                         "--no-progress"]) == 0
    with h5py.File(data) as f:
        assert f["spectra"].shape[0] == 64 and f["fractions"].shape == (64, 3)
        assert np.allclose(f["fractions"][:].sum(1), 1, atol=1e-5)

    # 3. train a tiny model on that bank, export it and put it in use: the "current" site model
    run = tmp_path / "run"
    assert mnedge_train(["train", "--config", str(config), "--steps", "8", "--out", str(run), "--no-progress"]) == 0
    final = Path(out_of(capsys).strip().splitlines()[-1])
    assert final.is_file()
    assert mnedge_train(["export", str(final), "--out", str(tmp_path / "v1"), "--model-id", "site-v1"]) == 0
    capsys.readouterr()
    assert load_artifact(tmp_path / "v1").card["training"]["config"]["bank"] == str(bank)
    assert mnedge(["models", "install", str(tmp_path / "v1"), "--use"]) == 0
    assert "installed site-v1" in out_of(capsys)

    # 4. a candidate, gated against the model in use ('default' resolves through the store)
    assert mnedge_train(["export", str(final), "--out", str(tmp_path / "cand"), "--model-id", "site-v2"]) == 0
    capsys.readouterr()
    (tmp_path / "no_real_spectra").mkdir()   # an empty folder: no measured spectra to read
    common = ["evaluate", "--model", str(tmp_path / "cand"), "--n", "256", "--n-nnls", "0", "--robustness-n", "0",
              "--bank", str(bank), "--real-dir", str(tmp_path / "no_real_spectra"), "--backend", "onnxruntime"]
    evaluation = tmp_path / "evaluation.json"
    assert mnedge_train([*common, "--gate", "default", "--out", str(evaluation)]) == 0  # same weights: not worse
    res = json.loads(evaluation.read_text())
    assert res["model"] == "site-v2" and res["gate"]["reference_model"] == "site-v1" and res["gate"]["passed"]
    assert res["accuracy_0.1"] == pytest.approx(res["gate"]["reference_accuracy_0.1"])
    capsys.readouterr()
    # a gate nobody can pass (must beat the reference by 1.5 in a [0, 1] accuracy): exit 1
    assert mnedge_train([*common, "--gate", "default", "--gate-tolerance", "-1.5"]) == 1
    capsys.readouterr()

    # 5. the release artifact records its evaluation; install it, switch, list, roll back
    release = tmp_path / "release"
    assert mnedge_train(["export", str(final), "--out", str(release), "--model-id", "site-v2",
                         "--evaluation", str(evaluation)]) == 0
    capsys.readouterr()
    assert load_artifact(release).card["evaluation"]["gate"]["passed"] is True
    assert mnedge(["models", "install", str(release)]) == 0
    assert mnedge(["models", "use", "site-v2"]) == 0
    capsys.readouterr()
    assert mnedge(["models", "list", "--json"]) == 0
    info = json.loads(out_of(capsys))
    assert info["in_use"] == "site-v2" and [m["model_id"] for m in info["models"]] == ["site-v1", "site-v2"]
    assert all(m["status"] == "ok" for m in info["models"])

    from mnedge_live.engine import load_engine

    assert load_engine(backend="onnxruntime", warmup=False).model_id == "site-v2"  # no path: the store's model
    assert mnedge(["models", "rollback"]) == 0
    assert "in use: site-v1" in out_of(capsys)
    assert load_engine(backend="onnxruntime", warmup=False).model_id == "site-v1"

    # the console script sees the same store through MNEDGE_HOME
    r = subprocess.run([str(Path(sys.executable).parent / "mnedge"), "models", "list"], capture_output=True,
                       text=True, env={**os.environ}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "* site-v1" in r.stdout and "  site-v2" in r.stdout and "rollback goes to: none in use" in r.stdout
