"""Physics of the forward model, stage by stage, and its configuration checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offline_training.forward import (
    POISSON_EXACT_BELOW,
    ForwardConfig,
    ForwardModel,
    add_noise,
    draw_noise,
    drude_plasmon,
    instrument_transfer,
    interpolate_points,
    mix_end_members,
    plural_scattering_transfer,
    points_read,
    sample_fractions,
)
from offline_training.forward.config import AXIS_CENTER_EV, true_energy

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
    """Points on the channels (0.1 eV): the PSNR of every channel is the target (coarser and finer points:
    test_physics_2_draws_noise_on_the_measured_points)."""
    b = forward_model.sample(400, seed=5, psnr_db=target, point_spacing=0.1)
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
    (dict(branching_ratio={2: (0.0, 0.0), 3: (2.2, 2.9), 4: (1.7, 2.3)}), r"branching_ratio\[2\]"),  # rows of zeros
    (dict(composition_shares=(0.0, 0.0, 0.0)), "composition_shares"),
    (dict(edge_step=(-1.5, 0.2)), "edge_step"),
    (dict(edge_step_offset=(-6.0, 0.0)), "edge_step_offset"),
    (dict(edge_step_width=(-0.1, 0.5)), "edge_step_width"),
    (dict(offset=(-40.0, -30.0)), "offset"),              # L3 reads below the 615 eV axis start
    (dict(offset=(-15.0, 15.0), chemical_shift=(-3.0, 3.0), axis_points=300), "offset"),  # axis ends at 644.9
    (dict(axis_start=900.0), "axis_start"),               # every row flat: no edge on the axis
    (dict(axis_start=600.0), "axis_start"),               # L3 on the axis, its first channels off the grid
    (dict(axis_points=1200), "axis_points"),             # up to 734.9 eV: past the physics grid
    (dict(physics=3), "physics"),
    (dict(physics=0), "physics"),
    (dict(physics=2.0), "physics"),
    (dict(physics="2"), "physics"),
    (dict(physics=True), "physics"),
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
    ForwardConfig(offset=(-18.5, 18.5))
    ForwardConfig(offset=(-19.0, 19.0), physics=1)   # physics 2 bends the axis about the truth: 0.5 eV more at its ends


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


# ---------------------------------------------------------------------------------------------------
# Physics versions: 1 (every model trained before the key existed, bit for bit as before) and 2


def _lag1(x: torch.Tensor) -> float:
    """Mean lag-1 autocorrelation of the rows of ``x``."""
    x = x.double() - x.double().mean(1, keepdim=True)
    return float(((x[:, 1:] * x[:, :-1]).sum(1) / (x * x).sum(1)).mean())


@pytest.fixture(scope="module")
def models(bank):
    """The conftest forward model's ranges in physics 1 and 2."""
    return {v: ForwardModel(bank, ForwardConfig(offset=(-15.0, 15.0), physics=v)) for v in (1, 2)}


def test_physics_version_defaults_and_round_trip():
    """A config made in code gets physics 2; a table without the key (every training config and model card
    written before it existed) physics 1; ``to_dict`` always writes it."""
    assert ForwardConfig().physics == 2
    assert ForwardConfig.from_dict({}).physics == 1
    assert ForwardConfig.from_dict({"offset": [-15.0, 15.0]}).physics == 1
    assert ForwardConfig.from_dict({"physics": 2}).physics == 2
    for cfg in (ForwardConfig(), ForwardConfig(physics=1), ForwardConfig.from_dict({"gauss_fwhm": [0.05, 2.5]})):
        d = cfg.to_dict()
        assert d["physics"] == cfg.physics and ForwardConfig.from_dict(d) == cfg


def test_physics_versions_draw_the_same_labels_and_parameters(models):
    """Physics 2 changes the physics, not the random stream: the same seed gives the same labels and nuisances."""
    a, b = (models[v].sample(96, seed=13) for v in (1, 2))
    assert torch.equal(a.fractions, b.fractions) and torch.equal(a.valid, b.valid)
    for key, value in a.params.items():
        assert torch.equal(b.params[key], value), key
    assert not torch.equal(a.values, b.values)


