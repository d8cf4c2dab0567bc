"""The engine answers every spectrum: a readout, or a rejection with its reason; never a crash or a guess."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

from mnedge_live.engine import load_engine

E = np.arange(620.0, 680.0, 0.1)


def mn_like(e=E, l3=641.0, spacing=11.0, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    y = np.exp(-0.5 * ((e - l3) / 0.7) ** 2) + 0.5 * np.exp(-0.5 * ((e - l3 - spacing) / 0.9) ** 2) + 0.05
    return y + rng.normal(0, noise, e.size)


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    return load_engine(str(tiny_artifact), backend="onnxruntime")


@pytest.mark.parametrize("energy, intensity, reason", [
    (E, np.full(E.size, np.nan), "NaN"),
    (E[:10], mn_like()[:10], "points"),
    (E, mn_like()[:-1], "energy has"),
    (E.reshape(2, -1), mn_like().reshape(2, -1), "1-D"),
    (np.arange(700.0, 760.0, 0.1), mn_like(np.arange(700.0, 760.0, 0.1), l3=720), "misses the Mn L2,3 edge"),
    (E, np.random.default_rng(1).normal(1.0, 0.1, E.size), "no edge detectable"),
    # noise on a coarse axis: resampling onto the work axis must not hide it
    (np.arange(620.0, 680.0, 0.25), np.random.default_rng(2).normal(1.0, 0.1, 240), "no edge detectable"),
    (E, np.ones(E.size), "constant"),
    (E, mn_like(spacing=13.1), "not a Mn L2,3 edge"),            # Fe-like spin-orbit splitting
    (E, mn_like(spacing=9.3), "not a Mn L2,3 edge"),             # Cr-like (its L2 flank measured 9.6 eV before)
    # one line where L2 is measured: refused by its missing L2 (the tiny model has no OOD rule to hide behind)
    (E, np.exp(-0.5 * ((E - 641.0) / 0.7) ** 2) + 0.05 + np.random.default_rng(3).normal(0, 0.01, E.size),
     "no L2 line above the L3 maximum"),
    (np.linspace(640.0, 643.0, 40), mn_like(np.linspace(640.0, 643.0, 40)), "spans only"),
    (E / 1000.0, mn_like(), "looks like keV"),                  # exported in keV: say so, do not guess
    (E, -mn_like(), "inverted"),                                # a negative drain current
    (E, np.exp(-mn_like()), "inverted"),                        # transmission I/I0, not -ln(I/I0)
    (np.arange(0.0, 2000.0, 12.0), mn_like(np.arange(0.0, 2000.0, 12.0)), "points in the Mn L2,3 region"),
    (np.arange(0.0, 2000.0, 10.0), mn_like(np.arange(0.0, 2000.0, 10.0)), "cannot resolve"),   # a survey scan
    (np.arange(600.0, 700.0, 2.5), mn_like(np.arange(600.0, 700.0, 2.5)), "cannot resolve"),
    (E.astype(str), mn_like(), "non-numeric"),
])
def test_bad_spectra_are_rejected_with_reasons(engine, energy, intensity, reason):
    r = engine.predict_one(energy, intensity)
    assert r.status == "rejected"
    assert reason in r.reason
    assert np.isnan(r.valence)


@pytest.mark.parametrize("item, reason", [
    ((E, mn_like(), mn_like()), "expected a pair (energy, intensity), got 3 items"),
    ((E,), "expected a pair (energy, intensity), got 1 item"),
    (None, "expected a pair (energy, intensity), got NoneType"),
    (640.0, "expected a pair (energy, intensity), got float"),
    (np.array(640.0), "expected a pair (energy, intensity), got ndarray"),   # 0-d: no len()
])
def test_an_item_that_is_no_pair_is_rejected_saying_so(engine, item, reason):
    """Was Python's unpacking message ("too many values to unpack (expected 2)"); the good item beside it
    still reads out."""
    bad, good = engine.predict([item, (E, mn_like())])
    assert bad.status == "rejected" and bad.reason == reason
    assert good.status == "ok"


def test_good_spectrum_gets_a_full_readout(engine):
    r = engine.predict_one(E, mn_like())
    assert r.status == "ok" and r.reason == ""
    assert sum(r.fractions) == pytest.approx(1.0) and min(r.fractions) >= 0
    assert r.valence == pytest.approx(2 * r.fractions[0] + 3 * r.fractions[1] + 4 * r.fractions[2])
    assert r.valence_std > 0 and all(s > 0 for s in r.fractions_std)
    assert np.isfinite(r.energy_offset_eV) and r.resolution_eV >= 0
    assert r.model == "tiny-test"
    d = r.to_dict()
    assert set(d["fractions"]) == {"Mn2+", "Mn3+", "Mn4+"}


def test_descending_axis_with_repeats_reads_like_the_ascending_one(engine):
    y = mn_like()
    e2 = np.concatenate([E[::-1], E[100:110]])
    y2 = np.concatenate([y[::-1], y[100:110]])
    a, b = engine.predict([(E, y), (e2, y2)])
    assert a.ok and b.ok
    assert a.valence == pytest.approx(b.valence, abs=1e-3)


def test_mixed_batch_answers_each_spectrum_individually(engine):
    batch = [(E, mn_like()), (E, np.full(E.size, np.inf)), (E, mn_like(seed=3)), ("garbage", None)]
    res = engine.predict(batch)
    assert [r.status for r in res] == ["ok", "rejected", "ok", "rejected"]
    alone = engine.predict_one(E, mn_like(seed=3))
    assert res[2].valence == pytest.approx(alone.valence, abs=1e-5)


def test_spectrum_image_batch_on_one_axis_answers_like_single_spectra(engine):
    """Pixels sharing an axis take the vectorized path; bad pixels among them get the per-spectrum reasons."""
    pixels = [mn_like(seed=k) for k in range(6)]
    pixels[1] = np.where(np.arange(E.size) == 7, np.nan, pixels[1])
    pixels[3] = np.ones(E.size)
    pixels[4] = pixels[4].reshape(2, -1)
    batch = engine.predict([(E, y) for y in pixels])
    one_by_one = [engine.predict_one(E, y) for y in pixels]
    assert [r.status for r in batch] == ["ok", "rejected", "ok", "rejected", "rejected", "ok"]
    for a, b in zip(batch, one_by_one):
        assert a.status == b.status and a.reason == b.reason
        if a.ok:
            assert np.allclose(a.fractions, b.fractions, atol=1e-5) and a.flags == b.flags


def test_spectra_on_shifted_axes_answer_like_single_spectra_each_at_its_own_energy(engine, monkeypatch):
    """Events of one spectrometer whose offset drifts: each axis the same points shifted. They were read one
    by one (3.7k spectra/s at batch 1024 against 27k on one axis); now as one matrix, each row keeping its
    start, so a spectrum moved with its axis reads the same composition at an offset moved as much."""
    from mnedge_live.engine.core import Engine

    shifts = [0.0, 2.0, -3.5, 7.25, 0.1, 12.0]
    items = [(E + d, mn_like(e=E + d, l3=641.0 + d, seed=k)) for k, d in enumerate(shifts)]
    items.append((np.arange(700.0, 760.0, 0.1), mn_like(np.arange(700.0, 760.0, 0.1), l3=720)))   # misses the edge
    items.append((E + 80.0, mn_like(e=E + 80.0, l3=721.0)))      # same points, shifted out of the window
    items.append((E + 1.0, np.ones(E.size)))                     # constant
    items.append((E * 1.0005 + 0.3, mn_like(e=E * 1.0005 + 0.3, seed=9)))   # another dispersion: alone
    bump = np.zeros(E.size)
    bump[2:-1] = 0.5 * np.sin(np.pi * np.arange(E.size - 3) / (E.size - 3))
    items.append((E + bump + 2.0, mn_like(e=E + bump + 2.0, l3=643.0, seed=10)))   # same ends, other interior
    short = np.arange(600.0, 625.0, 0.1)
    items.append((short, mn_like(e=short, l3=610.0, seed=12)))                 # 600-625 eV; shifted to 580-605
    items.append((short - 20.0, mn_like(e=short - 20.0, l3=590.0, seed=11)))   # eV: in the window, no edge
    grouped = []
    real = Engine._answer_shared
    monkeypatch.setattr(Engine, "_answer_shared",
                        lambda self, e, y, idx, *a: grouped.append(list(idx)) or real(self, e, y, idx, *a))
    batch = engine.predict(items)
    one_by_one = [engine.predict_one(e, y) for e, y in items]
    # the shifted ones (the constant one too: its row goes on alone); items 6 and 7 share one axis exactly
    assert sorted(next(g for g in grouped if 0 in g)) == [0, 1, 2, 3, 4, 5, 8]
    for a, b in zip(batch, one_by_one):
        assert a.status == b.status and a.reason == b.reason
        if a.ok:
            assert np.allclose(a.fractions, b.fractions, atol=1e-4)
            assert a.energy_offset_eV == pytest.approx(b.energy_offset_eV, abs=1e-3)
    assert [r.ok for r in batch[:6]] == [True] * 6
    offsets = np.array([r.energy_offset_eV for r in batch[:6]])
    assert np.allclose(offsets - offsets[0], shifts, atol=0.05)
    assert "misses the Mn L2,3 edge" in batch[6].reason and "constant" in batch[8].reason
    assert all(10 not in g and 12 not in g for g in grouped)   # neither joins a shifted group
    assert "misses the Mn L2,3 edge" in batch[12].reason


def test_shared_axis_entry_answers_like_predict_and_counts_every_row(engine):
    """``predict_shared_axis`` (spectrum-image chunks) gives predict's answers, bad rows with predict's reasons."""
    y = np.array([mn_like(seed=k) for k in range(5)])
    y[1, 7] = np.nan
    y[3] = 1.0
    before = dict(engine.counters)
    shared = engine.predict_shared_axis(E, y)
    pairs = engine.predict([(E, row) for row in y])
    assert [r.status for r in shared] == ["ok", "rejected", "ok", "rejected", "ok"]
    assert "NaN" in shared[1].reason and "constant" in shared[3].reason
    for a, b in zip(shared, pairs):
        assert a.status == b.status and a.reason == b.reason
        if a.ok:
            assert np.allclose(a.fractions, b.fractions, atol=1e-6) and a.flags == b.flags
    assert engine.counters["spectra"] - before["spectra"] == 10
    assert engine.counters["rejected"] - before["rejected"] == 4


def test_shared_axis_rows_given_as_lists_answer_one_by_one(engine):
    # a None in one list made the whole block an object array: every good row was refused as non-numeric
    good = mn_like().tolist()
    bad = list(good)
    bad[10] = None
    res = engine.predict_shared_axis(E, [good, bad, good])
    assert [r.status for r in res] == ["ok", "rejected", "ok"]
    assert "non-numeric" in res[1].reason


def test_shared_axis_rows_in_a_1d_object_array_answer_one_by_one(engine):
    """Rows of different lengths (or a None) make a 1-D object array: it was answered as one spectrum whose
    reason spoke of the number of rows ("intensity has 3"), one answer for three rows."""
    y = mn_like()
    rows = np.empty(3, object)
    rows[0], rows[1], rows[2] = y, None, y[:-1]
    before = engine.counters["spectra"]
    res = engine.predict_shared_axis(E, rows)
    assert [r.status for r in res] == ["ok", "rejected", "rejected"] and engine.counters["spectra"] - before == 3
    assert res[2].reason == f"energy has {E.size} points but intensity has {E.size - 1}"
    assert res[0].fractions == pytest.approx(engine.predict_one(E, y).fractions, abs=1e-6)


@pytest.mark.parametrize("energy, intensities, reason", [
    (E, np.ones((2, E.size - 1)), "energy has"),        # rows do not match the axis
    (E[::-1], np.array([mn_like()[::-1]] * 2), None),   # descending axis: the per-spectrum path reads it
    (E, np.array([mn_like()] * 2).astype(str), "non-numeric"),
])
def test_shared_axis_entry_hands_unusual_input_to_the_per_spectrum_path(engine, energy, intensities, reason):
    res = engine.predict_shared_axis(energy, intensities)
    assert len(res) == 2
    if reason is None:
        assert all(r.ok for r in res)
        assert res[0].valence == pytest.approx(engine.predict_one(E, mn_like()).valence, abs=1e-3)
    else:
        assert all(r.status == "rejected" and reason in r.reason for r in res)


def test_batches_larger_than_one_backend_call_keep_row_order(engine, monkeypatch):
    """Rows beyond one backend batch are answered in order (checked with a 3-row batch)."""
    y = np.array([mn_like(seed=k, l3=638.0 + 0.5 * k) for k in range(8)])
    whole = engine.predict_shared_axis(E, y)
    monkeypatch.setattr(engine, "_batch_rows", 3)
    chunked = engine.predict_shared_axis(E, y)
    pairs = engine.predict([(E, row) for row in y])
    assert np.allclose([r.valence for r in chunked], [r.valence for r in whole], atol=1e-6)
    assert np.allclose([r.valence for r in pairs], [r.valence for r in whole], atol=1e-6)


def test_engine_with_one_cpu_thread_gives_the_same_answers(engine, tiny_artifact):
    """``threads`` sizes the ONNX Runtime pool and torch's (process-wide) pool; the answers do not change."""
    import torch

    lean = load_engine(str(tiny_artifact), backend="onnxruntime", threads=1)
    assert lean.backend.session.get_session_options().intra_op_num_threads == 1
    assert torch.get_num_threads() == 1
    y = np.array([mn_like(seed=k) for k in range(4)])
    a, b = lean.predict_shared_axis(E, y), engine.predict_shared_axis(E, y)
    assert np.allclose([r.valence for r in a], [r.valence for r in b], atol=1e-5)


