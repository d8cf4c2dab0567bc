"""NeXus (HDF5) files: the plottable data (``NXdata``) of each entry, read with h5py.

Synchrotron beamlines write their scans as NeXus files: per scan an ``NXentry`` whose
``NXdata`` group names its plotted dataset (``@signal``) and that dataset's axes
(``@axes``, ``@AXIS_indices``, or the older ``signal``/``axes`` attributes on the
datasets). RosettaSciIO's NeXus reader (0.15) replaces a measured, unevenly spaced
energy axis by the point index (0, 1, 2, ...; no units) and marks every axis of a map as
navigation; here the axes are read as stored and the energy axis is the one in eV or
keV (else one named as an energy, else the last), so the readers' own
:func:`~mnedge_live.readers.signals.item_from_signal` makes the spectra and images.

Which ``NXdata``: in each entry the one its ``@default`` names (NeXus' plottable
data), else every ``NXdata`` directly in it, each a signal of its own (a signal that
is no spectrum, such as a monitor plotted on its own, gets a rejection with the
reason). A raw yield (TEY, TFY, ...) beside exactly one I0 monitor of the same shape
in its group is read divided by it, as in column text; ``column`` names another
dataset of the group (``A/B``: A divided by B).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mnedge_live.readers.columns import I0_COLUMN_NAMES, column_key, is_raw_yield_key
from mnedge_live.readers.hdf5_cache import HDF5Dataset, hdf5_plugins, release
from mnedge_live.readers.items import (
    ENERGY_UNITS,
    Item,
    MeasuredSpectrum,
    ReadError,
    RefusedSignal,
    SpectrumImage,
)
from mnedge_live.readers.signals import contiguous_chunks, item_from_signal

log = logging.getLogger(__name__)

#: Most NXdata groups searched in one file (a file of thousands of scans is read in parts).
MAX_NXDATA = 1000


def _text(value: Any) -> str:
    """An HDF5 string attribute (bytes, str or a one-element array of either) as str."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _texts(value: Any) -> list[str]:
    """An HDF5 attribute holding one or several names as a list of str."""
    if isinstance(value, np.ndarray) and value.size > 1:
        return [_text(v) for v in value.reshape(-1)]
    return [_text(value)]


def _nx_class(obj: Any) -> str:
    return _text(obj.attrs.get("NX_class", "")) if obj is not None else ""


def is_nexus(f: Any) -> bool:
    """Whether an open h5py file is a NeXus file: one of its top-level groups is an ``NXentry``."""
    import h5py

    return any(isinstance(f.get(k, getlink=False), h5py.Group) and _nx_class(f[k]) == "NXentry" for k in f)


def nxdata_groups(f: Any) -> list[Any]:
    """The ``NXdata`` groups to read: per ``NXentry`` (in file order) the one its ``@default`` names, else
    every ``NXdata`` directly in the entry; at most :data:`MAX_NXDATA`."""
    import h5py

    out = []
    for k in f:
        entry = f[k]
        if not (isinstance(entry, h5py.Group) and _nx_class(entry) == "NXentry"):
            continue
        chosen = _default_nxdata(entry)
        if chosen is not None:
            out.append(chosen)
        else:
            out += [entry[n] for n in entry if isinstance(entry[n], h5py.Group) and _nx_class(entry[n]) == "NXdata"]
        if len(out) >= MAX_NXDATA:
            log.warning("%s: more than %d NXdata groups: the first %d are read", f.filename, MAX_NXDATA, MAX_NXDATA)
            return out[:MAX_NXDATA]
    return out


def _default_nxdata(group: Any, depth: int = 0) -> Any | None:
    """The NXdata the ``@default`` attributes lead to from ``group`` (NXentry, NXsubentry, ...), or None."""
    import h5py

    if _nx_class(group) == "NXdata":
        return group
    name = group.attrs.get("default")
    if name is None or depth > 4:
        return None
    child = group.get(_text(name))
    return _default_nxdata(child, depth + 1) if isinstance(child, h5py.Group) else None