#: Index-weighted sums (values, clean, valid) of ``sample(48, seed=7)`` of physics-1 configs, computed by the
#: code before the physics versions existed (git 69693c3): its batches were verified equal bit for bit, these
#: pin them to float rounding.
PHYSICS_1_SUMS = {
    "default": ({}, (1.7645876538e08, 1.7655589876e08, 28455)),
    "default.toml": ({"offset": [-15.0, 15.0], "psnr_db": [5.0, 60.0], "t_lambda": [0.0, 1.5], "crop_probability": 0.3},
                     (1.7316634735e08, 1.7336715132e08, 28455)),
    "finetune_edge_steps.toml": ({"offset": [-15.0, 15.0], "dispersion_error": [-0.05, 0.05], "gauss_fwhm": [0.05, 2.5],
                                  "psnr_db": [5.0, 60.0], "t_lambda": [0.0, 1.5], "crop_probability": 0.3,
                                  "edge_step": [0.0, 0.3], "edge_step_offset": [-2.0, 0.0],
                                  "edge_step_width": [0.2, 1.2]},
                                 (1.5045281023e08, 1.5122433354e08, 25315)),
}


@pytest.mark.parametrize("name", sorted(PHYSICS_1_SUMS))
def test_tables_without_physics_give_the_batches_of_before(bank, name):
    table, (values, clean, valid) = PHYSICS_1_SUMS[name]
    b = ForwardModel(bank, ForwardConfig.from_dict(table)).sample(48, seed=7)
    w = torch.arange(1, b.values.shape[1] + 1, dtype=torch.float64) * torch.arange(1, 49, dtype=torch.float64)[:, None]
    assert float((b.values.double() * w).sum()) == pytest.approx(values, rel=1e-7)
    assert float((b.clean.double() * w).sum()) == pytest.approx(clean, rel=1e-7)
    assert int(b.valid.sum()) == valid


def test_physics_2_draws_noise_on_the_measured_points(models, bank):
    """D1: a detector adds noise per measured point and the live path interpolates the noisy points, so points
    coarser than the work step carry correlated noise there (live lag-1 autocorrelation +0.66 at 0.2 eV,
    +0.90 at 0.4 eV); the PSNR holds per measured point.  Points finer than the work step are averaged per
    channel: noise variance times spacing / 0.1.  Physics 1 added it per channel (uncorrelated)."""
    ov = dict(QUIET, **_members(bank), fractions=torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand(200, 3),
              xas_background=0.3, psnr_db=30.0)

    def psnr(b, every):
        clean, noise = b.clean[:, ::every].double(), (b.values - b.clean)[:, ::every].double()
        peak = clean.amax(1) - clean.amin(1)
        return float((20 * torch.log10(peak / noise.pow(2).mean(1).sqrt())).mean())

    coarse = {v: models[v].sample(200, seed=5, **dict(ov, point_spacing=0.4)) for v in (1, 2)}
    assert _lag1(coarse[2].values - coarse[2].clean) > 0.8       # 0.90 expected from linear interpolation
    assert abs(_lag1(coarse[1].values - coarse[1].clean)) < 0.05
    assert psnr(coarse[2], 4) == pytest.approx(30.0, abs=0.3)   # every 4th channel is a measured point
    assert psnr(coarse[2], 1) > 31.0                             # between the points the noise interpolates down
    mid = models[2].sample(200, seed=5, **dict(ov, point_spacing=0.2))
    assert _lag1(mid.values - mid.clean) > 0.5                   # 0.66 expected
    fine = models[2].sample(200, seed=5, **dict(ov, point_spacing=0.05))
    assert psnr(fine, 1) == pytest.approx(30.0 + 10 * math.log10(2), abs=0.3)   # two points per channel averaged
    assert abs(_lag1(fine.values - fine.clean)) < 0.05
    # the same inside a cropped window (its points are found by their position, which fine points must
    # take on the channels: a window of fine points was nearly noiseless, std 0.0003 against 0.03)
    cropped = models[2].sample(200, seed=5, **dict(ov, point_spacing=0.05, crop=True, crop_below=5.0,
                                                     crop_above=20.0))
    inside = cropped.valid
    assert 0.2 < float(inside.float().mean()) < 0.6
    noise_in = (cropped.values - cropped.clean)[inside].double().std()
    assert float(noise_in) == pytest.approx(float((fine.values - fine.clean)[inside].double().std()), rel=0.3)


