"""The one preprocessing of Mn L2,3 spectra, shared by training and serving.

Every spectrum the model ever sees, synthetic or measured, goes through
:func:`preprocess`: the trainer imports it from here, the live engine calls
it, so the two cannot drift apart.

Steps, all batched in torch (the same code on CPU or GPU):

1. **Uniform axis.** Input rows live on uniform axes ``start[b] + step * i``
   with a ``valid`` mask (a contiguous window per row; padding or crops are
   invalid).  Measured spectra on any axis (any spacing, descending,
   repeated points) are brought there by :func:`to_uniform` (points denser
   than the work step averaged, :func:`bin_dense`); the engine first repairs
   single-point spikes (:func:`remove_spikes`).  Each row is then scaled to
   a largest magnitude of 1, so any intensity unit reads the same.
2. **Edge-hold.** Invalid points take the nearest valid value, so filters and
   resampling never see padding.
3. **Coarse alignment on the L3/L2 doublet.** A high-passed copy of the
   spectrum (background and edge steps removed) is correlated with a
   two-peak template of the 2p spin-orbit doublet (L2 about 11 eV above L3);
   the best match, refined to the local maximum, is the L3 position.  This
   handles any energy offset within the measured window (well past +-15 eV);
   the network is trained on the residual offsets this step leaves.
4. **Shift and resample** onto the model grid :data:`MODEL_GRID` with the L3
   maximum at :data:`L3_REFERENCE_EV`, edge-holding outside the measured
   window; a second channel marks those held points.
5. **Background**: a straight chord through the pre-edge and post-edge
   windows (a constant pre-edge level when no post-edge was measured) is
   removed; see :func:`remove_background`.
6. **Normalization** by the smoothed L3 maximum.

The result is ``(B, 2, L)``: channel 0 the normalized spectrum, channel 1 the
held-point mask.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

#: Spacing of the uniform working axis (eV).
WORK_STEP_EV = 0.1

#: Where the detected L3 maximum is placed on the model grid (eV).
L3_REFERENCE_EV = 641.0

#: Model input grid (eV): 256 points, 0.125 eV apart, 8 eV below to 24 eV above L3.
MODEL_GRID = L3_REFERENCE_EV - 8.0 + 0.125 * np.arange(256)

#: Pre-edge window used for the background fit, relative to L3 (eV).
PRE_EDGE_WINDOW = (-8.0, -2.5)

#: Post-edge window (relative to L3, eV): past the L2 white line, to the end of the model grid.
POST_EDGE_WINDOW = (18.0, 24.0)

#: Minimum measured width (eV) of a background window for it to count as measured.
MIN_BACKGROUND_WINDOW_EV = 1.0

#: Expected L3-L2 spin-orbit spacing of Mn (eV) and its accepted range.
MN_SPIN_ORBIT_EV = 11.0
MN_SPIN_ORBIT_RANGE_EV = (9.6, 12.4)
#: Energies (eV) where a Mn L3 edge may appear on an axis off by up to +-20 eV.
L3_PLAUSIBLE_EV = (618.0, 665.0)
#: Energies (eV) the engine reads from a measured axis: where a Mn L3 may lie, with the
#: pre-edge below and L2, the post-edge and a neighbouring element's edge (Fe at +67 eV)
#: above. Wider acquisitions (a 2048-channel core-loss window with the O K and La M
#: edges) are cropped to it; the model grid and the training axes lie well inside.
ANALYSIS_WINDOW_EV = (L3_PLAUSIBLE_EV[0] - 30.0, L3_PLAUSIBLE_EV[1] + 60.0)
#: How far (eV) the measured window must reach below and above the detected L3 maximum: the
#: L3 line itself, and above it the trough and the start of L2. The forward model's crops keep
#: at least 2.5 eV below and 9 eV above the true L3 (``ForwardConfig.crop_below``/``crop_above``),
#: so a shorter window is one the network never saw; 0.5 eV of margin for the detected maximum.
L3_COVER_EV = (2.0, 8.5)
#: Least height of the L2 line over the L3 line's (:attr:`Prepared.l2_height`) for a measured
#: L2 region to count as a Mn L2,3 doublet: 0.1 % of synthetic training spectra (PSNR 5-60 dB,
#: every broadening and saturation) lie below 0.046, measured spectra at 0.17-0.57, a single line
#: or a bare edge step at 0.00-0.01 (benchmarks/RESULTS.md).
MIN_L2_HEIGHT = 0.02
#: Doublet score over its noise response below which no edge is detectable.
MIN_EDGE_SNR = 6.0
#: Window (eV above L3) searched for the L2 maximum.
L2_SEARCH_EV = (7.0, 16.0)
#: Smoothing widths (eV) of the band-pass that finds L2 (the wide one is the L3 high-pass's).
L2_BAND_EV = (0.8, 3.0)
#: A maximum outside Mn's spin-orbit range counts as L2 only when it beats the
#: one inside by this many band-pass noise sigmas.
L2_OUTSIDE_MARGIN_SIGMA = 4.0
#: ... and by this share of the inside maximum (plural-scattering replicas of L3).
L2_OUTSIDE_MARGIN_REL = 0.2
#: Windows (eV, relative to the L3 maximum) over which the L3 and L2 lines' centroids are taken.
L3_CENTROID_EV = (-4.0, 5.0)
L2_CENTROID_EV = (7.0, 14.5)
#: Band-pass values count towards a line's centroid above this many noise sigmas.
CENTROID_NOISE_SIGMA = 2.0


@dataclass
class Prepared:
    """Output of :func:`preprocess` for a batch.

    Attributes
    ----------
    x : torch.Tensor
        Model input ``(B, 2, len(MODEL_GRID))``.
    l3_ev : torch.Tensor
        Detected L3 maximum on the input's own axis (eV), ``(B,)``.
    shift_ev : torch.Tensor
        ``l3_ev - L3_REFERENCE_EV``: the coarse offset estimate, ``(B,)``.
    edge_snr : torch.Tensor
        Height of the L3 feature in the high-passed spectrum over its noise.
    l2_spacing_ev : torch.Tensor
        Detected L2-L3 distance (NaN where L2 is not measured).
    l2_height : torch.Tensor
        Height of the L2 line over the L3 line's, both in the band-pass that
        finds L2 (NaN where L2 is not measured).
    l2_covered, pre_edge_covered : torch.Tensor
        Booleans: the measured window reaches the L2 region / the pre-edge window.
    l3_covered : torch.Tensor
        Boolean: the window reaches :data:`L3_COVER_EV` below and above L3.
    psnr_db : torch.Tensor
        Estimated PSNR (L3 height over the high-frequency noise), dB.
    """

    x: torch.Tensor
    l3_ev: torch.Tensor
    shift_ev: torch.Tensor
    edge_snr: torch.Tensor
    l2_spacing_ev: torch.Tensor
    l2_height: torch.Tensor
    l2_covered: torch.Tensor
    pre_edge_covered: torch.Tensor
    l3_covered: torch.Tensor
    psnr_db: torch.Tensor


def to_uniform(energy: np.ndarray, intensity: np.ndarray, step: float = WORK_STEP_EV) -> tuple[float, np.ndarray]:
    """Resample one measured spectrum onto a uniform ascending axis.

    Parameters
    ----------
    energy, intensity : numpy.ndarray
        One spectrum on any axis: any spacing, ascending or descending,
        repeated energies allowed (their intensities are averaged).
    step : float
        Spacing of the uniform axis (eV).

    Returns
    -------
    start : float
        Energy of the first uniform point.
    values : numpy.ndarray
        Linear interpolation of the spectrum on ``start + step * arange(n)``.

    Raises
    ------
    ValueError
        On non-finite values, mismatched shapes or fewer than two distinct energies.
    """
    return _uniform_from_points(*_checked_points(energy, intensity), step)


def _checked_points(energy: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ascending points of one measured spectrum; ValueError on mismatched or non-finite input."""
    e = np.asarray(energy, dtype=np.float64).ravel()
    y = np.asarray(intensity, dtype=np.float64).ravel()
    if e.shape != y.shape:
        raise ValueError(f"energy has {e.size} points but intensity has {y.size}")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(y))):
        raise ValueError("spectrum contains NaN or inf")
    return _distinct_points(e, y)


