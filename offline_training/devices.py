"""Where training runs: the ``[train] device`` checked and resolved, the torchrun rank, batches moved there.

The batches are synthesized on the CPU; the network, the model input and the
targets live on the training device.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from offline_training.generate import TrainingBatch

#: Kinds of ``[train] device`` the trainer runs on.
TRAIN_DEVICES = ("cpu", "cuda")


def parse_device(name: str) -> torch.device:
    """``name`` as a torch device of a kind training runs on (:data:`TRAIN_DEVICES`), else ``ValueError``.

    Only the name is checked here (when the config is read); whether this
    machine has the device is :func:`training_device`'s question.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in TRAIN_DEVICES:
        raise ValueError(f"[train] device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return device


def training_device(name: str, world: int = 1) -> torch.device:
    """The device ``[train] device`` names, refused (``ValueError``) when this machine lacks it.

    ``"cuda"`` without an index is the process's own GPU under torchrun
    (``LOCAL_RANK``) and the current one otherwise. A CUDA device on a
    torch without CUDA, or an index beyond the GPUs present, is refused
    rather than silently trained on the CPU.
    """
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"[train] device {name!r}: no CUDA GPU is available to this torch "
                             f"({torch.__version__}); use device = \"cpu\"")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if world > 1
                                  else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"[train] device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of training processes (torchrun's ``RANK`` and ``WORLD_SIZE``;
    0 and 1 without torchrun)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def to_device(tb: TrainingBatch, device: torch.device) -> TrainingBatch:
    """``tb`` with the model input, fractions and targets on ``device`` (the synthetic batch stays)."""
    return dataclasses.replace(tb, x=tb.x.to(device), fractions=tb.fractions.to(device),
                               targets={k: v.to(device) for k, v in tb.targets.items()})