def test_physics_2_shot_noise_still_scales_with_the_intensity(models, bank):
    """Poisson noise on coarse points: the variance at each measured point is proportional to its intensity."""
    n = 2000
    ov = dict(QUIET, **_members(bank), fractions=torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand(n, 3),
              xas_background=0.5, psnr_db=30.0, poisson_share=1.0, point_spacing=0.4)
    b = models[2].sample(n, seed=3, **ov)
    points = torch.arange(100, 600, 4)                   # measured points (every 4th channel) over 625-675 eV
    var = (b.values - b.clean).double()[:, points].var(0)
    clean = b.clean[0].double()[points]
    ratio = var / clean
    assert float(clean.max() / clean.min()) > 2.5
    assert float(ratio.std() / ratio.mean()) < 0.08       # sampling scatter of a variance from 2000 draws: 0.03


def test_physics_2_scatters_the_eels_continuum_with_the_white_lines(models, bank):
    """D2: the edge-step continuum is part of the single-scattering core loss (Egerton): with t/lambda it is the
    t/lambda = 0 continuum convolved with the low-loss distribution, its jump at the L3 threshold falling as
    exp(-t/lambda) against the continuum above L2.  Physics 1 added it after the scattering: the same shape
    at every t/lambda."""
    f = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    k = 37
    axis = 615.0 + 0.1 * np.arange(700)
    member = _members(bank)["member_4"]

    def continuum(version, tl):
        ov = dict(QUIET, **_members(bank), fractions=f, is_eels=True, t_lambda=tl, plasmon_index=k)
        fm = models[version]
        lines = fm.sample(1, seed=0, **ov).clean[0].double().numpy()
        return fm.sample(1, seed=0, **dict(ov, edge_step=0.25)).clean[0].double().numpy() - lines

    fm = models[2]
    l3, l2 = float(fm.l3_pos[member]), float(fm.l2_pos[member])
    at = lambda c, e: float(np.interp(e, axis, c))   # noqa: E731
    shape = lambda c: (at(c, l3 + 2) - at(c, l3 - 4)) / at(c, l2 + 20)   # noqa: E731
    c0, c15 = continuum(2, 0.0), continuum(2, 1.5)
    kernel = torch.fft.irfft(plural_scattering_transfer(fm.plasmon_fft[k:k + 1], torch.tensor([1.5]))[0], n=fm.nfft)
    expected = np.convolve(c0, kernel.double().numpy()[: c0.size])[: c0.size]   # offset 0: channel i is 615 + 0.1 i eV
    assert np.abs(c15 - expected)[50:].max() < 0.01 * c0.max()   # below 620 eV the continuum below the axis is missing
    jump = (at(c15, l3 + 2) - at(c15, l3 - 4)) / (at(c0, l3 + 2) - at(c0, l3 - 4))
    assert jump == pytest.approx(math.exp(-1.5), rel=0.15)
    assert shape(c15) < 0.6 * shape(c0)
    assert shape(continuum(1, 1.5)) == pytest.approx(shape(continuum(1, 0.0)), rel=1e-3)


