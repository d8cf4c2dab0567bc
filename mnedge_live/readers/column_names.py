"""Column names of measured text tables: which names mean an energy axis, a spectrum, a raw yield, its
monitor, an index or the instrument, compared as keys without case, units or separators.

Shared by the column-text reader (:mod:`~mnedge_live.readers.columns`) and the NeXus reader
(:mod:`~mnedge_live.readers.nexus`), which choose their columns by the same words.
"""

from __future__ import annotations

import re

#: Column names (lower case, units dropped) taken as the spectrum in a text file of more than two
#: columns, first match in this order: normalized and flattened XAS (Athena/Larch exports), mu(E),
#: then generic intensity names.
SPECTRUM_COLUMN_NAMES = ("norm", "nor", "flat", "xmu", "mu", "mutrans", "mu_trans", "mufluor", "mu_fluor",
                         "absorption", "intensity", "counts", "signal", "eels", "xas", "spectrum")
#: Column names of monitors and bookkeeping, never a spectrum: a file whose second column is one of
#: these and that names no spectrum column is refused instead of read from its monitor.
MONITOR_COLUMN_NAMES = frozenset({"i0", "i_0", "izero", "monitor", "mon", "time", "seconds", "sec", "count_time",
                                  "ring_current", "ringcurrent", "current", "beam_current", "energy", "e"})

#: Column names (keys, as :func:`column_key` makes them) of a point index, a counter or a clock: never the
#: energy axis.  A column named so (or unnamed: a pandas or R index) in first place is not read as the energy.
INDEX_COLUMN_NAMES = frozenset({"", "#", "index", "idx", "point", "points", "pt", "pts", "no", "nr", "num", "number",
                                "channel", "chan", "ch", "row", "step", "time", "seconds", "sec", "clock",
                                "real_time_clock", "timestamp", "epoch"})
#: Column names (keys) of an energy axis besides those containing the word ``energy`` (``Mono Energy``,
#: ``pgm_energy``, ``Energy loss (eV)``).
ENERGY_COLUMN_NAMES = frozenset({"e", "ev", "hv", "eloss", "energyloss"})

#: Column names (keys) of raw electron or fluorescence yields, read divided by the file's I0 monitor
#: (:data:`I0_COLUMN_NAMES`) when chosen by default; also ``tey_*``, ``tfy_*``, ``pfy_*`` (``PFY_Mn``).
RAW_YIELD_NAMES = frozenset({"tey", "tfy", "pfy", "itey", "itfy", "ipfy", "idio", "ifiofb", "ifio", "fy", "ey",
                             "iy", "ifluor", "ifluo", "drain", "drain_current", "sample_current", "sdd"})
#: Column names (keys) of the incident-flux monitor a raw yield is divided by.
I0_COLUMN_NAMES = frozenset({"i0", "i_0", "izero", "monitor", "mon"})


#: Words (of a column key split on ``_``) naming what a table holds beside its spectra: uncertainties,
#: fits, backgrounds, differences (``MnO_err``, ``sample_std``, ``MnO fit``, ``Diff``). Never read as a
#: spectrum of their own (:func:`spectrum_columns`).
COMPANION_WORDS = frozenset({"err", "error", "errors", "sigma", "std", "stdev", "sd", "unc", "uncertainty", "esd",
                             "dev", "dy", "yerr", "noise", "weight", "weights", "fit", "fitted", "model", "residual",
                             "residuals", "resid", "bkg", "background", "baseline", "mask", "flag", "flags", "diff",
                             "difference", "deriv", "derivative", "xmcd", "xmld", "dichroism"})
#: Words of columns that record the instrument, not a spectrum: transmission detectors, temperatures,
#: angles, currents (``I1``, ``Iref``, ``Temperature``, ``Mono_angle``).
#: Compared also without trailing digits: ``Keithley2``, ``mcs0``, ``ch3`` are detector channels, whose
#: tables are read as a detector export (one spectrum, :func:`intensity_column`).
INSTRUMENT_WORDS = frozenset({"i1", "i2", "it", "iref", "ir", "itrans", "temperature", "temp", "angle", "theta",
                              "bragg", "pressure", "current", "gap", "ring", "keithley", "mcs", "sca", "ch", "chan",
                              "channel", "counter", "det", "detector", "amp", "ammeter"})


