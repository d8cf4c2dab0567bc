"""Build, store and load the bank of end-member spectra.

The bank is the physics the training data rests on: families of calculated
charge-transfer multiplet spectra per valence (:mod:`.multiplet`), optionally
joined by measured references supplied by facility staff (:mod:`.measured`).
It is computed once by ``mnedge-train references`` (parallel, resumable, with
a progress bar) and shipped as ``references/data/bank.npz`` so that nothing
needs edrixs at run time.

Bank layout (all on one uniform absolute energy grid, eV):

``energy`` (N,), ``spectra`` (M, N) float32, ``valence`` (M,) int,
``split_ev`` (M,) energy between L3 and L2 (for the L2 lifetime and the
branching-ratio stage), ``d_count`` (M,) nominal 3d count, ``weight`` (M,)
sampling weight within its valence, ``source`` (M,) str, ``params_json`` str.

Every spectrum is stored with unit L2,3 area; the forward model multiplies by
the number of 3d holes so that a mixture's label is the atomic fraction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import zipfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from offline_training.references.multiplet import (
    CALC_GAMMA,
    D_COUNT,
    MultipletParameters,
    calculate_spectrum,
    optical_ten_dq,
)
from offline_training.references.parameters import (
    L3_POSITION_EV,
    L3_RAMP,
    LIFETIME_RANGES,
    OPTICAL_TEN_DQ_EV,
    as_dict,
    draw_parameters,
    within_ligand_field_window,
)

log = logging.getLogger(__name__)

#: Energy grid of the bank (eV): wide enough for offsets, plural scattering and crops.
BANK_GRID = np.round(np.arange(625.0, 700.0, 0.05), 4)

#: Relative calculation grid (model units); the edge lands near +75 for these models.
_CALC_GRID = np.arange(20.0, 140.0, 0.05)

#: Families and sizes of the default bank (Mn4+: 24 calculations over its 6 eV range of Delta, 20 over 4 eV before).
DEFAULT_FAMILY_SIZES = {"Mn2+ Oh": 14, "Mn2+ Td": 6, "Mn3+ Oh-JT": 20, "Mn4+ Oh": 24}

#: Core-hole lifetime variants made from each calculation (cheap, post hoc).
LIFETIME_VARIANTS = 3

#: L3 width models a bank can be built with (``mnedge-train references --l3-lifetime``).
L3_LIFETIME_MODES = ("constant", "ramp", "both")

#: How far (eV) a measured reference's L3 maximum may lie outside the L3 maxima of the calculated
#: members of its valence (:func:`check_measured_l3`): farther, its energy axis is not calibrated.
MEASURED_L3_TOLERANCE_EV = 3.0

#: ``source`` prefix of the measured references in a bank (:func:`join_measured`).
MEASURED_PREFIX = "measured:"


#: Arrays of a bank file (:meth:`Bank.save`).
BANK_FIELDS = ("energy", "spectra", "valence", "split_ev", "weight", "source", "params_json")


@dataclass
class Bank:
    """End-member spectra on a common grid; see the module docstring for fields."""

    energy: np.ndarray
    spectra: np.ndarray
    valence: np.ndarray
    split_ev: np.ndarray
    weight: np.ndarray
    source: np.ndarray
    params_json: str = "[]"

    def __post_init__(self) -> None:
        m = len(self.spectra)
        for name in ("valence", "split_ev", "weight", "source"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"bank field {name!r} has {len(getattr(self, name))} rows, spectra has {m}")
        missing = {2, 3, 4} - set(np.unique(self.valence).tolist())
        if missing:
            raise ValueError(f"bank has no spectrum for valence(s) {sorted(missing)}")

    def of_valence(self, valence: int) -> np.ndarray:
        """Indices of the spectra of one valence."""
        return np.flatnonzero(self.valence == valence)

    def sha256(self) -> str:
        """Checksum of the bank's contents (recorded with every dataset and model)."""
        h = hashlib.sha256()
        for a in (self.energy, self.spectra, self.valence, self.split_ev, self.weight):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write the bank as a compressed ``.npz``."""
        np.savez_compressed(
            path, energy=self.energy, spectra=self.spectra.astype(np.float32), valence=self.valence,
            split_ev=self.split_ev, weight=self.weight, source=self.source.astype(str),
            params_json=np.array(self.params_json),
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> Bank:
        """Load a bank file, or the shipped default bank when ``path`` is None.

        The file is read without unpickling anything (``allow_pickle=False``).

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            The file is not a references bank (not an ``.npz`` of :meth:`save`, or one missing
            fields or holding inconsistent ones); the message names the file.
        """
        path = Path(default_bank_path() if path is None else path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such references bank file")
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with z:
                missing = [k for k in BANK_FIELDS if k not in z.files]
                if missing:
                    raise ValueError(f"it lacks {', '.join(missing)}")
                return cls(energy=z["energy"], spectra=z["spectra"], valence=z["valence"],
                           split_ev=z["split_ev"], weight=z["weight"], source=z["source"],
                           params_json=str(z["params_json"]))
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            what = "not an .npz archive" if "pickled" in str(exc) else str(exc)   # numpy: "contains pickled data"
            raise ValueError(f"{path} is not a references bank (an .npz written by 'mnedge-train references'): "
                             f"{what}") from None


def default_bank_path() -> Path:
    """Path of the bank shipped with the package."""
    return Path(str(resources.files("offline_training.references") / "data" / "bank.npz"))


class BankUnavailable(RuntimeError):
    """The bank a model was trained on is not here, or has changed since its training.

    Attributes
    ----------
    reason : str
        What is wrong, in a sentence.
    detail : str
        The checksums that show it (``" (SHA-256 ...)"``; may be ``""``).
    changed : bool
        The file is here but holds another bank.
    """

    def __init__(self, reason: str, detail: str = "", changed: bool = False):
        super().__init__(reason + detail)
        self.reason, self.detail, self.changed = reason, detail, changed


def recorded_bank(path: str | None, sha256: str | None) -> tuple[Bank, str]:
    """The bank a training run recorded, checked by its SHA-256: ``(bank, its path or "(shipped)")``.

    ``path`` is the training config's ``bank`` (None: the shipped bank) and ``sha256``
    the checksum recorded at training (None: none was). A file that is not here is the
    shipped bank when the checksums agree (a scratch copy of a bank shipped since).

    Raises
    ------
    BankUnavailable
        The file is not here and the shipped bank is another, or the file holds another
        bank than the one trained on (a new ``references --out`` of the same name).
    """
    if path and not Path(path).is_file():
        shipped = Bank.load()
        if sha256 and shipped.sha256() == sha256:
            return shipped, "(shipped)"
        raise BankUnavailable(f"the model was trained on the bank {path}, which is not here",
                              f" (SHA-256 {sha256[:12]}..., the shipped bank's is {shipped.sha256()[:12]}...)"
                              if sha256 else "")
    bank = Bank.load(path or None)
    if sha256 and bank.sha256() != sha256:
        raise BankUnavailable(f"the bank {path or '(shipped)'} has changed since the model was trained on it",
                              f" (SHA-256 {bank.sha256()[:12]}..., at training {sha256[:12]}...)", changed=True)
    return bank, str(path) if path else "(shipped)"


def unit_area(energy: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """Scale a spectrum to unit integrated area (trapezoid rule)."""
    area = np.trapezoid(spectrum, energy)
    if not np.isfinite(area) or area <= 0:
        raise ValueError("spectrum has no positive area")
    return spectrum / area


def find_split(energy: np.ndarray, spectrum: np.ndarray) -> float:
    """Energy of the minimum between L3 and L2 (searched 4-10 eV above the L3 maximum)."""
    l3 = energy[np.argmax(spectrum)]
    window = (energy > l3 + 4.0) & (energy < l3 + 10.0)
    return float(energy[window][np.argmin(spectrum[window])])


#: Smallest Lorentzian HWHM (eV) :func:`lorentzian_lifetime` adds to a calculated spectrum: a width at
#: or below the calculation's own (``gamma_done``) is applied as ``gamma_done`` plus this.
MIN_ADDED_HWHM = 1e-3


def applied_hwhm(gamma: float, gamma_done: float = CALC_GAMMA) -> float:
    """The core-hole HWHM (eV) a spectrum calculated with ``gamma_done`` has after :func:`lorentzian_lifetime`.

    Lorentzians add their widths, and only a positive extra width can be
    added: ``gamma_done + max(gamma - gamma_done, MIN_ADDED_HWHM)``. Every
    L3 width drawn below the calculation's 0.1 eV
    (:data:`~offline_training.references.multiplet.CALC_GAMMA`) is applied as
    0.101 eV; banks record this as ``gamma_l3_applied`` beside the drawn ``gamma_l3``.
    """
    return float(gamma_done + max(gamma - gamma_done, MIN_ADDED_HWHM))


def lorentzian_lifetime(energy: np.ndarray, spectrum: np.ndarray, split: float,
                        gamma_l3: float, gamma_l2: float, gamma_done: float = CALC_GAMMA,
                        gamma_l3_onset: float | None = None, ramp_ev: float = 3.0) -> np.ndarray:
    """Add core-hole Lorentzian broadening: L3's below ``split``, L2's ``gamma_l2`` above.

    L3's HWHM is ``gamma_l3`` throughout, or, with ``gamma_l3_onset``, rises
    linearly from it (``ramp_ev / 2`` below the L3 maximum and lower) to
    ``gamma_l3`` (``ramp_ev / 2`` above and higher): the lowest multiplets
    live longest (see :mod:`~offline_training.references.parameters`).  A Lorentzian of HWHM a
    convolved with one of HWHM b is a Lorentzian of HWHM a + b, so a spectrum
    calculated with ``gamma_done`` gets the extra ``gamma - gamma_done``, at
    least :data:`MIN_ADDED_HWHM`: a width below ``gamma_done`` cannot be
    reached and is applied as ``gamma_done + MIN_ADDED_HWHM``
    (:func:`applied_hwhm`).  The kernel varies with the energy it spreads
    from, which keeps the area of every transition.
    """
    de = energy[1] - energy[0]
    g3 = np.full(energy.shape, float(gamma_l3))
    if gamma_l3_onset is not None:
        l3 = energy[np.argmax(np.where(energy < split, spectrum, 0.0))]
        ramp = np.clip((energy - (l3 - ramp_ev / 2)) / ramp_ev, 0.0, 1.0) if ramp_ev > 0 else (energy >= l3) * 1.0
        g3 = gamma_l3_onset + (gamma_l3 - gamma_l3_onset) * ramp
    g = np.where(energy < split, g3, gamma_l2) - gamma_done
    g = np.clip(g, MIN_ADDED_HWHM, None)
    diff = energy[:, None] - energy[None, :]
    kernel = (g[None, :] / np.pi) / (diff**2 + g[None, :] ** 2) * de
    kernel /= kernel.sum(axis=0, keepdims=True)
    return kernel @ spectrum


def _cache_key(params: MultipletParameters) -> str:
    return hashlib.sha256(json.dumps(as_dict(params), sort_keys=True).encode()).hexdigest()[:16]


def _calculate_cached(params: MultipletParameters, cache_dir: str,
                      ligand_field: bool = False) -> tuple[np.ndarray, float, float]:
    """One calculation (spectrum, d occupancy, optical 10Dq or NaN), read from or added to the cache.

    The optical 10Dq is calculated only with ``ligand_field`` and for valences that have a band
    (:data:`~offline_training.references.parameters.OPTICAL_TEN_DQ_EV`); a cached calculation
    without it gets it added, so a cache of an earlier bank is extended, not recomputed.
    """
    path = Path(cache_dir) / f"{_cache_key(params)}.npz"
    changed = not path.exists()
    if changed:
        intensity, occ = calculate_spectrum(params, _CALC_GRID)
        cached = {"intensity": intensity, "occupancy": np.float64(occ)}
    else:
        with np.load(path) as z:
            cached = {k: z[k] for k in z.files}
    wanted = ligand_field and params.valence in OPTICAL_TEN_DQ_EV
    if wanted and "optical_ten_dq" not in cached:
        cached["optical_ten_dq"] = np.float64(optical_ten_dq(params))
        changed = True
    if changed:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **cached)
        os.replace(tmp, path)
    optical = float(cached["optical_ten_dq"]) if wanted else float("nan")
    return cached["intensity"], float(cached["occupancy"]), optical


def place_on_grid(intensity: np.ndarray, valence: int, grid: np.ndarray = BANK_GRID,
                  calc_grid: np.ndarray = _CALC_GRID) -> np.ndarray:
    """Shift a calculated spectrum so its L3 maximum sits at the valence's position, and resample."""
    shift = L3_POSITION_EV[valence] - calc_grid[np.argmax(intensity)]
    return np.interp(grid, calc_grid + shift, intensity, left=0.0, right=0.0)


