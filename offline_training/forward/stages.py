"""One small pure function per physical stage of the forward model (see :mod:`offline_training.forward`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def instrument_transfer(omega: torch.Tensor, gauss_fwhm: torch.Tensor, lorentz_fwhm: torch.Tensor) -> torch.Tensor:
    """Fourier transfer function of a Voigt kernel (area 1): Gaussian x Lorentzian."""
    sigma = gauss_fwhm / (2 * math.sqrt(2 * math.log(2)))
    gamma = lorentz_fwhm / 2
    return torch.exp(-0.5 * (sigma[:, None] * omega[None, :]) ** 2 - gamma[:, None] * omega.abs()[None, :])


def valence_term(omega: torch.Tensor, bank_fft: torch.Tensor, member: torch.Tensor, weight: torch.Tensor,
                 l2_scale: torch.Tensor, shift: torch.Tensor, gauss_fwhm: torch.Tensor,
                 lorentz_fwhm: torch.Tensor) -> torch.Tensor:
    """Fourier transform of one valence's broadened, shifted end member, for the rows that hold it.

    Row ``r`` is ``weight[r] * (L3 + l2_scale[r] * L2)`` of bank member
    ``member[r]``, shifted by ``shift[r]`` eV (a shift by ``s`` multiplies the
    transform by ``exp(-i s omega)``) and convolved with a Voigt of Gaussian
    FWHM ``gauss_fwhm[r]`` and Lorentzian FWHM ``lorentz_fwhm[r]``
    (:func:`instrument_transfer`).  Real and imaginary parts are carried
    separately: on a CPU that is cheaper than complex arithmetic.

    Parameters
    ----------
    omega : torch.Tensor
        ``(F,)`` angular frequencies (rad/eV) of the one-sided FFT.
    bank_fft : torch.Tensor
        ``(M, 4, F)`` transforms of the bank's L3 and L2 parts as real
        numbers: L3 real, L3 imaginary, L2 real, L2 imaginary
        (:attr:`ForwardModel.bank_fft`).
    member, weight, l2_scale, shift, gauss_fwhm, lorentz_fwhm : torch.Tensor
        ``(R,)`` per row: bank row, weight, scale of the L2 part, energy shift
        (eV), Gaussian and Lorentzian FWHM (eV).

    Returns
    -------
    torch.Tensor
        ``(R, F, 2)``: real and imaginary parts (:func:`torch.view_as_complex` layout).
    """
    amp = weight[:, None] * instrument_transfer(omega, gauss_fwhm, lorentz_fwhm)
    phase = shift[:, None] * omega[None, :]
    c, s = torch.cos(phase) * amp, torch.sin(phase) * amp
    l3_re, l3_im, l2_re, l2_im = bank_fft[member].unbind(1)
    scale = l2_scale[:, None]
    ar = l3_re + scale * l2_re
    ai = l3_im + scale * l2_im
    return torch.stack([ar * c + ai * s, ai * c - ar * s], dim=-1)


def mix_end_members(omega: torch.Tensor, bank_fft: torch.Tensor, member: torch.Tensor,
                    weight: torch.Tensor, l2_scale: torch.Tensor, shift: torch.Tensor, gauss_fwhm: torch.Tensor,
                    lorentz_fwhm: torch.Tensor, term: Callable = valence_term) -> torch.Tensor:
    """Fourier transform of a broadened mixture of end members, one :func:`valence_term` per valence.

    Row ``b`` is the sum over valences ``v`` of the term of bank member
    ``member[b, v]`` with weight ``weight[b, v]``; the valence's intrinsic and
    the instrument's Gaussian widths are added in quadrature beforehand, so
    that every valence is broadened in one pass.  A valence with weight 0 in
    a row costs nothing there (pure and binary compositions skip one or two
    valences).

    Parameters
    ----------
    omega, bank_fft : torch.Tensor
        As for :func:`valence_term`.
    member, weight, l2_scale, shift, gauss_fwhm : torch.Tensor
        ``(B, V)``: bank row, weight, scale of the L2 part, energy shift (eV)
        and Gaussian FWHM (eV) of each valence's term.
    lorentz_fwhm : torch.Tensor
        ``(B,)`` Lorentzian FWHM (eV) of the instrument.
    term : callable
        :func:`valence_term`, or the same function compiled
        (:func:`offline_training.forward.compiled.stage_functions`).

    Returns
    -------
    torch.Tensor
        ``(B, F)`` complex64 transform of the mixture.
    """
    b, f = member.shape[0], omega.numel()
    out = torch.zeros(b, f, 2, dtype=torch.float32, device=omega.device)
    for v in range(member.shape[1]):
        rows = torch.nonzero(weight[:, v] != 0).squeeze(1)
        if rows.numel() == 0:
            continue
        out.index_add_(0, rows, term(omega, bank_fft, member[rows, v], weight[rows, v], l2_scale[rows, v],
                                     shift[rows, v], gauss_fwhm[rows, v], lorentz_fwhm[rows]))
    return torch.view_as_complex(out)


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
    """Arctan edge steps (L3:L2 heights 2:1 by core-level degeneracy) into the continuum.

    ``l3`` and ``l2`` are the thresholds (eV), each near its white line (the
    forward model puts them ``edge_step_offset`` from the L3 and L2 maxima, by
    default 1 eV below, where the Hartree-Slater continuum of EELS and the
    arctan steps of normalized XAS rise; Egerton, *Electron Energy-Loss
    Spectroscopy in the Electron Microscope*, 3rd ed., 2011, sec. 3.7; Chen et
    al., PRL 75, 152 (1995)): the trough between the lines holds the L3
    continuum only.
    """
    e = energy[None, :]
    s3 = 0.5 + torch.atan((e - l3[:, None]) / width[:, None]) / math.pi
    s2 = 0.5 + torch.atan((e - l2[:, None]) / width[:, None]) / math.pi
    return height[:, None] * (s3 + 0.5 * s2)


def saturate(spec: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Saturation / self-absorption of fluorescence or electron yield: ``I / (1 + a I / max I)``."""
    peak = spec.amax(dim=1, keepdim=True).clamp(min=1e-12)
    return spec / (1 + strength[:, None] * spec / peak)


