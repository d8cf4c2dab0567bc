"""Export a trained model as a versioned artifact (ONNX + weights + model card), optionally with TensorRT engines."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import pickle
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

from mnedge_live.artifact import load_artifact, write_card
from mnedge_live.calibration import METHOD as CALIBRATION_METHOD
from mnedge_live.engine.core import PREPROCESSING_ID
from mnedge_live.model_store import MODEL_ID_RULE, is_model_id
from mnedge_live.network import (
    EXPORT_OUTPUT_NAMES,
    SIDE_NAMES,
    MnEdgeCNN,
    NetworkConfig,
    count_flops,
    count_parameters,
)
from mnedge_live.preprocessing import L3_REFERENCE_EV, MODEL_GRID, WORK_STEP_EV
from offline_training.provenance import git_commit
from offline_training.train_config import TrainSettings

ONNX_OPSET = 17
#: Out-of-distribution spectra of a checkpoint whose training config predates ``[train] ood_spectra``.
DEFAULT_OOD_SPECTRA = TrainSettings.ood_spectra
#: How the exported graph lays out the network (recorded in the card).
GRAPH_FORM = "planar: 1-D feature stages as 2-D of height 1"


def artifact_network(art) -> MnEdgeCNN:
    """The network of a loaded :class:`~mnedge_live.artifact.Artifact`, its weights in place, in eval mode."""
    model = MnEdgeCNN(NetworkConfig.from_dict(art.card["network"]))
    model.load_state_dict(torch.load(art.file("weights.pt"), map_location="cpu", weights_only=True))
    return model.eval()


#: Entries of a trainer's ``final.pt`` that an export needs (a ``checkpoint.pt`` lacks the calibration).
FINAL_KEYS = ("model", "config", "std_scale", "steps")


def read_final(final_pt: str | Path) -> dict:
    """The contents of a trainer's ``final.pt`` (weights only, no pickled code).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is an intermediate ``checkpoint.pt`` (training not finished:
        no calibration yet) or no training checkpoint at all; the message
        names the file and what to export instead.
    """
    path = Path(final_pt)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the final.pt of 'mnedge-train train')")
    not_final = f"{path} is not a training checkpoint (export the final.pt that 'mnedge-train train' writes)"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError) as exc:
        raise ValueError(f"{not_final}: torch cannot read it ({type(exc).__name__})") from None
    if not isinstance(ck, dict):
        raise ValueError(not_final)
    if "optimizer" in ck and "std_scale" not in ck:
        where = f"step {ck.get('step')}" + (f" of {json.loads(ck['config'])['train']['steps']}" if "config" in ck else "")
        raise ValueError(f"{path} is an intermediate checkpoint ({where}): finish training with 'mnedge-train train "
                         f"--config CONFIG.toml --resume --out {path.parent}' (CONFIG.toml: the file it was trained "
                         f"with; {path.parent / 'config.json'} holds its settings), or export final.pt")
    missing = [k for k in FINAL_KEYS if k not in ck]
    if missing:
        raise ValueError(f"{not_final}: it lacks {', '.join(missing)}")
    return ck


def load_trained(final_pt: str | Path) -> tuple[MnEdgeCNN, dict]:
    """Rebuild the network from a trainer's ``final.pt`` (weights only, no pickled code; :func:`read_final`)."""
    ck = read_final(final_pt)
    cfg = json.loads(ck["config"])
    model = MnEdgeCNN(NetworkConfig.from_dict(cfg["network"]))
    model.load_state_dict(ck["model"])
    return model.eval(), ck


