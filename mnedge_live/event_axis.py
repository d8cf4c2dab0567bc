"""The energy axis of one live spectrum, from its event, its descriptor's configuration or the config.

A detector publishes the energy axis of its spectra in one of several ways: an axis field in the
event or in the descriptor's ``configuration`` (``energy_field``), a dispersion and offset field
(``dispersion_field``/``offset_field``), or not at all, when the live configuration gives a fixed
axis (``energy_axis``) or a fixed dispersion and offset (``dispersion_eV``/``offset_eV``).  This
module picks the first that applies, in that order, and says why when none gives an axis of the
spectrum's length: that reason rejects the one spectrum, never its run.  An axis not read from
``energy_field`` is cached per descriptor and length; an event that carries its own dispersion or
offset field gets an axis of its own, never cached.  It is kept apart from
:mod:`mnedge_live.callback` so that the document router only routes and the order of these
sources can be read and tested on its own.
"""

from __future__ import annotations

import numpy as np

from mnedge_live.config import LiveConfig

#: Energy axes already computed, by descriptor uid and number of channels.
AxisCache = dict[tuple[str, int], np.ndarray]
#: Most axes one run keeps (descriptors times spectrum lengths; a run has one or two): the oldest goes first.
MAX_CACHED_AXES = 8


def configuration_values(desc: dict) -> dict:
    """Every field value of the descriptor's ``configuration``, over all its objects (later ones win)."""
    conf: dict = {}
    for obj in (desc.get("configuration") or {}).values():
        conf.update((obj or {}).get("data") or {})
    return conf


def energy_axis(cfg: LiveConfig, desc: dict, row: dict, n: int, cache: AxisCache) -> np.ndarray | str:
    """The energy axis of an ``n``-channel spectrum, or the reason there is none.

    Parameters
    ----------
    cfg : LiveConfig
        Names the axis fields, or gives a fixed axis.
    desc : dict
        The event's descriptor (its ``uid`` and ``configuration``).
    row : dict
        The event's data.
    n : int
        Channels of the spectrum.
    cache : dict
        The run's axes by ``(descriptor uid, n)``: an axis that follows from the descriptor's
        configuration or from ``cfg`` alone is stored here and reused; one built from an event's own
        dispersion or offset field is that event's only (never stored, never reused).
    """
    if cfg.energy_field:
        src = row.get(cfg.energy_field, configuration_values(desc).get(cfg.energy_field))
        if src is None:
            return f"energy field {cfg.energy_field!r} is in neither the event nor the configuration"
        try:
            e = np.asarray(src, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            return f"energy field {cfg.energy_field!r} is not numeric: {exc}"
        if e.shape != (n,):
            return f"energy axis has shape {e.shape}, spectrum has {n} points"
        return e
    key = (desc["uid"], n)
    per_event = bool(cfg.dispersion_field and cfg.offset_field
                     and (cfg.dispersion_field in row or cfg.offset_field in row))
    cached = None if per_event else cache.get(key)
    if cached is not None:
        return cached   # the usual case, every event of a spectrum image after the first
    if cfg.dispersion_field and cfg.offset_field:
        conf = configuration_values(desc)
        d = row.get(cfg.dispersion_field, conf.get(cfg.dispersion_field))
        o = row.get(cfg.offset_field, conf.get(cfg.offset_field))
        if d is None or o is None:
            return f"dispersion/offset fields {cfg.dispersion_field!r}, {cfg.offset_field!r} not found"
        try:
            e = float(o) + float(d) * np.arange(n)
        except (TypeError, ValueError, OverflowError) as exc:
            return f"dispersion/offset fields {cfg.dispersion_field!r}, {cfg.offset_field!r} are not numbers: {exc}"
    elif cfg.energy_axis is not None:
        e = np.asarray(cfg.energy_axis, np.float64)
        if e.size != n:
            return f"configured energy_axis has {e.size} points, spectrum has {n}"
    elif cfg.dispersion_eV is not None and cfg.offset_eV is not None:
        e = float(cfg.offset_eV) + float(cfg.dispersion_eV) * np.arange(n)
    else:
        return "no energy axis: give energy_field, dispersion/offset fields, energy_axis or dispersion_eV/offset_eV"
    if not per_event:
        while len(cache) >= MAX_CACHED_AXES:   # spectra of ever new lengths (malformed or hostile) must not pile up
            cache.pop(next(iter(cache)))
        cache[key] = e
    return e
