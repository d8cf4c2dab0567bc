"""Trainer: on-the-fly synthetic batches, checkpoints and resume, CSV metrics, DDP with torchrun.

``mnedge-train train --config FILE.toml [--out DIR] [--resume]`` calls
:func:`train`.  Under ``torchrun --nproc_per_node N`` every rank draws its
own seeded stream (seed + rank) and gradients are averaged by
DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0 logs and writes
checkpoints.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnedge_live.artifact import Artifact
from mnedge_live.calibration import fit_calibration
from mnedge_live.network import MnEdgeCNN, NetworkConfig

# TrainConfig, TrainSettings, to_device, dropout_rng_state and restore_dropout_rng lived here before their
# modules were split off: code written then imports them from offline_training.train, which keeps working
from offline_training.checkpoints import (
    check_out_dir,
    check_resume,
    dropout_rng_state,
    keep_metrics_up_to,
    restore_dropout_rng,
)
from offline_training.devices import rank_and_world, to_device, training_device
from offline_training.forward import ForwardModel
from offline_training.generate import TrainingBatch, make_training_batch, stream
from offline_training.provenance import git_commit
from offline_training.train_config import TrainConfig, TrainSettings
from offline_training.values import check_whole

log = logging.getLogger(__name__)


def initial_weights(source: str, network: NetworkConfig) -> tuple[dict, dict]:
    """The weights of artifact ``source`` ("default": the model in use) to fine-tune from, and their origin.

    Fine-tuning the shipped model on a site's own forward-model settings
    (its resolution, noise, offsets) needs far fewer steps than training from
    scratch. The artifact is verified (checksums) and must have the same
    layers (:meth:`NetworkConfig.same_weights_as`: the activation may differ,
    e.g. a GELU parent fine-tuned into a ReLU network), or the same with
    fewer channels per stage (its weights are then pruned to the channels
    that carry the most: :mod:`offline_training.prune`), and the
    preprocessing of this build, else ``ValueError`` says which.
    The origin (``source``, ``model_id``, ``weights_sha256``) goes into the
    checkpoints and the exported model card, so a fine-tuned model names its
    parent even after the parent's directory is gone.
    """
    from offline_training.prune import prunable, prune

    art, weights, origin = _verified_artifact(source, "init_from")
    parent = NetworkConfig.from_dict(art.card["network"])
    same = parent.same_weights_as(network)
    if not (same or prunable(parent, network)):
        raise ValueError(f"init_from {source}: its network {art.card['network']} differs from the config's "
                         f"{network.to_dict()} by more than fewer channels per stage")
    if same:
        return weights, origin
    model = MnEdgeCNN(parent)
    model.load_state_dict(weights)
    origin["pruned_from_channels"] = list(parent.channels)
    log.info("pruned %s's channels %s to %s", art.model_id, list(parent.channels), list(network.channels))
    return prune(model, network.channels).state_dict(), origin


def load_teacher(source: str) -> tuple[MnEdgeCNN, dict]:
    """The network of artifact ``source`` ("default": the model in use) in eval mode, frozen, and its origin.

    The artifact is verified (checksums) and must share this build's
    preprocessing (its readings are targets for the same model input); its
    layers may differ from the student's.
    """
    art, weights, origin = _verified_artifact(source, "teacher")
    net = MnEdgeCNN(NetworkConfig.from_dict(art.card["network"]))
    net.load_state_dict(weights)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), origin


def _verified_artifact(source: str, role: str) -> tuple[Artifact, dict, dict]:
    """Artifact ``source`` ("default": the model in use), checksums verified, trained with this build's
    preprocessing (else ``ValueError`` naming ``role``), its weights and its origin for the checkpoint.

    An artifact that cannot be loaded raises ``ArtifactError`` naming ``role`` and ``source``.
    """
    from mnedge_live.artifact import ArtifactError, load_artifact
    from mnedge_live.engine.core import PREPROCESSING_ID

    try:
        art = load_artifact(None if source == "default" else source)
    except ArtifactError as exc:
        raise ArtifactError(f"{role} {source}: {exc}") from None
    if art.card["input"]["preprocessing"] != PREPROCESSING_ID:
        raise ValueError(f"{role} {source}: trained with preprocessing {art.card['input']['preprocessing']!r}, "
                         f"this build has {PREPROCESSING_ID!r}")
    origin = {"source": source, "model_id": art.model_id, "weights_sha256": art.card["files"]["weights.pt"]}
    return art, torch.load(io.BytesIO(art.read("weights.pt")), map_location="cpu", weights_only=True), origin


def compute_loss(model_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], tb: TrainingBatch,
                 s: TrainSettings, teacher_fractions: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts.

    Fractions: squared error (the paper's MSE) or absolute error
    (``fraction_loss``), plus the same error of the valence.
    Uncertainty: Gaussian negative log-likelihood of the (detached) errors,
    so the std head learns the error scale without pulling the means.
    Side outputs: Huber losses (t/lambda only for EELS rows) and a BCE for
    the modality. Optionally (``w_box``) a smooth surrogate of the share of
    spectra outside accuracy_0.1's box.
    """
    frac, log_std, side = model_out
    f_true = tb.fractions
    valences = torch.tensor([2.0, 3.0, 4.0], device=frac.device)
    val_pred = frac @ valences
    val_true = tb.targets["valence"]
    error = F.l1_loss if s.fraction_loss == "l1" else F.mse_loss
    l_frac = error(frac, f_true)
    l_val = error(val_pred, val_true)
    err = torch.cat([frac - f_true, (val_pred - val_true)[:, None]], dim=1).detach()
    l_nll = (0.5 * (err / log_std.exp()) ** 2 + log_std).mean()
    eels = tb.targets["is_eels"]
    l_off = F.huber_loss(side[:, 0], tb.targets["offset_residual_eV"], delta=1.0)
    l_res = F.huber_loss(side[:, 1], tb.targets["resolution_eV"], delta=0.5)
    l_tl = (F.huber_loss(side[:, 2], tb.targets["t_lambda"], delta=0.5, reduction="none") * eels).sum() / eels.sum().clamp(min=1)
    l_mod = F.binary_cross_entropy_with_logits(side[:, 3], eels)
    l_box = torch.sigmoid(((frac - f_true).abs().amax(dim=1) - 0.1) / s.box_softness).mean()
    total = (s.w_fractions * l_frac + s.w_valence * l_val + s.w_nll * l_nll
             + s.w_side * (l_off + l_res + l_tl + l_mod) + s.w_box * l_box)
    l_teacher = torch.zeros((), device=frac.device)
    if teacher_fractions is not None:
        l_teacher = error(frac, teacher_fractions) + error(val_pred, teacher_fractions @ valences)
        total = total + s.w_teacher * l_teacher
    parts = {"loss": total.item(), "frac_loss": l_frac.item(), "valence_loss": l_val.item(), "nll": l_nll.item(),
             "box": l_box.item(), "teacher": l_teacher.item(),
             "offset": l_off.item(), "resolution": l_res.item(), "t_lambda": l_tl.item(), "modality": l_mod.item(),
             "frac_mae": (frac - f_true).abs().mean().item(), "valence_mae": (val_pred - val_true).abs().mean().item()}
    return total, parts


