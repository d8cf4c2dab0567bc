"""Helpers shared by the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    info = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and "cpu" not in info:
                    info["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and "cpu_flags" not in info:
                    flags = set(line.split(":", 1)[1].split())
                    info["cpu_flags"] = sorted(flags & {"avx", "avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"})
                elif line.startswith("cpu MHz") and "cpu_mhz" not in info:
                    info["cpu_mhz"] = float(line.split(":", 1)[1])
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(result: dict, as_json: bool) -> None:
    """Print the result as one JSON object (``--json``) or as lines."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def write_eels_image(path, data, title: str = "bench") -> None:
    """Write a ``(rows, cols, channels)`` spectrum image on the simulated spectrometer's axis as a HyperSpy file."""
    from rsciio.hspy import file_writer

    from mnedge_live.sim import EELS_DISPERSION_EV, EELS_OFFSET_EV

    rows, cols, n = data.shape
    axes = [{"name": "y", "size": rows, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True},
            {"name": "x", "size": cols, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True},
            {"name": "Energy loss", "size": n, "offset": EELS_OFFSET_EV, "scale": EELS_DISPERSION_EV,
             "units": "eV", "navigate": False}]
    file_writer(str(path), {"data": data, "axes": axes, "original_metadata": {}, "attributes": {"_lazy": False},
                            "metadata": {"General": {"title": title}, "Signal": {"signal_type": "EELS"}},
                            "tmp_parameters": {}, "learning_results": {}, "models": {},
                            "package_info": {"name": "hyperspy", "version": "2.1"}}, show_progressbar=False)
