"""NeXus (HDF5) files: the plottable data (``NXdata``) of each entry, read with h5py.

Synchrotron beamlines write their scans as NeXus files: per scan an ``NXentry`` whose
``NXdata`` group names its plotted dataset (``@signal``) and that dataset's axes
(``@axes``, ``@AXIS_indices``, or the older ``signal=1`` on the data and ``axis=N`` or
``axes="a:b"`` on the datasets). RosettaSciIO's NeXus reader (0.15) replaces a measured,
unevenly spaced energy axis by the point index (0, 1, 2, ...; no units) and marks every
axis of a map as navigation; here the axes are read as stored and the energy axis is
the one in eV or keV (else one named as an energy, else the last), so the readers' own
:func:`~mnedge_live.readers.signals.item_from_signal` makes the spectra and images.

Which ``NXdata``: entries in the natural order of their names (``1.1``, ``2.1``,
``10.1``); in each the one its ``@default`` names (NeXus' plottable data), else every
``NXdata`` in it or in its ``NXsubentry`` groups, each a signal of its own. The signal
is read as column text reads a column the file chose (:mod:`~mnedge_live.readers.columns`):
a monitor (I0) is refused as no spectrum; a raw yield (TEY, TFY, ...) is divided by the
one I0 monitor of its shape in its group, and refused beside none or several;
``@auxiliary_signals`` are reported, not read; ``column`` names another dataset of the
group (``A/B``: A divided by B), compared as column names are (case and units aside).
A zero in the I0 of a map is not looked for: that pixel is refused by the engine.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from mnedge_live.readers.column_names import (
    MONITOR_COLUMN_NAMES,
    column_key,
    i0_monitors,
    is_energy_key,
    is_raw_yield_key,
)
from mnedge_live.readers.hdf5_cache import HDF5Dataset, hdf5_plugins, release
from mnedge_live.readers.items import (
    ENERGY_UNITS,
    MAX_SPECTRUM_VALUES,
    Item,
    MeasuredSpectrum,
    ReadError,
    RefusedSignal,
    SpectrumImage,
)
from mnedge_live.readers.signals import contiguous_chunks, item_from_signal

log = logging.getLogger(__name__)

#: Most NXdata groups read from one file (a file of thousands of scans is read in part, logged).
MAX_NXDATA = 1000



def attr_text(value: Any) -> str:
    """An HDF5 string attribute (bytes, str or a one-element array of either) as str."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _attr_texts(value: Any) -> list[str]:
    """An HDF5 attribute holding one or several names as a list of str."""
    if isinstance(value, np.ndarray) and value.size > 1:
        return [attr_text(v) for v in value.reshape(-1)]
    return [attr_text(value)]


def _nx_class(obj: Any) -> str:
    return attr_text(obj.attrs.get("NX_class", "")) if obj is not None else ""


def _members(group: Any) -> dict[str, Any]:
    """The members of a group that can be opened, by name; a dangling soft or external link is left out."""
    out = {}
    for name in group:
        try:
            out[name] = group[name]
        except (KeyError, OSError):   # a link to a file or path that is not there
            continue
    return out