def test_a_batch_split_over_workers_answers_like_one_call(tiny_artifact):
    """Parts of a batch run at once on the engine's workers; answers, order and counters are one call's."""
    split = load_engine(str(tiny_artifact), backend="onnxruntime", workers=3)
    whole = load_engine(str(tiny_artifact), backend="onnxruntime", workers=1)
    spectra = [(E, mn_like(seed=k, l3=636.0 + 0.1 * k)) for k in range(150)]
    spectra[5] = (E, np.full(E.size, np.nan))
    spectra[77] = ("garbage", None)
    spectra[140] = (E[::-1], mn_like(seed=1)[::-1])
    assert split._parts(len(spectra)) == [(0, 50), (50, 100), (100, 150)] and split._parts(40) == [(0, 40)]
    a, b = split.predict(spectra), whole.predict(spectra)
    assert [(r.status, r.reason) for r in a] == [(r.status, r.reason) for r in b]
    ok = [i for i, r in enumerate(b) if r.ok]
    assert len(ok) == 148
    assert np.allclose([a[i].valence for i in ok], [b[i].valence for i in ok], atol=1e-5)
    assert split.counters == {"spectra": 150, "ok": 148, "rejected": 2}
    assert any(t.name.startswith("mnedge-engine") for t in threading.enumerate())
    y = np.array([mn_like(seed=k, l3=637.0 + 0.05 * k) for k in range(100)])
    y[60] = 1.0
    a, b = split.predict_shared_axis(E, y), whole.predict_shared_axis(E, y)
    assert [(r.status, r.reason) for r in a] == [(r.status, r.reason) for r in b]
    assert np.allclose([r.valence for r in a if r.ok], [r.valence for r in b if r.ok], atol=1e-5)


