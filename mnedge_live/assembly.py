"""Step-scan spectrum assembly and spectrum-image maps."""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnedge_live.results import SpectrumResult


class StepAssembler:
    """Collects one energy point per event into a spectrum.

    Parameters
    ----------
    l3_window, l2_window : (float, float)
        The scan covers the edge once it has points at or below ``l3_window[0]``
        and at or above ``l2_window[1]`` (or the reverse for descending scans).
    """

    def __init__(self, l3_window: tuple[float, float], l2_window: tuple[float, float]):
        self.l3_window = l3_window
        self.l2_window = l2_window
        self.energy: list[float] = []
        self.signal: list[float] = []

    def add(self, energy: float, signal: float, norm: float | None = None) -> str:
        """Add a point; returns '' or why it was refused (non-finite values, zero I0)."""
        try:
            e, s = float(energy), float(signal)
            n = None if norm is None else float(norm)
        except (TypeError, ValueError):
            return f"non-numeric point (energy {energy!r}, signal {signal!r}, norm {norm!r})"
        if not (math.isfinite(e) and math.isfinite(s)):
            return f"non-finite point (energy {e}, signal {s})"
        if n is not None:
            if not math.isfinite(n) or n == 0:
                return f"normalization I0 is {n}: cannot divide"
            s = s / n
        self.energy.append(e)
        self.signal.append(s)
        return ""

    def __len__(self) -> int:
        return len(self.energy)

    def covered(self) -> bool:
        """True once the points reach below L3 and above L2."""
        if len(self.energy) < 16:
            return False
        return min(self.energy) <= self.l3_window[0] and max(self.energy) >= self.l2_window[1]

    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """The assembled spectrum, sorted by energy."""
        e = np.asarray(self.energy, np.float64)
        s = np.asarray(self.signal, np.float64)
        order = np.argsort(e, kind="stable")
        return e[order], s[order]


def grid_pixel(seq_num: int, shape: tuple[int, ...], snaking: tuple[bool, ...] | None) -> tuple[int, int] | None:
    """Pixel (row, column) of a grid-scan event, bluesky conventions.

    Parameters
    ----------
    seq_num : int
        1-based event number.
    shape : tuple of int
        The start document's ``shape`` (outer axis first); 1-D shapes are one row.
    snaking : tuple of bool or None
        The start document's ``snaking``; a snaking inner axis reverses every odd row.
    """
    if len(shape) == 1:
        shape = (1, int(shape[0]))
    if len(shape) != 2:
        return None
    ny, nx = int(shape[0]), int(shape[1])
    i = int(seq_num) - 1
    if not (0 <= i < ny * nx):
        return None
    row, col = divmod(i, nx)
    if snaking and len(snaking) > 1 and snaking[1] and row % 2 == 1:
        col = nx - 1 - col
    return row, col


#: Map layers written at stop (``ood_score`` also where the pixel was rejected: where the model did not
#: recognise the spectrum, such as vacuum or another phase, shows as a region). The last three are the
#: model's side outputs per pixel: the energy axis error at L3 (eV; its change across the image is the
#: spectrometer's drift during the scan), the resolution (eV) and, for EELS, t/lambda (a relative
#: thickness map from the core loss alone).
MAP_LAYERS = ("valence", "valence_std", "frac_mn2", "frac_mn3", "frac_mn4", "ood_score", "energy_offset_eV",
              "resolution_eV", "t_lambda")


def run_file_stem(uid: str, suffix: str = "") -> str:
    """``mnedge_<uid><suffix>``: the name of a source run's map or plot files.

    The whole uid, not its first 8 characters: runs of other publishers
    (``scan_0001``, ``scan_0002``) shared a prefix and overwrote each other's
    maps. A uid that holds an ``_`` (which could run into a suffix: uid
    ``scan_1_bin2`` against ``scan_1`` with ``_bin2``), a character a file name
    cannot hold (made ``_``) or more than 96 characters gets 8 hex digits of
    its hash after a ``-``; RunEngine uids (uuid4) keep their plain form.
    """
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", str(uid))[:96]
    if safe != uid or "_" in safe:
        safe += "-" + hashlib.sha256(str(uid).encode()).hexdigest()[:8]
    return f"mnedge_{safe}{suffix}"


