"""The forward model's compiled stages: the same physics as the eager ones, and a fallback when compiling fails."""

from __future__ import annotations

import logging

import pytest
import torch

from offline_training.forward import ForwardConfig, ForwardModel
from offline_training.forward.compiled import COMPILED_STAGES, _CompiledStage, stage_functions


def _cpp_compiler_present() -> bool:
    """TorchInductor finds a C++ compiler (compiling needs one; without, the stages run eagerly)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # noqa: BLE001 - any failure to find one
        return False
    return True


@pytest.mark.parametrize("physics", [1, 2])
def test_compiled_forward_model_matches_the_eager_one(bank, physics):
    cfg = ForwardConfig(offset=(-15.0, 15.0), physics=physics)
    eager = ForwardModel(bank, cfg).sample(96, seed=21)
    compiled = ForwardModel(bank, cfg, compiled=True).sample(96, seed=21)
    stages = stage_functions(True)
    # with a C++ compiler every stage really ran compiled (none fell back to eager); a machine
    # without one (only Python is required) runs them eagerly, and the rest of the test still holds
    assert all((getattr(stages, name).compiled is not None) == _cpp_compiler_present() for name in COMPILED_STAGES)
    assert torch.equal(compiled.fractions, eager.fractions)
    assert torch.equal(compiled.valid, eager.valid)
    for key, value in eager.params.items():
        assert torch.equal(compiled.params[key], value), key
    peak = eager.clean.abs().amax(dim=1, keepdim=True)
    assert ((compiled.clean - eager.clean).abs() / peak).max() < 1e-5
    # The noise draws are the same, up to channels whose exact-Poisson choice (a threshold on the
    # expected counts) rounds the other way; per-row noise levels agree.
    noise_e = (eager.values - eager.clean).std(dim=1)
    noise_c = (compiled.values - compiled.clean).std(dim=1)
    assert torch.allclose(noise_c, noise_e, rtol=0.1)


def test_a_stage_that_fails_to_compile_runs_eagerly_with_a_warning(caplog):
    def double(x):
        return 2 * x

    stage = _CompiledStage(double)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    stage.compiled = broken
    with caplog.at_level(logging.WARNING, logger="offline_training.forward.compiled"):
        assert torch.equal(stage(torch.ones(3)), torch.full((3,), 2.0))
    assert "no C++ compiler" in caplog.text and stage.compiled is None
    assert torch.equal(stage(torch.ones(2)), torch.full((2,), 2.0))  # and stays eager
