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
   (solid-state) broadening, mixed per Mn atom (:func:`mix_end_members`)
3. instrument broadening, Gaussian and Lorentzian (:func:`instrument_transfer`)
4. EELS plural scattering with a Drude plasmon, Poisson statistics
   (:func:`plural_scattering_transfer`)
5. edge-step continuum under L3 and L2 (:func:`edge_steps`)
6. XAS saturation / self-absorption (:func:`saturate`)
7. backgrounds: EELS residual power law, XAS sloped pre-edge (:func:`add_background`)
8. energy axis: offset, dispersion error, smooth nonlinearity, coarse
   channel spacing (:func:`measure_on_axis`), and a measured window (crop)
9. detector noise, Poisson plus Gaussian read noise at a target PSNR
   (:func:`add_noise`)

**Normalization per Mn atom.** Each bank spectrum has unit L2,3 area; it is
multiplied by the number of 3d holes of its valence (:data:`HOLES`, from the
calculated ground-state d occupancy), because the L2,3 white-line intensity
per atom is proportional to the number of empty 3d states (the L-edge sum
rule).  A mixture ``sum_v f_v * holes_v * unit_v`` therefore has the atomic
fractions ``f_v`` as its label, which is what a chemist means by "30 % Mn4+".

**PSNR** is ``20 log10(peak / sigma)`` dB, where ``peak`` is the height of
the noise-free spectrum (max minus min over the measured window) and
``sigma`` the RMS of the added noise over that window.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mnedge_live.preprocessing import WORK_STEP_EV
from offline_training.references.bank import Bank

#: 3d holes per Mn atom used for the per-atom normalization (10 - n_d with the
#: charge-transfer ground-state occupancies 5.10, 4.77, 4.20 of the bank's
#: central parameters; nominal ionic values would be 5, 6, 7).
HOLES = {2: 4.90, 3: 5.23, 4: 5.80}

VALENCES = (2, 3, 4)


def _check_range(name: str, r: tuple[float, float], lo: float | None = None, hi: float | None = None) -> None:
    if len(r) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in r):
        raise ValueError(f"{name}: expected two finite numbers (low, high), got {r!r}")
    if r[0] > r[1]:
        raise ValueError(f"{name}: range is inverted ({r[0]} > {r[1]})")
    if lo is not None and r[0] < lo:
        raise ValueError(f"{name}: low end {r[0]} is below the allowed {lo}")
    if hi is not None and r[1] > hi:
        raise ValueError(f"{name}: high end {r[1]} is above the allowed {hi}")