def map_values(result: SpectrumResult) -> tuple[float, ...]:
    """The values of one result for the :data:`MAP_LAYERS`, in their order."""
    return (result.valence, result.valence_std, *result.fractions, result.ood_score, result.energy_offset_eV,
            result.resolution_eV, result.t_lambda)


#: Largest side (pixels) of a map as its picture draws it (:meth:`ValenceMaps.for_picture`).
PICTURE_MAX_SIDE = 1024


class ValenceMaps:
    """Live valence and fraction maps of a spectrum image (NaN where not read out)."""

    #: bytes per pixel: one float64 per layer and the rejection flag
    BYTES_PER_PIXEL = 8 * len(MAP_LAYERS) + 1

    @classmethod
    def bytes_for(cls, shape: tuple[int, int]) -> int:
        """Memory the maps of ``shape`` take (before they are made)."""
        return int(shape[0]) * int(shape[1]) * cls.BYTES_PER_PIXEL

    @property
    def nbytes(self) -> int:
        """Memory these maps take."""
        return self.bytes_for(self.shape)

    def __init__(self, shape: tuple[int, int]):
        self.shape = (int(shape[0]), int(shape[1]))
        self.layers = {k: np.full(self.shape, np.nan) for k in MAP_LAYERS}
        self.rejected = np.zeros(self.shape, bool)

    def cropped(self, extent: tuple[int, int]) -> ValenceMaps:
        """These maps cut to ``extent`` ``(rows, columns)`` (a map grown ahead of its pixels); itself when
        it is no larger."""
        rows, cols = min(extent[0], self.shape[0]), min(extent[1], self.shape[1])
        if (rows, cols) == self.shape:
            return self
        out = ValenceMaps((rows, cols))
        out.layers = {k: v[:rows, :cols].copy() for k, v in self.layers.items()}
        out.rejected = self.rejected[:rows, :cols].copy()
        return out

    def holds(self, pixel: tuple[int, int]) -> bool:
        """True when ``pixel`` has a readout already (a valence or a rejection)."""
        r, c = pixel
        return (0 <= r < self.shape[0] and 0 <= c < self.shape[1]
                and bool(self.rejected[r, c] or np.isfinite(self.layers["valence"][r, c])))

    def set(self, pixel: tuple[int, int], result: SpectrumResult) -> bool:
        """Record a readout; False when the pixel is outside the map."""
        return self._set(pixel, map_values(result), result.ok)

    def set_row(self, pixel: tuple[int, int], row: dict) -> bool:
        """Record a derived row (the ``mnedge`` stream's fields, named as the layers); False when the pixel
        is outside the map. A layer the row lacks (a service of an older version) is NaN."""
        return self._set(pixel, tuple(_number(row.get(k)) for k in MAP_LAYERS), row.get("status") == "ok")

    def _set(self, pixel: tuple[int, int], values: tuple[float, ...], ok: bool) -> bool:
        r, c = pixel
        if not (0 <= r < self.shape[0] and 0 <= c < self.shape[1]):
            return False
        for k, v in zip(MAP_LAYERS, values):
            self.layers[k][r, c] = v
        self.rejected[r, c] = not ok
        return True

    def write(self, directory: str | Path, name: str, attrs: dict | None = None) -> tuple[str, str]:
        """Write the maps as HDF5 (:meth:`write_h5`) and a PNG (:meth:`write_png`); returns both paths."""
        return self.write_h5(directory, name, attrs), self.write_png(directory, name)

    def write_h5(self, directory: str | Path, name: str, attrs: dict | None = None) -> str:
        """Write ``directory/name.h5``, one dataset per layer and ``rejected``, with ``attrs``; returns its path.

        Each file is written under a temporary name and renamed into place, so a write that fails
        (an attribute HDF5 cannot store, a full disk) leaves no half-written file under the final
        name, and an earlier file of that name stays whole.  String attributes that are not valid
        UTF-8 (a file name from a share with another encoding) are stored with the bad bytes
        replaced: HDF5 refused them, and the maps were lost.
        """
        import h5py

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        h5 = d / f"{name}.h5"

        def write_h5(tmp: str) -> None:
            with h5py.File(tmp, "w") as f:
                for k, v in self.layers.items():
                    f.create_dataset(k, data=v)
                f.create_dataset("rejected", data=self.rejected)
                for k, v in (attrs or {}).items():
                    f.attrs[k] = v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else v

        _write_replacing(h5, write_h5)
        return str(h5)

    def for_picture(self, max_side: int = PICTURE_MAX_SIDE) -> ValenceMaps:
        """These maps as :meth:`write_png` draws them: every k-th pixel of each row and column where a
        side exceeds ``max_side`` (k the smallest that brings both within it), else the maps themselves.

        A panel of the picture is about 250 pixels wide: a map of 4096 x 4096 pixels is drawn from
        1024 x 1024 of them (77 MB instead of 1.2 GB held while a picture waits to be drawn).
        """
        k = max(1, math.ceil(max(self.shape) / max_side))
        if k == 1:
            return self
        out = ValenceMaps(self.layers["valence"][::k, ::k].shape)
        out.layers = {name: v[::k, ::k].copy() for name, v in self.layers.items()}
        out.rejected = self.rejected[::k, ::k].copy()
        return out

    @staticmethod
    def picture_path(directory: str | Path, name: str) -> Path:
        """Where :meth:`write_png` puts the picture of maps named ``name``."""
        return Path(directory) / f"{name}.png"

    def write_png(self, directory: str | Path, name: str) -> str:
        """Draw the maps (:meth:`for_picture`) into ``directory/name.png`` (replaced whole, as
        :meth:`write_h5`); returns its path.

        Drawn on a figure of its own, without pyplot's shared state, so that one thread may draw
        while another plots (:class:`~mnedge_live.background_writer.BackgroundWriter`); the figure
        is cleared after saving, so its image copies go at once, not at the next garbage collection.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        layers = self.for_picture().layers
        png = self.picture_path(directory, name)
        png.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(14, 6.8))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 4)
        # the composition on the first row; the model's side outputs on the second (offset about its median:
        # the drift across the scan), each on its own range
        offset = layers["energy_offset_eV"]
        mid = float(np.nanmedian(offset)) if np.isfinite(offset).any() else 0.0
        half = max(float(np.nanmax(np.abs(offset - mid))) if np.isfinite(offset).any() else 0.0, 0.5)
        specs = [("valence", "Mn valence", 2.0, 4.0, "viridis"), ("frac_mn2", "Mn2+", 0, 1, "viridis"),
                 ("frac_mn3", "Mn3+", 0, 1, "viridis"), ("frac_mn4", "Mn4+", 0, 1, "viridis"),
                 ("energy_offset_eV", f"energy offset - median ({mid:+.2f} eV)", -half, half, "RdBu_r"),
                 ("resolution_eV", "resolution (eV)", None, None, "magma"),
                 ("t_lambda", "t/lambda (EELS)", None, None, "magma"),
                 ("ood_score", "out-of-distribution score", None, None, "magma")]
        for ax, (k, title, lo, hi, cmap) in zip(axes.flat, specs):
            shown = offset - mid if k == "energy_offset_eV" else layers[k]
            im = ax.imshow(shown, vmin=lo, vmax=hi, cmap=cmap, interpolation="nearest")
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        try:
            _write_replacing(png, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
        finally:
            fig.clear()
        return str(png)


def _number(value: object) -> float:
    """A row's field as a float: NaN where it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _write_replacing(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a file beside ``path``, then rename it over ``path`` (mode 0644): a failed write
    leaves no half-written file under the name and an earlier one whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