def test_a_cpu_engine_splits_over_its_cores_unless_the_caller_sizes_threads(tiny_artifact):
    from mnedge_live.cores import usable_cores

    auto = load_engine(str(tiny_artifact), backend="onnxruntime")
    assert auto.workers == usable_cores()
    if auto.workers > 1:   # one ONNX Runtime thread per part
        assert auto.backend.session.get_session_options().intra_op_num_threads == 1
    assert load_engine(str(tiny_artifact), backend="onnxruntime", threads=2).workers == 1


WIDE = np.arange(600.0, 740.0, 0.1)


def _shifted(y_of, shift):
    """A Mn-like doublet moved by ``shift`` eV on the wide axis."""
    return y_of(WIDE - shift) - 0.05


def test_mn_edge_beside_a_stronger_edge_of_another_element_is_read(engine):
    """An Fe-like L2,3 edge 67 eV above Mn in a wide EELS window, twice as strong: Mn is read, as alone."""
    mn = mn_like(WIDE, noise=0.002)
    both = mn + 2.0 * _shifted(lambda e: mn_like(e, l3=641.0, noise=0.0), 67.0)
    alone, beside = engine.predict([(WIDE, mn), (WIDE, both)])
    assert alone.ok and beside.ok, beside.reason
    assert beside.valence == pytest.approx(alone.valence, abs=0.05)


WIDER = np.arange(560.0, 740.0, 0.1)


@pytest.mark.parametrize("shift, other, spacing", [(-30.0, 67.0, 13.1), (-25.0, 67.0, 13.1),
                                                   (25.0, -65.0, 9.0), (30.0, -65.0, 9.0)])
def test_mn_edge_on_an_axis_off_by_25_to_30_ev_beside_a_stronger_edge_just_past_the_window(engine, shift, other,
                                                                                          spacing):
    """Fe's L3 (67 eV above Mn, three times as strong) 2-7 eV above the window where Mn's L3 may lie, or Cr's
    L2 (65 + 9 eV below) just inside its low end: the window's strongest doublet score is then that edge's
    flank or L2, no line of its own; the Mn edge inside the window is read, as without the other edge."""
    mn = mn_like(WIDER - shift, noise=0.0) - 0.05 + np.random.default_rng(4).normal(0, 0.002, WIDER.size)
    edge = 3.0 * (mn_like(WIDER - shift - other, spacing=spacing, noise=0.0) - 0.05)
    alone, beside = engine.predict([(WIDER, mn), (WIDER, mn + edge)])
    assert alone.ok and beside.ok, beside.reason
    assert beside.valence == pytest.approx(alone.valence, abs=0.05)
    assert beside.energy_offset_eV == pytest.approx(alone.energy_offset_eV, abs=0.3)


