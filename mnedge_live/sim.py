"""Simulated instruments (ophyd) for the demo and the tests, spectra from the forward model.

- :func:`make_eels` (:class:`EELSDetector`): an EELS spectrometer over a sample with a known
  valence map, read with two stage motors (``stage_y``, ``stage_x``) in a grid scan.
- :func:`make_xas` (:class:`XASDetectors`): a monochromator axis with TEY and I0 detectors for
  classic XAS step scans.

The forward model (``offline_training``) is imported lazily, only here.
"""

from __future__ import annotations

import threading

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import DeviceStatus

#: Channel axis of the simulated spectrometer: offset + dispersion * channel (eV).
EELS_OFFSET_EV = 615.0
EELS_DISPERSION_EV = 0.125
EELS_CHANNELS = 560


class SpectrumSource:
    """Draws measured-like spectra of given compositions with the forward model.

    Parameters
    ----------
    bank_path : str, optional
        End-member bank; None for the shipped one.
    seed : int
        Seed of the first draw; each draw advances it.
    """

    _lock = threading.Lock()

    def __init__(self, bank_path: str | None = None, seed: int = 0):
        from offline_training.forward import ForwardConfig, ForwardModel
        from offline_training.references.bank import Bank

        # the simulated detectors count per channel: the forward model's noise per 0.1 eV step (physics 1),
        # not on coarser points interpolated (physics 2), which a spectrometer's channels never are
        self.model = ForwardModel(Bank.load(bank_path), ForwardConfig(physics=1))
        self.seed = seed

    def draw(self, fractions: np.ndarray, eels: bool, psnr_db: float = 35.0,
             offset_ev: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Spectra of ``fractions`` (n, 3) on the channel axis ``615 + 0.125 k`` eV.

        ``offset_ev``: the instrument's calibration error, axis reading minus true energy (the
        engine's ``energy_offset_eV`` reads it back).

        Returns
        -------
        energy : ndarray (m,)
        spectra : ndarray (n, m)
        """
        import torch

        f = np.atleast_2d(np.asarray(fractions, np.float64))
        n = len(f)
        with self._lock:
            self.seed += 1
            b = self.model.sample(n, seed=self.seed, fractions=torch.tensor(f), is_eels=eels, crop=False,
                                  offset=float(offset_ev), dispersion_error=0.0, nonlinearity=0.0, psnr_db=psnr_db,
                                  t_lambda=0.3 if eels else 0.0)
        # The forward model works on its own uniform step: resample onto the spectrometer's channels.
        from mnedge_live.preprocessing import WORK_STEP_EV

        energy = EELS_OFFSET_EV + EELS_DISPERSION_EV * np.arange(EELS_CHANNELS)
        values = b.values.numpy().astype(np.float64)
        spectra = np.empty((n, energy.size))
        for i in range(n):
            axis = float(b.start[i]) + WORK_STEP_EV * np.arange(values.shape[1])
            spectra[i] = np.interp(energy, axis, values[i])
        return energy, spectra


def demo_fractions(row: int, col: int, shape: tuple[int, int]) -> np.ndarray:
    """The simulated sample: Mn2+ on the left, Mn4+ on the right, Mn3+ in a central band."""
    ny, nx = shape
    x = col / max(nx - 1, 1)
    y = row / max(ny - 1, 1)
    f3 = 0.6 * np.exp(-((y - 0.5) / 0.3) ** 2)
    f2 = (1 - f3) * (1 - x)
    f4 = (1 - f3) * x
    f = np.array([f2, f3, f4])
    return f / f.sum()


def valence_of(fractions: np.ndarray) -> float:
    """Mean valence of (f2, f3, f4)."""
    f = np.asarray(fractions, np.float64)
    return float(2 * f[0] + 3 * f[1] + 4 * f[2])


class EELSDetector(Device):
    """The spectrometer's camera: one spectrum per trigger, of the pixel the stage is on."""

    spectrum = Cpt(Signal, value=np.zeros(EELS_CHANNELS), kind="normal")
    dispersion = Cpt(Signal, value=EELS_DISPERSION_EV, kind="config")
    offset = Cpt(Signal, value=EELS_OFFSET_EV, kind="config")

    def __init__(self, *args, source: SpectrumSource, stage: tuple[SynAxis, SynAxis], shape: tuple[int, int],
                 extents: tuple[tuple[float, float], tuple[float, float]], **kwargs):
        super().__init__(*args, **kwargs)
        self.source = source
        self.motors = stage
        self.shape = shape
        self.extents = extents
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def pixel(self) -> tuple[int, int]:
        """The pixel under the beam, from the stage positions."""
        out = []
        for ax, n, (lo, hi) in zip(self.motors, self.shape, self.extents):
            pos = float(ax.readback.get())
            k = 0 if n == 1 or hi == lo else int(round((pos - lo) / (hi - lo) * (n - 1)))
            out.append(min(max(k, 0), n - 1))
        return out[0], out[1]

    def truth(self) -> np.ndarray:
        """True valence map of the sample."""
        ny, nx = self.shape
        return np.array([[valence_of(demo_fractions(r, c, self.shape)) for c in range(nx)] for r in range(ny)])

    def prefetch(self, psnr_db: float = 35.0) -> None:
        """Draw every pixel's spectrum at once (fast scans), at ``psnr_db`` (low values: a low-dose scan)."""
        ny, nx = self.shape
        pix = [(r, c) for r in range(ny) for c in range(nx)]
        _, spectra = self.source.draw(np.array([demo_fractions(r, c, self.shape) for r, c in pix]), eels=True,
                                      psnr_db=psnr_db)
        self._cache.update(zip(pix, spectra))

    def trigger(self) -> DeviceStatus:
        p = self.pixel()
        if p not in self._cache:
            _, s = self.source.draw(demo_fractions(*p, self.shape)[None, :], eels=True)
            self._cache[p] = s[0]
        self.spectrum.put(self._cache[p].copy())
        st = DeviceStatus(self)
        st.set_finished()
        return st


def make_eels(shape: tuple[int, int] = (6, 8), source: SpectrumSource | None = None):
    """The EELS instrument: ``(detector, stage_y, stage_x)`` over ``extents`` (0..1, 0..1)."""
    sy = SynAxis(name="stage_y")
    sx = SynAxis(name="stage_x")
    det = EELSDetector(name="eels", source=source or SpectrumSource(), stage=(sy, sx), shape=shape,
                       extents=((0.0, 1.0), (0.0, 1.0)))
    return det, sy, sx


class XASDetectors(Device):
    """Total electron yield and incident flux at the monochromator's energy."""

    tey = Cpt(Signal, value=0.0, kind="hinted")
    i0 = Cpt(Signal, value=1.0, kind="normal")

    def __init__(self, *args, mono: SynAxis, energy: np.ndarray, mu: np.ndarray, noise: float = 0.004,
                 seed: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.mono = mono
        self.energy = energy
        self.mu = mu
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def trigger(self) -> DeviceStatus:
        e = float(self.mono.readback.get())
        flux = 1e5 * (1.0 - 0.002 * (e - 630.0)) * (1 + 0.01 * self.rng.standard_normal())
        mu = float(np.interp(e, self.energy, self.mu))
        self.i0.put(flux)
        self.tey.put(flux * (mu + self.noise * self.rng.standard_normal()))
        st = DeviceStatus(self)
        st.set_finished()
        return st


def make_xas(fractions=(0.2, 0.5, 0.3), source: SpectrumSource | None = None, mono_offset_ev: float = 0.0):
    """The XAS beamline: ``(detectors, mono)`` for a sample of the given composition.

    ``mono_offset_ev``: the monochromator's calibration error (its readback minus the true photon
    energy), which the live readout's ``energy_offset_eV`` reads back.
    """
    src = source or SpectrumSource()
    energy, spectra = src.draw(np.asarray(fractions)[None, :], eels=False, psnr_db=80.0, offset_ev=mono_offset_ev)
    mu = spectra[0] / spectra[0].max()
    mono = SynAxis(name="mono")
    mono.readback.name = "mono"
    dets = XASDetectors(name="xas", mono=mono, energy=energy, mu=mu)
    return dets, mono
