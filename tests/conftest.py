"""Shared fixtures: the shipped bank, a forward model, the real-spectra folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from live_support import scratch_dir, use_loopback_channel_access

#: Channel Access port of this test session (loopback only), set before any test module imports ophyd.
CA_PORT = use_loopback_channel_access()
#: An empty model store for the session (and its subprocesses): a store on the machine must not
#: change which model "the default" is; tests that need a store set their own MNEDGE_HOME.
os.environ["MNEDGE_HOME"] = str(scratch_dir("store-"))

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "real_spectra"


@pytest.fixture(autouse=True)
def _threads():
    """Every test starts with torch on 2 threads (``load_engine(threads=...)`` changes the process's pool)."""
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def bank():
    from offline_training.references.bank import Bank

    return Bank.load()


@pytest.fixture(scope="session")
def forward_model(bank):
    from offline_training.forward import ForwardConfig, ForwardModel

    return ForwardModel(bank, ForwardConfig(offset=(-15.0, 15.0)))


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL_DIR.is_dir():
        pytest.skip(f"measured spectra folder {REAL_DIR} is absent")
    return REAL_DIR


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """A tiny model trained for a few steps with the real trainer and exported with the real exporter."""
    from offline_training.export import export_artifact
    from offline_training.train import train
    from offline_training.train_config import TrainConfig

    root = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig.from_toml(Path(__file__).resolve().parents[1] / "offline_training" / "configs" / "tiny.toml")
    cfg.train.steps = 8
    cfg.train.calibration_spectra = 128
    final = train(cfg, root / "run", progress=False)
    return export_artifact(final, root / "artifact", model_id="tiny-test", ood_spectra=0)
