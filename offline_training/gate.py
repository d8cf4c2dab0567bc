"""Adoption gate of ``mnedge-train evaluate --gate``: is a candidate model at least as good as the reference?

A candidate replaces the model in use only when it reads the synthetic
validation spectra as well (within a tolerance) on its own training ranges
and on the reference's, in the share of spectra read within 0.1
(accuracy_0.1, a refusal counting as a failure) and in the mean valence error
on the spectra both answer (what users read), and refuses
the inputs that are no Mn edge at least as often. The command exits 1 when the verdict is "FAILED".
"""

from __future__ import annotations

from mnedge_live.engine import Engine
from offline_training.forward import ForwardConfig
from offline_training.references.bank import Bank, BankUnavailable, recorded_bank


def training_ranges(engine: Engine) -> ForwardConfig:
    """The forward-model ranges an artifact was trained on (its card), or the defaults of a config file
    (a card without them was written before ``physics`` 2: the version a table without the key means)."""
    train_cfg = engine.artifact.card.get("training", {}).get("config", {})
    return ForwardConfig.from_dict(train_cfg.get("forward", {}))


def training_bank(engine: Engine) -> tuple[Bank, str, str]:
    """The references bank an artifact was trained on, where it names it and it is here: ``(bank, its
    path or "(shipped)", note)``; the note is ``""`` unless the training bank could not be used.

    The card's bank file is used when its SHA-256 is the one recorded at training (or none was); a
    card naming a file that is not here gets the shipped bank when its checksum is the shipped one's.
    Otherwise the shipped bank, and the note says why: a site model was scored on the shipped bank's
    spectra without a word.
    """
    training = engine.artifact.card.get("training", {})
    try:
        return (*recorded_bank(training.get("config", {}).get("bank"), training.get("bank_sha256")), "")
    except BankUnavailable as exc:
        note = exc.reason + (exc.detail if exc.changed else "")
    return Bank.load(), "(shipped)", note + ": the validation spectra are drawn from the shipped bank; give --bank to choose"


def compare_with_reference(engine: Engine, res: dict, reference: Engine, fcfg: ForwardConfig, bank: Bank, *,
                           n: int, seed: int, tolerance: float, valence_tolerance: float = 0.0) -> dict:
    """Candidate against reference on the candidate's validation ranges and, where they differ, the reference's.

    A candidate trained on wider ranges would otherwise be scored only where
    the reference was never trained, and one trained on narrower ranges only
    where it was; it passes when it is not worse (within the tolerances) on
    either set, in accuracy_0.1 and in valence MAE (a candidate as accurate
    by the share but with larger valence errors passed before), and refuses
    the inputs that are no Mn edge at least as often (:func:`probe_gate`).

    Parameters
    ----------
    engine, reference : Engine
        The candidate and the model it is compared with.
    res : dict
        The candidate's evaluation on ``fcfg`` (:func:`~offline_training.evaluate.evaluate`): its
        not-Mn probes are reused.
    fcfg : ForwardConfig
        The candidate's training ranges (:func:`training_ranges`).
    bank : Bank
        End members of the validation spectra.
    n, seed : int
        Size and seed of each validation set (``evaluate --n``, ``--seed``).
    tolerance : float
        How much lower the candidate's accuracy_0.1 may be (``evaluate --gate-tolerance``).
    valence_tolerance : float
        How much higher its valence MAE may be (``evaluate --gate-valence-tolerance``).

    Returns
    -------
    dict
        The evaluation's ``gate`` entry: each set's scores (accuracy_0.1 over all spectra, refusals
        counting as failures; valence MAE on the spectra both models answered, and how many), the
        probes' verdict and ``passed``.
    """
    from offline_training.evaluate import (
        engine_predictions,
        fraction_metrics,
        not_mn_refusals,
        paired_errors,
        validation_model,
    )

    sets = {"candidate_ranges": fcfg}
    ref_cfg = training_ranges(reference)
    if ref_cfg != fcfg:
        sets["reference_ranges"] = ref_cfg
    compared = {}
    for name, cfg in sets.items():
        b = validation_model(cfg, bank).sample(n, seed=seed)   # the spectra evaluate() scores on these ranges
        true = b.fractions.numpy().astype(float)
        cand = engine_predictions(engine, b)["fractions"]
        other = engine_predictions(reference, b)["fractions"]
        mc, mo = fraction_metrics(cand, true), fraction_metrics(other, true)
        # valence errors on the spectra both answered: a model refusing its hardest spectra would
        # otherwise pass with a smaller mean over fewer of them (accuracy_0.1 counts refusals as failures)
        paired = paired_errors(cand, other, true)
        compared[name] = {"accuracy_0.1": mc["accuracy_0.1"], "reference_accuracy_0.1": mo["accuracy_0.1"],
                          "answered": mc["answered"], "reference_answered": mo["answered"],
                          "both_answered": paired["both_answered"],
                          "valence_mae": paired["valence_mae"], "reference_valence_mae": paired["other_valence_mae"],
                          "passed": bool(mc["accuracy_0.1"] >= mo["accuracy_0.1"] - tolerance
                                         and paired["valence_mae"] <= paired["other_valence_mae"] + valence_tolerance)}
    first = compared["candidate_ranges"]
    probes = probe_gate(res["not_mn_probes"], not_mn_refusals(reference))
    return {"reference_model": reference.model_id, "reference_accuracy_0.1": first["reference_accuracy_0.1"],
            "reference_valence_mae": first["reference_valence_mae"], "sets": compared, "not_mn_probes": probes,
            "tolerance": tolerance, "valence_tolerance": valence_tolerance,
            "passed": all(c["passed"] for c in compared.values()) and probes["passed"]}


