"""``evaluate.validation_ranges``: the validation set narrows the model's training ranges, never widens them."""

from __future__ import annotations

import pytest

import offline_training.evaluate as E
from offline_training.forward import ForwardConfig


def test_a_site_models_narrower_ranges_are_kept_and_the_defaults_are_narrowed_to_the_limits(bank):
    site = ForwardConfig(offset=(-15.0, 15.0), psnr_db=(25.0, 45.0), t_lambda=(0.0, 0.4))
    cfg = E.validation_model(site, bank).config   # it drew from PSNR 10-60 dB and t/lambda 0-1 before
    assert cfg.psnr_db == (25.0, 45.0) and cfg.t_lambda == (0.0, 0.4) and cfg.offset == (-15.0, 15.0)
    assert E.validation_ranges(site) == {"psnr_db": (25.0, 45.0), "t_lambda": (0.0, 0.4)}
    # the default model's ranges (PSNR 5-60 dB, t/lambda 0-1.5) give the limits themselves
    wide = ForwardConfig(offset=(-15.0, 15.0), psnr_db=(5.0, 60.0), t_lambda=(0.0, 1.5))
    assert E.validation_ranges(wide) == E.VALIDATION_LIMITS
    with pytest.raises(ValueError, match="psnr_db"):
        E.validation_ranges(ForwardConfig(psnr_db=(0.0, 8.0)))


def test_evaluate_records_the_ranges_it_drew_from(bank):
    from mnedge_live.engine import load_engine

    site = ForwardConfig(offset=(-15.0, 15.0), psnr_db=(25.0, 45.0), t_lambda=(0.0, 0.4))
    res = E.evaluate(load_engine(None, backend="onnxruntime"), site, bank, n=16, n_nnls=0, robustness_n=0)
    assert res["validation_ranges"] == {"psnr_db": [25.0, 45.0], "t_lambda": [0.0, 0.4]}
