"""Gatan DM3/DM4 and HyperSpy files through RosettaSciIO: single spectra and lazy spectrum images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mnedge_live.readers.hdf5_cache import HDF5Dataset, hdf5_plugins, release
from mnedge_live.readers.items import (
    ENERGY_UNITS,
    MAX_SPECTRUM_VALUES,
    UNDEFINED_UNITS,
    Item,
    MeasuredSpectrum,
    ReadError,
    RefusedSignal,
    SpectrumImage,
)

log = logging.getLogger(__name__)


def read_rsciio(path: str | Path, fmt: str, lazy: bool = True) -> list[Item]:
    """Read a Gatan DM3/DM4 (``fmt="dm"``), HyperSpy (``fmt="hspy"``) or FEI/ThermoFisher TIA
    (``fmt="tia"``: ``.ser``, or ``.emi`` with its ``.ser`` files) file.

    Single spectra come back as :class:`MeasuredSpectrum`, spectrum images
    and line scans as :class:`SpectrumImage` (lazy when ``lazy``; a TIA series
    is loaded: RosettaSciIO's lazy TIA reader makes the whole series one chunk,
    read again for every chunk of the image), other signals of the file as
    :class:`RefusedSignal` with the reason.

    Raises
    ------
    ReadError
        Unreadable file, or no signal with one energy axis in it.
    """
    # Absolute: a lazy read is computed later, maybe by Dask workers in another folder, where a relative
    # path names another file or none (every pixel failed, or another file's pixels were read out).
    p = Path(path).resolve()
    try:
        if fmt == "dm":
            from rsciio.digitalmicrograph import file_reader

            signals = file_reader(str(p), lazy=lazy)
            label = "Gatan DigitalMicrograph"
        elif fmt == "tia":
            from rsciio.tia import file_reader

            # the series an .emi file names are its STEM_N.ser files (RosettaSciIO's emi reader reads them)
            for ser in [p] if p.suffix.lower() == ".ser" else sorted(p.parent.glob(f"{p.stem}_*.ser")):
                _check_ser_sizes(ser)
            signals = [_tia_energy_origin(sig, p) for sig in file_reader(str(p), lazy=False)]
            label = "TIA"
        else:
            label = "HyperSpy"
            signals = _read_hspy_lazily(p) if lazy else _read_hspy_rsciio(p, lazy=False)
    except ReadError:
        raise
    except Exception as exc:
        release(p)
        name = {"dm": "Gatan DigitalMicrograph", "hspy": "HyperSpy HDF5", "tia": "TIA series (.ser/.emi)"}.get(fmt, fmt)
        raise ReadError(f"{p}: not a readable {name} file: {type(exc).__name__}: {exc}") from exc
    try:
        items = items_from_signals(p, signals, lazy=lazy)
    except ReadError as exc:
        release(p)
        raise ReadError(f"{exc} ({label} file)") from exc
    if not any(isinstance(it, SpectrumImage) for it in items):
        release(p)   # single spectra are loaded: nothing reads the file any more
    return items


#: Bytes of a TIA series element besides its values (calibration offset, delta and element, data type, length).
_SER_ELEMENT_HEAD = 26
#: Bytes per value of each TIA data type code.
_SER_ITEMSIZE = {1: 1, 2: 2, 3: 4, 4: 1, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 16}
#: Largest TIA series read (bytes of all its elements' values, the missing ones of an interrupted map
#: included: RosettaSciIO fills them in): a series is loaded whole.
MAX_TIA_BYTES = 4 * 2**30


def _check_ser_sizes(p: Path) -> None:
    """Refuse a ``.ser`` file whose header does not describe what its bytes hold: RosettaSciIO allocates what the
    header says before reading (a corrupt count asked for gigabytes, and a map's missing pixels are filled in).

    The navigation dimensions must multiply to the elements' total (as TIA writes them), the offset arrays fit in
    the file, and for a series of spectra the stored elements fit in the file and the whole series, missing pixels
    included, in :data:`MAX_TIA_BYTES`.
    """
    import struct

    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(30)
        if len(head) < 30:
            raise ReadError(f"{p}: {size} bytes: shorter than a TIA series header")
        order, series, version, data_type, _, total, valid = struct.unpack_from("<HHHIIII", head)
        if order != 0x4949 or series != 0x0197:
            raise ReadError(f"{p}: not a TIA series (byte order {order:#06x}, series id {series:#06x})")
        wide = version > 0x0210
        f.seek(22)
        offsets_at, ndim = struct.unpack("<QI" if wide else "<II", f.read(12 if wide else 8))
        corrupt = f"{p}: a truncated or corrupt series"
        if valid > total or offsets_at >= size or total * (16 if wide else 8) > size - offsets_at:
            raise ReadError(f"{corrupt}: the header claims {valid} of {total} elements; the file's {size} bytes "
                            "cannot hold their offsets")
        sizes = []
        for _ in range(ndim):   # dimension arrays: size, offset, delta, element, description, units
            record = f.read(28)
            if len(record) < 28:
                raise ReadError(f"{corrupt}: its dimension arrays end with the file")
            dim_size, desc = struct.unpack_from("<I", record)[0], struct.unpack_from("<I", record, 24)[0]
            f.seek(desc, 1)
            (units,) = struct.unpack("<I", f.read(4) or b"\0\0\0\0")
            f.seek(units, 1)
            sizes.append(dim_size)
        if sizes and int(np.prod(sizes, dtype=np.int64)) != total:
            raise ReadError(f"{corrupt}: its dimensions {' x '.join(map(str, sizes))} do not make its {total} "
                            "elements")
        if data_type != 0x4120:   # 2-D arrays (images): their element head differs; RosettaSciIO says what they are
            return
        f.seek(offsets_at)
        first = f.read(8 if wide else 4)
        (data_at,) = struct.unpack("<Q" if wide else "<I", first) if len(first) == (8 if wide else 4) else (size,)
        f.seek(data_at + 20)
        element = f.read(6)
        if len(element) < 6:
            raise ReadError(f"{corrupt}: the first element lies beyond the file's {size} bytes")
        code, length = struct.unpack("<HI", element)
        item = _SER_ITEMSIZE.get(code)
        if item is None:
            raise ReadError(f"{corrupt}: data type {code} is none of TIA's")
        if valid and data_at + valid * (_SER_ELEMENT_HEAD + length * item) > size:
            raise ReadError(f"{corrupt}: {valid} elements of {length} values each do not fit in the file's {size} "
                            "bytes")
        if total * length * item > MAX_TIA_BYTES:
            raise ReadError(f"{p}: {total} spectra of {length} values: {total * length * item / 2**30:.1f} GiB, more "
                            f"than the {MAX_TIA_BYTES / 2**30:.0f} GiB a TIA series is read into (convert it to "
                            "HyperSpy's .hspy, read in chunks)")


def _tia_energy_origin(sig: dict, p: Path) -> dict:
    """A TIA spectrum's energy axis with its origin where TIA puts it: a series element stores the energy
    (``CalibrationOffset``) of channel ``CalibrationElement`` (signed), which RosettaSciIO (0.15) takes for
    channel 0. Elements whose calibrations differ, or an element far outside the spectrum, are refused."""
    header = (sig.get("original_metadata") or {}).get("ser_header_parameters") or {}
    energy = [a for a in sig.get("axes") or [] if not a.get("navigate", True)]
    if "CalibrationElement" not in header or len(energy) != 1:
        return sig
    axis = energy[0]
    element = np.asarray(header["CalibrationElement"], np.int64).reshape(-1)
    element = np.where(element >= 2**31, element - 2**32, element)   # an int32 that RosettaSciIO reads unsigned
    offset = np.asarray(header.get("CalibrationOffset", axis.get("offset", 0.0)), np.float64).reshape(-1)
    delta = np.asarray(header.get("CalibrationDelta", axis.get("scale", 1.0)), np.float64).reshape(-1)
    channels = int(axis.get("size", 0))
    if np.any(np.abs(element) > 2 * max(channels, 1)):
        raise ReadError(f"{p}: calibration element {int(element[np.argmax(np.abs(element))])} lies far outside the "
                        f"spectrum's {channels} channels (a corrupt series)")
    origin = offset - element * delta
    if np.ptp(origin) > 1e-6 * max(1.0, float(np.abs(origin).max())) or np.ptp(delta) > 1e-9 * float(np.abs(delta).max()):
        raise ReadError(f"{p}: the elements' energy calibrations differ (channel 0 at {origin.min():.3f}-{origin.max():.3f} "
                        f"eV, {delta.min():g}-{delta.max():g} eV a channel): not one energy axis")
    if int(element[0]):
        log.warning("%s: the TIA energy axis gives %.3f eV at channel %d: channel 0 is at %.3f eV",
                    p, float(offset[0]), int(element[0]), float(origin[0]))
    axis["offset"] = float(origin[0])
    return sig


#: Bytes per Dask chunk of an unchunked (contiguous) HDF5 dataset read lazily.
CONTIGUOUS_CHUNK_BYTES = 32 * 2**20


def _read_hspy_lazily(p: Path) -> list[dict]:
    """Read a HyperSpy file with its signals' data as lazy Dask arrays on :class:`HDF5Dataset`.

    RosettaSciIO's HyperSpy reader reads the axes and metadata; the signals'
    data are wrapped in Dask arrays that read through :class:`HDF5Dataset`
    (no open file travels with them), in the dataset's own chunks, or for a
    dataset stored unchunked (contiguous, which RosettaSciIO's lazy reader
    refuses: "You must specify a chunks= keyword") in whole trailing rows of
    about :data:`CONTIGUOUS_CHUNK_BYTES` (each chunk one contiguous read).
    The file is closed before returning.  Without that reader in
    RosettaSciIO, its lazy ``file_reader`` is used (:func:`_read_hspy_rsciio`).
    """
    import h5py

    try:   # a private class of RosettaSciIO (tested with 0.15): without it, or without the hook, its public reader
        from rsciio.hspy._api import HyperspyReader
    except ImportError:  # pragma: no cover - RosettaSciIO's reader class since 0.1
        return _read_hspy_rsciio(p, lazy=True)
    if not callable(getattr(HyperspyReader, "_read_array", None)):  # pragma: no cover - a RosettaSciIO that changed
        return _read_hspy_rsciio(p, lazy=True)
    import dask.array as da

    filename = str(p.resolve())
    st = p.stat()
    version = (st.st_mtime_ns, st.st_size)

    class _Reader(HyperspyReader):
        def _read_array(self, group, dataset_key):
            data = super()._read_array(group, dataset_key)
            if dataset_key == "data" and isinstance(data, h5py.Dataset) and (
                    "metadata" in group or "mapped_parameters" in group):   # a signal's data, not metadata
                chunks = data.chunks or contiguous_chunks(data.shape, data.dtype.itemsize)
                source = HDF5Dataset(filename, data.name, data.shape, data.dtype, version)
                data = da.from_array(source, chunks=chunks, meta=np.empty((0,) * data.ndim, data.dtype))
            return data

    hdf5_plugins()
    try:
        with h5py.File(p, "r") as f:
            return _Reader(f).read(lazy=True)
    except ValueError as exc:
        if "chunks" not in str(exc):
            raise
        # An unchunked dataset among the metadata (which stays RosettaSciIO's): load the file.
        log.warning("%s: unchunked HDF5 metadata array: the file is loaded into memory", p)
        return _read_hspy_rsciio(p, lazy=False)


def _read_hspy_rsciio(p: Path, lazy: bool) -> list[dict]:
    """Read a HyperSpy file with RosettaSciIO's ``file_reader``; a lazy read of unchunked data, which it
    cannot do, loads the file (logged).  Files it opens lazily are closed by :func:`release`."""
    from rsciio.hspy import file_reader

    try:
        return file_reader(str(p), lazy=lazy)
    except ValueError as exc:
        if not (lazy and "chunks" in str(exc)):
            raise
        log.warning("%s: unchunked HDF5 data: the file is loaded into memory", p)
        return file_reader(str(p), lazy=False)


def contiguous_chunks(shape: tuple[int, ...], itemsize: int, target: int | None = None) -> tuple[int, ...]:
    """Dask chunks for a C-ordered contiguous array: whole trailing axes, about ``target`` bytes a chunk
    (default :data:`CONTIGUOUS_CHUNK_BYTES`).

    The trailing axes are kept whole as far as they fit in ``target``; the next
    axis is cut into as many of its rows as fit (at least one), the leading
    axes into single rows: every chunk is one contiguous run of the file.
    """
    target = int(target or CONTIGUOUS_CHUNK_BYTES)
    chunks = [1] * len(shape)
    size = max(int(itemsize), 1)
    for i in range(len(shape) - 1, -1, -1):
        n = max(int(shape[i]), 1)
        if size * n <= target:
            chunks[i] = n
            size *= n
        else:
            chunks[i] = max(1, target // size)
            break
    return tuple(chunks)


def items_from_signals(path: Path, signals: list[dict], lazy: bool) -> list[Item]:
    """Turn RosettaSciIO signal dicts into items, one per signal: signals that are not spectra become
    :class:`RefusedSignal` items with the reason (a ReadError with every reason when none is a spectrum)."""
    items: list[Item] = []
    skipped: list[str] = []
    for k, sig in enumerate(signals or []):
        try:
            items.append(item_from_signal(path, k, sig, lazy))
        except ReadError as exc:
            skipped.append(f"signal {k}: {exc}")
            items.append(RefusedSignal(str(path), k, str(exc)))
    if len(skipped) == len(items):
        why = "; ".join(skipped) if skipped else "the file holds no signal"
        raise ReadError(f"{path}: no spectrum: {why}")
    return items


def item_from_signal(path: Path, index: int, sig: dict, lazy: bool) -> Item:
    """One RosettaSciIO-style signal dict (``data``, ``axes``) as a spectrum or a spectrum image (ReadError
    with the reason when it is neither)."""
    data = sig.get("data")
    axes = list(sig.get("axes") or [])
    if data is None or getattr(data, "ndim", 0) == 0 or getattr(data, "size", 0) == 0:
        raise ReadError("no data")
    if len(axes) != data.ndim:
        raise ReadError(f"{len(axes)} axes for {data.ndim}-D data")
    if not np.issubdtype(np.dtype(data.dtype), np.number) or np.issubdtype(np.dtype(data.dtype), np.complexfloating):
        raise ReadError(f"data type {data.dtype} is not real numbers")
    shape = [int(n) for n in data.shape]
    # The energy axis is chosen among all axes, before any length-1 axis is dropped: RosettaSciIO flags
    # both spatial axes of a DM spectrum image as the signal, so a 4 x 1 image without its length-1
    # axis would leave one spatial axis flagged, read as the energy axis.
    s = _energy_axis_index(axes, shape)
    if shape[s] > MAX_SPECTRUM_VALUES:   # its axis and a single spectrum are read whole
        raise ReadError(f"an energy axis of {shape[s]} channels (more than {MAX_SPECTRUM_VALUES})")
    energy = axis_values(axes[s])
    nav = [i for i in range(data.ndim) if i != s]
    # The navigation shape stays as stored (rows, columns), 1 x N and N x 1 included; length-1
    # navigation axes are dropped (outermost first) only beyond two.
    drop = []
    for i in nav:
        if len(nav) - len(drop) <= 2:
            break
        if shape[i] == 1:
            drop.append(i)
    nav = [i for i in nav if i not in drop]
    if len(nav) > 2:
        raise ReadError(f"{len(nav)} navigation dimensions; at most 2 (a spectrum image) are supported")
    if all(shape[i] == 1 for i in nav):   # a single spectrum, perhaps stored as a 1 x 1 image or E x 1
        values = np.asarray(data.compute() if hasattr(data, "compute") else data, dtype=np.float64)
        return MeasuredSpectrum(str(path), index, energy, values.reshape(-1), None)
    import dask.array as da

    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks="auto")
    if drop:
        arr = arr[tuple(0 if i in drop else slice(None) for i in range(arr.ndim))]
        s -= sum(1 for i in drop if i < s)
    if s != arr.ndim - 1:
        arr = da.moveaxis(arr, s, -1)
    if arr.ndim == 2:  # line scan: one row
        arr = arr[None]
    if not lazy:
        arr = arr.persist()
    return SpectrumImage(str(path), index, energy, arr)


def _energy_axis_index(axes: list[dict], shape: list[int]) -> int:
    """The index of the energy axis among a signal's axes (:func:`signal_axis`); a length-1 axis is
    no energy axis, so where the choice among all axes is not one axis longer than 1 it is made
    among the longer axes (a spectrum stored as ``1 x E`` with both axes flagged).

    Raises
    ------
    ReadError
        No single energy axis: an image or a stack of images.
    """
    dims = signal_axis(axes)
    if len(dims) == 1 and shape[dims[0]] > 1:
        return dims[0]
    longer = [i for i, n in enumerate(shape) if n > 1]
    if longer and len(longer) < len(shape):
        dims = [longer[j] for j in signal_axis([axes[i] for i in longer])]
    if len(dims) != 1:
        raise ReadError(f"{len(dims)}-D signal (an image or a stack of images), not a spectrum")
    return dims[0]


def signal_axis(axes: list[dict]) -> list[int]:
    """Indices of the signal (energy) axes among RosettaSciIO axis dicts.

    The axes flagged ``navigate=False``; when those are not exactly one but exactly
    one axis is in energy units, that one (a DM spectrum image is stored as a stack
    of energy planes, flagged as an image stack, and HyperSpy transposes it on load).
    Units also win over a single flag that contradicts them: an axis in eV marked as
    navigation while the one axis marked as the signal has no energy units (the flags
    swapped by hand) is the energy axis, logged; the flagged one made every pixel a
    "spectrum" of a few points, each rejected as too short.
    """
    if len(axes) == 1:
        return [0]
    flagged = [i for i, a in enumerate(axes) if not a.get("navigate", False)]
    energy = [i for i, a in enumerate(axes) if str(a.get("units", "") or "").strip().lower() in ENERGY_UNITS]
    if len(flagged) == 1:
        if len(energy) == 1 and energy != flagged:
            log.warning("axis %r is in %s but marked as navigation, axis %r (units %r) as the signal: read "
                        "the axis in %s as the energy axis", axes[energy[0]].get("name", energy[0]),
                        axes[energy[0]].get("units"), axes[flagged[0]].get("name", flagged[0]),
                        axes[flagged[0]].get("units", ""), axes[energy[0]].get("units"))
            return energy
        return flagged
    return energy if len(energy) == 1 else flagged


def axis_values(axis: dict) -> np.ndarray:
    """Energies (eV) of a RosettaSciIO axis dict: ``offset + scale * i``, or its stored array.

    Raises
    ------
    ReadError
        Units that are not an energy, a functional axis, or a non-finite axis.
    """
    units = str(axis.get("units", "") or "").strip()
    key = units.lower()
    if key in UNDEFINED_UNITS:
        factor = 1.0
    elif key in ENERGY_UNITS:
        factor = ENERGY_UNITS[key]
    else:
        raise ReadError(f"signal axis {axis.get('name', '')!r} is in {units!r}, not an energy (eV or keV)")
    if "axis" in axis and axis["axis"] is not None:
        e = np.asarray(axis["axis"], dtype=np.float64).ravel()
    elif "expression" in axis:
        raise ReadError(f"signal axis {axis.get('name', '')!r} is a functional axis ({axis['expression']!r}); "
                        "not supported")
    else:
        try:
            size = int(axis["size"])
            offset, scale = float(axis.get("offset", 0.0)), float(axis.get("scale", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReadError(f"signal axis {axis.get('name', '')!r} has no usable size/offset/scale: {exc}") from exc
        if key in UNDEFINED_UNITS and offset == 0.0 and scale == 1.0:
            # what acquisition software writes for a spectrum never calibrated: channel numbers, which read
            # as eV could put a Mn edge's channels (a stretch of 5-20) where Mn L3 is looked for
            raise ReadError(f"signal axis {axis.get('name', '')!r} has no energy calibration (no units, channel 0 "
                            "at 0, 1 a channel: channel numbers): calibrate the energy axis in eV first")
        e = offset + scale * np.arange(size, dtype=np.float64)
    if e.size and not np.all(np.isfinite(e)):
        raise ReadError(f"signal axis {axis.get('name', '')!r} has non-finite energies")
    return e * factor