@dataclass
class ForwardConfig:
    """Every range of the forward model (eV unless noted); validated on creation.

    The defaults are the physically plausible ranges; training configs widen
    the offset to +-15 eV.
    """

    #: shares of pure, binary and ternary compositions
    composition_shares: tuple[float, float, float] = (0.3, 0.4, 0.3)
    #: share of EELS (rest XAS)
    eels_share: float = 0.5
    #: chemical shift of each valence's L3 around its bank position
    chemical_shift: tuple[float, float] = (-0.5, 0.5)
    #: extra intrinsic Gaussian FWHM per valence (solid-state, vibrational)
    intrinsic_fwhm: dict = field(default_factory=lambda: {2: (0.0, 0.8), 3: (0.2, 1.8), 4: (0.2, 1.8)})
    #: L3:L2 white-line area ratio (branching ratio) per valence: the L2 part of each
    #: calculated end member is rescaled to a ratio drawn here.  Multiplet calculations give
    #: too much L2 (bank medians 2.9 / 2.1 / 1.8), measured white-line ratios of Mn oxides
    #: are about 3.5-4.2 (Mn2+), 2.3-2.8 (Mn3+), 1.8-2.2 (Mn4+) (Schmid & Mader, Micron 37,
    #: 426 (2006); Riedl et al., Micron 37, 404 (2006); Tan et al., Ultramicroscopy 116,
    #: 24 (2012); Varela et al., PRB 79, 085117 (2009)); the ranges below span that
    #: scatter across labs and continuum-removal methods.
    branching_ratio: dict = field(default_factory=lambda: {2: (3.3, 4.3), 3: (2.2, 2.9), 4: (1.7, 2.3)})
    #: instrument Gaussian and Lorentzian FWHM
    gauss_fwhm: tuple[float, float] = (0.05, 1.5)
    lorentz_fwhm: tuple[float, float] = (0.0, 0.4)
    #: EELS t/lambda and plasmon energy / width
    t_lambda: tuple[float, float] = (0.0, 1.5)
    plasmon_energy: tuple[float, float] = (15.0, 30.0)
    plasmon_width: tuple[float, float] = (3.0, 10.0)
    #: edge-step height (L3 step) relative to the L3 white-line maximum
    edge_step: tuple[float, float] = (0.0, 0.25)
    #: XAS saturation strength (0: none)
    saturation: tuple[float, float] = (0.0, 0.6)
    #: EELS residual power-law background at L3, relative to the L3 maximum, and exponent r
    eels_background: tuple[float, float] = (0.0, 3.0)
    eels_exponent: tuple[float, float] = (2.0, 5.0)
    #: XAS pre-edge level and slope (per eV), relative to the L3 maximum
    xas_background: tuple[float, float] = (0.0, 1.0)
    xas_slope: tuple[float, float] = (-0.02, 0.02)
    #: energy axis: global offset, dispersion scale error (relative), quadratic nonlinearity at +-30 eV
    offset: tuple[float, float] = (-6.0, 6.0)
    dispersion_error: tuple[float, float] = (-0.01, 0.01)
    nonlinearity: tuple[float, float] = (-0.3, 0.3)
    #: spacing of the measured points (resampled to the work step)
    point_spacing: tuple[float, float] = (0.05, 0.4)
    #: measured window: probability of a crop, and the window's reach below / above L3
    crop_probability: float = 0.3
    crop_below: tuple[float, float] = (2.5, 12.0)
    crop_above: tuple[float, float] = (9.0, 35.0)
    #: PSNR (dB) and the share of Poisson in the noise variance
    psnr_db: tuple[float, float] = (5.0, 60.0)
    poisson_share: tuple[float, float] = (0.0, 1.0)
    #: channel axis of the output (before the offset): start and number of points
    axis_start: float = 615.0
    axis_points: int = 700

    def __post_init__(self) -> None:
        shares = self.composition_shares
        if len(shares) != 3 or any((not math.isfinite(s)) or s < 0 for s in shares) or sum(shares) <= 0:
            raise ValueError(f"composition_shares: need three non-negative shares, got {shares!r}")
        for name in ("eels_share", "crop_probability"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: must be within [0, 1], got {v}")
        limits = dict(
            chemical_shift=(-3, 3), gauss_fwhm=(0.0, 5.0), lorentz_fwhm=(0.0, 3.0), t_lambda=(0.0, 4.0),
            plasmon_energy=(5.0, 60.0), plasmon_width=(0.5, 30.0), edge_step=(0.0, 2.0), saturation=(0.0, 5.0),
            eels_background=(0.0, 100.0), eels_exponent=(0.0, 8.0), xas_background=(0.0, 100.0),
            xas_slope=(None, None), offset=(-40.0, 40.0), dispersion_error=(-0.1, 0.1), nonlinearity=(-3.0, 3.0),
            point_spacing=(0.01, 2.0), crop_below=(0.5, 40.0), crop_above=(2.0, 60.0), psnr_db=(-10.0, 120.0),
            poisson_share=(0.0, 1.0),
        )
        for name, (lo, hi) in limits.items():
            _check_range(name, tuple(getattr(self, name)), lo, hi)
        for name in ("intrinsic_fwhm", "branching_ratio"):
            d = getattr(self, name)
            d = {int(k): tuple(v) for k, v in d.items()}
            if set(d) != set(VALENCES):
                raise ValueError(f"{name}: need ranges for valences 2, 3 and 4, got {sorted(d)}")
            for v, r in d.items():
                _check_range(f"{name}[{v}]", r, 0.0, 10.0)
            setattr(self, name, d)
        if self.axis_points < 64:
            raise ValueError(f"axis_points: need at least 64, got {self.axis_points}")

    @classmethod
    def from_dict(cls, d: dict) -> ForwardConfig:
        """Build from a (TOML) table; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown forward-model option(s): {', '.join(unknown)}")
        kw = {}
        for k, v in d.items():
            if isinstance(v, list):
                v = tuple(v)
            if isinstance(v, dict):
                v = {int(kk): tuple(vv) for kk, vv in v.items()}
            kw[k] = v
        return cls(**kw)

    def to_dict(self) -> dict:
        """Plain dict (TOML/JSON-safe) of the configuration."""
        d = dataclasses.asdict(self)
        for name in ("intrinsic_fwhm", "branching_ratio"):
            d[name] = {str(k): list(v) for k, v in d[name].items()}
        return d


def _uniform(gen: torch.Generator, n: int, r: tuple[float, float], device=None) -> torch.Tensor:
    return r[0] + (r[1] - r[0]) * torch.rand(n, generator=gen, device=device, dtype=torch.float64)


def sample_fractions(gen: torch.Generator, n: int, shares: tuple[float, float, float]) -> torch.Tensor:
    """Draw Mn2+/Mn3+/Mn4+ fractions: pure, binary or ternary in the given shares.

    Binary and ternary mixtures are uniform on their edge / on the simplex
    (flat Dirichlet).  Rows sum to 1.
    """
    s = torch.tensor(shares, dtype=torch.float64)
    kind = torch.multinomial(s / s.sum(), n, replacement=True, generator=gen)
    e = -torch.log(torch.rand(n, 3, generator=gen, dtype=torch.float64).clamp(min=1e-12))
    # choose which components are present
    perm = torch.argsort(torch.rand(n, 3, generator=gen), dim=1)
    rank = torch.argsort(perm, dim=1)
    present = rank <= kind[:, None]
    w = torch.where(present, e, torch.zeros_like(e))
    return w / w.sum(dim=1, keepdim=True)


def instrument_transfer(omega: torch.Tensor, gauss_fwhm: torch.Tensor, lorentz_fwhm: torch.Tensor) -> torch.Tensor:
    """Fourier transfer function of a Voigt kernel (area 1): Gaussian x Lorentzian."""
    sigma = gauss_fwhm / (2 * math.sqrt(2 * math.log(2)))
    gamma = lorentz_fwhm / 2
    return torch.exp(-0.5 * (sigma[:, None] * omega[None, :]) ** 2 - gamma[:, None] * omega.abs()[None, :])


def mix_end_members(omega: torch.Tensor, bank_fft: torch.Tensor, member: torch.Tensor,
                    weight: torch.Tensor, l2_scale: torch.Tensor, shift: torch.Tensor, gauss_fwhm: torch.Tensor,
                    lorentz_fwhm: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a broadened mixture of end members, one term per valence.

    Row ``b`` is ``sum_v weight[b, v] * (L3 + l2_scale[b, v] * L2)`` of bank
    member ``member[b, v]``, shifted by ``shift[b, v]`` eV and convolved with a
    Voigt of Gaussian FWHM ``gauss_fwhm[b, v]`` and Lorentzian FWHM
    ``lorentz_fwhm[b]`` (:func:`instrument_transfer`): the valence's intrinsic
    and the instrument's Gaussian widths are added in quadrature beforehand, so
    that every valence is broadened in one pass.  A valence with weight 0 in a
    row costs nothing there (pure and binary compositions skip one or two
    valences).  Real and imaginary parts are carried separately: on a CPU
    that is cheaper than complex arithmetic.

    Parameters
    ----------
    omega : torch.Tensor
        ``(F,)`` angular frequencies (rad/eV) of the one-sided FFT.
    bank_fft : torch.Tensor
        ``(M, 4, F)`` transforms of the bank's L3 and L2 parts as real
        numbers: L3 real, L3 imaginary, L2 real, L2 imaginary
        (:attr:`ForwardModel.bank_fft`).
    member, weight, l2_scale, shift, gauss_fwhm : torch.Tensor
        ``(B, V)``: bank row, weight, scale of the L2 part, energy shift (eV)
        and Gaussian FWHM (eV) of each valence's term.
    lorentz_fwhm : torch.Tensor
        ``(B,)`` Lorentzian FWHM (eV) of the instrument.

    Returns
    -------
    torch.Tensor
        ``(B, F)`` complex64 transform of the mixture.
    """
    b, f = member.shape[0], omega.numel()
    re = torch.zeros(b, f, dtype=torch.float32, device=omega.device)
    im = torch.zeros_like(re)
    om = omega[None, :]
    for v in range(member.shape[1]):
        rows = torch.nonzero(weight[:, v] != 0).squeeze(1)
        if rows.numel() == 0:
            continue
        idx = member[rows, v]
        amp = weight[rows, v, None] * instrument_transfer(omega, gauss_fwhm[rows, v], lorentz_fwhm[rows])
        phase = shift[rows, v, None] * om   # a shift by s multiplies by exp(-i s omega)
        c, s = torch.cos(phase) * amp, torch.sin(phase) * amp
        l3_re, l3_im, l2_re, l2_im = bank_fft[idx].unbind(1)
        scale = l2_scale[rows, v, None]
        ar = l3_re + scale * l2_re
        ai = l3_im + scale * l2_im
        re.index_add_(0, rows, ar * c + ai * s)
        im.index_add_(0, rows, ai * c - ar * s)
    return torch.complex(re, im)


def voigt_fwhm(gauss_fwhm: torch.Tensor, lorentz_fwhm: torch.Tensor) -> torch.Tensor:
    """FWHM of a Voigt profile (Olivero & Longbothum 1977, 0.02 % accurate)."""
    return 0.5346 * lorentz_fwhm + torch.sqrt(0.2166 * lorentz_fwhm**2 + gauss_fwhm**2)


def drude_plasmon(energy_loss: torch.Tensor, ep: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Drude energy-loss function Im(-1/eps) on ``energy_loss >= 0``, normalized to unit area per row."""
    e = energy_loss[None, :]
    f = e * width[:, None] * ep[:, None] ** 2 / ((e**2 - ep[:, None] ** 2) ** 2 + (e * width[:, None]) ** 2)
    f = torch.where(e >= 0, f, torch.zeros_like(f))
    return f / f.sum(dim=1, keepdim=True).clamp(min=1e-30)


def plural_scattering_transfer(plasmon_fft: torch.Tensor, t_lambda: torch.Tensor) -> torch.Tensor:
    """Fourier transfer of plural scattering: ``exp(t/lambda * (P(w) - 1))``.

    This is the Poisson sum ``exp(-t/l) sum_n (t/l)^n / n! P^(*n)`` of n-fold
    plasmon losses convolved with the single-scattering edge; it keeps the
    total (its value at zero frequency is 1) and its first-order term scales
    with t/lambda.
    """
    # exp of a complex argument as modulus and phase: cheaper than complex exp on a CPU
    t = t_lambda[:, None]
    return torch.polar(torch.exp(t * (plasmon_fft.real - 1)), t * plasmon_fft.imag)


def edge_steps(energy: torch.Tensor, l3: torch.Tensor, l2: torch.Tensor, height: torch.Tensor,
               width: torch.Tensor) -> torch.Tensor:
    """Arctan edge steps (L3:L2 heights 2:1 by core-level degeneracy) into the continuum."""
    e = energy[None, :]
    s3 = 0.5 + torch.atan((e - l3[:, None]) / width[:, None]) / math.pi
    s2 = 0.5 + torch.atan((e - l2[:, None]) / width[:, None]) / math.pi
    return height[:, None] * (s3 + 0.5 * s2)


def saturate(spec: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Saturation / self-absorption of fluorescence or electron yield: ``I / (1 + a I / max I)``."""
    peak = spec.amax(dim=1, keepdim=True).clamp(min=1e-12)
    return spec / (1 + strength[:, None] * spec / peak)


def add_background(energy: torch.Tensor, spec: torch.Tensor, is_eels: torch.Tensor, eels_level: torch.Tensor,
                   eels_exp: torch.Tensor, xas_level: torch.Tensor, xas_slope: torch.Tensor,
                   e_ref: float) -> torch.Tensor:
    """EELS: residual power law ``A (E/E_ref)^-r``; XAS: sloped line; levels relative to the L3 maximum."""
    peak = spec.amax(dim=1, keepdim=True)
    e = energy[None, :]
    pl = eels_level[:, None] * (e / e_ref) ** (-eels_exp[:, None])
    line = xas_level[:, None] + xas_slope[:, None] * (e - e_ref)
    return spec + peak * torch.where(is_eels[:, None], pl, line)


def measure_on_axis(phys_energy: torch.Tensor, spec: torch.Tensor, axis: torch.Tensor, offset: torch.Tensor,
                    dispersion: torch.Tensor, nonlin: torch.Tensor, spacing: torch.Tensor,
                    e_center: float) -> torch.Tensor:
    """Sample physical spectra as a mis-calibrated instrument reads them.

    A channel that reads energy ``E`` sees the true energy
    ``e_center + (E - offset - e_center) (1 + dispersion) + nonlin ((E - e_center)/30)^2``,
    i.e. ``offset`` is the reading minus the truth at ``e_center``.  Points
    are measured every ``spacing`` eV and linearly interpolated to the
    channel axis, as :func:`mnedge_live.preprocessing.to_uniform` does live (live,
    points denser than two per channel are first averaged per channel; the
    noise, added afterwards per channel by :func:`add_noise`, is what that
    averaging leaves).
    """
    # Readings and true energies relative to e_center, in the spectrum's precision (float32 keeps
    # 1e-5 eV over the +-100 eV that matter here).
    de = float(phys_energy[1] - phys_energy[0])
    origin = (e_center - float(phys_energy[0])) / de   # fractional index of e_center
    n = spec.shape[1]
    off, gain = offset.to(spec.dtype)[:, None], (1 + dispersion).to(spec.dtype)[:, None] / de
    curve = nonlin.to(spec.dtype)[:, None] / (de * 30.0**2)

    def sample(reading: torch.Tensor) -> torch.Tensor:
        pos = (origin + (reading - off) * gain + curve * reading**2).clamp(0, n - 1)
        i0 = pos.floor().long().clamp(max=n - 2)
        return torch.lerp(torch.gather(spec, 1, i0), torch.gather(spec, 1, i0 + 1), pos - i0)

    step = spacing.to(spec.dtype)[:, None]
    a = (axis - axis[0]).to(spec.dtype)[None, :]          # channel readings from the first channel
    k = torch.floor(a / step)
    t = a / step - k
    lo = k * step + (float(axis[0]) - e_center)            # measured points around each channel
    return torch.lerp(sample(lo), sample(lo + step), t)


#: Expected counts from which a channel's Poisson noise is drawn as a Gaussian of the same mean
#: and variance (its skewness, ``rate**-0.5``, is 0.1 there); below it, exact Poisson draws.
POISSON_EXACT_BELOW = 100.0


def add_noise(gen: torch.Generator, spec: torch.Tensor, valid: torch.Tensor, psnr_db: torch.Tensor,
              poisson_share: torch.Tensor) -> torch.Tensor:
    """Poisson counts plus Gaussian read noise whose total RMS over the window gives ``psnr_db``.

    A share ``poisson_share`` of the noise variance, averaged over the window,
    is shot noise: the spectrum is scaled to counts so that the mean Poisson
    variance is that share.  Channels expecting at least
    :data:`POISSON_EXACT_BELOW` counts draw it as a Gaussian of variance equal
    to the counts, merged with the read noise into one draw; the others draw
    exact Poisson counts (the costly part, so only where the shape matters).
    """
    big = torch.finfo(spec.dtype).max
    hi = torch.where(valid, spec, torch.full_like(spec, -big)).amax(dim=1)
    lo = torch.where(valid, spec, torch.full_like(spec, big)).amin(dim=1)
    sigma = (hi - lo) / torch.pow(10.0, psnr_db.to(spec.dtype) / 20)
    var = sigma**2
    p = poisson_share.to(spec.dtype)
    pos = spec.clamp(min=0)
    nvalid = valid.sum(dim=1).clamp(min=1)
    mean_pos = (torch.where(valid, pos, torch.zeros_like(pos)).sum(dim=1) / nvalid).clamp(min=1e-12)
    # counts per unit intensity so that the mean Poisson variance is p * var
    gain = mean_pos / (p * var).clamp(min=1e-30)
    use_p = (p > 1e-6)[:, None]
    rate = torch.where(use_p, pos * gain[:, None], torch.zeros_like(pos)).clamp(max=1e12)
    exact = use_p & (rate < POISSON_EXACT_BELOW)
    read_var = ((1 - p) * var)[:, None]
    shot_var = torch.where(exact, torch.zeros_like(pos), rate / gain[:, None] ** 2)
    noise = torch.randn(spec.shape, generator=gen, dtype=spec.dtype) * torch.sqrt(read_var + shot_var)
    where = torch.nonzero(exact, as_tuple=True)
    if where[0].numel():
        r = rate[where]
        noise[where] += (torch.poisson(r, generator=gen) - r) / gain[where[0]]
    return spec + noise


@dataclass
class Batch:
    """A batch of synthetic measurements with everything that made them."""

    start: torch.Tensor        # (B,) float64: energy of channel 0 (eV)
    values: torch.Tensor       # (B, N) float32 on start + WORK_STEP_EV * i
    valid: torch.Tensor        # (B, N) bool: the measured window
    clean: torch.Tensor        # (B, N) noise-free values
    fractions: torch.Tensor    # (B, 3) Mn2+, Mn3+, Mn4+
    params: dict               # name -> (B,) tensor of nuisance parameters

    def subset(self, idx) -> Batch:
        """Rows ``idx`` of the batch."""
        return Batch(self.start[idx], self.values[idx], self.valid[idx], self.clean[idx], self.fractions[idx],
                     {k: v[idx] for k, v in self.params.items()})


class ForwardModel:
    """The composed forward model over a :class:`~offline_training.references.bank.Bank`.

    Parameters
    ----------
    bank : Bank
        End-member spectra (unit area, common grid).
    config : ForwardConfig
        Ranges of every stage.
    device : str or torch.device
        Where the batch is computed.
    """

    #: physics grid (eV): covers every true energy an axis reading 615-685 eV with a +-15 eV
    #: offset can map to, plus margin; spacing equals the work step.
    PHYS_RANGE = (595.0, 710.0)
    #: FFT length: leaves about 90 eV of empty grid so plural-scattering replicas do not wrap
    NFFT = 2048
    #: number of tabulated plasmon energies and widths over the configured ranges
    PLASMON_TABLE = (16, 8)

    def __init__(self, bank: Bank, config: ForwardConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or ForwardConfig()
        self.device = torch.device(device)
        de = WORK_STEP_EV
        self.de = de
        e = np.round(np.arange(self.PHYS_RANGE[0], self.PHYS_RANGE[1], de), 6)
        self.energy = torch.tensor(e, dtype=torch.float64, device=self.device)
        self.nfft = self.NFFT
        # Bank onto the physics grid: box-average to the physics spacing (keeps area), then interpolate.
        ratio = max(1, int(round(de / float(bank.energy[1] - bank.energy[0]))))
        kernel = np.ones(ratio) / ratio
        spectra = np.array([np.interp(e, bank.energy, np.convolve(s, kernel, mode="same"), left=0.0, right=0.0)
                            for s in bank.spectra])
        spectra /= spectra.sum(axis=1, keepdims=True) * de
        self.omega = (2 * math.pi * torch.fft.rfftfreq(self.nfft, d=de)).to(self.device, torch.float32)
        # L3 and L2 parts (smooth split), each transformed once.
        w2 = 0.5 * (1 + np.tanh((e[None, :] - bank.split_ev[:, None]) / 0.5))
        l3_part = spectra * (1 - w2)
        l2_part = spectra * w2
        self.l3_fft = torch.fft.rfft(torch.tensor(l3_part, dtype=torch.float32, device=self.device), n=self.nfft)
        self.l2_fft = torch.fft.rfft(torch.tensor(l2_part, dtype=torch.float32, device=self.device), n=self.nfft)
        # the same as (M, 4, F) real numbers for mix_end_members: L3 re, L3 im, L2 re, L2 im
        self.bank_fft = torch.stack([self.l3_fft.real, self.l3_fft.imag, self.l2_fft.real, self.l2_fft.imag], 1)
        self.l3_area = torch.tensor(l3_part.sum(1) * de, dtype=torch.float32, device=self.device)
        self.l2_area = torch.tensor(l2_part.sum(1) * de, dtype=torch.float32, device=self.device)
        self.l3_pos = torch.tensor(e[np.argmax(spectra, axis=1)], device=self.device)
        self.split = torch.tensor(bank.split_ev, device=self.device)
        self.members = {v: torch.tensor(bank.of_valence(v), device=self.device) for v in VALENCES}
        self.member_weight = {v: torch.tensor(bank.weight[bank.of_valence(v)], dtype=torch.float32)
                              for v in VALENCES}
        self.holes = torch.tensor([HOLES[v] for v in VALENCES], dtype=torch.float32, device=self.device)
        # Plasmon single-scattering distributions, tabulated once and transformed.
        loss = torch.tensor(de * np.arange(self.nfft), dtype=torch.float64)
        ep, pw = np.meshgrid(np.linspace(*self.config.plasmon_energy, self.PLASMON_TABLE[0]),
                             np.linspace(*self.config.plasmon_width, self.PLASMON_TABLE[1]), indexing="ij")
        self.plasmon_params = torch.tensor(np.stack([ep.ravel(), pw.ravel()], 1), device=self.device)
        table = drude_plasmon(loss, torch.tensor(ep.ravel()), torch.tensor(pw.ravel()))
        self.plasmon_fft = torch.fft.rfft(table.to(torch.float32), n=self.nfft).to(self.device)
        self.e_ref = 641.0
        self.bank_sha256 = bank.sha256()

    def sample(self, n: int, seed: int | None = None, generator: torch.Generator | None = None,
               **overrides) -> Batch:
        """Draw ``n`` synthetic measurements.

        Parameters
        ----------
        n : int
            Batch size.
        seed : int, optional
            Seed; the same seed gives the same batch.
        generator : torch.Generator, optional
            Use this generator instead of ``seed`` (on-the-fly streams).
        **overrides
            Fixed values for nuisance parameters, e.g. ``psnr_db=20.0`` or
            ``t_lambda=torch.tensor([...])`` (used by stage tests and
            stratified evaluation).
        """
        cfg = self.config
        gen = generator or torch.Generator().manual_seed(0 if seed is None else seed)
        dev = self.device

        def draw(name, r):
            if name in overrides:
                v = torch.as_tensor(overrides[name], dtype=torch.float64, device=dev)
                return v.expand(n).clone() if v.ndim == 0 else v
            return _uniform(gen, n, r).to(dev)

        fractions = overrides.get("fractions")
        fractions = (torch.as_tensor(fractions, dtype=torch.float64) if fractions is not None
                     else sample_fractions(gen, n, cfg.composition_shares)).to(dev)
        if "is_eels" in overrides:
            is_eels = torch.as_tensor(overrides["is_eels"], dtype=torch.bool, device=dev).expand(n).clone()
        else:
            is_eels = (torch.rand(n, generator=gen) < cfg.eels_share).to(dev)
        p: dict[str, torch.Tensor] = {"is_eels": is_eels.to(torch.float64)}

        # 2. end members with branching, chemical shift and intrinsic broadening, mixed per atom
        cols: dict[str, list[torch.Tensor]] = {"member": [], "weight": [], "l2_scale": [], "shift": [], "fwhm": []}
        l3_mix = torch.zeros(n, dtype=torch.float64, device=dev)
        l2_mix = torch.zeros(n, dtype=torch.float64, device=dev)
        for j, v in enumerate(VALENCES):
            pick = torch.multinomial(self.member_weight[v], n, replacement=True, generator=gen)
            idx = self.members[v][pick.to(dev)]
            if f"member_{v}" in overrides:  # bank row indices, e.g. to rebuild matched references
                idx = torch.as_tensor(overrides[f"member_{v}"], device=dev).long().expand(n).clone()
            ratio = draw(f"branching_ratio_{v}", cfg.branching_ratio[v])
            # scale of the L2 part that turns the member's own L3:L2 ratio into the drawn one
            b2 = ((self.l3_area[idx] / self.l2_area[idx]).to(torch.float64) / ratio).to(torch.float32)
            shift = draw(f"chemical_shift_{v}", cfg.chemical_shift)
            fw = draw(f"intrinsic_fwhm_{v}", cfg.intrinsic_fwhm[v])
            area = self.l3_area[idx] + b2 * self.l2_area[idx]
            for key, col in (("member", idx), ("weight", fractions[:, j].to(torch.float32) * self.holes[j] / area),
                             ("l2_scale", b2), ("shift", shift.to(torch.float32)), ("fwhm", fw)):
                cols[key].append(col)
            l3_mix = l3_mix + fractions[:, j] * (self.l3_pos[idx] + shift)
            l2_mix = l2_mix + fractions[:, j] * (self.split[idx] + shift + 2.0)
            p[f"member_{v}"] = idx.to(torch.float64)
            p[f"chemical_shift_{v}"] = shift
            p[f"intrinsic_fwhm_{v}"] = fw
            p[f"branching_ratio_{v}"] = ratio

        # 3. instrument broadening (in the same pass as each valence's intrinsic width) and
        # 4. EELS plural scattering (XAS rows: t/lambda = 0, nothing to do)
        g = draw("gauss_fwhm", cfg.gauss_fwhm)
        lz = draw("lorentz_fwhm", cfg.lorentz_fwhm)
        p["gauss_fwhm"], p["lorentz_fwhm"] = g, lz
        p["resolution_fwhm"] = voigt_fwhm(g, lz)
        tl = torch.where(is_eels, draw("t_lambda", cfg.t_lambda), torch.zeros(n, dtype=torch.float64, device=dev))
        k = torch.randint(0, len(self.plasmon_params), (n,), generator=gen).to(dev)
        if "plasmon_index" in overrides:
            k = torch.as_tensor(overrides["plasmon_index"], device=dev).long().expand(n).clone()
        p["plasmon_index"] = k.to(torch.float64)
        p["t_lambda"] = tl
        p["plasmon_energy"], p["plasmon_width"] = self.plasmon_params[k, 0], self.plasmon_params[k, 1]
        stacked = {key: torch.stack(c, dim=1) for key, c in cols.items()}
        gauss = torch.sqrt(stacked.pop("fwhm") ** 2 + g[:, None] ** 2).to(torch.float32)  # Gaussians add in quadrature
        spec_fft = mix_end_members(self.omega, self.bank_fft, stacked["member"], stacked["weight"],
                                   stacked["l2_scale"], stacked["shift"], gauss, lz.to(torch.float32))
        thick = torch.nonzero(tl > 0).squeeze(1)
        if thick.numel():
            spec_fft[thick] *= plural_scattering_transfer(self.plasmon_fft[k[thick]], tl[thick].to(torch.float32))

        spec = torch.fft.irfft(spec_fft, n=self.nfft)[:, : self.energy.numel()]
        peak = spec.amax(dim=1)

        # 5. edge steps, broadened like the white lines
        h = draw("edge_step", cfg.edge_step)
        width = 0.5 + p["resolution_fwhm"] / 2
        e32 = self.energy.to(torch.float32)
        f32 = torch.float32
        spec = spec + edge_steps(e32, (l3_mix - 1.0).to(f32), (l2_mix - 1.0).to(f32), (h * peak).to(f32),
                                 width.to(f32))
        p["edge_step"] = h

        # 6. XAS saturation
        sat = torch.where(is_eels, torch.zeros(n, dtype=torch.float64, device=dev), draw("saturation", cfg.saturation))
        spec = saturate(spec, sat.to(f32))
        p["saturation"] = sat

        # 7. backgrounds
        el, ex = draw("eels_background", cfg.eels_background), draw("eels_exponent", cfg.eels_exponent)
        xl, xs = draw("xas_background", cfg.xas_background), draw("xas_slope", cfg.xas_slope)
        spec = add_background(e32, spec, is_eels, el.to(f32), ex.to(f32), xl.to(f32), xs.to(f32), self.e_ref)
        p["background"] = torch.where(is_eels, el, xl)

        # 8. energy axis, point spacing and measured window
        axis = cfg.axis_start + WORK_STEP_EV * torch.arange(cfg.axis_points, dtype=torch.float64, device=dev)
        off = draw("offset", cfg.offset)
        disp = draw("dispersion_error", cfg.dispersion_error)
        nl = draw("nonlinearity", cfg.nonlinearity)
        sp = draw("point_spacing", cfg.point_spacing)
        clean = measure_on_axis(self.energy, spec, axis, off, disp, nl, sp, self.e_ref)
        p["offset"], p["dispersion_error"], p["nonlinearity"], p["point_spacing"] = off, disp, nl, sp
        l3_read = l3_mix + off   # where the mixture's L3 appears on the axis
        crop = torch.rand(n, generator=gen).to(dev) < cfg.crop_probability
        if "crop" in overrides:
            crop = torch.as_tensor(overrides["crop"], dtype=torch.bool, device=dev).expand(n).clone()
        below = torch.where(crop, draw("crop_below", cfg.crop_below), torch.full_like(off, 1e3))
        above = torch.where(crop, draw("crop_above", cfg.crop_above), torch.full_like(off, 1e3))
        valid = (axis[None, :] >= (l3_read - below)[:, None]) & (axis[None, :] <= (l3_read + above)[:, None])
        p["window_below"], p["window_above"] = below.clamp(max=60.0), above.clamp(max=60.0)

        # 9. noise
        psnr = draw("psnr_db", cfg.psnr_db)
        ps = draw("poisson_share", cfg.poisson_share)
        noisy = add_noise(gen, clean, valid, psnr, ps)
        p["psnr_db"], p["poisson_share"] = psnr, ps
        p["l3_true_ev"] = l3_mix

        start = torch.full((n,), float(axis[0]), dtype=torch.float64, device=dev)
        return Batch(start=start, values=noisy, valid=valid, clean=clean,
                     fractions=fractions.to(torch.float32), params=p)