def build_bank(family_sizes: dict[str, int] | None = None, seed: int = 0, workers: int | None = None,
               cache_dir: str | Path = ".cache/multiplets", measured: Iterable = (),
               measured_weight: float = 0.0, progress: bool = True, l3_lifetime: str = "both",
               ligand_field_window: bool = True) -> Bank:
    """Calculate the families (in parallel, resumable through ``cache_dir``) and assemble the bank.

    Parameters
    ----------
    family_sizes : dict, optional
        Number of calculations per family; default :data:`DEFAULT_FAMILY_SIZES`.
    seed : int
        Seed of the parameter draws and lifetime variants.
    workers : int, optional
        Worker processes (default: all cores).
    cache_dir : path
        One file per finished calculation; a rerun skips them (resume).
    measured : iterable of MeasuredReference
        Staff-supplied references to join to the bank.
    measured_weight : float
        Share (0-1) of each valence's sampling weight given to its measured
        references; the calculated family shares the rest.
    progress : bool
        Show a tqdm progress bar.
    l3_lifetime : str
        ``"constant"`` (one L3 width per member), ``"ramp"`` (widths growing
        across L3, :data:`~offline_training.references.parameters.L3_RAMP`) or
        ``"both"`` (the constant rows followed by the ramp rows, each drawn as
        its own mode would draw them, so either half equals that mode's bank; the default and the
        shipped bank).
    ligand_field_window : bool
        Drop the members whose optical 10Dq (the 4A2g -> 4T2g excitation of a d3 site) lies
        outside their valence's band
        (:data:`~offline_training.references.parameters.OPTICAL_TEN_DQ_EV`); their lifetime
        draws are still made, so the kept rows equal those of the bank without the window.
        Each dropped member is logged.
    """
    if l3_lifetime not in L3_LIFETIME_MODES:
        raise ValueError(f"l3_lifetime must be one of {L3_LIFETIME_MODES}, got {l3_lifetime!r}")
    modes = ("constant", "ramp") if l3_lifetime == "both" else (l3_lifetime,)
    from tqdm import tqdm

    sizes = family_sizes or DEFAULT_FAMILY_SIZES
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    jobs = []
    for k, (family, n) in enumerate(sorted(sizes.items())):
        jobs += [(family, p) for p in draw_parameters(family, n, seed + 1000 * k)]
    # Largest problems first, so the pool ends evenly.
    jobs.sort(key=lambda j: j[1].valence, reverse=True)
    results: dict[int, tuple[np.ndarray, float, float]] = {}
    # One BLAS/numba thread per worker: the workers are the parallelism.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=ctx) as pool:
        futures = {pool.submit(_calculate_cached, p, str(cache_dir), ligand_field_window): i
                   for i, (_, p) in enumerate(jobs)}
        for fut in tqdm(as_completed(futures), total=len(futures), disable=not progress, desc="multiplets"):
            results[futures[fut]] = fut.result()
    kept = [not ligand_field_window or within_ligand_field_window(p.valence, results[i][2])
            for i, (_, p) in enumerate(jobs)]
    for i, (family, p) in enumerate(jobs):
        if not kept[i]:
            log.info("dropped %s member (10Dq %.2f eV, Delta %.2f eV, V(eg) %.2f eV): optical 10Dq %.3f eV "
                     "outside %s eV", family, p.ten_dq, p.delta, p.v_eg, results[i][2],
                     OPTICAL_TEN_DQ_EV[p.valence])
    placed = []  # each calculation on the bank grid with its L3/L2 split, once for every mode
    for i, (_, p) in enumerate(jobs):
        base = place_on_grid(results[i][0], p.valence)
        placed.append((base, find_split(BANK_GRID, base)))
    spectra, valence, split, source, meta = [], [], [], [], []
    for mode in modes:
        ramp = mode == "ramp"
        rng = np.random.default_rng(seed)
        for i, (family, p) in enumerate(jobs):
            occ, optical = results[i][1], results[i][2]
            base, sp = placed[i]
            for _ in range(LIFETIME_VARIANTS):
                g3 = rng.uniform(*(L3_RAMP["main_hwhm"] if ramp else LIFETIME_RANGES["gamma_l3"]))
                g2 = rng.uniform(*LIFETIME_RANGES["gamma_l2"])
                if not kept[i]:
                    continue
                s = lorentzian_lifetime(BANK_GRID, base, sp, g3, g2, ramp_ev=L3_RAMP["ramp_ev"],
                                        gamma_l3_onset=L3_RAMP["onset_hwhm"] if ramp else None)
                spectra.append(unit_area(BANK_GRID, s))
                valence.append(p.valence)
                split.append(sp)
                source.append(family)
                # the widths drawn and, since a spectrum calculated with CALC_GAMMA cannot get narrower,
                # the widths applied (a draw below 0.1 eV is applied as 0.101 eV)
                applied = {"gamma_l3_applied": applied_hwhm(g3)}
                if ramp:
                    applied["gamma_l3_onset_applied"] = applied_hwhm(L3_RAMP["onset_hwhm"])
                meta.append(dict(as_dict(p), gamma_l3=g3, gamma_l2=g2, d_occupancy=occ, l3_lifetime=mode,
                                 **applied, **({} if np.isnan(optical) else {"optical_ten_dq": optical})))
    valence_arr = np.array(valence)
    weight = np.ones(len(spectra))
    bank = Bank(energy=BANK_GRID, spectra=np.array(spectra, np.float32), valence=valence_arr,
                split_ev=np.array(split), weight=weight, source=np.array(source),
                params_json=json.dumps(meta))
    return join_measured(bank, list(measured), measured_weight)