def nonnegative_slope(level: torch.Tensor, slope: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                      e_ref: float) -> torch.Tensor:
    """``slope`` limited so that the line ``level + slope (E - e_ref)`` is non-negative on ``[low, high]`` (eV, per row).

    The XAS pre-edge of physics 2 (:func:`add_background`): a yield below zero
    is no measurement (and the shot noise, drawn from the positive part, would
    vanish there).  A level of 0 leaves a flat line; ``level >= 0`` assumed.
    """
    below, above = e_ref - low, high - e_ref
    inf = torch.full_like(slope, math.inf)
    s_max = torch.where(below > 0, level / below.clamp(min=1e-9), inf)
    s_min = torch.where(above > 0, -level / above.clamp(min=1e-9), -inf)
    return torch.minimum(torch.maximum(slope, s_min), s_max)


def add_background(energy: torch.Tensor, spec: torch.Tensor, is_eels: torch.Tensor, eels_level: torch.Tensor,
                   eels_exp: torch.Tensor, xas_level: torch.Tensor, xas_slope: torch.Tensor,
                   e_ref: float) -> torch.Tensor:
    """EELS: residual power law ``A (E/E_ref)^-r``; XAS: sloped line; levels relative to the L3 maximum."""
    peak = spec.amax(dim=1, keepdim=True)
    e = energy[None, :]
    pl = eels_level[:, None] * (e / e_ref) ** (-eels_exp[:, None])
    line = xas_level[:, None] + xas_slope[:, None] * (e - e_ref)
    return spec + peak * torch.where(is_eels[:, None], pl, line)


