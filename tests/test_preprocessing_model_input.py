"""The model input: held points marked, rows independent of their batch, one preprocessing for training and serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnedge_live.preprocessing import (
    L3_PLAUSIBLE_EV,
    L3_REFERENCE_EV,
    MN_SPIN_ORBIT_EV,
    MODEL_GRID,
    pack,
    preprocess,
)


def _doublet(e, l3=640.0, width=0.6):
    return np.exp(-0.5 * ((e - l3) / width) ** 2) + 0.5 * np.exp(-0.5 * ((e - l3 - MN_SPIN_ORBIT_EV) / 0.8) ** 2)


def test_partial_window_is_edge_held_and_marked():
    e = np.arange(637.0, 646.0, 0.1)          # L3 only, no L2
    y = _doublet(e, 640.0)
    s, v, m = pack([(e, y)])
    p = preprocess(s, v, m)
    assert not bool(p.l2_covered[0])
    held = p.x[0, 1].numpy() > 0.5
    assert held[MODEL_GRID > 647].all() and not held[np.abs(MODEL_GRID - L3_REFERENCE_EV) < 2].any()


def test_batches_answer_rows_independently():
    e1 = np.arange(620.0, 680.0, 0.1)
    e2 = np.arange(630.0, 670.0, 0.3)[::-1]
    s, v, m = pack([(e1, _doublet(e1, 642.0)), (e2, _doublet(e2, 633.0))])
    p = preprocess(s, v, m)
    single = preprocess(*pack([(e2, _doublet(e2, 633.0))]))
    assert float(p.l3_ev[1]) == pytest.approx(float(single.l3_ev[0]), abs=1e-4)
    assert torch.allclose(p.x[1], single.x[0], atol=1e-5)


def test_training_and_serving_share_this_preprocessing():
    import offline_training.generate as gen

    assert gen.preprocess is preprocess


def test_without_diagnostics_the_model_input_and_alignment_are_the_same(bank):
    """Training's ``diagnostics=False`` skips only the edge diagnostics, rows searched in the Mn window included."""
    from offline_training.forward import ForwardConfig, ForwardModel

    # offsets past the plausible L3 window send some rows through the Mn-window search, which
    # needs the noise estimate of those rows even without diagnostics; they lie beyond what a
    # config may draw (ForwardConfig refuses an offset range that moves L3 off the axis), so
    # they are set per row
    offset = -40.0 + 80.0 * torch.rand(512, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    b = ForwardModel(bank, ForwardConfig(offset=(-15.0, 15.0))).sample(512, seed=8, offset=offset)
    true_l3 = b.params["l3_true_ev"] + b.params["offset"]
    assert ((true_l3 < L3_PLAUSIBLE_EV[0]) | (true_l3 > L3_PLAUSIBLE_EV[1])).sum() > 10
    full = preprocess(b.start, b.values, b.valid)
    lean = preprocess(b.start, b.values, b.valid, diagnostics=False)
    assert torch.equal(lean.x, full.x) and torch.equal(lean.l3_ev, full.l3_ev)
    assert torch.equal(lean.l2_covered, full.l2_covered) and torch.equal(lean.l3_covered, full.l3_covered)
    for name in ("edge_snr", "l2_spacing_ev", "l2_height", "psnr_db", "l3_drop", "dip_depth", "background"):
        assert torch.isnan(getattr(lean, name)).all(), name
    measured = true_l3 >= b.start + 3.0          # the edge lies in the row's window (not so past -35 eV)
    assert torch.isfinite(full.edge_snr[measured]).all()