def test_physics_2_scattering_does_not_wrap_the_continuum_onto_the_pre_edge(bank):
    """The continuum's plateau at the top of the grid, scattered by 100 eV or more, would wrap around the FFT
    onto the pre-edge (2 % of the peak there at t/lambda 1.5): the EELS rows equal those of a four times
    longer FFT (offset 0: channels 615-630 eV read the pre-edge; no background, which scales with the peak)."""
    class Long(ForwardModel):
        NFFT = 8192

    cfg = ForwardConfig(offset=(-15.0, 15.0), edge_step=(0.2, 0.3))
    n = 64
    kw = dict(is_eels=True, psnr_db=150.0, crop=False, t_lambda=torch.full((n,), 1.5, dtype=torch.float64), offset=0.0,
              eels_background=0.0)
    a, b = ForwardModel(bank, cfg).sample(n, seed=2, **kw), Long(bank, cfg).sample(n, seed=2, **kw)
    peak = b.clean.abs().amax(1, keepdim=True)
    diff = ((a.clean - b.clean).abs() / peak)[:, :150]    # 615-630 eV
    assert float(diff.max()) < 1e-3


def test_physics_2_keeps_the_xas_pre_edge_non_negative(models):
    """D3: the XAS pre-edge line (level U(0, 1) + slope (E - 641), relative to the L3 maximum) went below
    zero in 21 % of physics-1 XAS rows, where no shot noise is drawn; physics 2 limits its tilt."""
    def negative_rows(version):
        b = models[version].sample(3000, seed=5, is_eels=False)
        low = torch.where(b.valid, b.clean, torch.full_like(b.clean, math.inf)).amin(1)
        return int((low < 0).sum())

    assert negative_rows(2) == 0
    assert negative_rows(1) > 300


def test_physics_2_offset_label_is_exact_under_the_nonlinearity(models, bank):
    """D7: the quadratic nonlinearity acts about the truth, so an offset moves the whole spectrum by exactly the
    offset (the label); physics 1 took it about the reading, off by nonlinearity (offset/30)^2."""
    ov = dict(QUIET, **_members(bank), fractions=torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
              dispersion_error=0.03)
    axis = 615.0 + 0.1 * np.arange(700)

    def l3(version, off, nl):
        y = models[version].sample(1, seed=1, **dict(ov, offset=off, nonlinearity=nl)).clean[0].numpy().astype(float)
        k = int(np.argmax(y))
        return axis[k] + 0.05 * (y[k - 1] - y[k + 1]) / (y[k - 1] - 2 * y[k] + y[k + 1]), y

    for nl in (0.3, -1.0, 2.0):
        (l0, y0), (l14, y14) = l3(2, 0.0, nl), l3(2, 14.0, nl)
        assert l14 - l0 == pytest.approx(14.0, abs=1e-3)
        assert np.abs(y14[140:] - y0[:-140]).max() < 1e-4 * y0.max()   # 140 channels: the same spectrum
    # physics 1: where the truth of the line reads under its map (about the reading), solved by iteration
    c, nl, disp = AXIS_CENTER_EV, 1.0, 0.03
    truth = true_energy(l3(2, 0.0, nl)[0], 0.0, disp, nl, physics=2)

    def reading(off):
        r = truth + off
        for _ in range(50):
            r = c + off + (truth - c - nl * ((r - c) / 30) ** 2) / (1 + disp)
        return r

    moved = l3(1, 14.0, nl)[0] - l3(1, 0.0, nl)[0]
    assert moved == pytest.approx(reading(14.0) - reading(0.0), abs=2e-3)
    assert abs(moved - 14.0) > 0.1
    assert true_energy(c + 14.0, 14.0, 0.03, 2.0, physics=2) == c
    assert true_energy(c + 14.0, 14.0, 0.03, 2.0, physics=1) == pytest.approx(c + 2.0 * (14.0 / 30) ** 2)


