"""A 256 x 256 EELS spectrum image through ``mnedge predict``, timed as a user runs it.

The image is synthetic (the forward model, a valence gradient across the
field of view, realistic noise) and written as a HyperSpy file with
RosettaSciIO; the timed part is the whole ``mnedge predict`` process (start-up,
lazy read, chunked Dask processing, maps), once printing the table and once
writing the per-pixel JSON.

Usage: python benchmarks/predict_image.py [--json] [--size 256] [--model PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import emit, machine, write_eels_image  # noqa: E402

from mnedge_live.results import reason_kind  # noqa: E402

BIN = Path(sys.executable).parent


def write_image(path: Path, size: int) -> None:
    """A ``size x size`` spectrum image on the simulated spectrometer's channels, as a HyperSpy file."""
    from mnedge_live.sim import SpectrumSource, demo_fractions

    source = SpectrumSource(seed=1)
    rows = []
    for r in range(size):
        fr = np.array([demo_fractions(r, c, (size, size)) for c in range(size)])
        rows.append(source.draw(fr, eels=True, psnr_db=30.0)[1].astype(np.float32))
    write_eels_image(path, np.stack(rows))


def timed(cmd: list[str], keep_stdout: bool = False) -> tuple[float, int, str, str]:
    """Wall time, exit code, the tail of stderr and (when kept) stdout of one command."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    return time.perf_counter() - t0, r.returncode, r.stderr[-500:], r.stdout or ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--model")
    ap.add_argument("--keep", help="write the image here and keep it")
    args = ap.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mnedge-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, folder)
    finally:
        if not args.keep:  # the image is about 100 MB: never leave it behind
            shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, folder: Path) -> int:
    """Write the image into ``folder``, time the three ``mnedge predict`` runs and print the result."""
    image = folder / "image.hspy"
    t0 = time.perf_counter()
    write_image(image, args.size)
    t_write = time.perf_counter() - t0
    base = [str(BIN / "mnedge"), "predict", str(image), "--no-progress"] + (["--model", args.model] if args.model else [])
    t_table, rc_table, err_table, _ = timed(base)
    t_json, rc_json, err_json, rows_json = timed([*base, "--json"], keep_stdout=True)
    t_maps, rc_maps, err_maps, _ = timed([*base, "--plot", str(folder / "maps")])
    rows = json.loads(rows_json) if rc_json in (0, 1) else []
    reasons = Counter(reason_kind(r["reason"]) for r in rows if r["status"] != "ok")
    result = {
        "size": f"{args.size}x{args.size}", "spectra": args.size * args.size,
        "predict_table_s": round(t_table, 2), "predict_json_s": round(t_json, 2), "predict_maps_s": round(t_maps, 2),
        "spectra_per_s_table": round(args.size * args.size / t_table, 1),
        "exit_codes": {"table": rc_table, "json": rc_json, "maps": rc_maps},
        "pixels_ok": sum(r["status"] == "ok" for r in rows), "pixels_rejected": sum(reasons.values()),
        "rejection_reasons": dict(reasons.most_common(5)),
        "image_written_s": round(t_write, 2), "image_mb": round(image.stat().st_size / 2**20, 1),
        "machine": machine(),
    }
    failed = False
    for name, rc, err in (("table", rc_table, err_table), ("json", rc_json, err_json), ("maps", rc_maps, err_maps)):
        if rc not in (0, 1):   # the command failed: its time is no reading time
            result[f"stderr_{name}"] = err
            result[f"predict_{name}_s"] = None
            failed = True
    if rc_table not in (0, 1):
        result["spectra_per_s_table"] = None
    emit(result, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
