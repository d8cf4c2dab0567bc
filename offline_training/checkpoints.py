"""Checkpoints of a training run: what may resume it, where a run may be written, and its random state.

A resumed run must continue the very run its checkpoint recorded (same
config and bank, :func:`check_resume`), a new run must not silently replace
one (:func:`check_out_dir`), and the metrics and the dropout generators are
put back to the checkpoint's step, so that a run stopped and resumed repeats
an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import torch

from offline_training.train_config import TrainConfig

log = logging.getLogger(__name__)


#: Config keys a resumed run may change: the number of steps (the run is extended or shortened; each
#: invocation's target is recorded in the checkpoint's and final.pt's ``runs``), the settings that
#: only decide how the same run executes (device, threads, data workers: the same batches; logging and
#: checkpoint intervals), and the bank's path (its content is compared by SHA-256 instead: the same
#: bank moved or named relative to another folder is the same bank).
RESUMABLE_CHANGES = ("train.steps", "train.device", "train.threads", "train.data_workers", "train.log_every",
                     "train.checkpoint_every", "bank")


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys (``train.lr``) whose values differ between two config dicts, with both values.

    Both are compared as JSON (tuples as lists), the form the checkpoint keeps.
    """
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "(absent)"), current.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a!r} in the checkpoint, {b!r} now)")
    return out


def check_resume(ck: dict, config: TrainConfig, bank_sha256: str, ckpt_path: Path, world: int = 1) -> None:
    """Refuse to resume ``ck`` with another config, bank or number of processes (``ValueError`` naming what differs).

    A resumed run continues the checkpoint's weights, optimizer and data
    stream; with another config or bank it would silently become a mixture
    of two runs recorded as the last one. Only :data:`RESUMABLE_CHANGES`
    may differ. A checkpoint written before the bank checksum was kept is
    resumed with a warning that its bank cannot be checked.  ``world``, the
    number of training processes now, must be the checkpoint's: each
    process draws its own part of the stream and its own dropout masks, and
    the batch is ``batch_size`` per process (a process more found no state
    of its own and failed with a traceback; a process less went on as
    another run).
    """
    saved_world = len(ck.get("torch_rng") or [None])
    if saved_world != world:
        raise ValueError(f"--resume: {ckpt_path} was written by {saved_world} training process(es), this run has "
                         f"{world}: resume with the same number (torchrun --nproc_per_node {saved_world}"
                         f"{'' if saved_world > 1 else ', or without torchrun'}) or use another --out")
    saved_config = json.loads(ck["config"])
    try:   # read as a config file is: keys added since it was written take their meaning then (forward.physics 1)
        saved_config = TrainConfig.from_dict(saved_config).to_dict()
    except (ValueError, TypeError, KeyError):
        pass   # compared as written: the differences name what no longer reads
    differ = [d for d in config_differences(saved_config, config.to_dict())
              if d.split(" ", 1)[0] not in RESUMABLE_CHANGES]
    if differ:
        raise ValueError(f"--resume: {ckpt_path} was written with another config; differing: "
                         f"{'; '.join(differ)} (only {', '.join(RESUMABLE_CHANGES)} may change on resume: "
                         f"use the checkpoint's config or another --out)")
    saved = ck.get("bank_sha256")
    if saved is None:
        log.warning("--resume: %s records no bank checksum (written before it was kept): the bank is not checked",
                    ckpt_path)
    elif saved != bank_sha256:
        raise ValueError(f"--resume: bank {config.bank or '(shipped)'} has SHA-256 {bank_sha256[:12]}..., "
                         f"{ckpt_path} was trained on {saved[:12]}...: use the checkpoint's bank or another --out")


def recorded_steps(ckpt_path: Path) -> int | None:
    """The number of steps the run in ``ckpt_path`` was last started for (its ``runs``), None when the
    checkpoint cannot tell: ``--resume`` without ``--steps`` continues to that target, not to the config
    file's ``steps`` (a run started with ``--steps 6`` and stopped went on to the file's 30)."""
    try:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        steps = json.loads(ck.get("runs", "[]"))[-1]["steps"]
    except Exception:   # no checkpoint, an older one without runs: the caller's config decides, train() checks
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


#: Files of a training run in its folder (:func:`~offline_training.train.train`); one of them there means the folder holds a run.
RUN_FILES = ("checkpoint.pt", "final.pt", "metrics.csv", "config.json")


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder holding a run unless it is continued or replaced on purpose.

    Raises
    ------
    ValueError
        ``resume`` and ``overwrite`` together.
    FileExistsError
        ``out`` holds one of :data:`RUN_FILES` and neither ``resume`` nor ``overwrite`` is set: the new
        run would silently replace that run's checkpoint and ``final.pt``.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not (resume or overwrite):
        raise FileExistsError(f"--out {out} holds a training run ({', '.join(held)}): continue it with --resume, "
                              "replace it with --overwrite, or choose another --out")


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop the rows of ``metrics.csv`` logged after ``step`` (and a torn last line), keeping the header.

    A run stopped between two checkpoints has logged steps that its resume,
    which restarts at the last checkpoint's step, logs again: without this
    they would appear twice.
    """
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1]
    for row in rows[1:]:
        try:
            if int(row[0]) <= step:
                kept.append(row)
        except (ValueError, IndexError):
            continue
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def dropout_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generator states dropout draws from on ``device``: the CPU's, and on CUDA the device's own
    (a checkpoint without it resumes a CUDA run with other dropout masks than the run it continues)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_dropout_rng(ck: dict, rank: int, device: torch.device) -> None:
    """Put back the generator states of ``rank`` saved by the checkpoint ``ck`` (:func:`dropout_rng_state`).

    A run resumed on CUDA from a checkpoint written on the CPU (``device`` may change on resume) has no
    CUDA state to restore: its dropout masks then differ from an uninterrupted run's, and a warning
    says so.
    """
    torch.set_rng_state(ck["torch_rng"][rank])
    if device.type != "cuda":
        return
    saved = ck.get("cuda_rng")
    if saved is None:
        log.warning("resuming on %s from a checkpoint written on the CPU: dropout draws from a fresh CUDA "
                    "generator, so this run will not repeat an uninterrupted one", device)
        return
    torch.cuda.set_rng_state(saved[rank], device)
