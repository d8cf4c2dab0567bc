"""``mnedge-train``: references, generate, plot-forward, realism, train, evaluate, baseline, export, refresh-onnx, recalibrate,
fit-ood.

Each subcommand parses its arguments and calls one module; no logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from offline_training.json_output import strict_json
from offline_training.values import check_whole, is_number

DEFAULT_REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "real_spectra"


def _forward_config(path: str | None):
    from offline_training.forward import ForwardConfig
    from offline_training.train_config import TrainConfig

    if path is None:
        return ForwardConfig(), None
    cfg = TrainConfig.from_toml(path)
    return cfg.forward, cfg.bank


def _check_references_args(args) -> None:
    """Refuse (``ValueError``) option combinations of ``references`` that would lose or misplace a bank.

    With measured references the bank is a site's, not the package's: ``--out``
    is required, so that the bank shipped inside the package (the default
    ``--out`` and ``--base``) is never rewritten with them, nor joined by
    them again on the next run.
    """
    if args.measured_only and not args.measured:
        raise ValueError("--measured-only needs --measured VALENCE:FILE (the references to add)")
    if not (is_number(args.scale) and args.scale > 0):
        raise ValueError(f"--scale must be a positive number, got {args.scale}")
    if args.workers is not None:
        check_whole("--workers", args.workers, 1)
    calculation = [name for name, given in (("--scale", args.scale != 1.0), ("--seed", args.seed != 0),
                                            ("--l3-lifetime", args.l3_lifetime != "both"),
                                            ("--no-ligand-field-window", not args.ligand_field_window)) if given]
    if args.measured_only and calculation:   # they shape a calculated bank; --measured-only calculates none
        raise ValueError(f"{', '.join(calculation)}: options of a calculated bank, which --measured-only does not "
                         "make (it adds the measured references to --base)")
    if args.base and not args.measured_only:
        raise ValueError("--base is the bank --measured-only adds to; without --measured-only the bank is calculated")
    if args.measured and not args.out:
        raise ValueError("--out is required with --measured: a site's bank is written to its own file, never over "
                         "the bank shipped in the package")
    if args.out and Path(args.out).exists() and not args.overwrite:
        # a model trained on the old file can no longer be exported or recalibrated once it is replaced
        raise FileExistsError(f"--out {args.out} exists (models trained on it name it by its SHA-256): write the "
                              "new bank to another file, or pass --overwrite to replace it")


def cmd_references(args) -> int:
    from offline_training.references.bank import DEFAULT_FAMILY_SIZES, build_bank, default_bank_path
    from offline_training.references.measured import read_measured_references

    _check_references_args(args)
    sizes = dict(DEFAULT_FAMILY_SIZES)
    if args.scale != 1.0:
        sizes = {k: max(1, round(v * args.scale)) for k, v in sizes.items()}
    measured = read_measured_references(args.measured or [])
    if args.measured_only:
        from offline_training.references.bank import Bank, join_measured

        base = Bank.load(args.base) if args.base else Bank.load()
        bank = join_measured(base, measured, args.measured_weight)
    else:
        bank = build_bank(sizes, seed=args.seed, workers=args.workers, cache_dir=args.cache, measured=measured,
                          measured_weight=args.measured_weight, progress=not args.no_progress,
                          l3_lifetime=args.l3_lifetime, ligand_field_window=args.ligand_field_window)
    out = Path(args.out) if args.out else default_bank_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    bank.save(out)
    print(strict_json({"bank": str(out), "spectra": len(bank.spectra), "per_valence": {
        f"Mn{v}+": int((bank.valence == v).sum()) for v in (2, 3, 4)}, "sha256": bank.sha256()}))
    return 0


def _check_out_file(option: str, path: str, overwrite: bool, what: str) -> None:
    """Refuse an output file path before the work that fills it: a folder, an existing file without
    ``--overwrite``, or a folder that cannot be written (each lost minutes of work, or the result)."""
    out = Path(path)
    if out.is_dir():
        raise FileExistsError(f"{option} {path} is a folder: give the {what} file's path")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{option} {path} exists: write the {what} to another file, or pass --overwrite "
                              "to replace it")
    _check_folder(option, path, out.parent)


def _check_folder(option: str, path: str, folder: Path) -> None:
    """Create ``folder`` (an output's) now, or refuse ``option`` with the reason: a file in its path, no
    permission (said at once, not after the work that fills it)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{option} {path}: cannot create the folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{option} {path}: the folder {folder} is not writable")


def cmd_generate(args) -> int:
    from offline_training.forward import ForwardModel
    from offline_training.generate import default_workers, write_dataset
    from offline_training.references.bank import Bank

    _check_out_file("--out", args.out, args.overwrite, "dataset")   # before minutes of synthesis
    fcfg, bank_path = _forward_config(args.config)
    fm = ForwardModel(Bank.load(args.bank or bank_path), fcfg, compiled=args.compiled)
    if args.workers is not None:
        check_whole("--workers", args.workers, 0)   # 0: in this process
    workers = default_workers() if args.workers is None else args.workers
    path = write_dataset(fm, args.n, args.seed, args.out, progress=not args.no_progress, workers=workers)
    print(path)
    return 0


def cmd_plot_forward(args) -> int:
    from offline_training.gallery import plot_gallery
    from offline_training.references.bank import Bank

    if args.real_dir is not None and not Path(args.real_dir).is_dir():   # named, so meant: say it is not there
        raise ValueError(f"--real-dir {args.real_dir} is not a folder")
    real_dir = args.real_dir or (DEFAULT_REAL_DIR if DEFAULT_REAL_DIR.is_dir() else None)
    fcfg, bank_path = _forward_config(args.config)
    paths = plot_gallery(Bank.load(args.bank or bank_path), fcfg, args.out, real_dir=real_dir, seed=args.seed)
    for p in paths:
        print(p)
    return 0


def cmd_realism(args) -> int:
    from offline_training.realism import realism
    from offline_training.references.bank import Bank

    folder = Path(args.dir) if args.dir else DEFAULT_REAL_DIR
    if not folder.is_dir():
        print(f"mnedge-train realism: no folder {folder}", file=sys.stderr)
        return 2
    res = realism(folder, Bank.load(args.bank))
    if not res:
        print(f"mnedge-train realism: no .csv, .txt, .dat or .tsv file in {folder}", file=sys.stderr)
        return 2
    if args.json:
        print(strict_json([{k: r[k] for k in ("file", "ok", "reason", "misfit", "best", "margin")}
                           | ({"detail": r["detail"]} if args.detail else {}) for r in res]))
    else:
        for r in res:
            m = r["misfit"]
            print(f"{r['file']:32s} Mn2+ {m['Mn2+']:.4f}  Mn3+ {m['Mn3+']:.4f}  Mn4+ {m['Mn4+']:.4f}  best {r['best']} "
                  f"(margin {r['margin']:.4f})" if r["ok"] else f"{r['file']:32s} not fitted: {r['reason']}")
    return 1 if any(not r["ok"] for r in res) else 0


def cmd_train(args) -> int:
    from offline_training.train import train
    from offline_training.train_config import TrainConfig

    steps = args.steps
    if args.resume and steps is None:   # continue to the run's own target
        from offline_training.checkpoints import recorded_steps

        steps = recorded_steps(Path(args.out) / "checkpoint.pt")
    overrides = {"steps": steps, "device": args.device, "init_from": args.init_from}
    cfg = TrainConfig.from_toml(args.config, {k: v for k, v in overrides.items() if v is not None})
    if args.resume and args.steps is None and steps is not None:
        in_file = TrainConfig.from_toml(args.config).train.steps
        if in_file != steps:   # an edited [train] steps is not taken on resume without --steps: say so
            print(f"mnedge-train train: resuming to step {steps}, the run's target; {args.config} says {in_file} "
                  f"(give --steps {in_file} to go there)", file=sys.stderr)
    out = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after,
                overwrite=args.overwrite)
    print(out if out is not None else f"stopped at step {args.stop_after}; continue with --resume")
    return 0