def _natural(name: str) -> list:
    """Sort key comparing the digit runs of a name as numbers (``2.1`` before ``10.1``)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def is_nexus(f: Any) -> bool:
    """Whether an open h5py file is a NeXus file: one of its top-level groups is an ``NXentry``."""
    import h5py

    return any(isinstance(obj, h5py.Group) and _nx_class(obj) == "NXentry" for obj in _members(f).values())


def nxdata_groups(f: Any) -> list[tuple[list[Any], list[Any]]]:
    """Per ``NXentry`` (in natural name order), the ``NXdata`` groups to read and those to read instead if the
    one ``@default`` names is refused: ``([default], [the entry's other NXdata])``, or ``([every NXdata in the
    entry or its NXsubentry groups], [])``; at most :data:`MAX_NXDATA` groups to read in all."""
    import h5py

    def nxdata_in(group: Any) -> list[Any]:
        found = [obj for _, obj in sorted(_members(group).items(), key=lambda kv: _natural(kv[0]))
                 if isinstance(obj, h5py.Group) and _nx_class(obj) == "NXdata"]
        for sub in _members(group).values():
            if isinstance(sub, h5py.Group) and _nx_class(sub) == "NXsubentry":
                found += nxdata_in(sub)
        return found

    out, count = [], 0
    for _, entry in sorted(_members(f).items(), key=lambda kv: _natural(kv[0])):
        if not (isinstance(entry, h5py.Group) and _nx_class(entry) == "NXentry"):
            continue
        every = nxdata_in(entry)
        chosen = _default_nxdata(entry)
        groups = ([chosen], [g for g in every if g.name != chosen.name]) if chosen is not None else (every, [])
        if count + len(groups[0]) > MAX_NXDATA:
            log.warning("%s: more than %d NXdata groups: the first %d are read", f.filename, MAX_NXDATA, MAX_NXDATA)
            groups = (groups[0][:MAX_NXDATA - count], [])
        if groups[0]:
            out.append(groups)
            count += len(groups[0])
        if count >= MAX_NXDATA:
            break
    return out


def _default_nxdata(group: Any, depth: int = 0) -> Any | None:
    """The NXdata the ``@default`` attributes lead to from ``group`` (NXentry, NXsubentry, ...), or None."""
    import h5py

    if _nx_class(group) == "NXdata":
        return group
    name = group.attrs.get("default")
    if name is None or depth > 4:
        return None
    try:
        child = group.get(attr_text(name))
    except (KeyError, OSError):
        return None
    return _default_nxdata(child, depth + 1) if isinstance(child, h5py.Group) else None


def read_nexus(path: str | Path, lazy: bool = True, column: str | None = None) -> list[Item]:
    """Read the plottable data of a NeXus file (see the module's description).

    Single spectra come back as :class:`MeasuredSpectrum` labelled with their group's path, maps and
    line scans as :class:`SpectrumImage` (lazy when ``lazy``), groups that hold no spectrum as
    :class:`RefusedSignal` with the reason.

    Raises
    ------
    ReadError
        Unreadable file, not NeXus, no ``NXdata`` group, or no spectrum in any of them.
    """
    import h5py

    p = Path(path).resolve()   # absolute: lazy reads may run in Dask workers elsewhere
    hdf5_plugins()
    items: list[Item] = []
    try:
        with h5py.File(p, "r") as f:
            if not is_nexus(f):
                raise ReadError(f"{p}: an HDF5 file without an NXentry group: not NeXus (nor HyperSpy)")
            entries = nxdata_groups(f)
            if not entries:
                raise ReadError(f"{p}: NeXus file without an NXdata group in any NXentry: no plottable data")
            for groups, instead in entries:
                read = [_item(p, len(items) + k, g, column, lazy) for k, g in enumerate(groups)]
                if instead and isinstance(read[0], RefusedSignal):   # the @default one refused: the others
                    log.warning("%s %s: the entry's @default data refused (%s): its other NXdata read instead", p,
                                groups[0].name, read[0].reason)
                    read = [_item(p, len(items) + k, g, column, lazy) for k, g in enumerate(instead)]
                items += read
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


def _item(p: Path, index: int, group: Any, column: str | None, lazy: bool) -> Item:
    """One NXdata group as a spectrum (labelled with the group's path), a spectrum image, or a refusal."""
    try:
        item = item_from_signal(p, index, _signal_dict(group, column, p), lazy)
    except Exception as exc:   # a group laid out as no reader expects: refused, the others read
        why = str(exc) if isinstance(exc, ReadError) else f"not readable: {type(exc).__name__}: {exc}"
        return RefusedSignal(str(p), index, f"{group.name}: {why}")
    if isinstance(item, MeasuredSpectrum):
        return MeasuredSpectrum(item.file, item.index, item.energy, item.intensity, None, group.name)
    return item


def _signal_dict(group: Any, column: str | None, path: Path) -> dict:
    """A RosettaSciIO-style signal dict (``data``, ``axes``) of one NXdata group."""
    signal, monitor = _signal_datasets(group, column, path)
    shape = tuple(int(n) for n in signal.shape)
    axes = _axis_datasets(group, signal)
    long = [d for d, n in enumerate(shape) if n > 1]
    if len(shape) > 1 and len(long) == 1:   # a scalar per point stored as (N, 1): one spectrum
        found = [ds for ds in axes if ds is not None]
        axes = [axes[long[0]] or (found[0] if len(found) == 1 else None)]
        shape = (shape[long[0]],)
    energy_dim = _energy_dim(axes, len(shape))
    data = _lazy(signal, len(shape))
    if monitor is not None:
        log.warning("%s %s: %r is a raw yield: read divided by the I0 monitor %r", path, group.name,
                    _base(signal), _base(monitor) if monitor.parent.name == group.name else monitor.name)
        i0 = _lazy(monitor, len(shape))
        if isinstance(i0, np.ndarray) and not np.all(np.isfinite(i0) & (i0 != 0)):
            raise ReadError(f"the I0 monitor {_base(monitor)!r} has zero or non-finite values: "
                            f"{_base(signal)} / {_base(monitor)} cannot be read")
        data = data / (i0 if isinstance(i0, np.ndarray) else _zero_to_nan(i0))
    out_axes = []
    for dim, n in enumerate(shape):
        ds = axes[dim]
        entry: dict[str, Any] = {"name": _base(ds) if ds is not None else f"dim{dim}", "size": n,
                                 "navigate": dim != energy_dim}
        if dim == energy_dim:
            if ds is None:
                raise ReadError(f"no axis dataset for dimension {dim} of {_base(signal)!r}, the energy dimension "
                                "(the group names none in @axes or AXIS_indices)")
            entry["units"] = attr_text(ds.attrs.get("units", "")).strip()
            entry["axis"] = _axis_values(ds, n)
        else:
            entry.update(offset=0.0, scale=1.0, units="")
        out_axes.append(entry)
    return {"data": data, "axes": out_axes}


def _zero_to_nan(i0: Any) -> Any:
    """A lazy I0 with its zeros as NaN: those pixels divide to NaN (refused by the engine) without a warning."""
    import dask.array as da

    return da.where(i0 == 0, np.nan, i0)


def _base(ds: Any) -> str:
    return ds.name.rsplit("/", 1)[-1]


def _lazy(ds: Any, ndim: int) -> Any:
    """A dataset as ``ndim``-D data: a NumPy array for one spectrum (in its own dtype, so text or complex
    values are refused by name, not cast), else a Dask array reading through :class:`HDF5Dataset` from the
    file that holds the dataset (an external link's detector file), with no open file travelling with it."""
    import dask.array as da

    if ndim <= 1:
        _check_size(ds)
        return np.asarray(ds[()]).reshape(-1)
    filename = str(Path(ds.file.filename).resolve())
    st = Path(filename).stat()
    chunks = ds.chunks or contiguous_chunks(ds.shape, ds.dtype.itemsize)
    source = HDF5Dataset(filename, ds.name, ds.shape, ds.dtype, (st.st_mtime_ns, st.st_size))
    return da.from_array(source, chunks=chunks, meta=np.empty((0,) * ds.ndim, ds.dtype))


def _check_size(ds: Any) -> None:
    """Refuse a dataset read whole that holds more than :data:`~mnedge_live.readers.items.MAX_SPECTRUM_VALUES`."""
    if ds.size > MAX_SPECTRUM_VALUES:
        raise ReadError(f"{_base(ds)!r} holds {ds.size} values (shape {ds.shape}): more than a spectrum or an axis "
                        f"({MAX_SPECTRUM_VALUES} at most)")


def _find(datasets: dict[str, Any], name: str, what: str) -> Any:
    """The dataset named ``name`` (compared as column names are), or ReadError listing the group's datasets."""
    found = [ds for k, ds in datasets.items() if k == name] or [
        ds for k, ds in datasets.items() if column_key(k) == column_key(name)]
    if not found:
        raise ReadError(f"no dataset {name!r} ({what}) in the group; its datasets are {', '.join(datasets)}")
    return found[0]


def _signal_datasets(group: Any, column: str | None, path: Path) -> tuple[Any, Any | None]:
    """The signal dataset and the monitor it is divided by (None: read as stored)."""
    import h5py

    datasets = {k: v for k, v in _members(group).items() if isinstance(v, h5py.Dataset)}
    if column is not None:
        if "/" in column and not any(column_key(k) == column_key(column) for k in datasets):
            a, _, b = column.partition("/")
            sig, mon = _find(datasets, a, "--column"), _find(datasets, b, "--column")
            if sig.shape != mon.shape:
                raise ReadError(f"--column {column}: {a} has shape {sig.shape}, {b} {mon.shape}")
            return sig, mon
        return _find(datasets, column, "--column"), None
    name = group.attrs.get("signal")
    if name is not None:
        sig = _find(datasets, attr_text(name), "its @signal")
    else:   # NeXus before 2014: the signal dataset carries signal=1
        flagged = [ds for ds in datasets.values() if attr_text(ds.attrs.get("signal", "")).strip() == "1"]
        if len(flagged) != 1:
            raise ReadError(f"the group names no @signal (and {len(flagged)} datasets carry signal=1)")
        sig = flagged[0]
    aux = [attr_text(a) for a in _attr_texts(group.attrs["auxiliary_signals"])] \
        if "auxiliary_signals" in group.attrs else []
    if aux:
        log.warning("%s %s: auxiliary signals %s not read (--column NAME reads one instead of %r)", path, group.name,
                    ", ".join(aux), _base(sig))
    key = column_key(_base(sig))
    if key in MONITOR_COLUMN_NAMES:
        raise ReadError(f"its signal {_base(sig)!r} is a monitor or an axis, not a spectrum "
                        "(--column names another dataset of the group)")
    if not is_raw_yield_key(key):
        return sig, None
    names = [k for k, ds in datasets.items() if ds.shape == sig.shape]
    monitors = i0_monitors([column_key(k) for k in names], list(range(len(names))))
    if len(monitors) == 1:
        return sig, datasets[names[monitors[0]]]
    if not monitors:   # NeXus keeps the incident flux in the entry's NXmonitor groups
        found = _nxmonitor_data(group, sig.shape)
        if len(found) == 1:
            return sig, found[0]
    ratio = (f"--column {_base(sig)}/{names[monitors[0]]} reads it divided by {names[monitors[0]]}; "
             if monitors else "")
    raise ReadError(f"its signal {_base(sig)!r} is a raw yield and "
                    + ("no dataset of its shape in the group or in an NXmonitor of the entry is" if not monitors
                       else "more than one dataset of its shape is") + f" named as its I0 monitor: {ratio}"
                    f"mnedge predict --column {_base(sig)} reads it as it is")


def _nxmonitor_data(group: Any, shape: tuple[int, ...]) -> list[Any]:
    """The ``data`` datasets of shape ``shape`` in the ``NXmonitor`` groups beside ``group`` (in its entry)."""
    import h5py

    parent = group.parent
    out = []
    for obj in _members(parent).values():
        if isinstance(obj, h5py.Group) and _nx_class(obj) == "NXmonitor":
            ds = _members(obj).get("data")
            if isinstance(ds, h5py.Dataset) and ds.shape == shape:
                out.append(ds)
    return out


def _axis_datasets(group: Any, signal: Any) -> list[Any | None]:
    """The axis dataset of each dimension of ``signal`` (None where the group names none): from ``@axes``
    (``"."`` for none), ``AXISNAME_indices``, the older ``axes="a:b"`` on the signal or ``axis=N``
    (1-based, ``primary=1`` first) on the axis datasets."""
    import h5py

    datasets = {k: v for k, v in _members(group).items() if isinstance(v, h5py.Dataset)}
    axes: list[Any | None] = [None] * signal.ndim
    if "axes" in group.attrs:
        names = _attr_texts(group.attrs["axes"])
    elif "axes" in signal.attrs:   # NeXus before 2014: "energy:y" on the signal
        names = [n.strip() for n in attr_text(signal.attrs["axes"]).replace(",", ":").split(":")]
    else:
        names = []
    for dim, n in enumerate(names if len(names) == signal.ndim else []):
        if n and n != "." and n in datasets:
            axes[dim] = datasets[n]
    for attr, value in group.attrs.items():   # AXISNAME_indices: the dimension an axis indexes
        if attr.endswith("_indices"):
            ds = datasets.get(attr[: -len("_indices")])
            idx = np.asarray(value).reshape(-1)
            if ds is not None and idx.size == 1 and 0 <= int(idx[0]) < signal.ndim and axes[int(idx[0])] is None:
                axes[int(idx[0])] = ds
    legacy = sorted((ds for ds in datasets.values() if "axis" in ds.attrs and ds is not signal),
                    key=lambda ds: attr_text(ds.attrs.get("primary", "0")).strip() != "1")
    for ds in legacy:   # NeXus before 2014: axis=N (1-based) on the axis dataset
        try:
            dim = int(attr_text(ds.attrs["axis"]).strip()) - 1
        except ValueError:
            continue
        if 0 <= dim < signal.ndim and axes[dim] is None:
            axes[dim] = ds
    return axes


def _energy_dim(axes: list[Any | None], ndim: int) -> int:
    """The energy dimension: the one whose axis is in eV or keV, else one named as an energy, else the last.

    Raises
    ------
    ReadError
        Several axes in eV or keV (an incident and an emission energy) and not one of them named as an energy.
    """
    def named_energy(d: int) -> bool:
        return is_energy_key(column_key(_base(axes[d])))

    in_units = [d for d, ds in enumerate(axes)
                if ds is not None and attr_text(ds.attrs.get("units", "")).strip().lower() in ENERGY_UNITS]
    if len(in_units) == 1:
        return in_units[0]
    named = [d for d in (in_units or [d for d, ds in enumerate(axes) if ds is not None]) if named_energy(d)]
    if len(named) == 1:
        return named[0]
    if len(in_units) > 1:
        raise ReadError(f"{len(in_units)} axes in energy units ({', '.join(_base(axes[d]) for d in in_units)}): "
                        "which is the spectrum's cannot be told")
    return ndim - 1


def _axis_values(ds: Any, size: int) -> np.ndarray:
    """The energies of an axis dataset for a dimension of ``size``: its values (``(N,)`` or ``(N, 1)``), the
    centres of ``N + 1`` bin edges, or one row of an axis repeated per scan point."""
    _check_size(ds)
    values = np.asarray(ds[()], dtype=np.float64)
    if values.size in (size, size + 1) and max(values.shape, default=1) == values.size:
        values = values.reshape(-1)
    elif values.ndim > 1:
        rows = values.reshape(-1, values.shape[-1])
        if not np.allclose(rows, rows[0], rtol=0, atol=1e-9 * max(1.0, float(np.abs(rows[0]).max()))):
            raise ReadError(f"axis {_base(ds)!r} differs from point to point (shape {values.shape}): "
                            "not one energy axis")
        values = rows[0]
    if values.shape == (size + 1,):   # bin edges
        return 0.5 * (values[1:] + values[:-1])
    if values.shape != (size,):
        raise ReadError(f"axis {_base(ds)!r} has {values.size} values for a dimension of {size}")
    return values
