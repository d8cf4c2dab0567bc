"""Readout plots (``--plot DIR``).

* :class:`RunPlotter`: derived runs of ``mnedge live``, valence against the source event number.
* :func:`plot_spectrum` and :func:`write_image_maps`: ``mnedge predict``, one PNG per spectrum
  (the data on the model grid and the readout) and valence/fraction maps (PNG plus HDF5) per
  spectrum image.

All figures are drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnedge_live.assembly import run_file_stem
from mnedge_live.derived import STREAM


class RunPlotter:
    """Collects the rows of each derived run and writes ``DIR/mnedge_<source uid>_valence.png`` at its stop.

    Only the per-spectrum stream (:data:`~mnedge_live.derived.STREAM`) is plotted: its rows carry
    ``source_seq_num``.  Other streams of the derived run (the block readouts of ``map_bin``,
    which have no source event) are ignored.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, list[tuple[int, float, float]]] = {}
        self.desc_run: dict[str, str] = {}
        self.parent: dict[str, str] = {}
        self.written: list[str] = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.rows[doc["uid"]] = []
            self.parent[doc["uid"]] = doc.get("parent_uid", "")
        elif name == "descriptor":
            if doc.get("name") == STREAM:
                self.desc_run[doc["uid"]] = doc["run_start"]
        elif name in ("event", "event_page"):
            run = self.desc_run.get(doc["descriptor"])
            if run is None:
                return  # another stream (e.g. the block readouts): nothing to plot against seq_num
            d = doc["data"]
            seq, val, std = (np.atleast_1d(d[k]) for k in ("source_seq_num", "valence", "valence_std"))
            self.rows.setdefault(run, []).extend(zip(seq.tolist(), val.tolist(), std.tolist()))
        elif name == "stop":
            rows = self.rows.pop(doc["run_start"], [])
            self.written.append(self._write(doc["run_start"], rows))

    def _write(self, uid: str, rows: list[tuple[int, float, float]]) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        if rows:
            s, v, e = (np.asarray(x, float) for x in zip(*rows))
            ax.errorbar(s, v, yerr=e, fmt="o", ms=3)
        ax.set_xlabel("source event (seq_num)")
        ax.set_ylabel("Mn valence")
        ax.set_ylim(1.8, 4.2)
        ax.set_title(f"source run {self.parent.get(uid, '')[:8]}")
        fig.tight_layout()
        path = self.dir / f"{run_file_stem(self.parent.get(uid, uid), '_valence')}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return str(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_grid_data(energy: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """The spectrum as the model sees it: the engine's checks and repairs, then the shared preprocessing.

    Returns
    -------
    (grid, values, held) or str
        :data:`~mnedge_live.preprocessing.MODEL_GRID`, the normalized spectrum on it and the mask of
        points held outside the measured window; or why the spectrum cannot be preprocessed.
    """
    from mnedge_live.engine.core import model_input
    from mnedge_live.preprocessing import MODEL_GRID

    try:
        prep = model_input(energy, intensity)
    except (ValueError, TypeError, RuntimeError) as exc:
        return str(exc)
    x = prep.x[0].numpy()
    return np.asarray(MODEL_GRID), x[0], x[1] > 0.5


def readout_text(result) -> str:
    """The numbers of one readout, a few lines for a figure."""
    d = result.to_dict()
    if result.status != "ok":
        return f"rejected:\n{_wrap(result.reason)}\nmodel {result.model}"

    def pm(v, s):
        return f"{v:.3f} ± {s:.3f}" if s is not None else f"{v:.3f}"

    lines = [f"valence {pm(d['valence'], d['valence_std'])}"]
    for name in ("Mn2+", "Mn3+", "Mn4+"):
        lines.append(f"{name}  {pm(d['fractions'][name], d['fractions_std'][name])}")
    if d["energy_offset_eV"] is not None:
        lines.append(f"energy offset {d['energy_offset_eV']:+.2f} eV")
    if d["resolution_eV"] is not None:
        lines.append(f"resolution {d['resolution_eV']:.2f} eV")
    if d["flags"]:
        lines.append("flags: " + ", ".join(d["flags"]))
    lines.append(f"model {result.model}")
    return "\n".join(lines)


def _wrap(text: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or "(no reason)"


def plot_spectrum(path: str | Path, energy: np.ndarray, intensity: np.ndarray, result, title: str = "") -> str:
    """Write one spectrum's PNG: its data on the model grid, the fractions and the numbers.

    Parameters
    ----------
    path : str or Path
        PNG to write (its folder is created).
    energy, intensity : numpy.ndarray
        The measured spectrum.
    result : SpectrumResult
        Its readout (``ok`` or ``rejected``).
    title : str
        Figure title (e.g. file name and index).

    Returns
    -------
    str
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, axf, axt) = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 1.2, 1.6]})
    try:   # a figure whose drawing or writing fails is closed all the same (they piled up, 20 and more)
        _draw_spectrum(fig, (ax, axf, axt), energy, intensity, result, title)
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
    return str(path)