@pytest.mark.parametrize("shift", [-30.0, -22.0, 22.0, 30.0])
def test_an_axis_off_by_up_to_30_ev_reads_as_a_calibrated_one(engine, shift):
    calibrated = engine.predict_one(WIDE, _shifted(lambda e: mn_like(e, noise=0.002), 0.0))
    off = engine.predict_one(WIDE, _shifted(lambda e: mn_like(e, noise=0.002), shift))
    assert calibrated.ok and off.ok, off.reason
    assert off.valence == pytest.approx(calibrated.valence, abs=0.05)
    assert off.energy_offset_eV == pytest.approx(calibrated.energy_offset_eV + shift, abs=0.5)


@pytest.mark.parametrize("shift", [-40.0, 40.0, 67.0])
def test_an_edge_outside_the_mn_window_is_still_rejected(engine, shift):
    """Only the other element's edge (or Mn's beyond any calibration error): rejected, never a line of it read as Mn."""
    y = _shifted(lambda e: mn_like(e, noise=0.0), shift) + np.random.default_rng(3).normal(0, 0.002, WIDE.size)
    r = engine.predict_one(WIDE, y)
    assert r.status == "rejected" and "is not the Mn L3 edge" in r.reason


def test_partial_window_is_flagged_not_rejected(engine):
    """A window ending 11 eV above L3 (inside the training crops): read out, with the missing L2 flagged."""
    e = np.arange(636.0, 652.0, 0.1)
    r = engine.predict_one(e, mn_like(e))
    assert r.ok and "l2_not_measured" in r.flags


@pytest.mark.parametrize("end", [645.0, 649.0])
def test_a_window_ending_short_of_the_trough_is_rejected(engine, end):
    """Ending 4 or 8 eV above L3 is shorter than any training crop (9 eV): rejected, never guessed."""
    e = np.arange(630.0, end, 0.1)
    r = engine.predict_one(e, mn_like(e))
    assert r.status == "rejected" and "8.5 eV above the L3 maximum at 641.0 eV" in r.reason


