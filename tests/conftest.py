"""Shared fixtures: the shipped bank, a forward model, the real-spectra folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "real_spectra"


@pytest.fixture(scope="session", autouse=True)
def _threads():
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