def calculated_l3_range(bank: Bank, valence: int) -> tuple[float, float] | None:
    """Lowest and highest L3 maximum (eV) of the bank's calculated (not measured) members of ``valence``.

    Returns None when the bank has no calculated member of that valence.
    """
    calc = (bank.valence == valence) & ~np.char.startswith(bank.source.astype(str), MEASURED_PREFIX)
    if not calc.any():
        return None
    maxima = bank.energy[np.argmax(bank.spectra[calc], axis=1)]
    return float(maxima.min()), float(maxima.max())


def check_measured_l3(bank: Bank, name: str, valence: int, spectrum: np.ndarray) -> None:
    """Refuse (``ValueError``) a measured reference whose L3 maximum is off its valence's calculated ones.

    A reference on an uncalibrated energy axis would otherwise join the bank
    as an end member of its valence several eV from where that valence's
    edge lies, and teach the network that position. Its L3 maximum (on the
    bank grid) must lie within :data:`MEASURED_L3_TOLERANCE_EV` of the range
    of the calculated members' maxima (:func:`calculated_l3_range`); with no
    calculated member of that valence there is nothing to compare with, and
    a warning says it was not checked.
    """
    known = calculated_l3_range(bank, valence)
    if known is None:
        log.warning("measured reference %s (Mn%d+): the bank has no calculated Mn%d+ member, so its energy "
                    "axis is not checked against one", name, valence, valence)
        return
    l3 = float(bank.energy[np.argmax(spectrum)])
    lo, hi = known
    if not lo - MEASURED_L3_TOLERANCE_EV <= l3 <= hi + MEASURED_L3_TOLERANCE_EV:
        raise ValueError(f"measured reference {name} (Mn{valence}+): its L3 maximum at {l3:.2f} eV lies more than "
                         f"{MEASURED_L3_TOLERANCE_EV:g} eV outside {lo:.2f}-{hi:.2f} eV, the L3 maxima of the bank's "
                         f"calculated Mn{valence}+ members: calibrate the reference's energy axis first")