def test_physics_2_batches_carry_their_measured_points_and_their_noise_is_measured_on_them(bank):
    """The engine reads a detector's points, not their interpolation onto the work step: ``Batch.measured``
    hands over the points (which the work steps interpolate), and the diagnostics of training batches
    measure the noise there (on the interpolation the PSNR read up to 16 dB high at 0.2-0.3 eV)."""
    from offline_training.generate import make_training_batch

    fm = ForwardModel(bank, ForwardConfig(physics=2, point_spacing=(0.3, 0.3), psnr_db=(20.0, 40.0)))
    tb = make_training_batch(fm, 256, seed=5, diagnostics=True)
    b = tb.batch
    for i in range(0, 256, 37):
        e, y = b.measured(i)
        assert np.allclose(np.diff(e), 0.3)
        idx = np.flatnonzero(b.valid[i].numpy())
        channels = float(b.start[i]) + 0.1 * idx
        inside = (channels >= e[0]) & (channels <= e[-1])
        np.testing.assert_allclose(np.interp(channels[inside], e, y), b.values[i, idx[inside]].numpy(), atol=1e-4)
    gap = (tb.prepared.psnr_db - b.params["psnr_db"]).numpy()
    # the engine's noise is the work step's equivalent (-4.8 dB at 0.3 eV) and its PSNR the L3 height over
    # the background (about -2 dB against max - min)
    assert np.nanmedian(gap) == pytest.approx(-10 * np.log10(3.0) - 2.0, abs=1.5)
    one = ForwardModel(bank, ForwardConfig(physics=1)).sample(8, seed=5)
    assert one.points is None
    e, y = one.measured(0)
    assert np.allclose(np.diff(e), 0.1) and y.size == int(one.valid[0].sum())


def test_points_read_are_the_points_the_window_interpolates():
    """points_read marks exactly the points interpolate_points gathers for the valid channels (empty windows: none)."""
    gen = torch.Generator().manual_seed(4)
    b, n = 400, 300
    spacing = 0.01 + 2.0 * torch.rand(b, generator=gen, dtype=torch.float64)
    ends = torch.randint(0, n, (b, 2), generator=gen).sort(dim=1).values
    c = torch.arange(n)
    valid = (c >= ends[:, :1]) & (c <= ends[:, 1:])
    valid[:3] = False
    valid[3:6] = True
    got = points_read(valid, spacing, 0.1)
    # each point's index in turn: where interpolating a one-hot vector reads it (with any weight)
    want = torch.zeros(b, n + 1, dtype=torch.bool)
    for j in range(n + 1):
        probe = torch.zeros(b, n + 1, dtype=torch.float64)
        probe[:, j] = float("nan")            # a NaN spreads to every channel that gathers the point
        want[:, j] = (interpolate_points(probe, spacing, n, 0.1).isnan() & valid).any(dim=1)
    assert torch.equal(got, want)
    assert not got[:3].any() and got[3:6, 0].all()


def test_only_unread_points_skip_the_exact_poisson_draws():
    """With ``read``, low-count values read are whole counts; those nothing reads take a Gaussian."""
    gen = torch.Generator().manual_seed(9)
    n = 2000
    spec = torch.linspace(0.01, 1.0, 50).repeat(n, 1)
    valid = torch.ones_like(spec, dtype=torch.bool)
    read = torch.zeros_like(valid)
    read[:, ::2] = True                                     # every other value read
    psnr = torch.full((n,), 20 * math.log10(0.99 / math.sqrt(float(spec[0].mean()) / 500.0)))
    noise = draw_noise(gen, spec, valid, psnr, torch.ones(n), read=read)
    gain = float(spec[0].mean()) / (0.99 / 10 ** (float(psnr[0]) / 20)) ** 2      # 500 counts per unit
    counts = ((spec + noise).double() * gain)[:, :10]      # the first ten: 5-95 counts, where draws are exact
    assert (counts[:, ::2] - counts[:, ::2].round()).abs().max() < 1e-2   # read: whole counts
    assert (counts[:, 1::2] - counts[:, 1::2].round()).abs().mean() > 0.2  # not read: a Gaussian
    var = (noise.double() * gain).var(0)
    assert var.numpy() == pytest.approx((spec[0].double() * gain).numpy(), rel=0.12)   # variance = count, both
