"""Bank assembly from cached calculations: the L3 width models (``build_bank(l3_lifetime=...)``)."""

import numpy as np
import pytest

from offline_training.references import bank as B
from offline_training.references.parameters import draw_parameters

SIZES = {"Mn2+ Oh": 1, "Mn3+ Oh-JT": 1, "Mn4+ Oh": 1}


def write_cache(d, sizes: dict, optical: tuple = ()) -> None:
    """A calculation cache holding a two-line spectrum for every job of ``sizes`` (no multiplet solver).

    With ``optical``, the i-th Mn4+ member also carries that optical 10Dq, as the bank builder caches it.
    """
    x = B._CALC_GRID
    for k, (family, n) in enumerate(sorted(sizes.items())):
        for i, p in enumerate(draw_parameters(family, n, 1000 * k)):
            lines = 1.0 / (1 + ((x - 60.0 - i) / 0.3) ** 2) + 0.5 / (1 + ((x - 71.0 - i) / 0.3) ** 2)
            extra = {"optical_ten_dq": optical[i]} if optical and p.valence == 4 else {}
            np.savez(d / f"{B._cache_key(p)}.npz", intensity=lines, occupancy=5.0 - p.valence + 2, **extra)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("multiplets")
    write_cache(d, SIZES)
    return d


def build(cache, mode):
    return B.build_bank(SIZES, seed=0, workers=1, cache_dir=cache, progress=False, l3_lifetime=mode,
                        ligand_field_window=False)


def test_both_is_the_constant_rows_then_the_ramp_rows(cache):
    constant, ramp, both = (build(cache, m) for m in ("constant", "ramp", "both"))
    n = len(constant.spectra)
    assert n == len(SIZES) * B.LIFETIME_VARIANTS and len(both.spectra) == 2 * n
    np.testing.assert_array_equal(both.spectra[:n], constant.spectra)
    np.testing.assert_array_equal(both.spectra[n:], ramp.spectra)
    np.testing.assert_array_equal(both.valence, np.concatenate([constant.valence, ramp.valence]))
    assert not np.allclose(constant.spectra, ramp.spectra)   # the two width models differ


def test_an_unknown_width_model_is_refused(cache):
    with pytest.raises(ValueError, match="l3_lifetime must be one of"):
        build(cache, "linear")


WINDOW_SIZES = {"Mn2+ Oh": 1, "Mn3+ Oh-JT": 1, "Mn4+ Oh": 3}
#: Optical 10Dq of the three cached Mn4+ members: below, inside and above the Mn4+ band.
OPTICAL = (2.0, 2.5, 3.1)


@pytest.fixture(scope="module")
def window_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("multiplets_window")
    write_cache(d, WINDOW_SIZES, OPTICAL)
    return d


def test_the_ligand_field_window_drops_mn4_members_outside_the_band_and_keeps_the_rest_unchanged(window_cache):
    import json

    kw = dict(seed=0, workers=1, cache_dir=window_cache, progress=False, l3_lifetime="both")
    full = B.build_bank(WINDOW_SIZES, ligand_field_window=False, **kw)
    window = B.build_bank(WINDOW_SIZES, ligand_field_window=True, **kw)
    meta = json.loads(window.params_json)
    mn4 = [m for m in meta if m["valence"] == 4]
    # only the member at 2.5 eV stays, in each width model, with its three lifetime variants
    assert [m["optical_ten_dq"] for m in mn4] == [2.5] * (2 * B.LIFETIME_VARIANTS)
    assert len(window.spectra) == len(full.spectra) - 2 * 2 * B.LIFETIME_VARIANTS
    # the kept rows are the very rows of the bank without the window (same lifetime draws)
    full_meta = json.loads(full.params_json)
    rows = [j for j, m in enumerate(full_meta) if m["valence"] != 4 or full_meta[j]["ten_dq"] == mn4[0]["ten_dq"]]
    np.testing.assert_array_equal(window.spectra, full.spectra[rows])
    assert all("optical_ten_dq" not in m for m in full_meta)


def test_a_valence_without_a_band_always_passes_and_one_without_a_value_does_not():
    from offline_training.references.parameters import OPTICAL_TEN_DQ_EV, within_ligand_field_window

    low, high = OPTICAL_TEN_DQ_EV[4]
    assert within_ligand_field_window(4, low) and within_ligand_field_window(4, high)
    assert not within_ligand_field_window(4, low - 0.01) and not within_ligand_field_window(4, float("nan"))
    assert within_ligand_field_window(2, float("nan")) and within_ligand_field_window(3, 0.0)


