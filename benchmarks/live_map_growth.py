"""What a spectrum image whose extent is unknown costs in map bookkeeping, in the service and in ``mnedge watch``.

A raster of ``--rows`` x ``--cols`` pixels whose events give their pixel in two
fields (``pixel_fields``) and no scan shape, one event page per row, is read
by :class:`~mnedge_live.callback.MnEdgeCallback`; its derived rows are then
replayed into :class:`~mnedge_live.live_map.LiveMapWatcher`.  The events carry
no spectrum, so every pixel is answered with a rejection without the network:
what is timed is the routing, the rows and the maps growing to the extent seen.
Printed: how often each map was allocated anew (each time copies every layer)
and the seconds each part took.

Usage: python benchmarks/live_map_growth.py [--json] [--rows 1024] [--cols 1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine  # noqa: E402


class NoEngine:
    """Stands in for the engine: no spectrum of this raster reaches it (each is rejected first)."""

    model_id = "none"

    def predict(self, spectra):   # pragma: no cover - never called: every event lacks its spectrum
        raise AssertionError("the raster has no spectra")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.config import LiveConfig
    from mnedge_live.live_map import LiveMapWatcher

    docs: list = []
    cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, pixel_fields=["r", "c"],
                     maps_dir=None, max_batch=4096)
    cb = MnEdgeCallback(NoEngine(), cfg, lambda n, d: docs.append((n, d)))
    cb("start", {"uid": "raster", "time": 0.0, "plan_name": "fly"})
    cb("descriptor", {"uid": "d", "run_start": "raster", "name": "primary", "time": 0.0,
                      "data_keys": {"r": {"source": "m", "dtype": "integer", "shape": []},
                                    "c": {"source": "m", "dtype": "integer", "shape": []}}})
    run = cb.runs["raster"]
    shapes = []
    seq = 1
    w = args.cols
    t0 = time.perf_counter()
    for r in range(args.rows):
        cb("event_page", {"descriptor": "d", "seq_num": list(range(seq, seq + w)), "time": [0.0] * w,
                          "uid": [""] * w, "data": {"r": [r] * w, "c": list(range(w))},
                          "timestamps": {"r": [0.0] * w, "c": [0.0] * w}, "filled": {}})
        cb.flush()
        seq += w
        if run.maps is not None and (not shapes or shapes[-1] != run.maps.shape):
            shapes.append(run.maps.shape)
    callback_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        watcher = LiveMapWatcher(Path(tmp), every_s=1e12)
        watcher_shapes = []
        t0 = time.perf_counter()
        for name, doc in docs:
            if name not in ("start", "descriptor", "event_page"):
                continue
            watcher(name, doc)
            if name == "event_page" and watcher.runs:
                live = next(iter(watcher.runs.values()))
                if not watcher_shapes or watcher_shapes[-1] != live.maps.shape:
                    watcher_shapes.append(live.maps.shape)
        watcher_s = time.perf_counter() - t0

    emit({"machine": machine(), "rows": args.rows, "cols": args.cols,
          "callback_map_allocations": len(shapes), "callback_seconds": round(callback_s, 2),
          "watcher_map_allocations": len(watcher_shapes), "watcher_seconds": round(watcher_s, 2)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