def cmd_baseline(args) -> int:
    import torch

    from offline_training.baselines import train_mnedgenet
    from offline_training.forward import ForwardModel
    from offline_training.references.bank import Bank

    check_whole("--budget", args.budget, 1)
    _check_out_file("--out", args.out, args.overwrite, "baseline")
    fcfg, bank_path = _forward_config(args.config)
    bank = Bank.load(args.bank or bank_path)
    fm = ForwardModel(bank, fcfg)
    model, spectra = train_mnedgenet(fm, args.budget, seed=args.seed, progress=not args.no_progress)
    # what it was trained on, so that evaluate can say whether it had the candidate's data and budget
    torch.save({"model": model.state_dict(), "budget": args.budget, "spectra": spectra,
                "forward": json.dumps(fcfg.to_dict()), "bank_sha256": bank.sha256()}, args.out)
    print(args.out)
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from offline_training.baselines import MnEdgeNetPublished
    from offline_training.evaluate import evaluate
    from offline_training.evaluation_report import evaluation_lines
    from offline_training.gate import compare_with_reference, training_bank, training_ranges
    from offline_training.references.bank import Bank

    if not (math.isfinite(args.gate_tolerance) and math.isfinite(args.gate_valence_tolerance)):
        raise ValueError("--gate-tolerance and --gate-valence-tolerance must be finite numbers")
    if args.out:   # before the long evaluation: a missing folder lost the whole result (and the verdict)
        _check_out_file("--out", args.out, args.overwrite, "evaluation")
    if args.plot_dir:
        plots = Path(args.plot_dir)
        if plots.exists() and not plots.is_dir():
            raise FileExistsError(f"--plot-dir {plots} is a file: give a folder for the robustness plots")
        if (plots / "robustness.json").exists() and not args.overwrite:
            raise FileExistsError(f"--plot-dir {plots} holds robustness plots already: give another folder, or pass "
                                  "--overwrite to replace them")
        _check_folder("--plot-dir", args.plot_dir, plots)
    engine = _load_engine("--model", args.model, args.backend)
    # the reference model is loaded before the long evaluation: a wrong --gate fails at once
    ref = _load_engine("--gate", args.gate, args.backend) if args.gate else None
    fcfg = training_ranges(engine)
    if args.bank:
        bank, bank_path = Bank.load(args.bank), str(args.bank)
    else:   # the candidate's own training bank, as its own training ranges
        bank, bank_path, note = training_bank(engine)
        if note:
            print(f"mnedge-train evaluate: {note}", file=sys.stderr)
    mnedgenet = None
    if args.mnedgenet:
        try:
            ck = torch.load(args.mnedgenet, map_location="cpu", weights_only=True)
            mnedgenet = MnEdgeNetPublished()
            mnedgenet.load_state_dict(ck["model"])
        except Exception as exc:   # not a baseline file: one line and exit 2, not a traceback read as "gate failed"
            raise ValueError(f"--mnedgenet {args.mnedgenet}: not a trained MnEdgeNet baseline ('mnedge-train "
                             f"baseline' writes one): {type(exc).__name__}: {str(exc)[:200]}") from None
        mnedgenet.eval()
    real = Path(args.real_dir) if args.real_dir else DEFAULT_REAL_DIR
    if not real.is_dir():
        if args.real_dir:   # asked for: a typo must not pass as "no measured spectra"
            print(f"mnedge-train evaluate: --real-dir {real}: no such folder", file=sys.stderr)
            return 2
        print(f"mnedge-train evaluate: no measured spectra read (no folder {real}; give --real-dir)",
              file=sys.stderr)
    res = evaluate(engine, fcfg, bank, n=args.n, seed=args.seed, plot_dir=args.plot_dir, mnedgenet=mnedgenet,
                   n_nnls=args.n_nnls, real_dir=real, robustness_n=args.robustness_n)
    if mnedgenet is not None:
        res["baselines"]["mnedgenet_published"].update(baseline_training(ck, engine, fcfg, bank))
    res["bank"] = {"path": bank_path, "sha256": bank.sha256()}
    gate_failed = False
    if ref is not None:
        res["gate"] = compare_with_reference(engine, res, ref, fcfg, bank, n=args.n, seed=args.seed,
                                             tolerance=args.gate_tolerance,
                                             valence_tolerance=args.gate_valence_tolerance)
        gate_failed = not res["gate"]["passed"]
    text = strict_json(res)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        print(text)
        if gate_failed:   # the JSON goes to a file or a pipe: the operator still reads why nothing happened next
            from offline_training.gate import gate_lines

            print("mnedge-train evaluate: " + "\n".join(gate_lines(res["gate"])), file=sys.stderr)
    else:
        print("\n".join(evaluation_lines(res)))
    return 1 if gate_failed else 0