def _uniform_from_points(uniq: np.ndarray, mean: np.ndarray, step: float) -> tuple[float, np.ndarray]:
    """Distinct ascending points onto ``uniq[0] + step * arange(n)``: binned if dense (:func:`bin_dense`), then linear interpolation."""
    n = int(math.floor((uniq[-1] - uniq[0]) / step + 1e-9)) + 1
    grid = uniq[0] + step * np.arange(n)
    e, y = bin_dense(uniq, mean, step)
    return float(uniq[0]), np.interp(grid, e, y)


def _is_dense(spacing: float, step: float) -> bool:
    """Two or more measured points per work step: they are averaged, not picked (:func:`bin_dense`)."""
    return spacing <= 0.5 * step * (1 + 1e-6)


def bin_dense(e: np.ndarray, y: np.ndarray, step: float = WORK_STEP_EV) -> tuple[np.ndarray, np.ndarray]:
    """Average measured points that are denser than the work axis, one bin per work point.

    Interpolating a 0.01 eV axis (monochromated EELS, fine XAS steps) at
    0.1 eV would pick one point in ten and keep its full noise; averaging the
    points nearest each work point keeps all the counts (noise down by the
    square root of the points per bin).  Each bin is placed at the mean
    energy of its points, so the later interpolation has no half-bin shift.
    Axes with fewer than two points per work step are returned unchanged.

    Parameters
    ----------
    e : numpy.ndarray
        ``(N,)`` distinct ascending energies.
    y : numpy.ndarray
        ``(N,)`` or ``(B, N)`` intensities on ``e``.
    step : float
        Work-axis spacing (eV).

    Returns
    -------
    e_bin, y_bin : numpy.ndarray
        Bin energies ``(M,)`` and mean intensities ``(M,)`` or ``(B, M)``.
    """
    if e.size < 3 or not _is_dense(point_spacing(e), step):
        return e, y
    nearest = np.floor((e - e[0]) / step + 0.5).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, nearest[1:] != nearest[:-1]])
    counts = np.diff(np.r_[starts, e.size])
    return np.add.reduceat(e, starts) / counts, np.add.reduceat(y, starts, axis=-1) / counts


