"""The composed forward model: a bank and a :class:`ForwardConfig` in, batches of synthetic measurements out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mnedge_live.preprocessing import WORK_STEP_EV
from offline_training.forward.compiled import stage_functions
from offline_training.forward.composition import HOLES, VALENCES, sample_fractions
from offline_training.forward.config import (
    AXIS_CENTER_EV,
    L3_LINE_EV,
    PHYS_RANGE_EV,
    ForwardConfig,
    true_energy,
)
from offline_training.forward.stages import (
    add_noise,
    draw_noise,
    drude_plasmon,
    mix_end_members,
    nonnegative_slope,
    plural_scattering_transfer,
    points_read,
    voigt_fwhm,
)
from offline_training.references.bank import Bank


def _uniform(gen: torch.Generator, n: int, r: tuple[float, float], device=None) -> torch.Tensor:
    """``n`` float64 draws, uniform on ``[r[0], r[1])``, from ``gen``."""
    return r[0] + (r[1] - r[0]) * torch.rand(n, generator=gen, device=device, dtype=torch.float64)


@dataclass
class Batch:
    """A batch of synthetic measurements with everything that made them."""

    start: torch.Tensor        # (B,) float64: energy of channel 0 (eV)
    values: torch.Tensor       # (B, N) float32 on start + WORK_STEP_EV * i
    valid: torch.Tensor        # (B, N) bool: the measured window
    clean: torch.Tensor        # (B, N) noise-free values
    fractions: torch.Tensor    # (B, 3) Mn2+, Mn3+, Mn4+
    params: dict               # name -> (B,) tensor of nuisance parameters
    #: (B, N + 1) physics 2: the measured points with their noise, point j at ``start + j * max(point_spacing,
    #: WORK_STEP_EV)`` (finer points: the work steps, each their mean), which ``values`` interpolates; None
    #: for physics 1, whose noise is per work step
    points: torch.Tensor | None = None

    def subset(self, idx) -> Batch:
        """Rows ``idx`` of the batch."""
        return Batch(self.start[idx], self.values[idx], self.valid[idx], self.clean[idx], self.fractions[idx],
                     {k: v[idx] for k, v in self.params.items()},
                     None if self.points is None else self.points[idx])

    def measured(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``i``'s measured window as a user has it, ``(energy, intensity)``: its measured points (physics 2,
        points coarser than the work step) or its work steps."""
        idx = np.flatnonzero(self.valid[i].numpy())
        start = float(self.start[i])
        e = start + WORK_STEP_EV * idx
        spacing = float(self.params["point_spacing"][i])
        if self.points is None or spacing <= WORK_STEP_EV or idx.size == 0:
            return e, self.values[i, idx].numpy()
        j = np.arange(np.ceil((e[0] - start) / spacing - 1e-9), np.floor((e[-1] - start) / spacing + 1e-9) + 1)
        j = j[j < self.points.shape[1]].astype(np.int64)
        return start + spacing * j, self.points[i, j].numpy()


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
    compiled : bool
        Run the element-wise stages compiled by ``torch.compile``
        (:mod:`offline_training.forward.compiled`): about twice as fast on a
        2-core CPU after seconds of compilation on the first batch of a
        process; results equal the eager ones to float32 rounding, not bit
        for bit.
    """

    #: physics grid (eV): covers every true energy an axis reading 615-685 eV with a +-15 eV
    #: offset can map to, plus margin; spacing equals the work step.
    PHYS_RANGE = PHYS_RANGE_EV
    #: FFT length: leaves about 90 eV of empty grid so plural-scattering replicas do not wrap
    NFFT = 2048
    #: number of tabulated plasmon energies and widths over the configured ranges
    PLASMON_TABLE = (16, 8)

    def __init__(self, bank: Bank, config: ForwardConfig | None = None, device: str | torch.device = "cpu",
                 compiled: bool = False):
        self.config = config or ForwardConfig()
        self.compiled = bool(compiled)
        self.device = torch.device(device)
        de = WORK_STEP_EV
        self.de = de
        e = np.round(np.arange(self.PHYS_RANGE[0], self.PHYS_RANGE[1], de), 6)
        self.energy = torch.tensor(e, dtype=torch.float64, device=self.device)
        self.nfft = self.NFFT
        # The FFT grid past the physics grid stands for the energies one period lower (a circular
        # convolution reads them as the energies below the grid): physics 2 evaluates the edge steps
        # there at those energies, the arctan's low tail, so that plural scattering does not wrap
        # the continuum's plateau onto the pre-edge.
        pad = np.round(self.PHYS_RANGE[0] + de * np.arange(e.size - self.nfft, 0), 6)
        self.pad_energy = torch.tensor(pad, dtype=torch.float32, device=self.device)
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
        # a bank whose L3 maxima lie beyond L3_LINE_EV (measured references on another session's axis, say)
        # must still keep its L3 lines on the configured channel axis
        l3 = e[np.argmax(spectra, axis=1)]
        self.config.check_axis((min(L3_LINE_EV[0], float(l3.min())), max(L3_LINE_EV[1], float(l3.max()))))
        # white-line maximum of the L2 part: the L2 continuum threshold sits below it, as the L3
        # one sits below the L3 maximum (edge_steps)
        self.l2_pos = torch.tensor(e[np.argmax(l2_part, axis=1)], device=self.device)
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
        self.e_ref = AXIS_CENTER_EV
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
        v2 = cfg.physics >= 2   # the corrected physics (ForwardConfig's docstring)
        st = stage_functions(self.compiled)
        gen = generator or torch.Generator().manual_seed(0 if seed is None else seed)
        dev = self.device

        def draw(name, r):
            if name in overrides:
                v = torch.as_tensor(overrides[name], dtype=torch.float64, device=dev)
                return v.expand(n).clone() if v.ndim == 0 else v
            return _uniform(gen, n, r).to(dev)

        def draw_unless_fixed(name, r):
            """As ``draw``, but a range of one value takes nothing from ``gen`` (batches of configs without it stay)."""
            if name not in overrides and r[0] == r[1]:
                return torch.full((n,), float(r[0]), dtype=torch.float64, device=dev)
            return draw(name, r)

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
            l2_mix = l2_mix + fractions[:, j] * (self.l2_pos[idx] + shift)
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
                                   stacked["l2_scale"], stacked["shift"], gauss, lz.to(torch.float32),
                                   term=st.valence_term)
        thick = torch.nonzero(tl > 0).squeeze(1)
        ne = self.energy.numel()
        if v2:   # the white lines before scattering: the edge steps' height is relative to their L3 maximum
            spec = torch.fft.irfft(spec_fft, n=self.nfft)[:, :ne]
        else:
            if thick.numel():
                spec_fft[thick] *= plural_scattering_transfer(self.plasmon_fft[k[thick]], tl[thick].to(torch.float32))
            spec = torch.fft.irfft(spec_fft, n=self.nfft)[:, :ne]
        peak = spec.amax(dim=1)

        # 5. edge steps, broadened like the white lines, rising near each line's maximum; physics 2
        # scatters them with the white lines (they are the single-scattering core loss's continuum),
        # physics 1 added them after the scattering
        h = draw("edge_step", cfg.edge_step)
        at = draw_unless_fixed("edge_step_offset", cfg.edge_step_offset)
        w0 = draw_unless_fixed("edge_step_width", cfg.edge_step_width)
        width = w0 + p["resolution_fwhm"] / 2
        e32 = self.energy.to(torch.float32)
        f32 = torch.float32
        thr3, thr2, height = (l3_mix + at).to(f32), (l2_mix + at).to(f32), (h * peak).to(f32)
        steps = st.edge_steps(e32, thr3, thr2, height, width.to(f32))
        spec = spec + steps
        if v2 and thick.numel():
            steps = torch.cat([steps[thick], st.edge_steps(self.pad_energy, thr3[thick], thr2[thick], height[thick],
                                                           width[thick].to(f32))], dim=1)
            # the low-loss kernel cut at the pad's width: the circular convolution is then the linear
            # one on the physics grid (the pad stands for the energies below it), and the continuum's
            # plateau at the grid's top end cannot wrap onto the pre-edge
            transfer = plural_scattering_transfer(self.plasmon_fft[k[thick]], tl[thick].to(torch.float32))
            kernel = torch.fft.irfft(transfer, n=self.nfft)
            kernel[:, self.nfft - ne:] = 0.0
            scattered = (spec_fft[thick] + torch.fft.rfft(steps, n=self.nfft)) * torch.fft.rfft(kernel, n=self.nfft)
            spec[thick] = torch.fft.irfft(scattered, n=self.nfft)[:, :ne]
        p["edge_step"], p["edge_step_offset"], p["edge_step_width"] = h, at, w0

        # 6. XAS saturation
        sat = torch.where(is_eels, torch.zeros(n, dtype=torch.float64, device=dev), draw("saturation", cfg.saturation))
        spec = st.saturate(spec, sat.to(f32))
        p["saturation"] = sat

        # 7. backgrounds (the axis's draws come next in the stream; physics 2 needs them here)
        el, ex = draw("eels_background", cfg.eels_background), draw("eels_exponent", cfg.eels_exponent)
        xl, xs = draw("xas_background", cfg.xas_background), draw("xas_slope", cfg.xas_slope)
        axis = cfg.axis_start + WORK_STEP_EV * torch.arange(cfg.axis_points, dtype=torch.float64, device=dev)
        off = draw("offset", cfg.offset)
        disp = draw("dispersion_error", cfg.dispersion_error)
        nl = draw("nonlinearity", cfg.nonlinearity)
        sp = draw("point_spacing", cfg.point_spacing)
        if v2:   # the XAS pre-edge line stays >= 0 over the true energies the row's points read
            ends = [true_energy(r, off, disp, nl, physics=2, center=self.e_ref)
                    for r in (float(axis[0]), float(axis[-1]) + sp)]
            grid = (float(self.energy[0]), float(self.energy[-1]))   # readings beyond it read its ends
            low = torch.minimum(*ends).clamp(*grid)
            high = torch.maximum(*ends).clamp(*grid)
            xs = nonnegative_slope(xl, xs, low, high, self.e_ref)
        spec = st.add_background(e32, spec, is_eels, el.to(f32), ex.to(f32), xl.to(f32), xs.to(f32), self.e_ref)
        p["background"] = torch.where(is_eels, el, xl)

        # 8. energy axis, point spacing and measured window
        clean = st.measure_on_axis(self.energy, spec, axis, off, disp, nl, sp, self.e_ref, about_truth=v2)
        p["offset"], p["dispersion_error"], p["nonlinearity"], p["point_spacing"] = off, disp, nl, sp
        l3_read = l3_mix + off   # where the mixture's L3 appears on the axis
        crop = torch.rand(n, generator=gen).to(dev) < cfg.crop_probability
        if "crop" in overrides:
            crop = torch.as_tensor(overrides["crop"], dtype=torch.bool, device=dev).expand(n).clone()
        below = torch.where(crop, draw("crop_below", cfg.crop_below), torch.full_like(off, 1e3))
        above = torch.where(crop, draw("crop_above", cfg.crop_above), torch.full_like(off, 1e3))
        valid = (axis[None, :] >= (l3_read - below)[:, None]) & (axis[None, :] <= (l3_read + above)[:, None])
        p["window_below"], p["window_above"] = below.clamp(max=60.0), above.clamp(max=60.0)

        # 9. noise: physics 1 per channel; physics 2 on the measured points (or, finer than the
        # work step, per channel as the mean of the points it holds), interpolated like the signal
        psnr = draw("psnr_db", cfg.psnr_db)
        ps = draw("poisson_share", cfg.poisson_share)
        if v2:
            points = st.measure_points(self.energy, spec, axis, off, disp, nl, sp, self.e_ref, WORK_STEP_EV)
            q = sp.clamp(min=WORK_STEP_EV)
            reach = q[:, None] * torch.arange(axis.numel() + 1, dtype=torch.float64, device=dev)[None, :]
            at_point = axis[0] + reach
            point_valid = ((at_point >= (l3_read - below)[:, None]) & (at_point <= (l3_read + above)[:, None])
                           & (reach <= float(axis[-1] - axis[0]) + 1e-6))
            noise = draw_noise(gen, points, point_valid, psnr, ps, model=st.noise_model,
                               averaged=(WORK_STEP_EV / sp).clamp(min=1.0),
                               read=points_read(valid, sp, WORK_STEP_EV))
            noisy = clean + st.interpolate_points(noise, sp, axis.numel(), WORK_STEP_EV)
            measured_points = (points + noise).to(torch.float32)
        else:
            noisy = add_noise(gen, clean, valid, psnr, ps, model=st.noise_model)
            measured_points = None
        p["psnr_db"], p["poisson_share"] = psnr, ps
        p["l3_true_ev"] = l3_mix

        start = torch.full((n,), float(axis[0]), dtype=torch.float64, device=dev)
        return Batch(start=start, values=noisy, valid=valid, clean=clean,
                     fractions=fractions.to(torch.float32), params=p, points=measured_points)
