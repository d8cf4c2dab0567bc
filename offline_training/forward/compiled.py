"""The forward model's stage functions, plain or compiled by ``torch.compile`` (the on-the-fly generator's speed).

Each stage is a chain of whole-batch element-wise operations; in eager
PyTorch every operation is one pass over memory, while TorchInductor fuses
a stage into one loop.  Measured on the 2-core CPU at batch 4096
(benchmarks/RESULTS.md): the per-valence term of the mixture 115 -> 16 ms,
the axis sampling 53 -> 7 ms.  The compiled functions are the same
functions, so the physics stays in one place
(:mod:`offline_training.forward.stages`); results agree with eager ones to
float32 rounding (about 1e-6 of the peak), not bit for bit.

Compilation needs a C++ compiler and costs seconds on the first batch of
each process, so it is opt-in (:class:`~offline_training.forward.ForwardModel`
``compiled=True``): training streams and large datasets use it; evaluation
sets and tests stay eager.  Where compilation fails (no compiler, an
unsupported platform) the stage falls back to eager with one warning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from offline_training.forward import stages

log = logging.getLogger(__name__)

#: Stages worth compiling: long chains of element-wise work (the FFT and random draws stay eager).
COMPILED_STAGES = ("valence_term", "edge_steps", "saturate", "add_background", "measure_on_axis", "measure_points",
                   "interpolate_points", "noise_model")


@dataclass(frozen=True)
class StageFunctions:
    """The stage callables one :meth:`ForwardModel.sample` uses."""

    valence_term: Callable
    edge_steps: Callable
    saturate: Callable
    add_background: Callable
    measure_on_axis: Callable
    measure_points: Callable
    interpolate_points: Callable
    noise_model: Callable
    compiled: bool


class _CompiledStage:
    """A stage compiled with dynamic shapes on first use, falling back to the plain function if compiling fails."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled: Callable | None = torch.compile(fn, dynamic=True)
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the plain function still answers
                log.warning("torch.compile of %s failed (%s: %s); running it eagerly",
                            self.fn.__name__, type(exc).__name__, exc)
                self.compiled = None
        return self.fn(*args, **kwargs)


@functools.lru_cache(maxsize=2)
def stage_functions(compiled: bool = False) -> StageFunctions:
    """The stage functions, plain or compiled (made once per process and shared by every forward model).

    Parameters
    ----------
    compiled : bool
        Compile the stages of :data:`COMPILED_STAGES` with ``torch.compile``
        (dynamic shapes: batch and row counts vary without recompiling).
    """
    def pick(name: str) -> Callable:
        fn = getattr(stages, name)
        return _CompiledStage(fn) if compiled else fn

    if compiled:
        # measure_on_axis and measure_points read their grid spacing as a Python number (a graph break, which costs
        # nothing here); dynamo would print a dozen lines about it in every process
        logging.getLogger("torch._dynamo.variables.tensor").setLevel(logging.ERROR)

    return StageFunctions(**{name: pick(name) for name in COMPILED_STAGES}, compiled=compiled)