#: Words of a units row under the names row (``eV  nA  a.u.``), compared lower case without brackets.
UNIT_WORDS = frozenset({"", "-", "1", "ev", "kev", "mev", "a", "na", "pa", "ua", "\u00b5a", "ma", "v", "mv", "s", "sec",
                        "ms", "a.u.", "a.u", "au", "arb", "arb.", "arb.u.", "arb.units", "counts", "cts", "cps",
                        "c/s", "hz", "khz"})


def is_units_row(fields: list[str]) -> bool:
    return all(w.strip("()[]{} ").lower().replace(" ", "") in UNIT_WORDS for w in fields)


def is_known_key(key: str) -> bool:
    """Whether a column key is a name this module knows (energy, index, monitor, spectrum, raw yield)."""
    return bool(key) and (is_energy_key(key) or is_index_key(key) or key in MONITOR_COLUMN_NAMES
                          or key in SPECTRUM_COLUMN_NAMES or is_raw_yield_key(key) or is_normalized_yield_key(key))


def is_energy_key(key: str) -> bool:
    """Whether a column key names an energy axis (``energy``, ``Energy (eV)``, ``Mono Energy``, ``E``, ``E2``, ...)."""
    return key in ENERGY_COLUMN_NAMES or "energy" in key.split("_") or key.startswith("energy") \
        or key.endswith("energy") or _NUMBERED_ENERGY.fullmatch(key) is not None


#: An energy column numbered for X/Y pairs: ``E1``, ``E_2``, ``eV3``.
_NUMBERED_ENERGY = re.compile(r"(e|ev)_?\d+")


def i0_monitors(keys: list[str], candidates: list[int]) -> list[int]:
    """The candidates (indices into ``keys``, column keys) named as an I0 monitor, which a raw yield
    chosen by default is divided by when there is exactly one (:data:`I0_COLUMN_NAMES`)."""
    return [k for k in candidates if keys[k] in I0_COLUMN_NAMES]


def is_raw_yield_key(key: str) -> bool:
    """Whether a column key names a raw electron or fluorescence yield (to be divided by I0)."""
    if "norm" in key or "/" in key:   # already divided by its monitor (TEY_norm, TFY / I0)
        return False
    return key in RAW_YIELD_NAMES or key.startswith(("tey_", "tfy_", "pfy_"))


#: Words marking a yield column as already normalized (``TEY_norm``, ``norm TFY``, ``TEY normalized``).
_NORM_WORDS = frozenset({"norm", "nor", "normalized", "normalised"})


def is_normalized_yield_key(key: str) -> bool:
    """Whether a column key names a yield already divided by its monitor: ``TEY/I0``, ``TFY / I0``,
    ``TEY_norm``, ``norm TEY`` (a spectrum, not a raw yield)."""
    if "/" in key:
        num, _, den = key.partition("/")
        return is_raw_yield_key(num.strip("_")) and den.strip("_") in I0_COLUMN_NAMES
    words = key.split("_")
    rest = [w for w in words if w not in _NORM_WORDS]
    return 0 < len(rest) < len(words) and is_raw_yield_key("_".join(rest))


def is_index_key(key: str) -> bool:
    """Whether a column key names a point index, counter or clock (or no name: a pandas/R index column)."""
    return key in INDEX_COLUMN_NAMES or key.startswith("unnamed") or key.endswith("_time") or key.startswith("time_")


def column_key(name: str) -> str:
    """A column name compared without case, units (``mu (a.u.)``) or separators."""
    key = re.sub(r"[(\[{].*?[)\]}]", "", name).strip().lower()
    return re.sub(r"[\s\-.]+", "_", key).strip("_")