def test_thread_safe(engine):
    spectra = [(E, mn_like(seed=s, l3=638 + s)) for s in range(8)]
    serial = [r.valence for r in engine.predict(spectra)]
    out = {}

    def work(k):
        out[k] = [r.valence for r in engine.predict(spectra)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert np.allclose(out[k], serial, atol=1e-6)


def test_backend_failure_rejects_rows_and_keeps_serving(engine):
    class Broken:
        name, device = "broken", "cpu"

        def run(self, x):
            raise RuntimeError("device lost")

    good = engine.backend
    engine.backend = Broken()   # the one place a fake is used: a backend that raises
    try:
        res = engine.predict([(E, mn_like()), (E, mn_like(seed=2))])
        assert all(r.status == "rejected" and "device lost" in r.reason for r in res)
    finally:
        engine.backend = good
    assert engine.predict_one(E, mn_like()).ok


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_a_rising_ramp_is_no_l3_line(engine, noise):
    # an I0 column read as the spectrum: before the rule it was read as valence 3.09, status ok
    e = np.arange(630.0, 670.0, 0.1)
    rng = np.random.default_rng(5)
    for rise in (0.01, 0.5, 10.0):
        y = 106300.0 * (1.0 + rise * (e - 630.0) / 40.0 + rng.normal(0.0, noise, e.size))
        r = engine.predict_one(e, y)
        assert r.status == "rejected", (rise, r.valence)
        if rise >= 10.0 or noise == 0.0:   # a gentle noisy ramp may already show no edge above its noise
            assert r.reason.startswith("no L3 line at"), r.reason


def test_a_backend_without_trunk_features_warns_that_the_ood_rule_is_off(monkeypatch, caplog):
    import mnedge_live.engine.core as core

    real = core.make_backend

    class NoFeatures:   # a TensorRT engine built before features were exported (no GPU here to build one)
        def __init__(self, be):
            self.be, self.name, self.device = be, "tensorrt-legacy", be.device

        def run(self, x):
            return (*self.be.run(x)[:3], None)

    monkeypatch.setattr(core, "make_backend", lambda *a, **k: NoFeatures(real(*a, **k)))
    with caplog.at_level("WARNING", logger="mnedge_live.engine.core"):
        engine = load_engine()
    assert engine.ood is not None
    assert any("out-of-distribution rule" in r.message and "off" in r.message for r in caplog.records)


@pytest.mark.parametrize("output", [0, 1, 2, 3])   # fractions, log_std, side outputs, trunk features
def test_non_finite_network_output_rejects_that_row_only(engine, output):
    good = engine.backend

    class Faulty:   # a device that returns NaN for one row of one output (an FP16 overflow, a diverged model)
        name, device = "faulty", "cpu"

        def run(self, x):
            out = [None if o is None else o.copy() for o in good.run(x)]
            out[output][1] = np.nan
            return tuple(out)

    engine.backend = Faulty()
    try:
        res = engine.predict([(E, mn_like()), (E, mn_like(seed=2)), (E, mn_like(seed=3))])
    finally:
        engine.backend = good
    assert [r.status for r in res] == ["ok", "rejected", "ok"]
    assert "NaN or inf" in res[1].reason and "faulty" in res[1].reason
    assert all(np.isfinite(r.valence) for r in (res[0], res[2]))


@pytest.mark.parametrize("name, valence", [
    ("Data2_MnO.csv", 2.0), ("Data2_YBaMn3AlO7.csv", 2.0), ("Data2_LaMnO3.csv", 3.0), ("Data2_SrMnO3.csv", 4.0),
])
def test_default_model_reads_the_measured_spectra_within_0_15(real_dir, name, valence):
    from offline_training.realism import read_two_column

    engine = load_engine()
    e, y = read_two_column(real_dir / name)
    r = engine.predict_one(e, y)
    assert r.ok, (name, r.reason)
    # the same spectrum on an axis 12 eV off reads the same, and the offset is reported
    r2 = engine.predict_one(e + 12.0, y)
    assert r2.ok and abs(r2.valence - r.valence) <= 0.02, (name, r.valence, r2.valence)
    assert r2.energy_offset_eV - r.energy_offset_eV == pytest.approx(12.0, abs=0.3)
    assert abs(r.valence - valence) <= 0.15, (name, r.valence)


@pytest.mark.parametrize("name", ["Data2_MnO.csv", "Data2_YBaMn3AlO7.csv", "Data2_LaMnO3.csv", "Data2_SrMnO3.csv"])
def test_the_measured_spectra_inverted_are_refused_not_read(real_dir, name):
    """Upside down (a negative drain current, transmission I/I0) the lines are dips: refused with that reason.

    Before the dip rule, the four files inverted on a window extended by flat pre- and post-edges read
    3.09 / 3.59 / 3.22 / 3.09 with no flag at all.
    """
    from offline_training.realism import read_two_column

    engine = load_engine()
    e, y = read_two_column(real_dir / name)
    o = np.argsort(e)
    e, y = e[o], y[o]
    pre, post = np.arange(e[0] - 20.0, e[0] - 0.05, 0.1), np.arange(e[-1] + 0.1, e[-1] + 30.0, 0.1)
    wide_e = np.concatenate([pre, e, post])
    wide_y = np.concatenate([np.full(pre.size, y[:5].mean()), y, np.full(post.size, y[-20:].mean())])
    assert engine.predict_one(wide_e, wide_y).ok
    for energy, intensity in ((e, -y), (wide_e, -wide_y), (wide_e, 3 * wide_y.max() - wide_y)):
        r = engine.predict_one(energy, intensity)
        assert not r.ok and "inverted" in r.reason, (name, r.valence, r.reason)


def test_a_spectrum_refused_with_gaps_across_its_lines_is_told_of_the_gaps(real_dir):
    """Measured LaMnO3 without points over the trough (L3 + 2 to L3 + 9 eV) is refused by its out-of-distribution
    score; the reason did not say that the gap, bridged by a straight line, is the likely cause."""
    from mnedge_live.engine.core import SPARSE_LINES_NOTE
    from offline_training.realism import read_two_column

    engine = load_engine()
    e, y = read_two_column(real_dir / "Data2_LaMnO3.csv")
    o = np.argsort(e)
    e, y = e[o], y[o]
    l3 = e[np.argmax(y)]
    keep = (e < l3 + 2.0) | (e > l3 + 9.0)
    r = engine.predict_one(e[keep], y[keep])
    assert not r.ok and "out-of-distribution" in r.reason and r.reason.endswith(SPARSE_LINES_NOTE), r
    refused_whole = engine.predict_one(e, -y)   # refused for another reason, measured densely: no note
    assert not refused_whole.ok and SPARSE_LINES_NOTE not in refused_whole.reason


def test_wide_gaps_between_points_on_the_lines_are_flagged(engine):
    """A 2.4 eV gap across L3 or L2 flags ``sparse_lines``; the same gap in the pre-edge does not; both paths agree."""
    def without(lo, hi):
        keep = (E < lo) | (E > hi)
        return E[keep], mn_like(E[keep])

    results = {name: engine.predict_one(*without(lo, hi))
               for name, (lo, hi) in {"on_l3": (639.9, 642.2), "on_l2": (650.9, 653.2),
                                      "pre_edge": (625.0, 627.3), "none": (0, 0)}.items()}
    assert all(r.ok for r in results.values()), results
    assert {n for n, r in results.items() if "sparse_lines" in r.flags} == {"on_l3", "on_l2"}
    e, y = without(639.9, 642.2)
    assert all("sparse_lines" in r.flags for r in engine.predict_shared_axis(e, np.stack([y, y])))


def test_a_resolution_beyond_the_trained_range_is_flagged(real_dir):
    """MnO with 3 eV of extra blur (the default model trained up to 2.5 eV) is flagged; as measured it is not."""
    from offline_training.evaluate import blurred
    from offline_training.realism import read_two_column

    engine = load_engine()
    assert engine.broad_resolution_ev == pytest.approx(0.8 * 2.5)   # from the card's gauss_fwhm
    e, y = read_two_column(real_dir / "Data2_MnO.csv")
    sharp, broad = engine.predict_one(e, y), engine.predict_one(e, blurred(e, y, 3.0))
    assert sharp.ok and broad.ok
    assert "broad_resolution" not in sharp.flags and "broad_resolution" in broad.flags, broad.resolution_eV


@pytest.mark.parametrize("scale", [1e-300, 1e-40, 1e-15, 1e-12, 1e9, 1e30, 1e300])
def test_intensities_in_any_unit_read_the_same(engine, scale):
    """A drain current in amperes (1e-12) or raw counts (1e9) is the same spectrum as one of height 1.

    So is one at 1e300 or 1e-300, beyond float32 (the work rows): without a
    warning, on both paths, instead of a refusal for the wrong reason.
    """
    y = mn_like()
    ref = engine.predict_one(E, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = engine.predict_one(E, y * scale)
        pixels = engine.predict_shared_axis(E, np.stack([y, y]) * scale)
    assert ref.ok and r.ok, r.reason
    assert r.valence == pytest.approx(ref.valence, abs=1e-4)
    assert r.fractions == pytest.approx(ref.fractions, abs=1e-4)
    assert all(p.ok and p.valence == pytest.approx(r.valence, abs=1e-5) for p in pixels), pixels[0].reason


def test_a_clipped_line_is_flagged_on_both_paths(engine):
    """A detector that saturated at 70 % of the L3 height flattens the line: the readout says so."""
    y = mn_like(noise=0.0)
    cut = np.minimum(y, y.min() + 0.7 * np.ptp(y))
    clean, clipped = engine.predict([(E, y), (E, cut)])
    assert clean.ok and clipped.ok
    assert "clipped" in clipped.flags and "clipped" not in clean.flags
    pixels = engine.predict_shared_axis(E, np.stack([y, cut]))
    assert [p.flags for p in pixels] == [clean.flags, clipped.flags]
    scaled = engine.predict_shared_axis(E, np.stack([y, cut]) * 1e300)   # rescaled rows find it too
    assert [p.flags for p in scaled] == [clean.flags, clipped.flags]


def test_a_spike_is_repaired_and_flagged(engine):
    """A cosmic ray 10x the L3 height reads like the clean spectrum, and the readout says it was repaired."""
    y = mn_like()
    spiky = y.copy()
    spiky[np.argmin(np.abs(E - 650.0))] += 10 * np.ptp(y)
    clean, repaired = engine.predict([(E, y), (E, spiky)])
    assert clean.ok and repaired.ok
    assert "spikes_removed" in repaired.flags and "spikes_removed" not in clean.flags
    assert repaired.valence == pytest.approx(clean.valence, abs=0.01)
    pixels = engine.predict_shared_axis(E, np.stack([y, spiky]))  # the image path repairs the same way
    assert [p.flags for p in pixels] == [clean.flags, repaired.flags]
    assert pixels[1].valence == pytest.approx(repaired.valence, abs=1e-5)


def test_a_wide_core_loss_window_is_read_from_its_mn_region(engine):
    """2048 channels of 0.25 eV (450-962 eV: O K, Mn L2,3, La M4,5 and a power law) read like the Mn window alone."""
    wide = 450.0 + 0.25 * np.arange(2048)
    y = (mn_like(wide, noise=0.0) + 1.5 * np.exp(-0.5 * ((wide - 540.0) / 2.5) ** 2)
         + 2.0 * np.exp(-0.5 * ((wide - 834.0) / 0.9) ** 2) + 3.0 * (wide / 450.0) ** -3)
    y[np.argmin(np.abs(wide - 900.0))] = np.nan  # a dead channel far from the edge does not matter
    narrow = (wide >= 620.0) & (wide <= 680.0)
    a, b = engine.predict([(wide, y), (wide[narrow], y[narrow])])
    assert a.ok and b.ok, a.reason
    assert a.valence == pytest.approx(b.valence, abs=0.05)
    pixels = engine.predict_shared_axis(wide, np.stack([y, y]))  # the image path crops alike
    assert pixels[0].ok and pixels[0].valence == pytest.approx(a.valence, abs=1e-5)


def test_model_input_is_what_the_engine_reads():
    """Figures show the network's input through the engine's own repairs and checks, not a second pipeline."""
    from mnedge_live.engine.core import model_input

    y = mn_like()
    spiky = y.copy()
    spiky[np.argmin(np.abs(E - 650.0))] += 10 * np.ptp(y)
    clean, repaired = model_input(E, y).x, model_input(E, spiky).x
    assert clean.shape == (1, 2, 256)
    assert float((clean - repaired).abs().max()) < 0.02
    with pytest.raises(ValueError, match="looks like keV"):
        model_input(E / 1000.0, y)


def test_a_coarse_axis_is_flagged(engine):
    """Points 0.8 eV apart (beyond the trained 0.4 eV) are read but flagged; 0.1 eV points are not."""
    fine = engine.predict_one(E, mn_like())
    coarse_e = np.arange(620.0, 680.0, 0.8)
    coarse = engine.predict_one(coarse_e, mn_like(coarse_e))
    assert fine.ok and coarse.ok
    assert "coarse_axis" in coarse.flags and "coarse_axis" not in fine.flags
    pixels = engine.predict_shared_axis(coarse_e, np.stack([mn_like(coarse_e)] * 2))
    assert all("coarse_axis" in p.flags for p in pixels)


@pytest.mark.parametrize("step, flagged", [(0.35, False), (0.4, False), (0.45, True), (0.5, True)])
def test_coarse_axis_means_beyond_the_spacing_the_model_was_trained_on(engine, step, flagged):
    """The limit is the model's own (its card's largest trained point spacing), not a fixed 0.5 eV: points
    0.5 eV apart, beyond the default model's 0.4 eV, moved sharp synthetic readings by up to 0.15 unflagged."""
    trained = engine.artifact.card["training"]["config"]["forward"]["point_spacing"][1]
    assert engine.coarse_axis_ev == trained
    e = np.arange(620.0, 680.0, step * trained / 0.4)
    r = engine.predict_one(e, mn_like(e))
    assert r.ok and ("coarse_axis" in r.flags) == flagged, (step, r.flags)


def test_flags_are_spelled_per_row_in_column_order():
    from mnedge_live.engine.core import _flag_tuples

    cols = (("a", np.array([True, False, True, False])), ("b", np.array([False, False, True, True])),
            ("c", np.array([True, False, False, True])))
    assert _flag_tuples(cols, 4) == [("a", "c"), (), ("a", "b"), ("b", "c")]
    assert _flag_tuples(tuple((n, c[:0]) for n, c in cols), 0) == []


def test_spectra_sharing_an_axis_by_value_or_by_object_group_alike(engine):
    """One array object for every pixel and one equal array per event give the same groups and answers."""
    from mnedge_live.engine.core import Engine

    e, y = E, mn_like()
    shared = [(e, y * (1 + 0.01 * k)) for k in range(4)]
    copies = [(e.copy(), y * (1 + 0.01 * k)) for k in range(4)]
    mixed = [shared[0], ("not an axis", y), shared[1], (e.copy(), y), None]
    single: list[int] = []
    assert Engine._shared_axis_groups(shared, single) == [[0, 1, 2, 3]] and single == []
    assert Engine._shared_axis_groups(copies, single) == [[0, 1, 2, 3]] and single == []
    assert Engine._shared_axis_groups(mixed, single) == [[0, 2, 3]] and sorted(single) == [1, 4]
    other = E + 0.05   # two axes taking turns, each in separate arrays: two groups
    turns = [(e.copy(), y), (other.copy(), y), (other.copy(), y), (e.copy(), y), (other.copy(), y)]
    single = []
    assert Engine._shared_axis_groups(turns, single) == [[0, 3], [1, 2, 4]] and single == []
    a, b = engine.predict(shared), engine.predict(copies)
    assert [r.valence for r in a] == [r.valence for r in b]


def test_a_line_on_a_background_beyond_the_training_range_is_flagged(engine):
    e = np.arange(600.0, 690.0, 0.1)
    line = mn_like(e, noise=0.0)
    # background under L3 over the L3 line's height (the engine measures 2.2 / 6.7 / 13.4 / 73.5): from 10 on
    for ratio, flagged in ((2.0, False), (6.0, False), (12.0, True), (60.0, True)):
        y = line + ratio * (line.max() - line.min()) * (e / 641.0) ** -3
        r = engine.predict_one(e, y)
        assert r.ok and ("strong_background" in r.flags) == flagged, (ratio, r.flags)


@pytest.mark.parametrize("where, value", [(-1, np.nan), (1, np.inf), (100, np.nan), (0, -np.inf)])
def test_a_non_finite_energy_in_a_batch_of_shifted_axes_is_refused_alone(engine, where, value):
    """The shifted-axis grouping read the axis ends as numbers: a NaN there raised out of predict and the
    whole batch got no answer."""
    bad = E + 1.0
    bad[where] = value
    items = [(E, mn_like()), (bad, mn_like(seed=1)), (E + 2.0, mn_like(e=E + 2.0, l3=643.0, seed=2))]
    batch = engine.predict(items)
    assert batch[1].status == "rejected" and "NaN or inf" in batch[1].reason
    assert [r.status for r in batch] == [engine.predict_one(e, y).status for e, y in items]


def test_axes_whose_spacing_overflows_the_shift_grouping_are_answered_each_alone(engine):
    """Two spectra on axes of 1e299-1e300 eV steps: the shifted-axis grouping rounded the spacing over its
    tolerance, which overflowed (OverflowError out of predict: no answer for the batch)."""
    huge = np.linspace(0.0, 1e302, 300)
    huge[1] = 1e299
    items = [(huge, mn_like(seed=3)[:300]), (huge + 1.0, mn_like(seed=4)[:300]), (E, mn_like())]
    batch = engine.predict(items)
    assert [r.status for r in batch] == ["rejected", "rejected", "ok"]
    assert [r.reason for r in batch] == [engine.predict_one(e, y).reason for e, y in items]


def test_cropped_windows_read_the_same_alone_and_among_longer_rows():
    """A short window padded into a batch of longer rows is read as alone: the L3 search's filters stop at the
    row's own ends in both. Before, a 13 eV window (622.5-635.8 eV, offset -14 eV) found its L3 at 627.0 eV in
    a batch and read 3.26, alone at 629.4 eV and was refused (benchmarks/RESULTS.md, 2026-12-07)."""
    import dataclasses

    from offline_training.evaluate import batch_spectra
    from offline_training.forward import ForwardModel
    from offline_training.gate import training_bank, training_ranges

    default = load_engine(warmup=False)
    cfg = dataclasses.replace(training_ranges(default), eels_share=1.0, t_lambda=(1.0, 2.0),
                              plasmon_width=(1.0, 3.0), psnr_db=(20.0, 60.0))
    n = 1500
    b = ForwardModel(training_bank(default)[0], cfg).sample(n, seed=77, crop=True,
                                                           fractions=torch.tensor([[0.3, 0.0, 0.7]] * n))
    spectra = batch_spectra(b)
    together = default.predict(spectra)
    alone = [default.predict_one(e, y) for e, y in spectra]
    assert [r.status for r in together] == [r.status for r in alone]
    ok = [j for j, r in enumerate(alone) if r.ok]
    assert len(ok) > 1000
    assert max(abs(together[j].valence - alone[j].valence) for j in ok) < 1e-3


def test_zero_padding_at_the_window_ends_is_set_aside_and_flagged(engine):
    """A file whose window was filled out with zeros where nothing was measured reads as the measured points
    alone, flagged; read as measured, the zeros in the pre-edge window pulled the background chord down (the
    four measured spectra read up to 0.9 off, unflagged: benchmarks/RESULTS.md, 2026-12-07)."""
    measured = E[(E >= 634.0) & (E <= 670.0)]
    y = mn_like(measured, seed=5) + 0.8          # a pre-edge level 0.8 of the L3 line
    wide = np.round(np.arange(600.0, 690.0, 0.1), 6)
    inside = (wide >= measured[0] - 1e-6) & (wide <= measured[-1] + 1e-6)
    filled = np.zeros(wide.size)
    filled[inside] = y
    alone = engine.predict_one(measured, y)
    padded = engine.predict_one(wide, filled)
    assert alone.ok and padded.ok and "zero_padding_ignored" in padded.flags
    assert "zero_padding_ignored" not in alone.flags
    assert padded.fractions == pytest.approx(alone.fractions, abs=1e-6)
    # pixels of a spectrum image on that axis, padded alike or not, and the same on shifted axes: as alone
    other = filled.copy()
    other[wide > 668.0] = 0.0
    plain = mn_like(wide, seed=6) + 0.8
    rows = [filled, other, filled, plain]
    shifted = [(wide + 0.37 * k, row) for k, row in enumerate(rows)]
    alone = [engine.predict_one(wide, row) for row in rows]
    for batch, singles in ((engine.predict_shared_axis(wide, np.array(rows)), alone),
                           (engine.predict(shifted), [engine.predict_one(*item) for item in shifted])):
        for a, b in zip(batch, singles):
            assert a.ok and b.ok and a.flags == b.flags
            assert a.fractions == pytest.approx(b.fractions, abs=1e-5)
    assert [("zero_padding_ignored" in r.flags) for r in alone] == [True, True, True, False]


def test_points_that_go_back_across_the_window_are_read_sorted_and_flagged(engine):
    """A second scan appended to the first (here at twice the gain), a return sweep, shuffled rows: the
    points are sorted and repeated energies averaged, which blends scans that disagree (a measured LaMnO3 with
    its first 20 points appended at twice the gain read 3.63 against 3.00, unflagged: benchmarks/RESULTS.md,
    2026-12-08). Such readouts are flagged ``points_out_of_order``; an ascending or descending axis, repeated
    energies next to each other and jitter of a fraction of a spacing are not."""
    y = mn_like(seed=7)
    rng = np.random.default_rng(8)
    perm = rng.permutation(E.size)
    cases = {"appended at 2x": (np.r_[E, E[:20]], np.r_[y, 2 * y[:20]], True),
             "return sweep": (np.r_[E, E[::-1]], np.r_[y, y[::-1]], True),
             "shuffled": (E[perm], y[perm], True),
             "back by 3 spacings": (np.r_[E[:300], E[296:]], np.r_[y[:300], y[296:]], True),
             "ascending": (E, y, False), "descending": (E[::-1], y[::-1], False),
             "repeated in place": (np.repeat(E, 2), np.repeat(y, 2), False),
             "back by 1.5 spacings": (np.r_[E[:300], E[297:] + 0.05], np.r_[y[:300], y[297:]], False),
             "jitter": (E + rng.uniform(-0.04, 0.04, E.size), y, False)}
    for name, (e, yy, flagged) in cases.items():
        r = engine.predict_one(e, yy)
        assert r.ok and ("points_out_of_order" in r.flags) == flagged, (name, r.flags, r.reason)
    alone = engine.predict_one(E, y)
    for name in ("return sweep", "shuffled"):   # the same points in another order: the same reading
        assert engine.predict_one(*cases[name][:2]).fractions == pytest.approx(alone.fractions, abs=1e-6)


def test_masked_values_are_refused_not_read_as_data(engine):
    """``np.asarray`` drops a masked array's mask: points masked as bad (here set to 50) were read as data.
    Masked values are refused with the reason, on every path; a masked array without masked values reads as
    its data."""
    y = mn_like(seed=9)
    bad = np.ma.masked_array(y.copy(), mask=np.zeros(E.size, bool))
    bad[100:140] = 50.0
    bad[100:140] = np.ma.masked
    unmasked = np.ma.masked_array(y.copy(), mask=np.zeros(E.size, bool))
    plain = engine.predict_one(E, y)
    results = engine.predict([(E, bad), (E, y), (E, unmasked), (np.ma.masked_array(E, mask=E > 670.0), y)])
    shared = engine.predict_shared_axis(E, np.ma.masked_array(np.array([y, bad.data, y]),
                                                              mask=np.array([~np.ones(E.size, bool), bad.mask,
                                                                             ~np.ones(E.size, bool)])))
    for r, what in ((results[0], "intensity has 40 masked"), (results[3], "energy has 100 masked"),
                    (shared[1], "intensity has 40 masked")):
        assert r.status == "rejected" and r.reason.startswith(what), r.reason
    for r in (results[1], results[2], shared[0], shared[2]):
        assert r.ok and r.fractions == pytest.approx(plain.fractions, abs=1e-6)


def test_zero_padding_that_leaves_too_little_is_refused_saying_so(engine):
    y = np.zeros(E.size)
    y[:40] = mn_like(E[:40]) + 1.0    # 4 eV measured, the rest zeros
    r = engine.predict_one(E, y)
    assert r.status == "rejected" and "set aside as padding" in r.reason, r.reason


def test_noise_correlated_over_several_points_is_flagged(engine):
    """Noise smoothed over 0.3 eV (a smoothed export, a CCD's point spread) hides from the point-to-point
    estimate: flagged ``correlated_noise`` (10 of 10 draws at 34 dB); the same noise unsmoothed (ratios about 1),
    a clean spectrum, and smoothed noise 60 dB under L3 are not."""
    from scipy.ndimage import gaussian_filter1d

    clean = mn_like(noise=0.0)
    items, expected = [(E, clean)], [False]
    for seed in range(10):
        white = np.random.default_rng(seed).normal(size=E.size)
        smoothed = gaussian_filter1d(white, 3.0)
        smoothed /= smoothed.std()
        items += [(E, clean + 0.02 * white), (E, clean + 0.02 * smoothed), (E, clean + 0.001 * smoothed)]
        expected += [False, True, False]
    reads = engine.predict(items)
    assert all(r.ok for r in reads), [r.reason for r in reads]
    assert ["correlated_noise" in r.flags for r in reads] == expected


def test_nan_filling_the_window_ends_is_refused_with_what_to_do(engine):
    """NaN at the ends only (an alignment that did not crop) is refused, saying to crop; NaN inside is refused plainly."""
    ends, inside = mn_like(), mn_like()
    ends[:30], ends[-12:] = np.nan, np.nan
    inside[300] = np.nan
    r_ends, r_inside = engine.predict([(E, ends), (E, inside)])
    assert r_ends.status == "rejected" and r_ends.reason.startswith("42 NaN") and "crop the spectrum" in r_ends.reason
    assert r_inside.status == "rejected" and r_inside.reason == "1 NaN or inf value(s)"
    assert engine.predict([(E[::-1], ends[::-1])])[0].reason == r_ends.reason   # a descending axis: the same ends


def test_a_window_ending_before_the_post_edge_is_flagged(engine):
    """Without the post-edge window (18-24 eV above L3) the background is the pre-edge level and a slope of it
    stays in: measured EELS mixtures ending 15-19 eV above L3 read 0.15-0.27 off, unflagged before."""
    short, whole = E[E <= 657.0], E
    reads = engine.predict([(short, mn_like(short)), (whole, mn_like(whole))])
    assert [("post_edge_not_measured" in r.flags) for r in reads] == [True, False]