def _distinct_points(e: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct energies and the mean intensity at each (repeated energies averaged)."""
    if e.size >= 2 and bool(np.all(e[1:] > e[:-1])):
        return e, y  # already ascending and distinct (the usual case): no sort
    uniq, inverse = np.unique(e, return_inverse=True)
    if uniq.size < 2:
        raise ValueError("fewer than two distinct energies")
    return uniq, np.bincount(inverse, weights=y) / np.bincount(inverse)


def measured_noise(energy: np.ndarray, intensity: np.ndarray, step: float = WORK_STEP_EV) -> float:
    """Noise sigma of a measured spectrum, as the white-noise sigma on the work axis it is equivalent to.

    Estimated on the measured points themselves (robust median of second
    differences), because resampling a coarser axis onto ``step`` by linear
    interpolation hides the noise from any estimate made afterwards.  Noise
    on points ``d`` apart carries ``d / step`` times the power per eV of
    white noise of the same sigma on the work axis, hence the scaling.

    Parameters
    ----------
    energy, intensity : numpy.ndarray
        One spectrum as measured (any order, repeats allowed).
    step : float
        Spacing of the work axis (eV).
    """
    e, y = _distinct_points(np.asarray(energy, np.float64).ravel(), np.asarray(intensity, np.float64).ravel())
    return _noise_of_points(e, y, step)


def row_median(a: np.ndarray) -> np.ndarray:
    """Median along the last axis of finite values, exactly as :func:`numpy.median`, at about a third of its cost.

    ``numpy.median`` partitions around both middle elements of even-length
    rows, which costs as much as four single partitions; here one partition
    at the upper middle suffices, the lower middle being the largest value
    left of it.
    """
    n = a.shape[-1]
    mid = n // 2
    part = np.partition(a, mid, axis=-1)
    upper = part[..., mid]
    if n % 2:
        return upper
    return 0.5 * (upper + part[..., :mid].max(axis=-1))


def _noise_of_points(e: np.ndarray, y: np.ndarray, step: float):
    """:func:`measured_noise` on distinct ascending points; ``y`` may be ``(N,)`` or ``(B, N)``."""
    if y.shape[-1] < 5:
        return np.full(y.shape[:-1], np.nan) if y.ndim > 1 else float("nan")
    d2 = np.abs(y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]) / math.sqrt(6.0)
    sigma = 1.4826 * row_median(d2)
    spacing = point_spacing(e)
    # Dense points are averaged per work step (bin_dense): their noise shrinks with
    # the square root of the points per bin; coarse points keep theirs and
    # carry it over spacing / step work points.
    out = sigma * math.sqrt(spacing / step if _is_dense(spacing, step) else max(spacing, step) / step)
    return float(out) if y.ndim == 1 else out


#: A measured point is a spike (cosmic ray, detector glitch, digitizing slip) when it
#: stands above (or below) both neighbours by more than this many noise sigmas ...
SPIKE_NOISE_SIGMA = 10.0
#: ... and by more than this share of the spectrum's range ...
SPIKE_MIN_SHARE = 0.05
#: ... while the steps just beyond its neighbours are below this share of its own
#: (a line's flanks keep falling; a single bad point stands alone).
SPIKE_ISOLATION = 0.25
#: Largest gap (eV) to either neighbour at which a point can be called a spike: the
#: narrowest Mn L3 lines (about 0.4 eV FWHM) span three points or more up to here, on
#: coarser axes a true line can be a single point.
SPIKE_MAX_GAP_EV = 0.2


def find_spikes(e: np.ndarray, y: np.ndarray, noise) -> np.ndarray:
    """Single-point spikes of measured spectra (see :data:`SPIKE_NOISE_SIGMA` and the following).

    Parameters
    ----------
    e : numpy.ndarray
        ``(N,)`` distinct ascending energies.
    y : numpy.ndarray
        ``(N,)`` or ``(B, N)`` intensities on ``e``.
    noise : float or numpy.ndarray
        Noise sigma per row on the measured points (:func:`measured_noise`).

    Returns
    -------
    numpy.ndarray
        Boolean, shaped like ``y``: the spikes.
    """
    y2 = np.atleast_2d(y)
    out = np.zeros(y2.shape, bool)
    if y2.shape[1] < 5:
        return out.reshape(y.shape)
    # With d the steps between points, point i stands out when the steps into and
    # out of it (d[i-1], d[i]) have opposite signs and are both large, while the
    # steps beyond (d[i-2], d[i+1]) are small.  Candidates by size first (rare),
    # the other tests only there.
    d = np.diff(y2, axis=1)
    ad = np.abs(d)
    floor = np.maximum(SPIKE_NOISE_SIGMA * np.nan_to_num(np.atleast_1d(noise), nan=np.inf),
                       SPIKE_MIN_SHARE * np.ptp(y2, axis=1))
    rise = np.minimum(ad[:, 1:-2], ad[:, 2:-1])          # centre i = column + 2
    rows, cols = np.nonzero(rise > floor[:, None])
    if rows.size:
        gap = np.diff(e)
        r = rise[rows, cols]
        keep = ((d[rows, cols + 1] * d[rows, cols + 2] < 0)
                & (np.maximum(ad[rows, cols], ad[rows, cols + 3]) < SPIKE_ISOLATION * r)
                & (np.maximum(gap[cols + 1], gap[cols + 2]) <= SPIKE_MAX_GAP_EV))
        out[rows[keep], cols[keep] + 2] = True
    return out.reshape(y.shape)


def remove_spikes(e: np.ndarray, y: np.ndarray, noise) -> tuple[np.ndarray, np.ndarray]:
    """Replace the spikes of :func:`find_spikes` by the mean of their neighbours.

    The engine does this on the measured points before resampling (a spike on
    a coarse axis would otherwise be spread over several work points) and
    flags every readout it touched, so a repair is never silent.

    Returns
    -------
    y : numpy.ndarray
        A copy with the spikes replaced (the input when there are none).
    count : numpy.ndarray
        Spikes per row (a 0-d array for a single spectrum).
    """
    spikes = find_spikes(e, y, noise)
    count = spikes.sum(axis=-1)
    if not spikes.any():
        return y, count
    y = np.array(y, dtype=np.result_type(y, np.float32), copy=True)
    rows, cols = np.nonzero(np.atleast_2d(spikes))
    y2 = np.atleast_2d(y)
    y2[rows, cols] = 0.5 * (y2[rows, cols - 1] + y2[rows, cols + 1])
    return y, count


class Resampled(NamedTuple):
    """Measured spectra on the work axis, with what the measured points told about them.

    Returned by :func:`resample_measured` (one spectrum: ``noise`` a float,
    ``spikes`` an int) and :func:`resample_shared_axis` (rows: ``(B,)`` arrays).
    """

    start: float          #: energy of the first work-axis point (eV)
    values: np.ndarray    #: intensities on ``start + step * arange(n)``
    noise: float | np.ndarray   #: noise sigma of the measured points, as on the work axis (:func:`measured_noise`)
    spikes: int | np.ndarray    #: spikes replaced before resampling (:func:`remove_spikes`)
    spacing: float        #: median spacing of the distinct measured points (eV)


def resample_shared_axis(energy: np.ndarray, intensities: np.ndarray, step: float = WORK_STEP_EV) -> Resampled:
    """:func:`resample_measured` for many spectra on one strictly ascending axis, vectorized.

    The pixels of a spectrum image share their energy axis; resampling them
    as one matrix costs one interpolation plan instead of one per spectrum.

    Parameters
    ----------
    energy : numpy.ndarray
        ``(N,)`` strictly ascending, finite.
    intensities : numpy.ndarray
        ``(B, N)`` finite.

    Returns
    -------
    Resampled
        ``values`` ``(B, n)`` as :func:`to_uniform` gives row by row, ``noise``
        and ``spikes`` ``(B,)``.
    """
    e = np.asarray(energy, np.float64)
    spacing = point_spacing(e)
    # float32 rows (spectrum images) stay float32: the model reads float32, and
    # half the memory traffic is most of the cost of these whole-matrix passes
    y = np.asarray(intensities)
    y = y if y.dtype == np.float32 else y.astype(np.float64, copy=False)
    noise = _noise_of_points(e, y, step)
    y, spikes = remove_spikes(e, y, noise)
    n = int(math.floor((e[-1] - e[0]) / step + 1e-9)) + 1
    grid = e[0] + step * np.arange(n)
    start = float(e[0])
    e, y = bin_dense(e, y, step)
    k = np.clip(np.searchsorted(e, grid, side="right") - 1, 0, e.size - 2)
    t = np.clip((grid - e[k]) / (e[k + 1] - e[k]), 0.0, 1.0).astype(y.dtype)
    values = y[:, k] * (1 - t) + y[:, k + 1] * t
    return Resampled(start, values, noise, spikes, spacing)


def resample_measured(energy: np.ndarray, intensity: np.ndarray, step: float = WORK_STEP_EV) -> Resampled:
    """:func:`measured_noise`, :func:`remove_spikes` and :func:`to_uniform` of one spectrum in one pass.

    Returns the uniform row, the noise sigma of the measured points, the
    number of spikes replaced and the points' spacing (:class:`Resampled`).
    """
    uniq, mean = _checked_points(energy, intensity)
    noise = _noise_of_points(uniq, mean, step)
    mean, spikes = remove_spikes(uniq, mean, noise)
    start, values = _uniform_from_points(uniq, mean, step)
    return Resampled(start, values, noise, int(spikes), point_spacing(uniq))


def point_spacing(e: np.ndarray) -> float:
    """Median spacing (eV) of distinct ascending measured energies: how finely the spectrum was sampled."""
    return float(row_median(np.diff(e)))


@functools.lru_cache(maxsize=32)
def _gauss_kernel(sigma_pts: float) -> torch.Tensor:
    half = max(1, int(math.ceil(3.5 * sigma_pts)))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma_pts) ** 2)
    return (k / k.sum()).view(1, 1, -1)


#: Kernels longer than this (taps) are applied by FFT (:func:`correlate_rows`);
#: measured on 2 CPU cores, the FFT wins from about 30 taps at batch 1024 and
#: from about 100 at batch 1, where per-call overhead dominates.
FFT_KERNEL_TAPS = 32


def pad_edges(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Rows ``(B, L)`` extended by repeating their first and last values (replicate padding, cheaply)."""
    return F.pad(x[:, None], (left, right), mode="replicate")[:, 0]


@functools.lru_cache(maxsize=256)
def fft_size(n: int) -> int:
    """Smallest length >= ``n`` that is a multiple of 8 with no prime factor above 5.

    Linear convolution by FFT needs any length >= ``n``; the next power of
    two can be almost twice that, and on the 2-core CPU the real FFT of such
    5-smooth multiples of 8 is up to 20-40 % faster at batch 1024 (odd
    lengths are slower than the next power of two, hence the factor 8).
    """
    best = 1 << max(n - 1, 1).bit_length()
    p5 = 8
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


@functools.lru_cache(maxsize=64)
def _kernel_spectrum(kernel_bytes: bytes, dtype: torch.dtype, nfft: int) -> torch.Tensor:
    """FFT of a flipped kernel (cached: the same few kernels are applied to every batch)."""
    kernel = torch.frombuffer(bytearray(kernel_bytes), dtype=dtype)
    return torch.fft.rfft(kernel.flip(0), nfft)


def correlate_rows(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid-mode cross-correlation of rows ``(B, L)`` with ``kernel`` ``(K,)`` (as ``F.conv1d``): ``(B, L-K+1)``.

    Long kernels go through the FFT: the same result up to rounding, at a
    small fraction of the operations.
    """
    taps = kernel.numel()
    if taps <= FFT_KERNEL_TAPS or (x.shape[0] < 8 and taps <= 3 * FFT_KERNEL_TAPS):
        return F.conv1d(x[:, None], kernel.view(1, 1, -1))[:, 0]
    n_out = x.shape[1] - taps + 1
    nfft = fft_size(x.shape[1] + taps - 1)
    k = kernel.detach().reshape(-1).cpu().contiguous()
    spec = torch.fft.rfft(x, nfft) * _kernel_spectrum(k.numpy().tobytes(), k.dtype, nfft).to(x.device)
    return torch.fft.irfft(spec, nfft)[:, taps - 1: taps - 1 + n_out].to(x.dtype)


def smooth(values: torch.Tensor, sigma_ev: float, step: float = WORK_STEP_EV) -> torch.Tensor:
    """Gaussian smoothing of ``(B, N)`` rows with replicate padding."""
    k = _gauss_kernel(sigma_ev / step).to(values).view(-1)
    pad = k.numel() // 2
    return correlate_rows(pad_edges(values, pad, pad), k)


def smooth_many(values: torch.Tensor, sigmas_ev: tuple[float, ...], step: float = WORK_STEP_EV) -> list[torch.Tensor]:
    """:func:`smooth` of the same rows at several widths, sharing one forward FFT on large batches.

    The rows are replicate-padded once by the widest kernel's half-length;
    padding further than a kernel reaches changes nothing it sees, so each
    output equals :func:`smooth`'s up to rounding.
    """
    kernels = [_gauss_kernel(s / step).to(values).view(-1) for s in sigmas_ev]
    if values.shape[0] < 8:
        return [correlate_rows(pad_edges(values, k.numel() // 2, k.numel() // 2), k) for k in kernels]
    pad = max(k.numel() for k in kernels) // 2
    n = values.shape[1]
    nfft = fft_size(n + 4 * pad)
    spec = torch.fft.rfft(pad_edges(values, pad, pad), nfft)
    out = []
    for k in kernels:
        taps, half = k.numel(), k.numel() // 2
        kc = k.detach().cpu().contiguous()
        full = torch.fft.irfft(spec * _kernel_spectrum(kc.numpy().tobytes(), kc.dtype, nfft).to(values.device), nfft)
        lo = taps - 1 + pad - half
        out.append(full[:, lo: lo + n].to(values.dtype))
    return out


def edge_hold(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace invalid points by the nearest valid value of the row's valid window.

    Returns the held values and the first and last valid indices ``(B,)``.
    """
    b, n = values.shape
    if bool(valid.all()):  # the usual case for measured spectra: nothing to hold
        first = torch.zeros(b, dtype=torch.long, device=values.device)
        return values, first, first + (n - 1)
    idx = _positions(n, values.device)
    first = torch.where(valid, idx, n).amin(dim=1)
    last = torch.where(valid, idx, -1).amax(dim=1)
    src = torch.minimum(torch.maximum(idx, first[:, None]), last.clamp(min=0)[:, None])
    return torch.gather(values, 1, src), first, last


@functools.lru_cache(maxsize=64)
def _positions(n: int, device: torch.device) -> torch.Tensor:
    """``arange(n)`` (int64) on ``device``, shared read-only: the index arithmetic of every mask."""
    return torch.arange(n, device=device)


@functools.lru_cache(maxsize=8)
def _doublet_template(step: float) -> torch.Tensor:
    t = torch.arange(-3.0, MN_SPIN_ORBIT_EV + 3.0 + 1e-6, step)
    g = torch.exp(-0.5 * (t / 0.8) ** 2) + 0.5 * torch.exp(-0.5 * ((t - MN_SPIN_ORBIT_EV) / 1.0) ** 2)
    g = g - g.mean()
    return g / g.norm()


@functools.lru_cache(maxsize=8)
def _score_noise_gain(step: float) -> float:
    """Std of the doublet score for unit white noise (its impulse response's norm)."""
    tmpl = _doublet_template(step)
    n = 4 * tmpl.numel() + int(40.0 / step)
    imp = torch.zeros(1, n, dtype=tmpl.dtype)
    imp[0, n // 2] = 1.0
    hp = smooth(imp, 0.3, step) - smooth(imp, 3.0, step)
    resp = F.conv1d(hp[:, None], tmpl.view(1, 1, -1), padding=tmpl.numel() - 1)
    return float(resp.norm())


@functools.lru_cache(maxsize=8)
def _bandpass_noise_gain(step: float, narrow: float, wide: float) -> float:
    """Std of ``smooth(narrow) - smooth(wide)`` for unit white noise (its impulse response's norm)."""
    n = 2 * int(8 * wide / step) + 1
    imp = torch.zeros(1, n, dtype=torch.float64)
    imp[0, n // 2] = 1.0
    return float((smooth(imp, narrow, step) - smooth(imp, wide, step)).norm())


@functools.lru_cache(maxsize=16)
def _offsets(half: int, device: torch.device) -> torch.Tensor:
    """``arange(-half, half + 1)`` (int64) on ``device``: the neighbourhood of a point."""
    return torch.arange(-half, half + 1, device=device)


#: Relative energy (eV) given to unmeasured points in the L2 analysis: below every window.
_NO_ENERGY = -1.0e6


def _interp_rows(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of rows at fractional indices ``pos`` (clamped to the row)."""
    n = values.shape[1]
    pos = pos.clamp(0, n - 1)
    i0 = pos.floor().long().clamp(max=n - 2)
    return torch.lerp(torch.gather(values, 1, i0), torch.gather(values, 1, i0 + 1), pos - i0)


def locate_l3(held: torch.Tensor, valid: torch.Tensor, first: torch.Tensor, last: torch.Tensor,
              step: float = WORK_STEP_EV, noise: torch.Tensor | None = None,
              window: tuple[torch.Tensor, torch.Tensor] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find the L3 maximum (fractional index) of each row from the L3/L2 doublet.

    ``noise`` (B,), when given and finite, replaces the estimate made on the
    work axis (see :func:`measured_noise`).

    ``window`` (lowest, highest index, each ``(B,)``) is where a Mn L3 may be
    (:data:`L3_PLAUSIBLE_EV`). Where the strongest doublet lies outside it
    (another element's L2,3 edge in a wide window: Fe at +67 eV, Co at
    +138 eV), the strongest one inside is taken instead if it is a line of
    its own: a doublet detected above the noise (:data:`MIN_EDGE_SNR`), at
    least 1 eV inside the window (not the flank of an edge beyond it), whose
    high-passed height exceeds everything else within 16 eV (L3 is the
    strongest line of its edge: neither the L2 of an L3 below the window nor a
    side lobe whose "L2" is an L3 above it qualifies). Otherwise the
    strongest doublet stays, and the engine rejects it as not Mn L3.

    Returns
    -------
    l3_pos : fractional index of the L3 maximum ``(B,)``
    edge_snr : L3 height in the high-passed spectrum over the high-pass noise ``(B,)``
    l2_pos : fractional index of the L2 line (NaN where not measured): its
        maximum, or the L3 maximum plus the distance between the L2 and L3
        line centroids (:func:`_line_centroid_spacing`), whichever is nearer
        Mn's spin-orbit splitting
    l2_height : the L2 line's maximum in the L2 band-pass over the L3 line's
        (NaN where L2 is not measured): about 0 where there is no L2 line
    noise : robust estimate of the point-to-point noise sigma ``(B,)``
    """
    b, n = held.shape
    fine, broad = smooth_many(held, (0.3, L2_BAND_EV[1]), step)
    hp = fine - broad
    tmpl = _doublet_template(step).to(held)
    m = tmpl.numel()
    lead = int(round(3.0 / step))
    # score[i] = correlation of the template with hp when L3 sits at index i.
    score = correlate_rows(pad_edges(hp, lead, m - lead - 1), tmpl)
    idx = _positions(n, held.device)
    inside = (idx >= (first + int(1.0 / step))[:, None]) & (idx <= (last - int(1.0 / step))[:, None])
    score = torch.where(inside, score, -torch.inf)
    # Noise: the measured-point estimate where given, else the median absolute
    # second difference of the raw values (valid region).
    given = noise.to(held.dtype) if noise is not None else None
    if given is not None and bool(torch.isfinite(given).all()):
        est = given
    else:
        d2 = (held[:, 2:] - 2 * held[:, 1:-1] + held[:, :-2]) / math.sqrt(6.0)
        d2 = torch.where(valid[:, 1:-1], d2.abs(), torch.nan)
        est = torch.nanmedian(d2, dim=1).values * 1.4826
        if given is not None:
            est = torch.where(torch.isfinite(given), given, est)
    noise = torch.nan_to_num(est, nan=0.0)
    score_noise = noise * _score_noise_gain(step) + 1e-12
    coarse = score.argmax(dim=1)
    if window is not None:
        coarse = _mn_window_doublet(score, hp, coarse, idx, window, step, score_noise)
    # Refine: the maximum of the lightly smoothed spectrum within +-1.5 eV
    # (read from the points of that window only; clamping repeats an end
    # point, which cannot change the first maximum's index).
    near = (coarse[:, None] + _offsets(int(round(1.5 / step)), held.device)).clamp(0, n - 1)
    cand = torch.gather(fine, 1, near)
    all_valid = bool(valid.all())
    if not all_valid:
        cand = cand.masked_fill(~torch.gather(valid, 1, near), -torch.inf)
    k = torch.gather(near, 1, cand.argmax(dim=1, keepdim=True)).clamp(1, n - 2)
    ym, y0, yp = torch.gather(fine, 1, k + _offsets(1, held.device)).unbind(1)
    denom = ym - 2 * y0 + yp
    frac = torch.where(denom.abs() > 1e-12, 0.5 * (ym - yp) / denom, 0.0).clamp(-0.5, 0.5)
    l3_pos = k[:, 0] + frac
    # Edge detection: the doublet score (a matched filter) over its response to
    # white noise of the estimated sigma.
    edge_snr = score.gather(1, coarse[:, None])[:, 0] / score_noise
    # L2: the white line 7-16 eV above L3 (wider than Mn's range, so that other
    # edges show their own spacing) when Mn's L2 range is measured.  A broader
    # band-pass than for L3 (L2 is broader and weaker), and the maximum inside
    # Mn's range is kept unless one outside it is higher by more than
    # L2_OUTSIDE_MARGIN_SIGMA noise sigmas: noise and L3 fine structure must not
    # turn a Mn spectrum into "another element", while the L2 line of Fe, Cr,
    # ... (nothing at +11 eV) still shows its own spacing.
    # All of it reads the rows only from L3_CENTROID_EV[0] to L2_SEARCH_EV[1] around L3 (and one point
    # beyond each end for the local-maximum test): a window of fixed width gathered per row, so the
    # work does not grow with the measured span. ``pos``: row index of each window point (may lie
    # outside the row; such points are unmeasured).
    pos, bp = _l2_band_pass_window(fine, broad, l3_pos, step)
    bp_noise = noise * _bandpass_noise_gain(step, *L2_BAND_EV)
    in_row = (pos >= 0) & (pos <= n - 1)
    measured = in_row if all_valid else in_row & torch.gather(valid, 1, pos.clamp(0, n - 1))
    # Unmeasured points fall in no window (all windows lie above -5 eV).
    rel = torch.where(measured, (pos - l3_pos[:, None]) * step, _NO_ENERGY)
    searched = (rel >= L2_SEARCH_EV[0]) & (rel <= L2_SEARCH_EV[1])
    mn_range = searched & (rel >= MN_SPIN_ORBIT_RANGE_EV[0]) & (rel <= MN_SPIN_ORBIT_RANGE_EV[1])
    # Outside Mn's range only local maxima of the band-pass count (a slope at the
    # end of the search window, e.g. from plural scattering, is no line); a row's
    # first and last points are no maxima.
    peak = F.pad((bp[:, 1:-1] >= bp[:, :-2]) & (bp[:, 1:-1] >= bp[:, 2:]), (1, 1), value=False)
    peak = peak & (pos > 0) & (pos < n - 1)
    in_val, in_loc = torch.where(mn_range, bp, -torch.inf).max(dim=1)
    out_val, out_loc = torch.where(searched & ~mn_range & peak, bp, -torch.inf).max(dim=1)
    margin = torch.maximum(L2_OUTSIDE_MARGIN_SIGMA * bp_noise, L2_OUTSIDE_MARGIN_REL * in_val.clamp(min=0))
    outside = out_val > in_val + margin
    l2_loc = torch.where(outside, out_loc, in_loc)
    # The spacing is measured between the maxima and between the line
    # centroids; the one nearer Mn's splitting counts.  Maxima are fooled by
    # mixed valences, centroids by plural-scattering replicas of L3 reaching
    # into the L2 window; another element's splitting shows in both.
    by_max = torch.gather(pos, 1, l2_loc[:, None])[:, 0].to(held.dtype)
    l2_window = (rel >= L2_CENTROID_EV[0]) & (rel <= L2_CENTROID_EV[1])
    by_centroid = l3_pos + _line_centroid_spacing(bp, bp_noise, rel, l2_window) / step
    nearer = (by_centroid - l3_pos - MN_SPIN_ORBIT_EV / step).abs() < (by_max - l3_pos - MN_SPIN_ORBIT_EV / step).abs()
    l2_at = torch.where(nearer, by_centroid, by_max)
    has_l2 = (l3_pos + (MN_SPIN_ORBIT_RANGE_EV[1] + 0.5) / step) <= last
    l2_pos = l2_at.masked_fill(~has_l2, torch.nan)
    # How strong the line taken for L2 is against L3 in the same band-pass (L3: its maximum within
    # +-0.5 eV of the L3 position): a single line, or an edge step without lines, has none.
    l3_val = torch.where(rel.abs() <= 0.5, bp, -torch.inf).amax(dim=1)
    l2_val = torch.where(outside, out_val, in_val)
    l2_height = torch.where(has_l2, l2_val / l3_val.clamp(min=1e-30), torch.nan)
    return l3_pos, edge_snr, l2_pos, l2_height, noise


def _l2_band_pass_window(fine: torch.Tensor, broad: torch.Tensor, l3_pos: torch.Tensor,
                         step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L2 band-pass (``smooth(fine, ...) - broad``, the narrow width of :data:`L2_BAND_EV`) on a window per row.

    The window runs from ``L3_CENTROID_EV[0]`` to ``L2_SEARCH_EV[1]`` around
    each row's L3 position ``l3_pos``, one point more at each end.  Returns
    the row index of every window point ``(B, W)`` (it may lie outside the
    row: such values are meaningless and callers mask them) and the
    band-pass there, equal to the whole-row band-pass at the same indices up
    to rounding: gathering with clamped indices is the replicate padding of
    :func:`smooth`.
    """
    n = fine.shape[1]
    lo_ev, hi_ev = L3_CENTROID_EV[0], max(L2_SEARCH_EV[1], L2_CENTROID_EV[1])
    width = int(math.ceil((hi_ev - lo_ev) / step)) + 4
    first = torch.floor(l3_pos + lo_ev / step).long() - 1
    pos = first[:, None] + _positions(width, fine.device)
    k = _gauss_kernel(math.sqrt(L2_BAND_EV[0] ** 2 - 0.3**2) / step).to(fine).view(-1)  # Gaussians add in quadrature
    half = k.numel() // 2
    reach = (first[:, None] - half + _positions(width + 2 * half, fine.device)).clamp(0, n - 1)
    narrow = correlate_rows(torch.gather(fine, 1, reach), k)
    return pos, narrow - torch.gather(broad, 1, pos.clamp(0, n - 1))


def _mn_window_doublet(score: torch.Tensor, hp: torch.Tensor, coarse: torch.Tensor, idx: torch.Tensor,
                       window: tuple[torch.Tensor, torch.Tensor], step: float,
                       score_noise: torch.Tensor) -> torch.Tensor:
    """Index of the doublet to align on: ``coarse``, or the strongest line inside ``window`` (see :func:`locate_l3`)."""
    lo, hi = (w.to(idx.dtype) for w in window)
    outside = (coarse < lo) | (coarse > hi)
    if not bool(outside.any()):
        return coarse
    # Only the rows aligned outside the window are searched (usually a few of a batch).
    rows = outside.nonzero()[:, 0]
    score, hp, lo, hi = score[rows], hp[rows], lo[rows], hi[rows]
    in_win = (idx >= lo[:, None]) & (idx <= hi[:, None])
    cand = torch.where(in_win, score, torch.full_like(score, -torch.inf)).argmax(dim=1)
    margin = int(round(1.0 / step))
    interior = (cand >= lo + margin) & (cand <= hi - margin)
    detected = score.gather(1, cand[:, None])[:, 0] / score_noise[rows] >= MIN_EDGE_SNR  # False where the window is empty
    rel = ((idx - cand[:, None]) * step).abs()
    neg = torch.full_like(hp, -torch.inf)
    height = torch.where(rel <= 1.5, hp, neg).amax(dim=1)
    around = torch.where((rel > 1.5) & (rel <= L2_SEARCH_EV[1]), hp, neg).amax(dim=1)
    own_line = interior & detected & (height > around)
    out = coarse.clone()
    out[rows] = torch.where(own_line, cand, coarse[rows])
    return out


def _line_centroid_spacing(bp: torch.Tensor, bp_noise: torch.Tensor, rel: torch.Tensor,
                           l2_window: torch.Tensor) -> torch.Tensor:
    """Distance (eV) between the centroids of the L2 and L3 lines; NaN where either shows nothing above the noise.

    Each centroid weighs the band-passed spectrum where it exceeds
    :data:`CENTROID_NOISE_SIGMA` noise sigmas: L3 within :data:`L3_CENTROID_EV`
    of the L3 maximum, L2 within ``l2_window``.  Spin-orbit splitting
    is a distance between line centroids, not maxima: in a Mn2+/Mn4+ mixture
    the L3 maximum is the Mn2+ line and the L2 maximum the Mn4+ line, whose
    chemical shift of 2-3.5 eV puts the maxima 13-14 eV apart, where Fe's
    13.1 eV lies; the centroids of the same mixture stay near 11 eV.

    Parameters
    ----------
    bp : torch.Tensor
        ``(B, N)`` band-passed spectra.
    bp_noise : torch.Tensor
        ``(B,)`` noise sigma of ``bp``.
    rel : torch.Tensor
        ``(B, N)`` energy relative to the L3 maximum (eV); :data:`_NO_ENERGY` at unmeasured points.
    l2_window : torch.Tensor
        ``(B, N)`` the points where the L2 line may lie (:data:`L2_CENTROID_EV`).
    """
    w = (bp - CENTROID_NOISE_SIGMA * bp_noise[:, None]).clamp(min=0.0)
    l3_window = (rel >= L3_CENTROID_EV[0]) & (rel <= L3_CENTROID_EV[1])
    w3 = torch.where(l3_window, w, 0.0)
    w2 = torch.where(l2_window, w, 0.0)
    s3, s2 = w3.sum(1), w2.sum(1)
    c3 = (w3 * rel).sum(1) / s3.clamp(min=1e-30)
    c2 = (w2 * rel).sum(1) / s2.clamp(min=1e-30)
    found = (s3 > 0) & (s2 > 0)
    return torch.where(found, c2 - c3, torch.full_like(c2, torch.nan))


@functools.lru_cache(maxsize=8)
def _model_grid_constants(device: torch.device) -> dict[str, torch.Tensor]:
    """Constants of :data:`MODEL_GRID` on ``device``, made once: energies relative to L3 (eV and
    work-axis points), the background windows as 0/1 weights and the line-fit basis ``[1, rel, rel^2]``."""
    rel = torch.as_tensor(MODEL_GRID - L3_REFERENCE_EV, dtype=torch.float64, device=device)
    return {
        "rel_points": (rel / WORK_STEP_EV).to(torch.float32),
        "pre": ((rel >= PRE_EDGE_WINDOW[0]) & (rel <= PRE_EDGE_WINDOW[1])).to(torch.float32),
        "post": ((rel >= POST_EDGE_WINDOW[0]) & (rel <= POST_EDGE_WINDOW[1])).to(torch.float32),
        "basis": torch.stack([torch.ones_like(rel), rel, rel**2], dim=1),
        "rel": rel,
    }


def remove_background(spec: torch.Tensor, held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the background from model-grid rows: a chord through the pre- and post-edge windows.

    The line is fitted by least squares to the measured points of
    :data:`PRE_EDGE_WINDOW` and :data:`POST_EDGE_WINDOW`, each window weighted
    equally.  Its lever arm is the whole 32 eV model window, so it cannot
    diverge: a slope or power law fitted to the 5.5 eV pre-edge alone and
    extrapolated 30 eV up amplified pre-edge noise and curvature into
    backgrounds several times the L3 height, which erased the L2 line and the
    continuum (the branching ratio, a main valence marker).  Over this window
    an EELS power law ``A E^-r`` (r <= 5) departs from its chord by less than
    1 % of ``A``, and an XAS sloped pre-edge is a line, so the chord removes
    both; the edge-step continuum stays in as a tilt the network learns.
    Where the post-edge window is not measured, the background is the
    pre-edge mean (a constant: no extrapolated slope); where the pre-edge is
    not measured either, the median of the first (held) eV.

    The weighted sums of the fit are two small matrix products in float64
    (rows of raw counts would lose digits in float32 sums).

    Parameters
    ----------
    spec : torch.Tensor
        ``(B, len(MODEL_GRID))`` rows on :data:`MODEL_GRID`.
    held : torch.Tensor
        ``(B, len(MODEL_GRID))`` bool: points outside the measured window.

    Returns the corrected rows and a boolean "pre-edge covered" per row.
    """
    c = _model_grid_constants(spec.device)
    step = float(MODEL_GRID[1] - MODEL_GRID[0])
    measured = (~held).to(spec.dtype)
    w_pre, w_post = measured * c["pre"], measured * c["post"]
    n_pre, n_post = w_pre.sum(1), w_post.sum(1)
    pre_cov = n_pre * step >= MIN_BACKGROUND_WINDOW_EV
    post_cov = n_post * step >= MIN_BACKGROUND_WINDOW_EV
    w_pre = w_pre / n_pre.clamp(min=1)[:, None]
    w = (w_pre + w_post / n_post.clamp(min=1)[:, None]).double()
    y = spec.double()
    s0, s1, s2 = (w @ c["basis"]).unbind(1)            # sum w, sum w e, sum w e^2 (e: eV from L3)
    t0, t1 = ((w * y) @ c["basis"][:, :2]).unbind(1)   # sum w y, sum w y e
    mean_e = s1 / s0.clamp(min=1e-9)
    slope = (t1 - mean_e * t0) / (s2 - mean_e * s1).clamp(min=1e-12)
    chord = ((t0 / s0.clamp(min=1e-9) - slope * mean_e)[:, None] + slope[:, None] * c["rel"]).to(spec.dtype)
    pre_level = (w_pre * spec).sum(1, keepdim=True)
    first_ev = spec[:, : int(1.0 / step)].median(dim=1, keepdim=True).values
    const = torch.where(pre_cov[:, None], pre_level, first_ev)
    bg = torch.where((pre_cov & post_cov)[:, None], chord, const)
    return spec - bg, pre_cov


def preprocess(start: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None = None,
               step: float = WORK_STEP_EV, noise: torch.Tensor | None = None) -> Prepared:
    """Turn a batch of uniformly sampled spectra into model input.

    Parameters
    ----------
    start : torch.Tensor
        ``(B,)`` energy of index 0 of each row (eV).
    values : torch.Tensor
        ``(B, N)`` intensities on ``start[b] + step * arange(N)``.
    valid : torch.Tensor, optional
        ``(B, N)`` bool: the measured (contiguous) window of each row; default all.
    step : float
        Axis spacing (eV); :data:`WORK_STEP_EV` for everything in this package.
    noise : torch.Tensor, optional
        ``(B,)`` noise sigma from the measured points (:func:`measured_noise`);
        NaN or None: estimated on the work axis.  Only the diagnostics
        (edge SNR, L2 search, PSNR) use it, never the model input.
        Intensities may be in any unit: each row is scaled to a largest
        magnitude of 1 before anything else.

    Returns
    -------
    Prepared
        Model input and the alignment diagnostics.
    """
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    # Rows in any unit (counts, or a drain current of 1e-12 A) are brought to
    # a largest magnitude of 1 first, in their own precision: the absolute
    # floors below (1e-12) must never be mistaken for the data's scale.
    magnitude = torch.where(valid, values.abs(), 0.0).amax(dim=1)
    magnitude = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
    values = (values / magnitude[:, None]).to(torch.float32)
    if noise is not None:
        noise = noise.to(magnitude.device) / magnitude
    b, n = values.shape
    start = start.to(values.device, torch.float64)
    held, first, last = edge_hold(values, valid)
    window = ((L3_PLAUSIBLE_EV[0] - start) / step, (L3_PLAUSIBLE_EV[1] - start) / step)
    l3_pos, edge_snr, l2_pos, l2_height, noise = locate_l3(held, valid, first, last, step, noise,
                                                window=tuple(w.floor() for w in window))
    l3_ev = start + l3_pos.to(torch.float64) * step
    shift = l3_ev - L3_REFERENCE_EV
    # Model-grid energy g sits at index l3_pos + (g - L3_REFERENCE_EV) / step of the input row.
    c = _model_grid_constants(values.device)
    pos = l3_pos[:, None] + c["rel_points"] * (WORK_STEP_EV / step)
    held_mask = (pos < first[:, None] - 1e-6) | (pos > last[:, None] + 1e-6)
    spec, pre_cov = remove_background(_interp_rows(held, pos), held_mask)
    # Normalize by the 0.3 eV-smoothed maximum within +-2 eV of L3 (smoothed
    # only there: the window lies far enough inside the grid that edge
    # padding never reaches it).
    k = _gauss_kernel(0.3 / float(MODEL_GRID[1] - MODEL_GRID[0])).to(spec).view(-1)
    lo, hi = _l3_peak_window()
    half = k.numel() // 2
    peak = correlate_rows(spec[:, lo - half: hi + half], k).amax(dim=1)
    scale = peak.clamp(min=1e-12)
    x = torch.stack([spec / scale[:, None], held_mask.to(torch.float32)], dim=1)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).clamp(-5.0, 5.0)
    l3_cov = (l3_pos - first >= L3_COVER_EV[0] / step) & (last - l3_pos >= L3_COVER_EV[1] / step)
    l2_cov = ~torch.isnan(l2_pos)
    l2_spacing = (l2_pos - l3_pos) * step
    psnr = 20 * torch.log10(scale / (noise + 1e-12))
    return Prepared(x=x, l3_ev=l3_ev.to(torch.float32), shift_ev=shift.to(torch.float32), edge_snr=edge_snr,
                    l2_spacing_ev=l2_spacing, l2_height=l2_height.to(torch.float32), l2_covered=l2_cov,
                    pre_edge_covered=pre_cov,
                    l3_covered=l3_cov, psnr_db=psnr)


@functools.lru_cache(maxsize=1)
def _l3_peak_window() -> tuple[int, int]:
    """Model-grid index range ``[lo, hi)`` within +-2 eV of L3, where the normalization peak is taken."""
    inside = np.flatnonzero(np.abs(MODEL_GRID - L3_REFERENCE_EV) <= 2.0)
    return int(inside[0]), int(inside[-1]) + 1


def pack(spectra: list[tuple[np.ndarray, np.ndarray]], step: float = WORK_STEP_EV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring measured spectra (each ``(energy, intensity)``) onto padded uniform rows for :func:`preprocess`.

    Raises ``ValueError`` for a spectrum :func:`to_uniform` refuses; callers
    that must answer each spectrum individually call :func:`to_uniform` first.
    """
    rows = [to_uniform(e, y, step) for e, y in spectra]
    values, valid = pad_rows([v for _, v in rows])
    start = torch.tensor([s for s, _ in rows], dtype=torch.float64)
    return start, torch.from_numpy(values), torch.from_numpy(valid)


def pad_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Uniform rows of different lengths as one zero-padded float32 matrix and its ``valid`` mask."""
    n = max(len(v) for v in rows)
    values = np.zeros((len(rows), n), np.float32)
    valid = np.zeros((len(rows), n), bool)
    for i, v in enumerate(rows):
        values[i, : len(v)] = v
        valid[i, : len(v)] = True
    return values, valid
