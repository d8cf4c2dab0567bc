"""Training devices: the name checked when the config is read, its presence when training starts, the rank."""

from __future__ import annotations

import pytest
import torch

from offline_training.devices import parse_device, rank_and_world, training_device


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:1"])
def test_a_device_of_a_kind_training_runs_on_is_accepted_by_name(name):
    assert parse_device(name) == torch.device(name)


@pytest.mark.parametrize("name", ["banana", "mps", "meta", "cuda:x", ""])
def test_any_other_name_is_refused_naming_it(name):
    with pytest.raises(ValueError) as exc:
        parse_device(name)
    assert str(exc.value) == f"[train] device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}"


def test_the_cpu_trains_anywhere_and_a_missing_gpu_is_refused_when_training_starts():
    assert training_device("cpu") == torch.device("cpu") and training_device("cpu", world=2) == torch.device("cpu")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda:99': this machine has \d+ CUDA GPU\(s\)"):
            training_device("cuda:99")
    else:
        with pytest.raises(ValueError, match=r"device 'cuda': no CUDA GPU is available to this torch .*use device"):
            training_device("cuda")


def test_rank_and_world_are_torchruns_or_a_single_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world() == (3, 4)
