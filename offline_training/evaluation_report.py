"""The text report ``mnedge-train evaluate`` prints without ``--json``.

One line per result a person adopting a model reads first: the metrics on the
synthetic validation set, the coverage of the stated uncertainty, the
baselines, the refusals of inputs that are no Mn edge, the measured spectra
(readings, robustness, mixtures) and, with ``--gate``, the gate's verdict.
"""

from __future__ import annotations

from offline_training.gate import gate_lines


def evaluation_lines(res: dict) -> list[str]:
    """The lines of the report on ``res``, the dict :func:`~offline_training.evaluate.evaluate` returns
    (with its ``gate`` entry when there is one); sections without results add no lines."""
    lines = [f"model {res['model']}  accuracy_0.1 {res['accuracy_0.1']:.4f}  fraction_mae {res['fraction_mae']:.4f}  "
             f"valence_mae {res['valence_mae']:.4f}  rejected {res['rejected']}",
             _coverage_line(res["coverage"])]
    for name, b in res["baselines"].items():
        lines.append(f"  {name:32s} accuracy_0.1 {b['accuracy_0.1']:.4f}  valence_mae {b['valence_mae']:.4f}")
    lines.append(_probes_line(res["not_mn_probes"]))
    lines += _measured_lines(res)
    if "gate" in res:
        lines += gate_lines(res["gate"])
    return lines


def _coverage_line(cov: dict) -> str:
    """The valence's one-sigma coverage overall, by the largest fraction read and by truth, and two-sigma."""
    groups = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -"
                       for k, v in cov["valence_1sigma_by_largest_fraction"].items())
    kinds = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in cov["valence_1sigma_by_kind"].items())
    return (f"  valence 1-sigma coverage {cov['valence_1sigma']:.3f} (ideal 0.683; by largest fraction read: "
            f"{groups}; by truth: {kinds}), 2-sigma {cov['valence_2sigma']:.3f}")


def _probes_line(probes: dict) -> str:
    """How many not-Mn probe draws were refused, and what the others were read as."""
    through = "; ".join(f"{name} read as {p['read_as']}" for name, p in probes["probes"].items() if p["read_as"])
    return (f"  inputs that are no Mn edge refused: {probes['refused']} of {probes['draws']}"
            + (f" ({through})" if through else ""))


def _measured_lines(res: dict) -> list[str]:
    """The measured spectra: each one's reading, its robustness, and the readings of their mixtures."""
    lines = []
    for r in res.get("real_spectra", []):
        lines.append(f"  {r['file']:28s} {r['status']:8s} valence {r['valence']}  {r['reason']}")
    for r in res.get("real_spectra_robustness", []):
        cells = [f"axis scale {k}: {v}" for k, v in r["axis_scale"].items()]
        cells += [f"+{k} eV blur: {v}" for k, v in r["extra_blur_fwhm_eV"].items()]
        cells += [f"{k} dB: {v['mean']} +- {v['std']} ({v['refused']} refused)"
                  for k, v in r["added_noise_psnr_dB"].items()]
        lines.append(f"  {r['file']:28s} " + ", ".join(cells))
    mixtures = res.get("real_spectra_mixtures")
    if mixtures and mixtures["pairs"]:
        lines.append(f"  measured mixtures, mean |read - expected| {mixtures['mean_abs_deviation']}")
        for pair in mixtures["pairs"]:
            cells = [f"{m['share']:g}: {m['expected']:.2f} -> {m['read']}" for m in pair["mixtures"]]
            lines.append(f"    {' + '.join(pair['files'])}: " + ", ".join(cells))
    return lines
