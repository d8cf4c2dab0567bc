"""How fast ``mnedge replay`` reads a saved spectrum image back: JSON parsing, routing, the engine, the maps.

A ``--rows`` x ``--cols`` spectrum image of forward-model EELS spectra (560 channels, the simulated
spectrometer's axis) is composed with event-model (one event page per row, ``shape`` in the start
document) and saved as JSON Lines by :class:`~mnedge_live.document_files.DocumentFileWriter`; then
``mnedge replay``'s own loop (:func:`~mnedge_live.commands.replay.replay_files`) reads it through the
live callback with the default model, writing the maps. Printed: the file's size, the seconds to
write it, to only parse it (:func:`~mnedge_live.document_files.read_documents`) and to replay it, and
spectra per second.

Usage: python benchmarks/replay.py [--json] [--rows 64] [--cols 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine  # noqa: E402


def write_image_run(path: Path, rows: int, cols: int) -> int:
    """Save a spectrum image run of ``rows`` x ``cols`` simulated spectra; returns the spectra written."""
    import event_model
    import numpy as np

    from mnedge_live.document_files import DocumentFileWriter
    from mnedge_live.sim import EELS_DISPERSION_EV, EELS_OFFSET_EV, SpectrumSource, demo_fractions

    source = SpectrumSource(seed=1)
    fractions = np.array([demo_fractions(r, c, (rows, cols)) for r in range(rows) for c in range(cols)])
    _, spectra = source.draw(fractions, eels=True, psnr_db=35.0)
    writer = DocumentFileWriter(path)
    bundle = event_model.compose_run(metadata={"plan_name": "grid_scan", "shape": [rows, cols], "detectors": ["eels"]})
    writer("start", bundle.start_doc)
    keys = {"eels_spectrum": {"source": "sim", "dtype": "array", "shape": [spectra.shape[1]]},
            "eels_dispersion": {"source": "sim", "dtype": "number", "shape": []},
            "eels_offset": {"source": "sim", "dtype": "number", "shape": []}}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    writer("descriptor", desc.descriptor_doc)
    for r in range(rows):
        block = spectra[r * cols:(r + 1) * cols]
        data = {"eels_spectrum": list(block), "eels_dispersion": [EELS_DISPERSION_EV] * cols,
                "eels_offset": [EELS_OFFSET_EV] * cols}
        now = time.time()
        writer("event_page", desc.compose_event_page(data=data, timestamps={k: [now] * cols for k in data},
                                                     time=[now] * cols, seq_num=list(range(r * cols + 1, (r + 1) * cols + 1)),
                                                     validate=False))
    writer("stop", {**bundle.compose_stop(exit_status="success"), "num_events": {"primary": rows * cols}})
    writer.close()
    return rows * cols


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--cols", type=int, default=64)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from mnedge_live.callback import MnEdgeCallback
    from mnedge_live.commands.replay import ReplaySummary, replay_files
    from mnedge_live.config import LiveConfig
    from mnedge_live.document_files import read_documents
    from mnedge_live.engine import load_engine

    engine = load_engine()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.jsonl"
        t0 = time.perf_counter()
        n = write_image_run(path, args.rows, args.cols)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        documents = sum(1 for _ in read_documents(path))
        parse_s = time.perf_counter() - t0
        summary = ReplaySummary()
        config = LiveConfig(spectrum_field="eels_spectrum", dispersion_field="eels_dispersion",
                            offset_field="eels_offset", maps_dir=str(Path(tmp) / "maps"))
        callback = MnEdgeCallback(engine, config, summary)
        t0 = time.perf_counter()
        bad_lines, unreadable, unstopped = replay_files([str(path)], callback)
        replay_s = time.perf_counter() - t0
        [run] = summary.runs
        result = {"machine": machine(), "model": str(engine.model_id), "backend": engine.backend_name,
                  "pixels": n, "channels": 560, "file_mb": round(path.stat().st_size / 2**20, 1),
                  "documents": documents, "write_s": round(write_s, 2), "parse_only_s": round(parse_s, 2),
                  "replay_s": round(replay_s, 2), "replay_spectra_per_s": round(n / replay_s, 1),
                  "read_out": run["processed"], "rejected": run["rejected"], "missed": run["missed"],
                  "bad_lines": bad_lines, "unreadable_files": unreadable, "runs_without_stop": unstopped,
                  "median_valence": run["median_valence"], "maps_written": "maps_h5" in run}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
