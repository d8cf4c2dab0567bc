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
5. edge-step continuum under L3 and L2 (:func:`edge_steps`)
6. XAS saturation / self-absorption (:func:`saturate`)
7. backgrounds: EELS residual power law, XAS sloped pre-edge (:func:`add_background`)
8. energy axis: offset, dispersion error, smooth nonlinearity, coarse
   channel spacing (:func:`measure_on_axis`), and a measured window (crop)
9. detector noise, Poisson plus Gaussian read noise at a target PSNR
   (:func:`noise_model`, drawn by :func:`add_noise`)

**Normalization per Mn atom.** Each bank spectrum has unit L2,3 area; it is
multiplied by the number of 3d holes of its valence (:data:`HOLES`, from the
calculated ground-state d occupancy), because the L2,3 white-line intensity
per atom is proportional to the number of empty 3d states (the L-edge sum
rule).  A mixture ``sum_v f_v * holes_v * unit_v`` therefore has the atomic
fractions ``f_v`` as its label, which is what a chemist means by "30 % Mn4+".

**PSNR** is ``20 log10(peak / sigma)`` dB, where ``peak`` is the height of
the noise-free spectrum (max minus min over the measured window) and
``sigma`` the RMS of the added noise over that window.

Modules: :mod:`~offline_training.forward.config` (:class:`ForwardConfig`),
:mod:`~offline_training.forward.composition` (labels and per-atom weights),
:mod:`~offline_training.forward.stages` (one function per stage),
:mod:`~offline_training.forward.compiled` (the same stages compiled by ``torch.compile``, for
the on-the-fly generator) and :mod:`~offline_training.forward.model` (:class:`ForwardModel`,
the composition).
"""

from offline_training.forward.composition import HOLES, VALENCES, sample_fractions
from offline_training.forward.config import ForwardConfig
from offline_training.forward.model import Batch, ForwardModel
from offline_training.forward.stages import (
    POISSON_EXACT_BELOW,
    add_background,
    add_noise,
    drude_plasmon,
    edge_steps,
    instrument_transfer,
    measure_on_axis,
    mix_end_members,
    noise_model,
    plural_scattering_transfer,
    saturate,
    valence_term,
    voigt_fwhm,
)

__all__ = [
    "HOLES",
    "POISSON_EXACT_BELOW",
    "VALENCES",
    "Batch",
    "ForwardConfig",
    "ForwardModel",
    "add_background",
    "add_noise",
    "drude_plasmon",
    "edge_steps",
    "instrument_transfer",
    "measure_on_axis",
    "mix_end_members",
    "noise_model",
    "plural_scattering_transfer",
    "sample_fractions",
    "saturate",
    "valence_term",
    "voigt_fwhm",
]