def probe_gate(candidate: dict, reference: dict) -> dict:
    """The gate on :func:`~offline_training.evaluate.not_mn_refusals`: the candidate refuses every probe
    at least as often as the reference (a model that reads as well but lets an input that is no Mn edge
    through as a valence is not an improvement); names the probes where it does not."""
    worse = [name for name, p in candidate["probes"].items()
             if p["refused"] < reference["probes"].get(name, {"refused": 0})["refused"]]
    return {"refused": candidate["refused"], "reference_refused": reference["refused"], "draws": candidate["draws"],
            "refused_less_often": worse, "passed": not worse}


def gate_lines(gate: dict) -> list[str]:
    """The verdict of :func:`compare_with_reference` as text: overall, each validation set (candidate against
    reference) and the not-Mn probes."""
    verdict = {True: "passed", False: "FAILED"}
    tolerances = f"tolerance {gate['tolerance']:g}"
    if "valence_tolerance" in gate:   # verdicts written before the valence criterion have none
        tolerances += f" in accuracy_0.1, {gate['valence_tolerance']:g} in valence_mae"
    lines = [f"gate against {gate['reference_model']} ({tolerances}): {verdict[gate['passed']]}"]
    for name, c in gate["sets"].items():
        on = f" on the {c['both_answered']} both answered" if "both_answered" in c else ""   # older verdicts: own
        lines.append(f"  {name.replace('_', ' ')}: accuracy_0.1 {c['accuracy_0.1']:.4f} against "
                     f"{c['reference_accuracy_0.1']:.4f}, valence_mae {c['valence_mae']:.4f} against "
                     f"{c['reference_valence_mae']:.4f}{on}: {verdict[c['passed']]}")
    p = gate["not_mn_probes"]
    worse = f" (refused less often: {', '.join(p['refused_less_often'])})" if p["refused_less_often"] else ""
    lines.append(f"  inputs that are no Mn edge refused: {p['refused']} of {p['draws']} against "
                 f"{p['reference_refused']}: {verdict[p['passed']]}{worse}")
    return lines