class PlanarView(torch.nn.Module):
    """The same network with its 1-D feature stages run as 2-D ones of height 1, for export.

    Same weights, same input ``(B, 2, L)`` and outputs as
    :meth:`MnEdgeCNN.forward_with_features`. ONNX Runtime's CPU
    provider has blocked (NCHWc) kernels for 2-D convolutions only: on this
    project's 2-core machine the view runs a batch of 1024 in 72 ms instead of
    87 ms on 1 thread, 41 instead of 73 ms on 2 (benchmarks/RESULTS.md).
    """

    def __init__(self, model: MnEdgeCNN):
        super().__init__()
        self.model = model
        self.features = torch.nn.Sequential(*(_planar(layer) for layer in model.features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(fractions, log_std, side, features)`` for ``(B, 2, L)``, as :meth:`MnEdgeCNN.forward_with_features`."""
        h = self.model.trunk(self.features(x.unsqueeze(2)))
        return (*self.model.readout(h), h)


class WithFeatures(torch.nn.Module):
    """:meth:`MnEdgeCNN.forward_with_features` as a module's ``forward`` (what TensorRT compiles)."""

    def __init__(self, model: MnEdgeCNN):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(fractions, log_std, side, features)``."""
        return self.model.forward_with_features(x)


def _planar(layer: torch.nn.Module) -> torch.nn.Module:
    """``layer`` acting on ``(B, C, 1, L)`` as it acted on ``(B, C, L)`` (shares the weights)."""
    nn = torch.nn
    if isinstance(layer, nn.Conv1d):
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, (1, layer.kernel_size[0]), stride=(1, layer.stride[0]),
                         padding=(0, layer.padding[0]), dilation=(1, layer.dilation[0]), groups=layer.groups,
                         bias=layer.bias is not None)
        conv.weight = nn.Parameter(layer.weight.detach().unsqueeze(2))
        if layer.bias is not None:
            conv.bias = layer.bias
        return conv
    if isinstance(layer, nn.BatchNorm1d):
        bn = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
        bn.load_state_dict(layer.state_dict())
        return bn
    if isinstance(layer, nn.MaxPool1d):
        return nn.MaxPool2d((1, layer.kernel_size), stride=(1, layer.stride), padding=(0, layer.padding),
                            dilation=(1, layer.dilation), ceil_mode=layer.ceil_mode)
    if isinstance(layer, nn.GELU | nn.ReLU | nn.Identity | nn.Dropout):
        return layer
    raise TypeError(f"no 2-D form for {type(layer).__name__}")


def export_onnx(model: MnEdgeCNN, path: str | Path) -> Path:
    """Write the network (as its :class:`PlanarView`) as ONNX with a dynamic batch dimension."""
    import onnx  # noqa: F401 - torch's exporter needs it; an ImportError here names the extra (cli.main)

    x = torch.zeros(4, 2, model.config.input_length)
    torch.onnx.export(PlanarView(model.eval()).eval(), (x,), str(path), input_names=["x"],
                      output_names=list(EXPORT_OUTPUT_NAMES),
                      dynamic_axes={"x": {0: "batch"}, **{n: {0: "batch"} for n in EXPORT_OUTPUT_NAMES}},
                      opset_version=ONNX_OPSET, dynamo=False)
    return Path(path)


def onnx_max_difference(model: MnEdgeCNN, onnx_path: str | Path, x: torch.Tensor) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch outputs on ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = [t.numpy() for t in model.eval().forward_with_features(x)]
    got = sess.run(list(EXPORT_OUTPUT_NAMES), {"x": x.numpy()})
    return float(max(np.abs(a - b).max() for a, b in zip(ref, got)))


#: Largest ONNX-vs-PyTorch output difference an export may have.
ONNX_TOLERANCE = 1e-4


def export_checked_onnx(model: MnEdgeCNN, path: str | Path) -> float:
    """:func:`export_onnx`, then compare with PyTorch on 64 seeded random inputs; the difference.

    Raises ``RuntimeError`` above :data:`ONNX_TOLERANCE` (the file is left
    where it was written; callers write to a new directory or a temporary one).
    """
    export_onnx(model, path)
    gen = torch.Generator().manual_seed(1)
    diff = onnx_max_difference(model, path, torch.randn(64, 2, model.config.input_length, generator=gen))
    if not diff <= ONNX_TOLERANCE:   # NaN too: weights of a diverged run
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:g})"
                           + ("; the network's outputs are not finite (did the training diverge?)"
                              if not math.isfinite(diff) else ""))
    return diff


def training_forward_model(config: dict, bank_sha256: str | None = None):
    """The forward model (bank and ranges) of a training config as recorded in checkpoints and cards.

    A config that names a bank file which is not here (a scratch copy a
    model was trained on before the bank was shipped) gets the shipped bank
    when its SHA-256 is the recorded ``bank_sha256``; otherwise it is refused.
    """
    from offline_training.forward import ForwardModel
    from offline_training.references.bank import BankUnavailable, recorded_bank
    from offline_training.train_config import TrainConfig

    cfg = TrainConfig.from_dict(config)
    try:
        bank, _ = recorded_bank(cfg.bank, bank_sha256)
    except BankUnavailable as exc:
        # a replaced file: calibrating or fitting the out-of-distribution score on it would describe
        # another model than the one trained
        advice = ": put the training bank back, or train again on this one" if exc.changed else ""
        raise RuntimeError(f"{exc}{advice}") from None
    return ForwardModel(bank, cfg.forward)


def card_forward_model(card: dict):
    """The forward model an artifact's network was trained on, from its model card."""
    training = card["training"]
    return training_forward_model(training["config"], training.get("bank_sha256"))


def export_artifact(final_pt: str | Path, out_dir: str | Path, model_id: str | None = None,
                    evaluation: dict | None = None, tensorrt: bool = False, overwrite: bool = False,
                    ood_spectra: int | None = None) -> Path:
    """Write an artifact directory from a trainer's ``final.pt``.

    Parameters
    ----------
    final_pt : path
        Output of :func:`offline_training.train.train`.
    out_dir : path
        New artifact directory.
    model_id : str, optional
        Identifier; default ``mnedge-cnn-<date>-<weights hash>``. It must be one the model store
        installs (:func:`mnedge_live.model_store.is_model_id`), else ``ValueError`` before anything is written.
    evaluation : dict, optional
        Metrics to record in the card (from ``mnedge-train evaluate``).
    tensorrt : bool
        Also build TensorRT FP16 and FP32 engines (needs a CUDA GPU).
    overwrite : bool
        Replace an existing ``out_dir``. The new artifact is written and
        verified in a temporary sibling directory and only then swapped in,
        so a failed export leaves the existing artifact as it was (and no
        half-written directory in the way of a retry).
    ood_spectra : int, optional
        Synthetic spectra for the mean and covariance of :func:`~offline_training.ood.fit_ood`, and
        :data:`~offline_training.ood.THRESHOLD_SET_FACTOR` times as many for its thresholds
        (0: no out-of-distribution statistics, the engine's OOD rule is then off). Default: the
        training config's ``[train] ood_spectra`` (20,000 where the config predates it).
    """
    if model_id is not None and not is_model_id(model_id):
        raise ValueError(f"model id {model_id!r} (--model-id) is not a model id ({MODEL_ID_RULE}): "
                         "'mnedge models install' would refuse the artifact")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if out.exists():
        check_replaceable(out, Path(final_pt))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        _write_artifact(final_pt, tmp, model_id, evaluation, tensorrt, ood_spectra)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_replaceable(out: Path, final_pt: Path) -> None:
    """Refuse (``FileExistsError``) to replace ``out`` unless it is an artifact or an empty folder.

    ``--overwrite`` replaces the folder whole: pointed by mistake at a training run's folder (even
    the one holding the ``final.pt`` being exported) it removed the checkpoint, weights and metrics.
    """
    if not out.is_dir():
        raise FileExistsError(f"{out} is not a folder; --overwrite replaces an artifact folder only")
    if final_pt.resolve().is_relative_to(out.resolve()):
        raise FileExistsError(f"{out} holds {final_pt}, the training output being exported: export elsewhere")
    if any(out.iterdir()) and not (out / "model_card.json").is_file():
        raise FileExistsError(f"{out} is no artifact (no model_card.json): --overwrite replaces an artifact "
                              "folder only; remove it yourself or export elsewhere")


def _swap_in(new: Path, out: Path) -> None:
    """Put the verified directory ``new`` at ``out``, replacing what is there (two renames).

    A directory cannot replace a non-empty one in one rename: the old one is
    moved aside first, moved back if the second rename fails, and removed
    once the new one is in place.
    """
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_artifact(final_pt: str | Path, out: Path, model_id: str | None, evaluation: dict | None,
                    tensorrt: bool, ood_spectra: int | None) -> None:
    """Write the artifact of ``final_pt`` into the empty directory ``out`` and verify it (:func:`export_artifact`)."""
    model, ck = load_trained(final_pt)
    if ood_spectra is None:
        ood_spectra = int(json.loads(ck["config"]).get("train", {}).get("ood_spectra", DEFAULT_OOD_SPECTRA))
    not_finite = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if not_finite:
        raise ValueError(f"{final_pt}: weights that are not finite ({', '.join(not_finite[:3])}"
                         f"{', ...' if len(not_finite) > 3 else ''}): the training diverged; nothing exported")
    torch.save(model.state_dict(), out / "weights.pt")
    diff = export_checked_onnx(model, out / "model.onnx")
    import hashlib

    weights_sha256 = hashlib.sha256((out / "weights.pt").read_bytes()).hexdigest()
    digest = weights_sha256[:10]
    today = dt.date.today().isoformat()
    card = {
        "model_id": model_id or f"mnedge-cnn-{today}-{digest}",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "input": {"name": "x", "shape": ["batch", 2, len(MODEL_GRID)], "grid_start_eV": float(MODEL_GRID[0]),
                  "grid_step_eV": float(MODEL_GRID[1] - MODEL_GRID[0]), "grid_points": len(MODEL_GRID),
                  "l3_reference_eV": L3_REFERENCE_EV, "work_step_eV": WORK_STEP_EV,
                  "preprocessing": PREPROCESSING_ID,
                  "channels": ["normalized spectrum", "held (unmeasured) points"]},
        "outputs": {"fractions": ["Mn2+", "Mn3+", "Mn4+"], "log_std": ["Mn2+", "Mn3+", "Mn4+", "valence"],
                    "side": list(SIDE_NAMES)},
        "network": model.config.to_dict(),
        "flops_per_spectrum": count_flops(model),
        "parameters": count_parameters(model),
        "calibration": (json.loads(ck["calibration"]) if "calibration" in ck  # checkpoints before the groups:
                        else {"std_scale": ck["std_scale"], "method": CALIBRATION_METHOD}),  # one global factor
        "training": {"config": json.loads(ck["config"]), "steps": int(ck["steps"]),
                     "train_seconds": float(ck.get("train_seconds", float("nan"))),
                     "bank_sha256": ck.get("bank_sha256", ""),
                     # the code that trained (its last invocation's commit; each one's in runs), not the exporting one
                     "git_commit": (json.loads(ck.get("runs") or "[{}]") or [{}])[-1].get("git_commit", "unrecorded"),
                     "export_git_commit": git_commit(),
                     "runs": json.loads(ck.get("runs") or "null"),   # each invocation's start and steps
                     "init_from": json.loads(ck.get("init_from") or "null"),
                     "teacher": json.loads(ck.get("teacher") or "null"),
                     "torch_version": torch.__version__},
        "onnx": {"opset": ONNX_OPSET, "max_abs_difference_vs_torch": diff, "graph": GRAPH_FORM},
        "evaluation": {},
    }
    if evaluation is not None:
        check_evaluation(evaluation, card["model_id"], weights_sha256)
        card["evaluation"] = evaluation
    if ood_spectra:
        from offline_training.ood import THRESHOLD_SET_FACTOR, fit_ood

        card["ood"] = fit_ood(model, card_forward_model(card), out,
                              n_fit=ood_spectra, n_threshold=THRESHOLD_SET_FACTOR * ood_spectra)
    if tensorrt:
        card["tensorrt"] = build_tensorrt_engines(model, out)
    write_card(out, card)
    load_artifact(out)  # verify what was written


def refresh_onnx(artifact_dir: str | Path) -> Path:
    """Rewrite an artifact's ``model.onnx`` from its ``weights.pt`` with this exporter, and re-sign the card.

    For artifacts written before an exporter change (such as the
    :class:`PlanarView`): the weights, and so the answers, stay; the graph
    is checked against PyTorch (max difference <= 1e-4) before it replaces
    the old one. Returns the artifact directory.
    """
    art = load_artifact(artifact_dir)
    d = art.path
    model = artifact_network(art)
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "model.onnx"
        try:
            diff = export_checked_onnx(model, new)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; {d} left unchanged") from exc
        shutil.copyfile(new, d / "model.onnx")
    card = {k: v for k, v in art.card.items() if k not in ("files", "schema_version")}
    card["onnx"] = {"opset": ONNX_OPSET, "max_abs_difference_vs_torch": diff, "graph": GRAPH_FORM,
                    "refreshed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git_commit": git_commit()}
    write_card(d, card)
    load_artifact(d)
    return d


def add_ood(artifact_dir: str | Path, spectra: int = 20000) -> Path:
    """Fit (or refit) an artifact's out-of-distribution statistics and re-sign its card.

    The graph must already output ``features`` (``refresh-onnx`` brings an
    older artifact's graph up to date first). Returns the artifact directory.
    """
    from offline_training.ood import THRESHOLD_SET_FACTOR, fit_ood

    art = load_artifact(artifact_dir)
    d = art.path
    import onnx

    outputs = [o.name for o in onnx.load(str(art.file("model.onnx"))).graph.output]
    if "features" not in outputs:
        raise RuntimeError(f"{d}: the ONNX graph has no 'features' output; run 'mnedge-train refresh-onnx' first")
    card = {k: v for k, v in art.card.items() if k not in ("files", "schema_version")}
    card["ood"] = fit_ood(artifact_network(art), card_forward_model(card), d,
                          n_fit=spectra, n_threshold=THRESHOLD_SET_FACTOR * spectra)
    card["ood"]["git_commit"] = git_commit()
    write_card(d, card)
    load_artifact(d)
    return d


def check_evaluation(evaluation: object, model_id: str, weights_sha256: str | None) -> None:
    """Refuse (``ValueError``) an evaluation to record in a card that is not of that model: another model id,
    or other weights (``weights_sha256`` of ``evaluate``'s output; evaluations without it are checked by id)."""
    if not isinstance(evaluation, dict) or "accuracy_0.1" not in evaluation:
        raise ValueError("--evaluation: not the JSON of 'mnedge-train evaluate --out'")
    if evaluation.get("model") != model_id:
        raise ValueError(f"--evaluation is of model {evaluation.get('model')!r}, not of {model_id!r}: "
                         "evaluate this artifact and give that file")
    recorded = evaluation.get("weights_sha256")
    if recorded is not None and weights_sha256 is not None and recorded != weights_sha256:
        raise ValueError(f"--evaluation is of other weights of {model_id!r} ({recorded[:12]}..., these are "
                         f"{weights_sha256[:12]}...): evaluate this artifact and give that file")


def recalibrate(artifact_dir: str | Path, spectra: int = 20000, seed: int = 20_000_003,
                evaluation: dict | None = None) -> Path:
    """Refit an artifact's uncertainty calibration (global and per group) and re-sign its card.

    The weights, graph and fractions stay; only the stated standard
    deviations change. The spectra come from the card's training forward
    model with ``seed`` (not one the trainer uses: it seeds its batches from
    the config's seed and its own calibration from ``10_000_019 + seed``).
    ``evaluation`` (from ``mnedge-train evaluate`` of the recalibrated
    artifact) replaces the card's metrics, whose coverage figures the new
    factors make stale; without it the card's metrics are marked stale
    (``evaluation["stale"]``). Returns the artifact directory.
    """
    from offline_training.train import calibrate_std

    art = load_artifact(artifact_dir)
    d = art.path
    card = {k: v for k, v in art.card.items() if k not in ("files", "schema_version")}
    card["calibration"] = calibrate_std(artifact_network(art), card_forward_model(card), spectra, seed=seed)
    card["calibration"].update(git_commit=git_commit(),
                               refitted=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if evaluation is not None:
        check_evaluation(evaluation, art.model_id, art.card["files"].get("weights.pt"))
        card["evaluation"] = evaluation
    elif card.get("evaluation"):
        card["evaluation"] = {**card["evaluation"], "stale": "the uncertainty calibration was refitted after this "
                              f"evaluation ({card['calibration']['refitted']}): its coverage figures no longer apply"}
    write_card(d, card)
    load_artifact(d)
    return d


#: Largest batch a TensorRT engine takes (its optimization profile: 1 to this, tuned for 1,024).
TENSORRT_MAX_BATCH = 65536


def exported_for_tensorrt(model: MnEdgeCNN, example: torch.Tensor) -> torch.export.ExportedProgram:
    """:class:`WithFeatures` of ``model`` as a ``torch.export`` program with a dynamic batch dimension.

    What torch-tensorrt's dynamo frontend compiles (its TorchScript frontend, in maintenance mode,
    scripts the module, which fails on the network's tuple outputs). Runs on any device, so the CPU
    tests check that the network exports.
    """
    batch = torch.export.Dim("batch", min=1, max=TENSORRT_MAX_BATCH)
    return torch.export.export(WithFeatures(model).eval(), (example,), dynamic_shapes={"x": {0: batch}})


def build_tensorrt_engines(model: MnEdgeCNN, out: Path) -> dict:
    """Compile FP16 and FP32 TensorRT engines with torch-tensorrt for the current GPU.

    The network is exported (:func:`exported_for_tensorrt`), compiled by torch-tensorrt's dynamo
    frontend for batches of 1 to :data:`TENSORRT_MAX_BATCH`, and saved as TorchScript
    (``torch.jit.load`` reads it where torch-tensorrt is installed; :class:`TensorRTBackend`).

    Raises
    ------
    RuntimeError
        When no CUDA GPU or no torch-tensorrt is present (clear refusal).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("--tensorrt needs a CUDA GPU; none is present on this machine")
    try:
        import tensorrt
        import torch_tensorrt
    except ImportError as exc:
        raise RuntimeError(f"--tensorrt needs torch-tensorrt (pip install 'mnedge-live[tensorrt]'): {exc}") from exc
    info = {}
    m = model.cuda().eval()
    length = model.config.input_length
    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(256, 2, length, device="cuda", generator=gen)
    ref = [t.float() for t in m.forward_with_features(x)]
    (out / "tensorrt").mkdir(exist_ok=True)
    for precision, dtype in (("fp16", torch.half), ("fp32", torch.float32)):
        m = m.to(dtype)
        inputs = [torch_tensorrt.Input(min_shape=(1, 2, length), opt_shape=(1024, 2, length),
                                       max_shape=(TENSORRT_MAX_BATCH, 2, length), dtype=dtype)]
        trt = torch_tensorrt.dynamo.compile(exported_for_tensorrt(m, x.to(dtype)), inputs=inputs,
                                            enabled_precisions={dtype})
        got = [t.float() for t in trt(x.to(dtype))]
        name = f"tensorrt/model_{precision}.ts"
        torch_tensorrt.save(trt, str(out / name), output_format="torchscript", arg_inputs=[x.to(dtype)])
        info[precision] = {"file": name, "gpu": torch.cuda.get_device_name(0),
                           "tensorrt_version": tensorrt.__version__, "torch_tensorrt_version": torch_tensorrt.__version__,
                           "max_fraction_difference": float((got[0] - ref[0]).abs().max())}
    m.float()
    return info