def _edge(l3: float, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """A two-line measured spectrum (L3 at ``l3``, L2 11 eV above) on ``lo``-``hi`` eV."""
    e = np.arange(lo, hi, 0.1)
    return e, 1.0 / (1 + ((e - l3) / 0.5) ** 2) + 0.5 / (1 + ((e - l3 - 11.0) / 0.5) ** 2)


def test_a_measured_reference_whose_l3_window_leaves_the_bank_grid_is_refused_with_the_interval(tmp_path):
    """The bank grid starts at 625 eV: an L3 at 615 eV was accepted (600-690 eV) and resampled with
    zeros below 625 eV, a truncated end member; the message stated 635-650 eV, which was not enforced."""
    from offline_training.references.measured import (
        REQUIRED_ABOVE_EV,
        REQUIRED_BELOW_EV,
        MeasuredReference,
        read_measured_references,
    )

    lo, hi = B.BANK_GRID[0] + REQUIRED_BELOW_EV, B.BANK_GRID[-1] - REQUIRED_ABOVE_EV
    with pytest.raises(ValueError, match=f"615.00 eV is outside {lo:.2f}-{hi:.2f} eV"):
        MeasuredReference("mn3_615", 3, *_edge(615.0, 600.0, 640.0))
    with pytest.raises(ValueError, match="outside"):
        MeasuredReference("low", 3, *_edge(lo - 0.5, 600.0, 660.0))
    ref = MeasuredReference("mn3", 3, *_edge(641.9, 630.0, 670.0))
    assert ref.on_grid(B.BANK_GRID).max() > 0
    with pytest.raises(ValueError, match="outside"):   # a grid that cuts the window off
        ref.on_grid(np.arange(640.0, 700.0, 0.05))
    path = tmp_path / "mn3_615.csv"
    np.savetxt(path, np.column_stack(_edge(615.0, 600.0, 640.0)), delimiter=",")
    with pytest.raises(ValueError, match="mn3_615.csv"):
        read_measured_references([f"3:{path}"])


def test_the_l3_width_applied_is_recorded_beside_the_drawn_one(cache):
    """Spectra are calculated with 0.1 eV and only width can be added: an L3 width drawn below 0.1 eV
    (the range starts at 0.08) is applied as 0.101 eV, which the metadata recorded as the drawn value."""
    import json

    from offline_training.references.multiplet import CALC_GAMMA

    assert B.applied_hwhm(0.08) == pytest.approx(CALC_GAMMA + B.MIN_ADDED_HWHM) == B.applied_hwhm(0.095)
    assert B.applied_hwhm(0.3) == pytest.approx(0.3)
    e = B.BANK_GRID
    y = 1.0 / (1 + ((e - 641.0) / 0.1) ** 2)
    np.testing.assert_array_equal(B.lorentzian_lifetime(e, y, 648.0, 0.08, 0.5),
                                  B.lorentzian_lifetime(e, y, 648.0, 0.095, 0.5))
    meta = json.loads(build(cache, "both").params_json)
    for row in meta:
        assert row["gamma_l3_applied"] == pytest.approx(B.applied_hwhm(row["gamma_l3"]))
        if row["l3_lifetime"] == "ramp":
            assert row["gamma_l3_onset_applied"] == pytest.approx(CALC_GAMMA + B.MIN_ADDED_HWHM)
        else:
            assert "gamma_l3_onset_applied" not in row


def test_a_forward_model_refuses_an_axis_that_loses_a_measured_references_l3(bank):
    """A site's reference measured on a miscalibrated axis (L3 at 652 eV) joins the bank; the axis check
    used the calculated members' L3 range (640-644 eV) only, and accepted an axis and offsets that move
    that reference's L3 off the channels."""
    from offline_training.forward import ForwardConfig, ForwardModel
    from offline_training.references.measured import MeasuredReference

    cfg = ForwardConfig(axis_start=625.0, axis_points=400, offset=(-6.0, 15.0))   # 625-664.9 eV
    ForwardModel(bank, cfg)
    # join_measured now refuses such a reference (check_measured_l3); a bank made otherwise may still hold one
    ref = MeasuredReference("mn3_652", 3, *_edge(652.0, 630.0, 680.0))
    with pytest.raises(ValueError, match="calibrate the reference's energy axis"):
        B.join_measured(bank, [ref], 0.5)
    row = B.unit_area(bank.energy, ref.on_grid(bank.energy))
    shifted = B.Bank(energy=bank.energy, spectra=np.vstack([bank.spectra, row]), valence=np.append(bank.valence, 3),
                     split_ev=np.append(bank.split_ev, B.find_split(bank.energy, row)),
                     weight=np.append(bank.weight, 1.0), source=np.append(bank.source, "measured:mn3_652"))
    with pytest.raises(ValueError, match=r"offset: the range \(-6, 15\) eV moves the L3 line"):
        ForwardModel(shifted, cfg)
    ForwardModel(shifted, ForwardConfig())


# -- measured references joined by ``mnedge-train references --measured``


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of the shipped bank standing in for it (default --out and --base): the package's is never touched."""
    import shutil

    copy = tmp_path / "package" / "bank.npz"
    copy.parent.mkdir()
    shutil.copyfile(B.default_bank_path(), copy)
    monkeypatch.setattr(B, "default_bank_path", lambda: copy)
    return copy


def _reference(folder, name: str, l3: float):
    """A two-column reference file with its L3 maximum at ``l3`` eV."""
    path = folder / name
    np.savetxt(path, np.column_stack(_edge(l3, l3 - 12.0, l3 + 40.0)))
    return path


def _measured_sources(path) -> list[str]:
    return [str(s) for s in B.Bank.load(path).source if str(s).startswith("measured:")]


def test_measured_references_without_out_are_refused_and_the_shipped_bank_is_kept(tmp_path, shipped_copy, capsys,
                                                                                  monkeypatch):
    """``--measured-only`` without ``--out`` rewrote the bank inside the package, one more copy of the
    reference with every run (``--base`` defaults to that same bank)."""
    from offline_training.cli import main as mnedge_train

    def never(*args, **kwargs):
        raise AssertionError("the bank was calculated")

    monkeypatch.setattr(B, "build_bank", never)   # refused before anything is calculated or written
    before = shipped_copy.read_bytes()
    mno = _reference(tmp_path, "MnO.txt", 640.0)
    for extra in ([], ["--measured-only"]):
        assert mnedge_train(["references", *extra, "--measured", f"2:{mno}", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "--out is required with --measured" in err and "Traceback" not in err
    assert mnedge_train(["references", "--measured-only", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--measured-only needs --measured" in capsys.readouterr().err
    assert shipped_copy.read_bytes() == before and not (tmp_path / "x.npz").exists()


def test_a_measured_reference_already_in_the_base_bank_is_refused_by_name(tmp_path, shipped_copy, capsys):
    from offline_training.cli import main as mnedge_train

    mno = _reference(tmp_path, "MnO.txt", 640.0)
    site = tmp_path / "site_bank.npz"
    assert mnedge_train(["references", "--measured-only", "--measured", f"2:{mno}", "--out", str(site)]) == 0
    capsys.readouterr()
    again = tmp_path / "again.npz"
    assert mnedge_train(["references", "--measured-only", "--measured", f"2:{mno}", "--base", str(site),
                         "--out", str(again)]) == 2
    err = capsys.readouterr().err
    assert "MnO.txt" in err and "already holds measured:MnO.txt" in err and not again.exists()
    assert _measured_sources(site) == ["measured:MnO.txt"]


def test_measured_given_several_times_adds_every_reference_and_refuses_a_repeat(tmp_path, shipped_copy, capsys):
    """The second ``--measured`` replaced the first: only the last reference joined the bank."""
    from offline_training.cli import main as mnedge_train

    mno, lamno3 = _reference(tmp_path, "MnO.txt", 640.0), _reference(tmp_path, "LaMnO3.txt", 642.0)
    out = tmp_path / "two.npz"
    assert mnedge_train(["references", "--measured-only", "--measured", f"2:{mno}", "--measured", f"3:{lamno3}",
                         "--out", str(out)]) == 0
    assert _measured_sources(out) == ["measured:MnO.txt", "measured:LaMnO3.txt"]
    capsys.readouterr()
    twice = tmp_path / "twice.npz"
    assert mnedge_train(["references", "--measured-only", "--measured", f"2:{mno}", "--measured",
                         f"2:{tmp_path / '.' / 'MnO.txt'}", "--out", str(twice)]) == 2
    assert "is given twice" in capsys.readouterr().err and not twice.exists()


def test_a_measured_reference_off_its_valences_energy_is_refused(tmp_path, shipped_copy, capsys):
    """A Mn2+ reference on an axis 25 eV off joined the bank without a word."""
    from offline_training.cli import main as mnedge_train

    lo, hi = B.calculated_l3_range(B.Bank.load(), 2)
    shifted = _reference(tmp_path, "MnO_plus25.txt", hi + 25.0)
    out = tmp_path / "s25.npz"
    assert mnedge_train(["references", "--measured-only", "--measured", f"2:{shifted}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MnO_plus25.txt (Mn2+)" in err and f"{lo:.2f}-{hi:.2f} eV" in err
    assert "calibrate the reference's energy axis" in err and not out.exists()
    near = _reference(tmp_path, "MnO_plus1.txt", hi + B.MEASURED_L3_TOLERANCE_EV - 0.5)   # within the tolerance
    assert mnedge_train(["references", "--measured-only", "--measured", f"2:{near}", "--out", str(out)]) == 0


def test_a_valence_without_calculated_members_is_not_checked_and_says_so(bank, caplog):
    from offline_training.references.measured import MeasuredReference

    only_measured = B.Bank(energy=bank.energy, spectra=bank.spectra, valence=bank.valence, split_ev=bank.split_ev,
                           weight=bank.weight, source=np.where(bank.valence == 3, "measured:old", bank.source))
    ref = MeasuredReference("far.txt", 3, *_edge(660.0, 640.0, 690.0))
    with caplog.at_level("WARNING", logger="offline_training.references.bank"):
        joined = B.join_measured(only_measured, [ref], 0.5)
    assert "measured:far.txt" in joined.source and "no calculated Mn3+ member" in caplog.text


def test_an_existing_bank_file_is_replaced_only_with_overwrite(tmp_path, shipped_copy, capsys):
    """`references --out site_bank.npz` again replaced the bank a site model was trained on, in silence."""
    from offline_training.cli import main as mnedge_train

    mno = _reference(tmp_path, "MnO.txt", 640.0)
    site = tmp_path / "site_bank.npz"
    args = ["references", "--measured-only", "--measured", f"2:{mno}", "--out", str(site)]
    assert mnedge_train(args) == 0
    before = site.read_bytes()
    capsys.readouterr()
    assert mnedge_train([*args, "--measured-weight", "0.9"]) == 2
    assert "exists" in capsys.readouterr().err and site.read_bytes() == before
    assert mnedge_train([*args, "--measured-weight", "0.9", "--overwrite"]) == 0 and site.read_bytes() != before


def test_recorded_bank_checks_the_training_bank_by_its_checksum(tmp_path):
    """export (refusing) and evaluate (falling back with a note) look up a model's training bank with one function."""
    from offline_training.references.bank import Bank, BankUnavailable, recorded_bank

    shipped = Bank.load()
    assert recorded_bank(None, None)[1] == "(shipped)"
    assert recorded_bank(str(tmp_path / "gone.npz"), shipped.sha256())[1] == "(shipped)"   # a copy shipped since
    site = Bank.load()
    site.weight = site.weight * np.linspace(0.5, 1.0, site.weight.size)
    site.save(tmp_path / "site.npz")
    bank, where = recorded_bank(str(tmp_path / "site.npz"), site.sha256())
    assert where == str(tmp_path / "site.npz") and bank.sha256() == site.sha256()
    with pytest.raises(BankUnavailable, match="has changed since") as changed:
        recorded_bank(str(tmp_path / "site.npz"), shipped.sha256())
    assert changed.value.changed and site.sha256()[:12] in changed.value.detail
    with pytest.raises(BankUnavailable, match="gone.npz, which is not here") as gone:
        recorded_bank(str(tmp_path / "gone.npz"), site.sha256())
    assert not gone.value.changed
    with pytest.raises(BankUnavailable, match=r"\(shipped\) has changed"):
        recorded_bank(None, site.sha256())
