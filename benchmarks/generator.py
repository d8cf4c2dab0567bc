"""On-the-fly generator throughput: synthetic spectra per second (forward model + shared preprocessing).

Usage: python benchmarks/generator.py [--json] [--batch 4096] [--repeats 5] [--workers 0] [--eager]
       [--default-allocator]
Prints ``spectra_per_s`` (the training stream, :func:`offline_training.generate.stream`:
forward model, preprocessing and targets, what training consumes; with ``--workers W`` drawn
in W worker processes) and ``forward_only_spectra_per_s`` (the forward model alone, in this
process).  The forward model runs compiled (``ForwardModel(compiled=True)``, as training
runs it with ``compile_forward = true`` and ``mnedge-train generate --compiled``);
``compile_s`` is the first batch's time, compilation included, which is not in the rates;
``--eager`` measures the uncompiled stages.  The allocator is tuned as ``mnedge-train``
tunes it (:func:`mnedge_live.memory.reuse_batch_memory`) unless ``--default-allocator``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import emit, machine  # noqa: E402

from mnedge_live.memory import reuse_batch_memory  # noqa: E402
from offline_training.forward import ForwardConfig, ForwardModel  # noqa: E402
from offline_training.generate import stream  # noqa: E402
from offline_training.references.bank import Bank  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="worker processes of the stream (0: this process)")
    ap.add_argument("--eager", action="store_true", help="uncompiled forward-model stages")
    ap.add_argument("--physics", type=int, choices=(1, 2), default=ForwardConfig().physics,
                    help="forward-model physics version (default: the code's default)")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc's allocator as it starts (mnedge-train tunes it: reuse_batch_memory)")
    args = ap.parse_args()
    if not args.default_allocator:
        reuse_batch_memory()  # as mnedge-train does
    fm = ForwardModel(Bank.load(), ForwardConfig(offset=(-15.0, 15.0), physics=args.physics),
                      compiled=not args.eager)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    fm.sample(args.batch, generator=gen)  # warm-up (and compilation)
    t_first = time.perf_counter() - t0
    t_fwd = 0.0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fm.sample(args.batch, generator=gen)
        t_fwd += time.perf_counter() - t0
    skip = max(1, args.workers)   # W workers each draw a batch while the first is awaited: none of those is timed
    batches = stream(fm, args.batch, seed=1, stop=args.repeats + skip, workers=args.workers)
    for _ in range(skip):
        next(batches)  # start-up (worker processes) and warm-up, not timed
    gc.collect()      # a full collection left over from the start-up is not the stream's cost
    t0 = time.perf_counter()
    for _ in batches:
        pass
    t_all = time.perf_counter() - t0
    n = args.batch * args.repeats
    emit({"spectra_per_s": round(n / t_all, 1), "forward_only_spectra_per_s": round(n / t_fwd, 1),
          "batch": args.batch, "workers": args.workers, "physics": fm.config.physics,
          "compiled": fm.compiled, "compile_s": round(t_first, 2), "reuse_batch_memory": not args.default_allocator, "spectra": n, "channels": fm.config.axis_points, "machine": machine()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