def read_nexus(path: str | Path, lazy: bool = True, column: str | None = None) -> list[Item]:
    """Read the plottable data of a NeXus file (see the module's description).

    Single spectra come back as :class:`MeasuredSpectrum` labelled with their group's path, maps and
    line scans as :class:`SpectrumImage` (lazy when ``lazy``), groups that hold no spectrum as
    :class:`RefusedSignal` with the reason.

    Raises
    ------
    ReadError
        Unreadable file, no ``NXdata`` group, or no spectrum in any of them.
    """
    import h5py

    p = Path(path).resolve()   # absolute: lazy reads may run in Dask workers elsewhere
    st = p.stat()
    version = (st.st_mtime_ns, st.st_size)
    hdf5_plugins()
    items: list[Item] = []
    try:
        with h5py.File(p, "r") as f:
            groups = nxdata_groups(f)
            if not groups:
                raise ReadError(f"{p}: NeXus file without an NXdata group in any NXentry: no plottable data")
            for k, group in enumerate(groups):
                try:
                    sig = _signal_dict(group, column, str(p), version)
                    item = item_from_signal(p, k, sig, lazy)
                except ReadError as exc:
                    items.append(RefusedSignal(str(p), k, f"{group.name}: {exc}"))
                    continue
                except Exception as exc:   # a group laid out as no reader expects: refused, the others read
                    items.append(RefusedSignal(str(p), k, f"{group.name}: not readable: {type(exc).__name__}: {exc}"))
                    continue
                if isinstance(item, MeasuredSpectrum):
                    item = MeasuredSpectrum(item.file, item.index, item.energy, item.intensity, None, group.name)
                items.append(item)
    except ReadError:
        release(p)
        raise
    except Exception as exc:
        release(p)
        raise ReadError(f"{p}: not a readable NeXus file: {type(exc).__name__}: {exc}") from exc
    if not any(isinstance(it, SpectrumImage) for it in items):
        release(p)
    if all(isinstance(it, RefusedSignal) for it in items):
        raise ReadError(f"{p}: no spectrum: " + "; ".join(it.reason for it in items if isinstance(it, RefusedSignal)))
    return items


def _signal_dict(group: Any, column: str | None, filename: str, version: tuple[int, int]) -> dict:
    """A RosettaSciIO-style signal dict (``data``, ``axes``) of one NXdata group."""
    signal, monitor = _signal_datasets(group, column)
    axes = _axis_datasets(group, signal)
    energy_dim = _energy_dim(axes, signal.ndim)
    data = _lazy(signal, filename, version)
    if monitor is not None:
        log.warning("%s: %r is a raw yield: read divided by the I0 monitor %r", group.name,
                    signal.name.rsplit("/", 1)[-1], monitor.name.rsplit("/", 1)[-1])
        i0 = _lazy(monitor, filename, version)
        if isinstance(i0, np.ndarray) and not np.all(np.isfinite(i0) & (i0 != 0)):
            raise ReadError(f"the I0 monitor {monitor.name!r} has zero or non-finite values: "
                            f"{signal.name!r} / I0 cannot be read")
        data = data / i0
    out_axes = []
    for dim in range(signal.ndim):
        ds = axes[dim]
        entry: dict[str, Any] = {"name": ds.name.rsplit("/", 1)[-1] if ds is not None else f"dim{dim}",
                                 "size": int(signal.shape[dim]), "navigate": dim != energy_dim}
        if dim == energy_dim:
            if ds is None:
                raise ReadError(f"no axis dataset for dimension {dim} of {signal.name!r}, the energy dimension")
            entry["units"] = _units(ds)
            entry["axis"] = _axis_values(ds, int(signal.shape[dim]))
        else:
            entry.update(offset=0.0, scale=1.0, units="")
        out_axes.append(entry)
    return {"data": data, "axes": out_axes}


def _lazy(ds: Any, filename: str, version: tuple[int, int]) -> Any:
    """A dataset as a Dask array reading through :class:`HDF5Dataset` (no open file travels with it)."""
    import dask.array as da

    if ds.ndim <= 1:
        return np.asarray(ds[()])   # its own dtype: text or complex values are refused by name, not cast
    chunks = ds.chunks or contiguous_chunks(ds.shape, ds.dtype.itemsize)
    source = HDF5Dataset(filename, ds.name, ds.shape, ds.dtype, version)
    return da.from_array(source, chunks=chunks, meta=np.empty((0,) * ds.ndim, ds.dtype))


def _dataset(group: Any, name: str, what: str) -> Any:
    import h5py

    ds = group.get(name)
    if not isinstance(ds, h5py.Dataset):
        names = ", ".join(k for k in group if isinstance(group[k], h5py.Dataset))
        raise ReadError(f"no dataset {name!r} ({what}) in the group; its datasets are {names}")
    return ds