def baseline_training(ck: dict, engine, fcfg, bank) -> dict:
    """What the MnEdgeNet baseline in ``ck`` and the candidate were trained on, side by side, and whether
    the baseline had the candidate's ranges and bank (said on stderr when not: the comparison then
    is not of architectures on the same data)."""
    from offline_training.forward import ForwardConfig

    training = engine.artifact.card.get("training", {})
    batch = training.get("config", {}).get("train", {}).get("batch_size")
    steps = training.get("steps")
    parent = training.get("init_from") or None
    out = {"training_budget_spectra": int(ck.get("spectra", ck.get("budget", -1))),
           # a fine-tuned model's last stage only: its parents' stages are in their own cards
           "ours_last_stage_spectra": int(steps * batch) if steps and batch else None,
           "ours_fine_tuned_from": parent.get("model_id") if isinstance(parent, dict) else parent}
    differ = []
    if "forward" in ck:
        theirs = ForwardConfig.from_dict(json.loads(ck["forward"]))
        differ = [k for k, v in fcfg.to_dict().items() if theirs.to_dict().get(k) != v]
        out["same_ranges"] = not differ
    if "bank_sha256" in ck:
        out["same_bank"] = ck["bank_sha256"] == bank.sha256()
    notes = []
    if differ:
        notes.append(f"trained on other forward-model ranges ({', '.join(differ)})")
    if out.get("same_bank") is False:
        notes.append("trained on another references bank")
    if "forward" not in ck:
        notes.append("its training ranges and bank are not recorded (written before they were)")
    if notes:
        print("mnedge-train evaluate: the MnEdgeNet baseline was " + "; ".join(notes), file=sys.stderr)
    return out


