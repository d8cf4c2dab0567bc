"""What ``mnedge predict --bin K`` buys on a low-dose spectrum image: pixels read out and their error.

A synthetic EELS spectrum image (the simulated spectrometer of ``mnedge_live.sim``,
a valence gradient across the field of view, every pixel at the same PSNR) is
written as a HyperSpy file and read out by ``mnedge predict --json`` with
``--bin`` 1, 2 and 4.  The truth of a binned pixel is the mean valence of the
pixels it averages (every pixel holds the same amount of Mn).

Usage: python benchmarks/binned_image.py [--json] [--size 64] [--psnr 5] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import emit, machine, write_eels_image  # noqa: E402

BIN = Path(sys.executable).parent


def write_image(path: Path, size: int, psnr_db: float, seed: int = 3) -> np.ndarray:
    """Write the image; return the true valence per pixel ``(size, size)``."""
    from mnedge_live.sim import SpectrumSource, demo_fractions

    source = SpectrumSource(seed=seed)
    rows, truth = [], []
    for r in range(size):
        fr = np.array([demo_fractions(r, c, (size, size)) for c in range(size)])
        truth.append(fr @ np.array([2.0, 3.0, 4.0]))
        rows.append(source.draw(fr, eels=True, psnr_db=psnr_db)[1].astype(np.float32))
    write_eels_image(path, np.stack(rows), title="low dose")
    return np.array(truth)


def readout(path: Path, k: int, truth: np.ndarray, model: str | None) -> dict:
    """Run ``mnedge predict --bin k`` and score its rows against the binned truth."""
    cmd = [str(BIN / "mnedge"), "predict", str(path), "--json", "--no-progress", "--bin", str(k)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd + (["--model", model] if model else []), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rows = json.loads(out.stdout)
    n = truth.shape[0]
    blocks = -(-n // k)
    padded = np.full((blocks * k, blocks * k), np.nan)
    padded[:n, :n] = truth
    binned_truth = np.nanmean(padded.reshape(blocks, k, blocks, k), axis=(1, 3))
    ok = [r for r in rows if r["status"] == "ok"]
    err = np.array([abs(r["valence"] - binned_truth[r["pixel"][0], r["pixel"][1]]) for r in ok])
    return {"bin": k, "pixels": len(rows), "read_out": len(ok), "flagged_low_psnr": sum("low_psnr" in r["flags"] for r in ok),
            "median_abs_valence_error": round(float(np.median(err)), 3) if err.size else None,
            "p90_abs_valence_error": round(float(np.percentile(err, 90)), 3) if err.size else None,
            "wall_s": round(wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--psnr", type=float, default=5.0, help="PSNR (dB) of every pixel")
    ap.add_argument("--model")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mnedge-bin-"))
    try:
        path = folder / "low_dose.hspy"
        truth = write_image(path, args.size, args.psnr)
        emit({"size": f"{args.size}x{args.size}", "psnr_db": args.psnr,
              "by_bin": [readout(path, k, truth, args.model) for k in (1, 2, 4)], "machine": machine()}, args.json)
    finally:   # the image and its maps: never left behind
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
