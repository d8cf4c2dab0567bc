"""Physics of the forward model, stage by stage, and its configuration checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offline_training.forward import (
    POISSON_EXACT_BELOW,
    ForwardConfig,
    add_noise,
    drude_plasmon,
    instrument_transfer,
    mix_end_members,
    plural_scattering_transfer,
    sample_fractions,
)

# Every stage off: pure physics of the mixture on a calibrated axis, no noise.
QUIET = dict(offset=0.0, dispersion_error=0.0, nonlinearity=0.0, point_spacing=0.1, crop=False, psnr_db=150.0,
             poisson_share=0.0, gauss_fwhm=0.3, lorentz_fwhm=0.0, t_lambda=0.0, edge_step=0.0, saturation=0.0,
             eels_background=0.0, xas_background=0.0, xas_slope=0.0, is_eels=False,
             **{f"chemical_shift_{v}": 0.0 for v in (2, 3, 4)}, **{f"intrinsic_fwhm_{v}": 0.3 for v in (2, 3, 4)},
             **{f"branching_ratio_{v}": 2.5 for v in (2, 3, 4)})


def _members(bank):
    return {f"member_{v}": int(bank.of_valence(v)[0]) for v in (2, 3, 4)}


def test_fractions_sum_to_one_and_cover_pure_binary_ternary():
    gen = torch.Generator().manual_seed(0)
    f = sample_fractions(gen, 20000, (0.3, 0.4, 0.3))
    assert torch.allclose(f.sum(1), torch.ones(20000, dtype=f.dtype))
    assert (f >= 0).all()
    n_present = (f > 0).sum(1)
    shares = [(n_present == k).double().mean().item() for k in (1, 2, 3)]
    assert shares == pytest.approx([0.3, 0.4, 0.3], abs=0.02)


def test_batch_labels_sum_to_one(forward_model):
    b = forward_model.sample(512, seed=3)
    assert torch.allclose(b.fractions.sum(1), torch.ones(512), atol=1e-6)
    assert torch.isfinite(b.values).all()


def test_same_seed_same_batch(forward_model):
    a = forward_model.sample(64, seed=11)
    b = forward_model.sample(64, seed=11)
    c = forward_model.sample(64, seed=12)
    assert torch.equal(a.values, b.values) and torch.equal(a.fractions, b.fractions)
    assert not torch.equal(a.values, c.values)


def test_broadening_conserves_area():
    de = 0.1
    n = 2048
    e = de * torch.arange(n, dtype=torch.float64)
    spec = torch.exp(-0.5 * ((e - 60) / 0.2) ** 2) + 0.5 * torch.exp(-0.5 * ((e - 71) / 0.3) ** 2)
    omega = 2 * math.pi * torch.fft.rfftfreq(n, d=de)
    out = torch.fft.irfft(torch.fft.rfft(spec) * instrument_transfer(omega, torch.tensor([1.2]), torch.tensor([0.4]))[0], n=n)
    assert out.sum().item() == pytest.approx(spec.sum().item(), rel=1e-9)
    assert out.max() < spec.max()  # it did broaden


def test_plural_scattering_conserves_total_and_first_multiple_scales_with_t_lambda():
    de = 0.1
    n = 4096
    loss = de * torch.arange(n, dtype=torch.float64)
    plasmon = drude_plasmon(loss, torch.tensor([20.0]), torch.tensor([2.0]))
    pf = torch.fft.rfft(plasmon, n=n)
    edge = torch.zeros(n, dtype=torch.float64)
    edge[100] = 1.0  # a sharp edge at 10 eV
    for tl in (0.2, 0.6, 1.0, 1.5):
        out = torch.fft.irfft(torch.fft.rfft(edge) * plural_scattering_transfer(pf, torch.tensor([tl]))[0], n=n)
        assert out.sum().item() == pytest.approx(1.0, abs=1e-9)
        # zero-loss part and first plasmon replica follow Poisson statistics
        assert out[100].item() == pytest.approx(math.exp(-tl), rel=1e-6)
        first = out[(loss > 20) & (loss < 45)].sum().item()   # replica around 30 eV (+-)
        expected = tl * math.exp(-tl)
        assert first == pytest.approx(expected, rel=0.12), (tl, first, expected)


def test_offset_moves_l3_maximum_by_exactly_the_offset(forward_model, bank):
    ov = dict(QUIET, **_members(bank), fractions=torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    axis = forward_model.config.axis_start + 0.1 * np.arange(forward_model.config.axis_points)

    def l3(offset):
        y = forward_model.sample(1, seed=1, **dict(ov, offset=offset)).clean[0].numpy().astype(float)
        k = int(np.argmax(y))
        frac = 0.5 * (y[k - 1] - y[k + 1]) / (y[k - 1] - 2 * y[k] + y[k + 1])
        return axis[k] + 0.1 * frac

    for off in (3.7, -11.25, 14.0):
        assert l3(off) - l3(0.0) == pytest.approx(off, abs=0.02)


@pytest.mark.parametrize("valence", [2, 3, 4])
def test_edge_steps_rise_below_each_white_line_and_only_l3_fills_the_trough(forward_model, bank, valence):
    """The continuum is two arctan steps (heights 2:1) at the L3 and L2 thresholds, 1 eV below each maximum."""
    f = torch.zeros(1, 3, dtype=torch.float64)
    f[0, valence - 2] = 1.0
    ov = dict(QUIET, **_members(bank), fractions=f)
    axis = forward_model.config.axis_start + 0.1 * np.arange(forward_model.config.axis_points)
    lines = forward_model.sample(1, seed=1, **ov).clean[0].numpy().astype(float)
    with_steps = forward_model.sample(1, seed=1, **dict(ov, edge_step=0.2)).clean[0].numpy().astype(float)
    continuum = (with_steps - lines) / lines.max()
    member = _members(bank)[f"member_{valence}"]
    l3, l2 = float(forward_model.l3_pos[member]), float(forward_model.l2_pos[member])
    assert 9.5 < l2 - l3 < 12.5   # the 2p spin-orbit splitting, about 11 eV
    at = lambda e: float(np.interp(e, axis, continuum))   # noqa: E731
    assert at(l3 - 1.0) == pytest.approx(0.1, abs=0.01)            # half of the L3 step at its threshold
    assert at(l2 - 3.0) == pytest.approx(0.2, abs=0.03)            # the trough: the L3 continuum only
    assert at(l2 - 1.0) == pytest.approx(0.25, abs=0.01)           # half of the L2 step at its threshold
    assert at(l2 + 15.0) == pytest.approx(0.3, abs=0.01)           # both steps above L2


@pytest.mark.parametrize("offset_ev, width_ev", [(0.0, 0.5), (-2.0, 1.2), (1.0, 0.2)])
def test_edge_step_thresholds_and_widths_follow_the_drawn_values(forward_model, bank, offset_ev, width_ev):
    """``edge_step_offset`` moves both thresholds from their lines' maxima and ``edge_step_width`` sets the
    arctan's half-width (half the resolution added): half of each step at its threshold, a quarter of the
    L3 step one half-width below it."""
    f = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    ov = dict(QUIET, **_members(bank), fractions=f, edge_step_offset=offset_ev, edge_step_width=width_ev)
    axis = forward_model.config.axis_start + 0.1 * np.arange(forward_model.config.axis_points)
    lines = forward_model.sample(1, seed=1, **ov).clean[0].numpy().astype(float)
    with_steps = forward_model.sample(1, seed=1, **dict(ov, edge_step=0.2)).clean[0].numpy().astype(float)
    continuum = (with_steps - lines) / lines.max()
    member = _members(bank)["member_2"]
    l3, l2 = float(forward_model.l3_pos[member]), float(forward_model.l2_pos[member])
    half_width = width_ev + 0.3 / 2   # QUIET's resolution: a 0.3 eV Gaussian
    at = lambda e: float(np.interp(e, axis, continuum))   # noqa: E731
    assert at(l3 + offset_ev) == pytest.approx(0.1, abs=0.012)
    assert at(l3 + offset_ev - half_width) == pytest.approx(0.05, abs=0.012)
    assert at(l2 + offset_ev) == pytest.approx(0.2 + 0.05, abs=0.012)


def test_a_step_range_of_one_value_draws_nothing_so_earlier_configs_give_their_batches(bank):
    """The threshold and width ranges were added after models were trained with the fixed rule (1 eV below,
    0.5 eV): their one-value defaults take nothing from the generator, a wider range does."""
    from offline_training.forward import ForwardModel

    fixed = ForwardModel(bank, ForwardConfig(edge_step_offset=(-1.0, -1.0), edge_step_width=(0.5, 0.5)))
    default = ForwardModel(bank, ForwardConfig())
    drawn = ForwardModel(bank, ForwardConfig(edge_step_offset=(-2.0, 1.0), edge_step_width=(0.2, 1.5)))
    a, b, c = (m.sample(64, seed=5) for m in (default, fixed, drawn))
    assert torch.equal(a.values, b.values) and torch.equal(a.params["saturation"], b.params["saturation"])
    assert (a.params["edge_step_offset"] == -1.0).all() and (a.params["edge_step_width"] == 0.5).all()
    assert not torch.equal(a.params["saturation"], c.params["saturation"])   # the later draws moved on
    assert -2.0 <= float(c.params["edge_step_offset"].min()) < float(c.params["edge_step_offset"].max()) <= 1.0


def test_mixture_is_linear_in_the_fractions(forward_model, bank):
    ov = dict(QUIET, **_members(bank))
    pure = []
    for j in range(3):
        f = torch.zeros(1, 3, dtype=torch.float64)
        f[0, j] = 1.0
        pure.append(forward_model.sample(1, seed=2, fractions=f, **ov).clean[0].double())
    f = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    mix = forward_model.sample(1, seed=2, fractions=f, **ov).clean[0].double()
    expected = 0.2 * pure[0] + 0.5 * pure[1] + 0.3 * pure[2]
    assert torch.allclose(mix, expected, atol=1e-4 * float(expected.abs().max()))


def test_per_atom_normalization_uses_hole_counts(forward_model, bank):
    from offline_training.forward import HOLES

    ov = dict(QUIET, **_members(bank), gauss_fwhm=0.05)
    areas = []
    for j in range(3):
        f = torch.zeros(1, 3, dtype=torch.float64)
        f[0, j] = 1.0
        y = forward_model.sample(1, seed=4, fractions=f, **ov).clean[0].double()
        areas.append(float(y.sum()) * 0.1)
    ratios = [a / h for a, h in zip(areas, (HOLES[2], HOLES[3], HOLES[4]))]
    assert ratios == pytest.approx([ratios[0]] * 3, rel=0.01)


def test_mixture_matches_complex_sum_and_skips_absent_valences(forward_model):
    """The fused real-arithmetic mixture equals the plain complex sum of shifted, broadened terms."""
    gen = torch.Generator().manual_seed(4)
    b, v = 32, 3
    omega, bank = forward_model.omega, forward_model.bank_fft
    member = torch.randint(0, bank.shape[0], (b, v), generator=gen)
    weight = torch.rand(b, v, generator=gen) * (torch.rand(b, v, generator=gen) > 0.4)  # some valences absent
    scale, shift = 0.5 + torch.rand(b, v, generator=gen), torch.randn(b, v, generator=gen)
    gauss, lorentz = 0.1 + torch.rand(b, v, generator=gen), 0.4 * torch.rand(b, generator=gen)
    got = mix_end_members(omega, bank, member, weight, scale, shift, gauss, lorentz)
    want = torch.zeros(b, omega.numel(), dtype=torch.complex64)
    for j in range(v):
        term = forward_model.l3_fft[member[:, j]] + scale[:, j, None] * forward_model.l2_fft[member[:, j]]
        phase = torch.exp(-1j * shift[:, j, None] * omega[None, :])
        want += weight[:, j, None] * instrument_transfer(omega, gauss[:, j], lorentz) * phase * term
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))


def test_shot_noise_variance_and_exact_counts():
    """Channels below POISSON_EXACT_BELOW counts draw exact Poisson counts, those above a Gaussian of the same variance."""
    gen = torch.Generator().manual_seed(9)
    n = 6000
    spec = torch.linspace(0.01, 1.0, 50).repeat(n, 1)
    valid = torch.ones_like(spec, dtype=torch.bool)
    gain_target = 500.0                      # counts per unit intensity: rates 5 ... 500
    var = float(spec[0].mean()) / gain_target
    psnr = torch.full((n,), 20 * math.log10(0.99 / math.sqrt(var)))
    noisy = add_noise(gen, spec, valid, psnr, torch.ones(n))
    gain = float(spec[0].mean()) / (0.99 / 10 ** (float(psnr[0]) / 20)) ** 2
    rate = spec[0] * gain
    noise = noisy - spec
    assert noise.var(0) * gain**2 == pytest.approx(rate.numpy(), rel=0.1)   # Poisson variance = mean count
    assert noise.mean(0).abs().max() < 4 * math.sqrt(float(rate.max())) / gain / math.sqrt(n)
    exact = rate < POISSON_EXACT_BELOW
    assert 0 < exact.sum() < exact.numel()
    counts = noisy[:, exact].double() * gain
    assert (counts - counts.round()).abs().max() < 1e-2    # whole counts where the shape matters
    assert (counts >= 0).all()


@pytest.mark.parametrize("target", [5.0, 20.0, 45.0])
def test_measured_psnr_matches_target(forward_model, target):
    b = forward_model.sample(400, seed=5, psnr_db=target)
    m = b.valid
    big = 1e30
    peak = torch.where(m, b.clean, -big).amax(1) - torch.where(m, b.clean, big).amin(1)
    rms = torch.sqrt((((b.values - b.clean) ** 2) * m).sum(1) / m.sum(1))
    measured = 20 * torch.log10(peak / rms)
    assert measured.mean().item() == pytest.approx(target, abs=0.5)


@pytest.mark.parametrize("bad, field", [
    (dict(offset=(5.0, -5.0)), "offset"),
    (dict(gauss_fwhm=(0.1,)), "gauss_fwhm"),
    (dict(psnr_db=(float("nan"), 10.0)), "psnr_db"),
    (dict(eels_share=1.5), "eels_share"),
    (dict(intrinsic_fwhm={2: (0, 1), 3: (0, 1)}), "intrinsic_fwhm"),
    (dict(composition_shares=(0.0, 0.0, 0.0)), "composition_shares"),
    (dict(edge_step=(-1.5, 0.2)), "edge_step"),
    (dict(edge_step_offset=(-6.0, 0.0)), "edge_step_offset"),
    (dict(edge_step_width=(-0.1, 0.5)), "edge_step_width"),
    (dict(offset=(-40.0, -30.0)), "offset"),              # L3 reads below the 615 eV axis start
    (dict(offset=(-15.0, 15.0), chemical_shift=(-3.0, 3.0), axis_points=300), "offset"),  # axis ends at 644.9
    (dict(axis_start=900.0), "axis_start"),               # every row flat: no edge on the axis
    (dict(axis_start=600.0), "axis_start"),               # L3 on the axis, its first channels off the grid
    (dict(axis_points=1200), "axis_points"),             # up to 734.9 eV: past the physics grid
])
def test_invalid_configuration_is_refused_by_name(bad, field):
    with pytest.raises(ValueError, match=field):
        ForwardConfig(**bad)


def test_every_shipped_range_keeps_the_edge_on_the_axis_and_the_axis_on_the_grid():
    """The axis checks refuse only what loses the edge: the defaults, the evaluation's and the
    benchmarks' offsets of +-15 eV and wider ones the default axis still holds pass."""
    ForwardConfig()
    ForwardConfig(offset=(-15.0, 15.0), dispersion_error=(-0.05, 0.05))
    ForwardConfig(offset=(-15.0, 15.0), crop_probability=0.0)
    ForwardConfig(offset=(-19.0, 19.0))


def test_negative_edge_steps_lower_the_trough_between_the_lines(forward_model, bank):
    """A negative step (a continuum removed beyond the true one) is accepted and lowers what lies between L3 and L2."""
    ForwardConfig(edge_step=(-0.25, 0.25))
    ov = dict(QUIET, **_members(bank), fractions=torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    cfg = forward_model.config
    e = cfg.axis_start + 0.1 * np.arange(cfg.axis_points)   # the measuring axis (offset 0)
    spectra = {h: forward_model.sample(1, seed=1, **dict(ov, edge_step=h)).clean[0].numpy() for h in (-0.2, 0.0, 0.2)}
    l3 = e[np.argmax(spectra[0.0])]
    trough = (e > l3 + 4.0) & (e < l3 + 6.0)
    levels = [float(spectra[h][trough].mean()) for h in (-0.2, 0.0, 0.2)]
    assert levels[0] < levels[1] < levels[2]


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="psnr"):
        ForwardConfig.from_dict({"psnr": [1, 2]})