def display_text(text: str) -> str:
    """``text`` (a file name, possibly with bytes that are not UTF-8, as Python keeps them) printable by any
    UTF-8 writer: those bytes as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def plain_text(text: str) -> str:
    """``text`` as matplotlib draws it literally: ``$`` escaped (a file name like ``MnO_$x$.csv`` is no
    formula) and bytes of a file name that are not UTF-8 written as ``\\xNN``."""
    return display_text(text).replace("$", r"\$")


def _draw_spectrum(fig, axes, energy: np.ndarray, intensity: np.ndarray, result, title: str) -> None:
    """The three panels of :func:`plot_spectrum`."""
    ax, axf, axt = axes
    grid = model_grid_data(energy, intensity)
    if isinstance(grid, str):
        e = np.asarray(energy, np.float64)
        y = np.asarray(intensity, np.float64)
        if e.shape == y.shape and e.ndim == 1:
            ax.plot(e, y, lw=1)
        ax.set_xlabel("energy (eV, as measured)")
        ax.set_title(plain_text(f"cannot preprocess: {grid}"[:70]), fontsize=8)
    else:
        g, v, held = grid
        ax.plot(g, v, lw=1.2, color="C0", label="measured")
        if held.any():
            ax.plot(g[held], v[held], ".", ms=2, color="0.6", label="held (not measured)")
        ax.set_xlabel("energy on the model grid (eV, L3 aligned to 641 eV)")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_ylabel("normalized intensity")
    d = result.to_dict()
    names = ("Mn2+", "Mn3+", "Mn4+")
    vals = [d["fractions"][k] if d["fractions"][k] is not None else 0.0 for k in names]
    errs = [d["fractions_std"][k] if d["fractions_std"][k] is not None else 0.0 for k in names]
    axf.bar(names, vals, yerr=errs, color=["C2", "C1", "C3"], capsize=3)
    axf.set_ylim(0, 1.05)
    axf.set_title("fractions", fontsize=9)
    axt.axis("off")
    axt.text(0.0, 1.0, plain_text(readout_text(result)), va="top", ha="left", fontsize=8, family="monospace",
             transform=axt.transAxes)
    if title:
        fig.suptitle(plain_text(title), fontsize=9)
    fig.tight_layout()


def write_image_maps(directory: str | Path, name: str, maps, attrs: dict | None = None) -> tuple[str, str]:
    """Write a spectrum image's valence and fraction maps as HDF5 and PNG.

    Parameters
    ----------
    directory : str or Path
        Output folder (created).
    name : str
        Base name of ``NAME.h5`` and ``NAME.png``.
    maps : mnedge_live.assembly.ValenceMaps
        The merged maps.
    attrs : dict, optional
        HDF5 file attributes (source file, model id, ...).

    Returns
    -------
    (str, str)
        Paths of the HDF5 file and the PNG.
    """
    _pyplot()
    return maps.write(directory, name, attrs=attrs)


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text``."""
    out = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in text)
    return out.strip("._") or "spectrum"