def _signal_datasets(group: Any, column: str | None) -> tuple[Any, Any | None]:
    """The signal dataset and the monitor it is divided by (None: read as stored)."""
    import h5py

    datasets = {k: group[k] for k in group if isinstance(group[k], h5py.Dataset)}
    if column is not None:
        if column not in datasets and "/" in column:
            a, _, b = column.partition("/")
            sig, mon = _dataset(group, a, "--column"), _dataset(group, b, "--column")
            if sig.shape != mon.shape:
                raise ReadError(f"--column {column}: {a} has shape {sig.shape}, {b} {mon.shape}")
            return sig, mon
        return _dataset(group, column, "--column"), None
    name = group.attrs.get("signal")
    if name is not None:
        sig = _dataset(group, _text(name), "its @signal")
    else:   # NeXus before 2014: the signal dataset carries signal=1
        flagged = [ds for ds in datasets.values() if _text(ds.attrs.get("signal", "")).strip() == "1"]
        if len(flagged) != 1:
            raise ReadError(f"the group names no @signal (and {len(flagged)} datasets carry signal=1)")
        sig = flagged[0]
    key = column_key(sig.name.rsplit("/", 1)[-1])
    if is_raw_yield_key(key):
        monitors = [ds for k, ds in datasets.items() if column_key(k) in I0_COLUMN_NAMES and ds.shape == sig.shape]
        if len(monitors) == 1:
            return sig, monitors[0]
    return sig, None


def _axis_datasets(group: Any, signal: Any) -> list[Any | None]:
    """The axis dataset of each dimension of ``signal`` (None where the group names none)."""
    import h5py

    axes: list[Any | None] = [None] * signal.ndim
    names = _texts(group.attrs["axes"]) if "axes" in group.attrs else []
    if "axes" not in group.attrs and "axes" in signal.attrs:   # NeXus before 2014: "energy:y" on the signal
        names = [n.strip() for n in _text(signal.attrs["axes"]).replace(",", ":").split(":")]
    for dim, n in enumerate(names if len(names) == signal.ndim else []):
        if n and n != "." and isinstance(group.get(n), h5py.Dataset):
            axes[dim] = group[n]
    for attr, value in group.attrs.items():   # AXISNAME_indices: the dimension an axis indexes
        if attr.endswith("_indices"):
            ds = group.get(attr[: -len("_indices")])
            idx = np.asarray(value).reshape(-1)
            if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and idx.size == 1 and 0 <= int(idx[0]) < signal.ndim:
                if axes[int(idx[0])] is None:
                    axes[int(idx[0])] = ds
    return axes


def _units(ds: Any) -> str:
    """An axis dataset's units, NeXus' spelled-out names mapped to the readers' (``electronvolt`` -> ``eV``)."""
    units = _text(ds.attrs.get("units", "")).strip()
    return {"electronvolt": "eV", "electron_volt": "eV", "kiloelectronvolt": "keV"}.get(units.lower(), units)


def _is_energy_name(ds: Any) -> bool:
    name = column_key(ds.name.rsplit("/", 1)[-1])
    return "energy" in name or name in ("e", "ev", "hv", "eloss", "energy_loss")


def _energy_dim(axes: list[Any | None], ndim: int) -> int:
    """The energy dimension: the one whose axis is in eV or keV, else one named as an energy, else the last."""
    for test in (lambda ds: _units(ds).lower() in ENERGY_UNITS, _is_energy_name):
        dims = [d for d, ds in enumerate(axes) if ds is not None and test(ds)]
        if len(dims) == 1:
            return dims[0]
    return ndim - 1


def _axis_values(ds: Any, size: int) -> np.ndarray:
    """The energies of an axis dataset: 1-D of the dimension's length, or the same row repeated (per scan point)."""
    values = np.asarray(ds[()], dtype=np.float64)
    if values.ndim > 1:
        rows = values.reshape(-1, values.shape[-1])
        if not np.allclose(rows, rows[0], rtol=0, atol=1e-9 * max(1.0, float(np.abs(rows[0]).max()))):
            raise ReadError(f"axis {ds.name!r} differs from point to point (shape {values.shape}): "
                            "not one energy axis")
        values = rows[0]
    if values.shape != (size,):
        raise ReadError(f"axis {ds.name!r} has {values.size} values for a dimension of {size}")
    return values