def join_measured(bank: Bank, measured: list, measured_weight: float) -> Bank:
    """Add measured references to a bank, giving them ``measured_weight`` of each valence's sampling.

    Each reference becomes the member ``measured:<name>``. Refused (``ValueError``, naming the
    reference): a name the bank already holds (a repeat, which would weigh the same spectrum twice)
    and an L3 maximum off its valence's calculated members (:func:`check_measured_l3`).
    """
    if not measured:
        return bank
    if not 0.0 <= measured_weight <= 1.0:
        raise ValueError(f"measured_weight must be within [0, 1], got {measured_weight}")
    held = {str(s) for s in bank.source if str(s).startswith(MEASURED_PREFIX)}
    spectra = list(bank.spectra)
    valence = list(bank.valence)
    split = list(bank.split_ev)
    source = list(bank.source)
    weight = list(bank.weight)
    meta = json.loads(bank.params_json)
    for ref in measured:
        name = f"{MEASURED_PREFIX}{ref.name}"
        if name in held:
            raise ValueError(f"measured reference {ref.name} (Mn{ref.valence}+): the bank already holds {name}; "
                             "adding it again would weigh it twice: start from a bank without it (--base) "
                             "or give the file another name")
        held.add(name)
        s = unit_area(bank.energy, ref.on_grid(bank.energy))
        check_measured_l3(bank, ref.name, ref.valence, s)
        spectra.append(s)
        valence.append(ref.valence)
        split.append(find_split(bank.energy, s))
        source.append(name)
        weight.append(1.0)
        meta.append({"valence": ref.valence, "file": ref.name})
    valence_arr = np.array(valence)
    weight_arr = np.array(weight, float)
    is_measured = np.array([s.startswith(MEASURED_PREFIX) for s in source])
    for v in (2, 3, 4):
        calc = (valence_arr == v) & ~is_measured
        meas = (valence_arr == v) & is_measured
        if meas.any() and calc.any():
            weight_arr[calc] = (1 - measured_weight) / calc.sum()
            weight_arr[meas] = measured_weight / meas.sum()
        elif meas.any():
            weight_arr[meas] = 1.0 / meas.sum()
    return Bank(energy=bank.energy, spectra=np.array(spectra, np.float32), valence=valence_arr,
                split_ev=np.array(split), weight=weight_arr, source=np.array(source),
                params_json=json.dumps(meta))


__all__ = ["Bank", "BANK_GRID", "D_COUNT", "build_bank", "join_measured", "check_measured_l3", "default_bank_path",
           "unit_area", "find_split", "lorentzian_lifetime", "applied_hwhm"]