def _reader(phys_energy: torch.Tensor, spec: torch.Tensor, offset: torch.Tensor, dispersion: torch.Tensor,
            nonlin: torch.Tensor, e_center: float, about_truth: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``reading -> spectrum there``: readings relative to ``e_center`` mapped as :func:`measure_on_axis` says."""
    # Readings and true energies relative to e_center, in the spectrum's precision (float32 keeps
    # 1e-5 eV over the +-100 eV that matter here).
    de = float(phys_energy[1] - phys_energy[0])
    origin = (e_center - float(phys_energy[0])) / de   # fractional index of e_center
    n = spec.shape[1]
    off, gain = offset.to(spec.dtype)[:, None], (1 + dispersion).to(spec.dtype)[:, None] / de
    curve = nonlin.to(spec.dtype)[:, None] / (de * 30.0**2)

    def sample(reading: torch.Tensor) -> torch.Tensor:
        about = reading - off if about_truth else reading
        pos = (origin + (reading - off) * gain + curve * about**2).clamp(0, n - 1)
        i0 = pos.floor().long().clamp(max=n - 2)
        return torch.lerp(torch.gather(spec, 1, i0), torch.gather(spec, 1, i0 + 1), pos - i0)

    return sample


def measure_on_axis(phys_energy: torch.Tensor, spec: torch.Tensor, axis: torch.Tensor, offset: torch.Tensor,
                    dispersion: torch.Tensor, nonlin: torch.Tensor, spacing: torch.Tensor,
                    e_center: float, about_truth: bool = False) -> torch.Tensor:
    """Sample physical spectra as a mis-calibrated instrument reads them.

    A channel that reads energy ``E`` sees the true energy
    ``e_center + x (1 + dispersion) + nonlin (x/30)^2`` with ``x = E - offset - e_center``
    (``about_truth``, physics 2), so ``offset`` is exactly the reading minus the truth at
    ``e_center``; physics 1 takes the quadratic term about the reading,
    ``nonlin ((E - e_center)/30)^2``, which moves the truth's centre by
    ``nonlin (offset/30)^2`` from where ``offset`` says.  Points are measured
    every ``spacing`` eV and linearly interpolated to the channel axis, as
    :func:`mnedge_live.preprocessing.to_uniform` does live (live, points
    denser than two per channel are first averaged per channel).  The noise of
    the points is drawn by the forward model: physics 1 per channel afterwards
    (:func:`add_noise`), physics 2 on the points (:func:`measure_points`) and
    interpolated the same way (:func:`interpolate_points`).
    """
    sample = _reader(phys_energy, spec, offset, dispersion, nonlin, e_center, about_truth)
    step = spacing.to(spec.dtype)[:, None]
    a = (axis - axis[0]).to(spec.dtype)[None, :]          # channel readings from the first channel
    k = torch.floor(a / step)
    t = a / step - k
    lo = k * step + (float(axis[0]) - e_center)            # measured points around each channel
    return torch.lerp(sample(lo), sample(lo + step), t)


def measure_points(phys_energy: torch.Tensor, spec: torch.Tensor, axis: torch.Tensor, offset: torch.Tensor,
                   dispersion: torch.Tensor, nonlin: torch.Tensor, spacing: torch.Tensor, e_center: float,
                   step: float) -> torch.Tensor:
    """The noise-free values of the points whose noise physics 2 draws: ``(B, N + 1)`` for an ``N``-channel axis.

    Point ``j`` reads ``axis[0] + j * max(spacing, step)`` (quadratic term about
    the truth, as :func:`measure_on_axis` with ``about_truth``): the measured
    points where they are coarser than the work ``step``, the channels where
    they are finer (their points are averaged per channel live).  ``N + 1``
    points cover the axis at any spacing; :func:`interpolate_points` brings
    values on them to the channels.
    """
    sample = _reader(phys_energy, spec, offset, dispersion, nonlin, e_center, True)
    q = spacing.clamp(min=step).to(spec.dtype)[:, None]
    j = torch.arange(axis.numel() + 1, dtype=spec.dtype, device=spec.device)[None, :]
    return sample(j * q + (float(axis[0]) - e_center))


def interpolate_points(values: torch.Tensor, spacing: torch.Tensor, n: int, step: float) -> torch.Tensor:
    """Values on the points of :func:`measure_points` linearly interpolated to ``n`` channels ``step`` apart.

    Points finer than ``step`` are the channels themselves (nothing is interpolated).
    """
    ratio = step / spacing.to(torch.float64).clamp(min=step)   # exactly 1 where the points are the channels
    pos = torch.arange(n, dtype=torch.float64, device=values.device)[None, :] * ratio[:, None]
    k = pos.floor()
    t = (pos - k).to(values.dtype)
    k = k.long()
    return torch.lerp(torch.gather(values, 1, k), torch.gather(values, 1, k + 1), t)


def points_read(valid: torch.Tensor, spacing: torch.Tensor, step: float) -> torch.Tensor:
    """``(B, N + 1)`` bool: the points of :func:`measure_points` that :func:`interpolate_points` reads for the
    channels ``valid`` (``(B, N)``, one contiguous window per row, possibly empty).

    A window of channels ``c0..c1`` reads the points ``floor(c0 r)`` to
    ``floor(c1 r) + 1`` with ``r = step / max(spacing, step)``, as
    :func:`interpolate_points` computes them.
    """
    n = valid.shape[1]
    ratio = step / spacing.to(torch.float64).clamp(min=step)
    as_int = valid.to(torch.uint8)
    first = as_int.argmax(dim=1).to(torch.float64)                     # first True (0 for an empty row)
    last = (n - 1 - as_int.flip(1).argmax(dim=1)).to(torch.float64)    # last True
    j = torch.arange(n + 1, dtype=torch.float64, device=valid.device)[None, :]
    lo = (first * ratio).floor()
    hi = torch.where(valid.any(dim=1), (last * ratio).floor() + 1, lo - 1)   # an empty window reads nothing
    return (j >= lo[:, None]) & (j <= hi[:, None])


#: Expected counts from which a channel's Poisson noise is drawn as a Gaussian of the same mean
#: and variance (its skewness, ``rate**-0.5``, is 0.1 there); below it, exact Poisson draws.
POISSON_EXACT_BELOW = 100.0


def noise_model(spec: torch.Tensor, valid: torch.Tensor, psnr_db: torch.Tensor, poisson_share: torch.Tensor,
                averaged: torch.Tensor | None = None,
                read: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The noise :func:`add_noise` draws: Poisson counts plus Gaussian read noise whose total RMS gives ``psnr_db``.

    A share ``poisson_share`` of the noise variance, averaged over the window,
    is shot noise: the spectrum is scaled to counts so that the mean Poisson
    variance is that share.  Channels expecting at least
    :data:`POISSON_EXACT_BELOW` counts take it as a Gaussian of variance equal
    to the counts, merged with the read noise into one draw; the others draw
    exact Poisson counts.

    ``averaged`` (``(B,)``, at least 1): each value is the mean of that many
    measured points, each of which has the noise above: their counts add up
    (counts per unit intensity times ``averaged``) and the variance is divided
    by ``averaged`` (physics 2, points finer than the work step).

    ``read`` (``(B, N)`` bool, optional): the values anything reads (physics 2:
    the points the measured window interpolates, :func:`points_read`); the
    others take their shot noise as a Gaussian (exact draws are the costly
    part, and nothing reads those values).

    Returns
    -------
    gauss_sigma : torch.Tensor
        ``(B, N)`` sigma of the Gaussian draw of every channel (read noise, plus
        shot noise where it is not exact).
    exact : torch.Tensor
        ``(B, N)`` bool: channels whose shot noise is drawn as exact Poisson counts.
    rate : torch.Tensor
        ``(B, N)`` expected counts per channel.
    gain : torch.Tensor
        ``(B,)`` counts per unit intensity.
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
    if averaged is not None:
        m = averaged.to(spec.dtype)
        gain, var = gain * m, var / m
    use_p = (p > 1e-6)[:, None]
    rate = torch.where(use_p, pos * gain[:, None], torch.zeros_like(pos)).clamp(max=1e12)
    exact = use_p & (rate < POISSON_EXACT_BELOW)
    if read is not None:
        exact = exact & read
    read_var = ((1 - p) * var)[:, None]
    shot_var = torch.where(exact, torch.zeros_like(pos), rate / gain[:, None] ** 2)
    return torch.sqrt(read_var + shot_var), exact, rate, gain


def draw_noise(gen: torch.Generator, spec: torch.Tensor, valid: torch.Tensor, psnr_db: torch.Tensor,
               poisson_share: torch.Tensor, model: Callable = noise_model,
               averaged: torch.Tensor | None = None, read: torch.Tensor | None = None) -> torch.Tensor:
    """Draw the noise of :func:`noise_model` (``averaged`` and ``read`` passed on to it) for the values ``spec``.

    The Gaussian part is one draw per value; exact Poisson counts are drawn
    only where :func:`noise_model` asks for them (the costly part, so only
    where the shape of the distribution matters).  ``model`` is
    :func:`noise_model` or the same function compiled.
    """
    if averaged is None and read is None:
        gauss_sigma, exact, rate, gain = model(spec, valid, psnr_db, poisson_share)
    else:
        gauss_sigma, exact, rate, gain = model(spec, valid, psnr_db, poisson_share, averaged, read)
    noise = torch.randn(spec.shape, generator=gen, dtype=spec.dtype) * gauss_sigma
    where = torch.nonzero(exact, as_tuple=True)
    if where[0].numel():
        r = rate[where]
        noise[where] += (torch.poisson(r, generator=gen) - r) / gain[where[0]]
    return noise


def add_noise(gen: torch.Generator, spec: torch.Tensor, valid: torch.Tensor, psnr_db: torch.Tensor,
              poisson_share: torch.Tensor, model: Callable = noise_model) -> torch.Tensor:
    """Draw the noise of :func:`noise_model` per value (:func:`draw_noise`) and add it."""
    return spec + draw_noise(gen, spec, valid, psnr_db, poisson_share, model=model)
