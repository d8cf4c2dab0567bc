"""Engine throughput on this machine: spectra/s and latency at batch 1 and 1024, end to end.

End to end means what a user gets from ``engine.predict``: input checks,
resampling of each measured axis, the shared preprocessing, the backend and
the typed results.  ``baseline_batch1024_spectra_per_s`` is the published
MnEdgeNet architecture (PyTorch, same input) at batch 1024 for comparison.

Usage: python benchmarks/engine_throughput.py [--json] [--model PATH] [--backend auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit, machine  # noqa: E402

from mnedge_live.engine import load_engine  # noqa: E402
from offline_training.evaluate import batch_spectra  # noqa: E402
from offline_training.forward import ForwardConfig, ForwardModel  # noqa: E402
from offline_training.references.bank import Bank  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--n1", type=int, default=300, help="batch-1 calls")
    ap.add_argument("--repeats", type=int, default=5, help="batch-1024 calls")
    args = ap.parse_args()
    engine = load_engine(args.model, backend=args.backend)
    fm = ForwardModel(Bank.load(), ForwardConfig(offset=(-15.0, 15.0), crop_probability=0.0))
    spectra = batch_spectra(fm.sample(1024, seed=7))
    for s in spectra[:20]:
        engine.predict([s])
    lat = []
    for i in range(args.n1):
        t0 = time.perf_counter()
        engine.predict([spectra[i % len(spectra)]])
        lat.append(time.perf_counter() - t0)
    lat = np.array(lat)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        engine.predict(spectra)
    t1024 = (time.perf_counter() - t0) / args.repeats
    # Backend alone at batch 1024 (prepared input), ours and the published architecture.
    from mnedge_live.spectrum import pack, preprocess
    from offline_training.baselines import MnEdgeNetPublished

    x = preprocess(*pack(spectra)).x
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        engine.backend.run(x.numpy())
    t_backend = (time.perf_counter() - t0) / args.repeats
    base = MnEdgeNetPublished().eval()
    with torch.inference_mode():
        base(x[:64])
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            base(x)
        t_base = (time.perf_counter() - t0) / args.repeats
    emit({
        "batch1_spectra_per_s": round(1.0 / lat.mean(), 1),
        "batch1_p50_ms": round(1e3 * float(np.percentile(lat, 50)), 3),
        "batch1_p99_ms": round(1e3 * float(np.percentile(lat, 99)), 3),
        "batch1024_spectra_per_s": round(1024 / t1024, 1),
        "batch1024_backend_only_spectra_per_s": round(1024 / t_backend, 1),
        "baseline_batch1024_spectra_per_s": round(1024 / t_base, 1),
        "baseline": "MnEdgeNet published architecture, PyTorch eager, prepared input",
        "model": engine.model_id, "backend": engine.backend_name,
        "flops_per_spectrum": engine.artifact.card.get("flops_per_spectrum"),
        "machine": machine(),
    }, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
