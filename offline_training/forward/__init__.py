"""Physics forward model: from end-member spectra to measured-looking XAS and EELS spectra.

One small pure function per physical stage, all batched in torch (the same
code on CPU or GPU), composed by :class:`ForwardModel` from a
:class:`ForwardConfig`.  Every sample carries its labels (fractions) and
nuisance parameters (modality, offset, broadening, t/lambda, PSNR, ...).

Most stages are convolutions, so they run in Fourier space on an extended,
zero-padded grid: the bank's Fourier transforms are computed once, and a
batch costs one gather, a few complex multiplications and one inverse FFT.

Order of the stages (one call of :meth:`ForwardModel.sample`):

1. composition on the simplex (:func:`sample_fractions`)
2. per-valence end member, L3:L2 branching ratio, chemical shift and intrinsic
   (solid-state) broadening (:func:`valence_term`), mixed per Mn atom (:func:`mix_end_members`)
3. instrument broadening, Gaussian and Lorentzian (:func:`instrument_transfer`)
4. EELS plural scattering with a Drude plasmon, Poisson statistics
   (:func:`plural_scattering_transfer`)
5. edge-step continuum under L3 and L2 (:func:`edge_steps`; physics 2: before
   stage 4, scattered with the white lines)
6. XAS saturation / self-absorption (:func:`saturate`)
7. backgrounds: EELS residual power law, XAS sloped pre-edge (:func:`add_background`;
   physics 2: non-negative, :func:`nonnegative_slope`)
8. energy axis: offset, dispersion error, smooth nonlinearity, coarse
   channel spacing (:func:`measure_on_axis`), and a measured window (crop)
9. detector noise, Poisson plus Gaussian read noise at a target PSNR
   (:func:`noise_model`, drawn by :func:`add_noise`; physics 2 on the measured
   points, :func:`measure_points`, :func:`draw_noise`, :func:`interpolate_points`)

**Physics versions** (:attr:`ForwardConfig.physics`).  Version 1 is the
physics of every model trained before versions existed: a config table
without ``physics`` reads as 1 and gives its batches bit for bit as before.
Version 2, the default of a config made in code, corrects four defects (the
random stream, labels and nuisance parameters are the same as version 1's):

* **D1 noise on the measured points.**  A detector counts per measured point
  and the live path interpolates the noisy points to the 0.1 eV work axis, so
  points coarser than the work step carry correlated noise there (lag-1
  autocorrelation +0.66 at 0.2 eV, +0.90 at 0.4 eV); version 1 added
  independent noise per channel after interpolating the clean signal.  Points
  finer than the work step are averaged per channel live: version 2 draws per
  channel with the variance times ``point_spacing / 0.1``.
* **D2 scattered continuum.**  The EELS edge-step continuum is part of the
  single-scattering core loss, so plural scattering convolves it with the
  white lines (Egerton, 2011, sec. 3.7, 4.1); version 1 added it afterwards,
  its shape independent of t/lambda.  The low-loss kernel is cut at the FFT's
  padding (89.8 eV) so that the continuum's plateau does not wrap onto the
  pre-edge: the convolution on the physics grid is the linear one.
* **D3 non-negative XAS pre-edge.**  The line ``level + slope (E - 641)`` went
  below zero in 21 % of XAS rows (a yield below zero draws no shot noise);
  version 2 limits the slope so that it is non-negative over the true
  energies each row's points read.
* **D7 exact offset label.**  The axis nonlinearity is quadratic about the
  truth (``reading - offset - 641``), so ``offset`` is exactly the reading
  minus the truth at 641 eV; version 1 took it about the reading, off by
  ``nonlinearity (offset/30)^2`` (up to 0.075 eV).

**Normalization per Mn atom.** Each bank spectrum has unit L2,3 area; it is
multiplied by the number of 3d holes of its valence (:data:`HOLES`, from the
calculated ground-state d occupancy), because the L2,3 white-line intensity
per atom is proportional to the number of empty 3d states (the L-edge sum
rule).  A mixture ``sum_v f_v * holes_v * unit_v`` therefore has the atomic
fractions ``f_v`` as its label, which is what a chemist means by "30 % Mn4+".

**PSNR** is ``20 log10(peak / sigma)`` dB, where ``peak`` is the height of
the noise-free spectrum (max minus min over the measured window) and
``sigma`` the RMS of the added noise over that window: per channel (physics
1), per measured point (physics 2: between coarse points the interpolated
noise is lower, and points finer than the work step average to a channel).

Modules: :mod:`~offline_training.forward.config` (:class:`ForwardConfig`),
:mod:`~offline_training.forward.composition` (labels and per-atom weights),
:mod:`~offline_training.forward.stages` (one function per stage),
:mod:`~offline_training.forward.compiled` (the same stages compiled by ``torch.compile``, for
the on-the-fly generator) and :mod:`~offline_training.forward.model` (:class:`ForwardModel`,
the composition).
"""

from offline_training.forward.composition import HOLES, VALENCES, sample_fractions
from offline_training.forward.config import PHYSICS_VERSIONS, ForwardConfig
from offline_training.forward.model import Batch, ForwardModel
from offline_training.forward.stages import (
    POISSON_EXACT_BELOW,
    add_background,
    add_noise,
    draw_noise,
    drude_plasmon,
    edge_steps,
    instrument_transfer,
    interpolate_points,
    measure_on_axis,
    measure_points,
    mix_end_members,
    noise_model,
    nonnegative_slope,
    plural_scattering_transfer,
    points_read,
    saturate,
    valence_term,
    voigt_fwhm,
)

__all__ = [
    "HOLES",
    "PHYSICS_VERSIONS",
    "POISSON_EXACT_BELOW",
    "VALENCES",
    "Batch",
    "ForwardConfig",
    "ForwardModel",
    "add_background",
    "add_noise",
    "draw_noise",
    "drude_plasmon",
    "edge_steps",
    "instrument_transfer",
    "interpolate_points",
    "measure_on_axis",
    "measure_points",
    "mix_end_members",
    "noise_model",
    "nonnegative_slope",
    "plural_scattering_transfer",
    "points_read",
    "sample_fractions",
    "saturate",
    "valence_term",
    "voigt_fwhm",
]