def _lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up then cosine decay to 2 % of the peak rate."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    t = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _weight_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers with ``decay`` (None when 0)."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _cpu(state: dict) -> dict:
    """A state dict with every tensor on the CPU (a ``final.pt`` loads on any machine)."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def calibrate_std(model: nn.Module, fm: ForwardModel, n: int, seed: int, batch: int = 1024) -> dict:
    """Factors that make the predicted one-sigma intervals cover 68.27 % of held-out errors.

    For each of the four outputs (three fractions, valence) the factor is the
    68.27 % quantile of ``|error| / predicted_std`` on ``n`` fresh synthetic
    spectra (a seed never used in training), overall and per group of the
    largest fraction read (:func:`mnedge_live.calibration.fit_calibration`).
    Returns the model card's ``calibration`` entry.
    """
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    zs, fs = [], []
    with torch.no_grad():
        for start in range(0, n, batch):
            tb = to_device(make_training_batch(fm, min(batch, n - start), generator=gen), device)
            frac, log_std, _ = model(tb.x)
            val = frac @ torch.tensor([2.0, 3.0, 4.0], device=device)
            err = torch.cat([frac - tb.fractions, (val - tb.targets["valence"])[:, None]], dim=1)
            zs.append((err.abs() / log_std.exp()).cpu())
            fs.append(frac.cpu())
    calibration = fit_calibration(torch.cat(zs).numpy(), torch.cat(fs).numpy())
    calibration.update(spectra=n, seed=seed)
    return calibration


def _final_step(path: Path) -> int | None:
    """The step a ``final.pt`` was written at (None when it cannot be read): a resumed run is finished only
    when its final.pt is of the checkpoint's step, not one left by an earlier target of the same run."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["steps"])
    except Exception:
        return None


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, overwrite: bool = False) -> Path | None:
    """Train a model; returns the path of ``final.pt`` (weights, config, calibration).

    Parameters
    ----------
    config : TrainConfig
        Network, forward model and optimization settings.
    out_dir : path
        Receives ``checkpoint.pt`` (every ``checkpoint_every`` steps),
        ``metrics.csv``, ``config.json`` and at the end ``final.pt``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` (model, optimizer, step and
        the dropout generator's state; the data stream continues at that
        step's batch), reproducing the same run. The config and the bank
        must be the checkpoint's (:func:`~offline_training.checkpoints.check_resume`; only ``[train]
        steps`` may change, and each invocation's steps and seconds are recorded as
        ``runs`` in the checkpoint and ``final.pt``, whose ``train_seconds`` is their sum).
        A run finished already (at its ``steps``, with ``final.pt``) is left as it is.
    progress : bool
        Show a tqdm progress bar (rank 0).
    stop_after : int, optional
        Stop (with a checkpoint, without ``final.pt``) once this many steps
        are done in total: time-slicing on a shared machine; ``--resume``
        continues the same run.  Returns None then.
    overwrite : bool
        Replace a run already in ``out_dir`` (its ``checkpoint.pt`` and
        ``final.pt`` are removed first); without it or ``resume`` a folder
        holding a run is refused (:func:`~offline_training.checkpoints.check_out_dir`).
    """
    from tqdm import tqdm

    s = config.train
    s.validate()   # settings may have been changed since the config was read
    if stop_after is not None:
        check_whole("stop_after (--stop-after)", stop_after, 1)
    rank, world = rank_and_world()
    device = training_device(s.device, world)
    out = Path(out_dir)
    check_out_dir(out, resume, overwrite)   # on every rank before any passes the process group's rendezvous
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed + rank)
    bank = config.load_bank()
    fm = ForwardModel(bank, config.forward, device="cpu", compiled=s.compile_forward)
    model = MnEdgeCNN(config.network).to(device)   # initialized on the CPU (the same weights anywhere)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    step = 0
    ckpt_path = out / "checkpoint.pt"
    ck: dict = {}
    bank_sha256 = fm.bank_sha256
    runs: list[dict] = []   # every invocation: the step it started at and the steps it aimed at
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        check_resume(ck, config, bank_sha256, ckpt_path, world)
        runs = json.loads(ck.get("runs", "[]"))
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        if s.steps < step:
            raise ValueError(f"--steps {s.steps}: {ckpt_path} is at step {step} already; resume with at least "
                             f"{step} steps")
        if stop_after is not None and stop_after <= step:
            raise ValueError(f"--stop-after {stop_after}: {ckpt_path} is at step {step} already; "
                             "stop after a later step, or resume without --stop-after")
        restore_dropout_rng(ck, rank, device)
        origin = ck.get("init_from", "")
        final_path = out / "final.pt"
        if step == s.steps and final_path.exists() and _final_step(final_path) == step:
            # finished already: its final.pt (weights, calibration, training time) stays as it was written
            log.info("%s finished at step %d already: final.pt kept as it is", out, step)
            if world > 1:
                torch.distributed.destroy_process_group()
            return final_path
        log.info("resumed from step %d", step)
    elif s.init_from:
        weights, parent = initial_weights(s.init_from, config.network)
        model.load_state_dict(weights)
        origin = json.dumps(parent)
        log.info("initialized from %s (%s)", s.init_from, parent["model_id"])
    else:
        origin = ""
    teacher, teacher_origin = load_teacher(s.teacher) if s.teacher else (None, None)
    out.mkdir(parents=True, exist_ok=True)   # after the bank and the models it reads are found good: a refused
    # run leaves no empty --out behind
    if teacher is not None:
        teacher = teacher.to(device)
        log.info("distilling from %s (%s)", s.teacher, teacher_origin["model_id"])
    if resume and ck.get("teacher"):   # the same name ("default", a path) may hold other weights by now
        saved = json.loads(ck["teacher"])
        if (teacher_origin or {}).get("weights_sha256") != saved.get("weights_sha256"):
            raise ValueError(f"--resume: {ckpt_path} was distilled from {saved.get('model_id')} (weights "
                             f"{str(saved.get('weights_sha256'))[:12]}...); [train] teacher {s.teacher!r} now holds "
                             f"{(teacher_origin or {}).get('model_id')}: put that model back or use another --out")
    if overwrite and rank == 0:
        # only now that the bank, the initial weights and the teacher are read: a typo in one of them must
        # not cost the old run; and a stopped or failed new run must not leave the old final.pt beside it
        for name in ("checkpoint.pt", "final.pt"):
            (out / name).unlink(missing_ok=True)
    ema = _weight_average(model, s.ema_decay)   # starts at the initial (or fine-tuned from) weights
    if ema is not None and resume:
        ema.load_state_dict(ck["ema"])
    # seconds: up to its last checkpoint; the code and the processes of this invocation (a resume may differ)
    runs.append({"from_step": step, "steps": s.steps, "seconds": 0.0, "git_commit": git_commit(), "processes": world})
    if rank == 0:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    metrics_file = out / "metrics.csv"
    writer = None
    fh = None
    if rank == 0:
        if resume and metrics_file.exists():
            keep_metrics_up_to(metrics_file, step)
        fh = open(metrics_file, "a" if resume and metrics_file.exists() else "w", newline="")
    model.train()
    t0 = time.time()
    seen = 0
    bar = tqdm(total=s.steps, initial=step, disable=not progress or rank != 0, desc="train", unit="step")
    stop_at = s.steps if stop_after is None else min(s.steps, stop_after)
    # batch k of this rank is drawn from its own seeded generator: a resumed run continues at k = step
    batches = stream(fm, s.batch_size, s.seed * 1000 + rank, start=step, stop=stop_at, workers=s.data_workers)
    try:
        for tb in batches:
            tb = to_device(tb, device)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, s)
            outp = ddp_model(tb.x)
            teacher_fractions = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_fractions = teacher(tb.x)[0]
            loss, parts = compute_loss(outp, tb, s, teacher_fractions)
            if not torch.isfinite(loss):
                msg = f"the loss is {loss.item()} at step {step + 1}: the training diverged (a lower lr?)"
                raise ValueError(msg + (f"; {ckpt_path} holds the last checkpoint before it"
                                        if ckpt_path.exists() else ""))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            seen += s.batch_size * world
            bar.update(1)
            if rank == 0 and (step % s.log_every == 0 or step == s.steps):
                row = {"step": step, "lr": opt.param_groups[0]["lr"],
                       "spectra_per_s": seen / max(1e-9, time.time() - t0), **parts}
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    if fh.tell() == 0:
                        writer.writeheader()
                writer.writerow(row)
                fh.flush()
                bar.set_postfix(loss=f"{parts['loss']:.4f}", vmae=f"{parts['valence_mae']:.3f}")
            if step % s.checkpoint_every == 0 or step == stop_at:
                rngs = [dropout_rng_state(device)]
                if world > 1:
                    rngs = [None] * world
                    torch.distributed.all_gather_object(rngs, dropout_rng_state(device))
                runs[-1]["seconds"] = round(time.time() - t0, 3)
                runs[-1]["to_step"] = step   # where this invocation got to (its target is "steps")
                if rank == 0:
                    tmp = ckpt_path.with_suffix(".tmp")
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                "torch_rng": [r["cpu"] for r in rngs],
                                **({"cuda_rng": [r["cuda"] for r in rngs]} if device.type == "cuda" else {}),
                                "config": json.dumps(config.to_dict()),
                                "bank_sha256": bank_sha256, "runs": json.dumps(runs), "init_from": origin,
                                "teacher": json.dumps(teacher_origin) if teacher_origin else "",
                                **({"ema": ema.state_dict()} if ema is not None else {})}, tmp)
                    os.replace(tmp, ckpt_path)
    finally:
        batches.close()   # stops the worker processes
        bar.close()
        if fh is not None:
            fh.close()
    if step < s.steps:
        if world > 1:
            torch.distributed.destroy_process_group()
        return None
    final = out / "final.pt"
    if rank == 0:
        if ema is not None:
            model = ema.module
        calibration = calibrate_std(model, fm, s.calibration_spectra, seed=10_000_019 + s.seed)
        runs[-1]["seconds"] = round(time.time() - t0, 3)
        torch.save({"model": _cpu(model.state_dict()), "config": json.dumps(config.to_dict()),
                    "std_scale": calibration["std_scale"], "calibration": json.dumps(calibration), "steps": step,
                    "bank_sha256": bank_sha256, "runs": json.dumps(runs),
                    # every invocation's time to its last checkpoint (a resumed run's earlier ones included)
                    "train_seconds": sum(float(r.get("seconds", 0.0)) for r in runs), "init_from": origin,
                    "teacher": json.dumps(teacher_origin) if teacher_origin else ""}, final.with_suffix(".tmp"))
        os.replace(final.with_suffix(".tmp"), final)   # whole or absent, as checkpoint.pt: export reads it
        log.info("calibration factors %s", calibration["std_scale"])
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return final