def _load_engine(option: str, source: str | None, backend: str):
    """The engine of artifact ``source`` (``None`` or ``"default"``: the model in use).

    Raises
    ------
    ArtifactError
        The artifact cannot be loaded; the message names ``option`` and ``source``.
    """
    from mnedge_live.artifact import ArtifactError
    from mnedge_live.engine import load_engine

    try:
        return load_engine(None if source in (None, "default") else source, backend=backend)
    except ArtifactError as exc:
        raise ArtifactError(f"{option} {source or 'default'}: {exc}") from None


def cmd_export(args) -> int:
    from offline_training.export import export_artifact

    evaluation = json.loads(Path(args.evaluation).read_text()) if args.evaluation else None
    try:
        out = export_artifact(args.checkpoint, args.out, model_id=args.model_id, evaluation=evaluation,
                              tensorrt=args.tensorrt, overwrite=args.overwrite, ood_spectra=args.ood_spectra)
    except RuntimeError as exc:
        print(f"mnedge-train export: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def cmd_refresh_onnx(args) -> int:
    from mnedge_live.artifact import ArtifactError
    from offline_training.export import refresh_onnx

    try:
        print(refresh_onnx(args.artifact))
    except (RuntimeError, ArtifactError, OSError) as exc:
        print(f"mnedge-train refresh-onnx: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_fit_ood(args) -> int:
    from mnedge_live.artifact import ArtifactError
    from offline_training.export import add_ood

    try:
        print(add_ood(args.artifact, spectra=args.spectra))
    except (RuntimeError, ArtifactError, OSError) as exc:
        print(f"mnedge-train fit-ood: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_recalibrate(args) -> int:
    from mnedge_live.artifact import ArtifactError
    from offline_training.export import recalibrate

    try:
        evaluation = json.loads(Path(args.evaluation).read_text()) if args.evaluation else None
        print(recalibrate(args.artifact, spectra=args.spectra, seed=args.seed, evaluation=evaluation))
    except (RuntimeError, ArtifactError, OSError, ValueError) as exc:
        print(f"mnedge-train recalibrate: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``mnedge-train``."""
    p = argparse.ArgumentParser(prog="mnedge-train", description="Physics forward model, training and export.")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("references", help="calculate the end-member bank (edrixs; parallel, resumable)")
    s.add_argument("--out", help="bank file (default: the package's references/data/bank.npz; required with "
                                 "--measured)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out bank file")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--cache", default=".cache/multiplets", help="per-calculation cache (resume)")
    s.add_argument("--scale", type=float, default=1.0, help="multiply every family size (e.g. 0.1 for a tiny bank)")
    s.add_argument("--measured", nargs="+", action="extend", metavar="VALENCE:FILE",
                   help="measured references, e.g. 3:Mn2O3.csv (two columns: energy eV, intensity); several "
                        "after one flag or the flag repeated; each must be on a calibrated energy axis")
    s.add_argument("--measured-weight", type=float, default=0.5,
                   help="share of each valence's sampling given to its measured references")
    s.add_argument("--measured-only", action="store_true",
                   help="add the measured references to an existing bank instead of calculating")
    s.add_argument("--base", help="existing bank for --measured-only (default: the shipped bank)")
    s.add_argument("--l3-lifetime", choices=("constant", "ramp", "both"), default="both",
                   help="one L3 core-hole width per member, widths growing across L3, or both sets of rows "
                        "(default: both, the shipped bank)")
    s.add_argument("--ligand-field-window", action=argparse.BooleanOptionalAction, default=True,
                   help="drop Mn4+ members whose optical 10Dq (4A2g -> 4T2g) lies outside the Mn4+ band "
                        "(offline_training.references.parameters.OPTICAL_TEN_DQ_EV; default: on, as shipped)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=cmd_references)

    s = sub.add_parser("generate", help="write a synthetic dataset (HDF5)")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="training TOML whose [forward] table to use")
    s.add_argument("--bank")
    s.add_argument("--workers", type=int, default=None,
                   help="processes that synthesize chunks (default: one per CPU core; 0: in this process); "
                        "the file does not depend on it")
    s.add_argument("--compiled", action="store_true",
                   help="run the forward model's element-wise stages compiled by torch.compile: about twice "
                        "as fast for large N after seconds of compilation; the file is reproducible with the "
                        "same flag (compiled and eager stages agree to float32 rounding, not bit for bit)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file (once the new one is whole)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=cmd_generate)

    s = sub.add_parser("plot-forward", help="PNG gallery of the bank, each stage, and synthetic vs measured")
    s.add_argument("--out", default="forward_gallery")
    s.add_argument("--config")
    s.add_argument("--bank")
    s.add_argument("--real-dir", help=f"measured spectra beside the synthetic ones (default: {DEFAULT_REAL_DIR} "
                                      "when it exists)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=cmd_plot_forward)

    s = sub.add_parser("realism", help="fit measured spectra with the best synthetic pure spectrum per valence")
    s.add_argument("dir", nargs="?", help=f"folder of two-column files (default {DEFAULT_REAL_DIR})")
    s.add_argument("--bank")
    s.add_argument("--json", action="store_true")
    s.add_argument("--detail", action="store_true", help="include the best parameters in the JSON")
    s.set_defaults(run=cmd_realism)

    s = sub.add_parser("train", help="train on on-the-fly batches (torchrun for DDP)")
    s.add_argument("--config", required=True)
    s.add_argument("--out", default="runs/latest")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint.pt, to the steps it was started for "
                        "unless --steps is given")
    s.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (without it or --resume such a folder is refused)")
    s.add_argument("--steps", type=int, help="override [train] steps")
    s.add_argument("--device", help="override [train] device (cpu, cuda)")
    s.add_argument("--stop-after", type=int, help="stop after this many steps in total (resume later)")
    s.add_argument("--init-from", metavar="ARTIFACT",
                   help="fine-tune: start from this artifact's weights ('default': the model in use)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(run=cmd_train)

    s = sub.add_parser("baseline", help="train the published MnEdgeNet architecture on the same stream")
    s.add_argument("--budget", type=int, required=True, help="number of training spectra")
    s.add_argument("--out", required=True)
    s.add_argument("--config")
    s.add_argument("--bank")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.set_defaults(run=cmd_baseline)

    s = sub.add_parser("evaluate", help="metrics on a fixed synthetic validation set, baselines, real spectra")
    s.add_argument("--model", default="default", help="artifact directory or 'default'")
    s.add_argument("--backend", default="auto")
    s.add_argument("--n", type=int, default=20000)
    s.add_argument("--seed", type=int, default=12345)
    s.add_argument("--json", action="store_true")
    s.add_argument("--out", help="also write the JSON here")
    s.add_argument("--plot-dir", help="robustness PNGs and JSON")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file and --plot-dir plots")
    s.add_argument("--mnedgenet", help="trained MnEdgeNet baseline (from 'baseline')")
    s.add_argument("--n-nnls", type=int, default=1000)
    s.add_argument("--robustness-n", type=int, default=8000)
    s.add_argument("--real-dir", help="folder of measured two-column spectra to read as well (default: "
                   "shared/real_spectra beside the project checkout, skipped with a note when absent)")
    s.add_argument("--bank", help="references bank the validation spectra are drawn from (default: the one the "
                   "--model was trained on, when it is here, else the shipped one, saying so); its SHA-256 is "
                   "recorded in the results")
    s.add_argument("--gate", help="compare with this model (artifact or 'default'); exit 1 if worse")
    s.add_argument("--gate-tolerance", type=float, default=0.0,
                   help="how much lower the candidate's accuracy_0.1 may be than the --gate model's (default 0)")
    s.add_argument("--gate-valence-tolerance", type=float, default=0.0,
                   help="how much higher its valence MAE may be (default 0)")
    s.set_defaults(run=cmd_evaluate)

    s = sub.add_parser("export", help="write a model artifact (ONNX, weights, model card)")
    s.add_argument("checkpoint", help="final.pt from 'train'")
    s.add_argument("--out", required=True)
    s.add_argument("--model-id", help="the id to install it under: letters, digits and '._+-', not starting with "
                   "a dot (default: mnedge-cnn-DATE-HASH)")
    s.add_argument("--evaluation", help="JSON from 'evaluate --out' to record in the card")
    s.add_argument("--tensorrt", action="store_true", help="also build TensorRT FP16/FP32 engines (CUDA GPU)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--ood-spectra", type=int, default=None,
                   help="synthetic spectra for the out-of-distribution mean and covariance; five times as "
                        "many set the thresholds (0: no statistics; default: the training config's "
                        "[train] ood_spectra, 20,000 unless set)")
    s.set_defaults(run=cmd_export)

    s = sub.add_parser("refresh-onnx", help="rewrite an artifact's ONNX graph from its weights with this exporter")
    s.add_argument("artifact", help="artifact directory (its card is re-signed)")
    s.set_defaults(run=cmd_refresh_onnx)

    s = sub.add_parser("fit-ood", help="fit an artifact's out-of-distribution statistics (re-signs its card)")
    s.add_argument("artifact", help="artifact directory whose graph outputs 'features'")
    s.add_argument("--spectra", type=int, default=20000,
                   help="synthetic spectra for the mean and covariance; five times as many set the thresholds")
    s.set_defaults(run=cmd_fit_ood)

    s = sub.add_parser("recalibrate", help="refit an artifact's uncertainty calibration, overall and per group "
                                           "of the largest fraction read (re-signs its card)")
    s.add_argument("artifact", help="artifact directory")
    s.add_argument("--spectra", type=int, default=20000, help="held-out synthetic spectra of the training prior")
    s.add_argument("--seed", type=int, default=20_000_003, help="their seed (not one training used)")
    s.add_argument("--evaluation", help="JSON from 'evaluate --out' of the recalibrated artifact to record in the card")
    s.set_defaults(run=cmd_recalibrate)
    return p


#: The package extra that brings each optional module (``pip install 'mnedge-live[EXTRA]'``).
EXTRA_OF_MODULE = {"onnx": "train", "onnxscript": "train", "edrixs": "references", "numba": "references",
                   "mpi4py": "references", "tensorrt": "tensorrt", "torch_tensorrt": "tensorrt"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mnedge-train``.

    Exit status: 0 on success; 1 only when ``evaluate --gate`` finds the
    candidate worse; 2 for a usage or input error (a bad option, file, config,
    bank or model artifact), reported on one line of stderr.
    """
    from mnedge_live.artifact import ArtifactError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mnedge_live.memory import reuse_batch_memory

    reuse_batch_memory()  # batch after batch of the same large tensors (generate, train, evaluate)
    try:
        seed = getattr(args, "seed", None)   # what torch and numpy generators take: 2**64 failed as an HDF5
        if seed is not None and not 0 <= seed < 2**64:   # attribute with a traceback, -1 passed some commands
            raise ValueError(f"--seed must be from 0 to 2**64 - 1, got {seed}")
        status = int(args.run(args) or 0)
    except ImportError as exc:   # an optional dependency of this command (onnx, edrixs) is not installed
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0], "train")
        print(f"mnedge-train {args.command}: {exc}; install it with: pip install 'mnedge-live[{extra}]'",
              file=sys.stderr)
        status = 2
    except (ValueError, OSError, ArtifactError) as exc:   # OSError: a path that is a folder, not writable, ...
        # ArtifactError: a model path that is no (intact) artifact, or a store that cannot be read
        print(f"mnedge-train {args.command}: {exc}", file=sys.stderr)
        status = 2
    if args.command == "train":
        end_if_torchrun_worker(status)
    return status


def end_if_torchrun_worker(status: int) -> None:
    """End a torchrun training process now, without the interpreter's shutdown.

    Why: a Gloo worker thread may still be releasing its last collective when
    Python finalizes; the release needs the GIL, the thread is killed instead
    and the process aborts ("terminate called without an active exception",
    SIGABRT; about 1 run in 40 of two processes on two busy cores, core dump
    in ``ProcessGroupGloo::AsyncWork::~AsyncWork``). The run's files are
    written and closed by then; streams and logs are flushed here. Without
    torchrun (``WORLD_SIZE`` 1) this returns and the process ends normally.
    """
    from offline_training.devices import rank_and_world

    if rank_and_world()[1] <= 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
