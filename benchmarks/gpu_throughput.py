"""GPU throughput of the network: TensorRT FP16/FP32, ONNX Runtime CUDA, PyTorch eager, and the arithmetic floor.

For every backend and batch size (default 1, 64, 4096 and 65,536 = one
256 x 256 spectrum image) two numbers, in spectra/s:

``network``
    The prepared input ``(B, 2, 256)`` already on the GPU, outputs left on the GPU.
``end_to_end``
    Uniformly sampled raw spectra (0.1 eV rows with their valid mask, from the
    forward model) already on the GPU, through
    :func:`mnedge_live.preprocessing.preprocess` on the GPU and the network.  The
    per-spectrum CPU resampling of arbitrary measured axis (``to_uniform``) and
    the typed results of ``Engine.predict`` are not included.

Beside them the arithmetic floor: FLOPs per spectrum
(:func:`mnedge_live.network.count_flops`) over the GPU's dense matmul rate,
measured here with a large ``torch.matmul`` in FP16 and FP32 (TF32 off; TF32
is reported too).  ``fraction_of_floor`` is throughput over that bound.

Timing: warm-up calls first, then a loop of calls between
``torch.cuda.synchronize()``; the wall-clock time of the loop is the result
(CUDA events around the loop are reported beside it for the backends that run
on the current CUDA stream).  The TensorRT modules are compiled here with
torch-tensorrt from the artifact's weights, the way
:func:`offline_training.export.build_tensorrt_engines` does it.  A backend
that cannot run (no torch-tensorrt, no CUDA provider) is reported as
``{"skipped": reason}``; a failure at one batch size as ``{"error": ...}``.
Without a CUDA GPU the script prints ``{"skipped": "no CUDA GPU: ..."}`` and
exits 0.  ``--device cpu`` runs the same code on the CPU (without TensorRT)
as a smoke test of the script; its numbers mean nothing for a GPU.

Usage: python benchmarks/gpu_throughput.py [--json] [--model PATH] [--batches 1,64,4096,65536]
"""

from __future__ import annotations

import argparse
import gc
import io
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit, machine  # noqa: E402

#: Default batch sizes: one spectrum, a small batch, the engine's GPU batch (BATCH_ROWS), one 256 x 256 image.
DEFAULT_BATCHES = (1, 64, 4096, 65536)
#: Distinct raw spectra drawn with the forward model (tiled up to the largest batch).
RAW_POOL = 2048

Fn = Callable[[], Any]


# ----------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Fn, device: torch.device, warmup: int = 5, target_s: float = 1.0, max_iters: int = 2000,
               min_iters: int = 3, events: bool = True) -> dict:
    """Time repeated calls of ``fn``.

    Parameters
    ----------
    fn : callable
        One batch; its work may be asynchronous on the current CUDA stream.
    device : torch.device
        Where the work runs.
    warmup : int
        Untimed calls first (autotuning, lazy initialisation, allocator).
    target_s : float
        Rough duration of the timed loop; the number of calls follows from one probe call.
    max_iters, min_iters : int
        Bounds on the number of timed calls.
    events : bool
        Also record CUDA events around the loop (only meaningful when ``fn``
        runs on the current stream).

    Returns
    -------
    dict
        ``ms_per_call`` (wall clock between synchronizations), ``iters`` and,
        on CUDA with ``events``, ``cuda_event_ms_per_call``.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    probe = max(time.perf_counter() - t, 1e-6)
    iters = int(min(max_iters, max(min_iters, target_s / probe)))
    use_events = events and device.type == "cuda"
    if use_events:
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync(device)
    t0 = time.perf_counter()
    if use_events:
        ev0.record()
    for _ in range(iters):
        fn()
    if use_events:
        ev1.record()
    sync(device)
    wall = time.perf_counter() - t0
    out = {"ms_per_call": round(1e3 * wall / iters, 4), "iters": iters}
    if use_events:
        out["cuda_event_ms_per_call"] = round(ev0.elapsed_time(ev1) / iters, 4)
    return out


def rate(timing: dict, batch: int) -> dict:
    """Add ``spectra_per_s`` to a :func:`time_calls` result."""
    return {"spectra_per_s": round(batch / (timing["ms_per_call"] / 1e3), 1), **timing}


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, tf32: bool = False) -> float:
    """Dense matmul rate (TFLOP/s) of an ``n x n`` by ``n x n`` ``torch.matmul`` in ``dtype``."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        c = torch.empty(n, n, device=device, dtype=dtype)
        timing = time_calls(lambda: torch.matmul(a, b, out=c), device, warmup=3, target_s=1.0, max_iters=500)
        return 2.0 * n ** 3 / (timing["ms_per_call"] / 1e3) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ----------------------------------------------------------------------------------------------- inputs


def load_network(model_path: str | None) -> tuple[Any, torch.nn.Module, int]:
    """The artifact, its network (CPU, eval, FP32) rebuilt from ``weights.pt``, and FLOPs per spectrum."""
    from mnedge_live.artifact import load_artifact
    from mnedge_live.network import MnEdgeCNN, NetworkConfig, count_flops

    artifact = load_artifact(model_path)
    net = MnEdgeCNN(NetworkConfig.from_dict(artifact.card["network"]))
    net.load_state_dict(torch.load(io.BytesIO(artifact.read("weights.pt")), map_location="cpu", weights_only=True))
    net.eval()
    return artifact, net, count_flops(net, net.config.input_length)


def raw_spectra(n: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` synthetic measurements on the uniform 0.1 eV axis: ``(start, values, valid)`` on the CPU."""
    from offline_training.forward import ForwardConfig, ForwardModel
    from offline_training.references.bank import Bank

    fm = ForwardModel(Bank.load(), ForwardConfig(offset=(-15.0, 15.0), crop_probability=0.0,
                                                 physics=1))   # noise per measured 0.1 eV point, as a detector's
    b = fm.sample(n, seed=seed)
    return b.start.clone(), b.values.float().clone(), b.valid.clone()


def tile(t: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of ``t`` repeated along dimension 0."""
    reps = -(-n // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:n].contiguous()


# ----------------------------------------------------------------------------------------------- backends


def torch_eager(net: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Fn:
    """``run(x) -> outputs`` of the PyTorch module in ``dtype`` (eager, inference mode)."""
    import copy

    m = copy.deepcopy(net).to(device=device, dtype=dtype).eval()

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return m(x.to(dtype))

    return run


def tensorrt(net: torch.nn.Module, device: torch.device, dtype: torch.dtype, max_batch: int) -> tuple[Fn, dict]:
    """A torch-tensorrt module compiled for ``dtype`` with a dynamic batch of 1..``max_batch``.

    Raises
    ------
    RuntimeError
        No CUDA device, no torch-tensorrt, or compilation failed (message says why).
    """
    if device.type != "cuda":
        raise RuntimeError("TensorRT needs a CUDA GPU")
    try:
        import tensorrt as trt_lib
        import torch_tensorrt
    except ImportError as exc:
        raise RuntimeError(f"torch-tensorrt is not installed ({exc}); install the 'tensorrt' extra") from exc
    import copy

    m = copy.deepcopy(net).to(device=device, dtype=dtype).eval()
    length = net.config.input_length
    opt = min(max_batch, 4096)
    inputs = [torch_tensorrt.Input(min_shape=(1, 2, length), opt_shape=(opt, 2, length),
                                   max_shape=(max_batch, 2, length), dtype=dtype)]
    errors = []
    module = None
    ir_used = None
    for ir in ("ts", "dynamo"):  # the project's way first (offline_training/export.py), then the newer frontend
        try:
            module = torch_tensorrt.compile(m, ir=ir, inputs=inputs, enabled_precisions={dtype})
            ir_used = ir
            break
        except Exception as exc:
            errors.append(f"ir={ir}: {type(exc).__name__}: {str(exc)[:300]}")
    if module is None:
        raise RuntimeError("torch-tensorrt compilation failed: " + " | ".join(errors))
    info = {"ir": ir_used, "tensorrt_version": trt_lib.__version__,
            "torch_tensorrt_version": torch_tensorrt.__version__, "opt_batch": opt, "max_batch": max_batch}

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return module(x.to(dtype))

    return run, info


def onnxruntime_cuda(artifact: Any, device: torch.device) -> tuple[Callable[[torch.Tensor], Any], dict]:
    """ONNX Runtime on the CUDA provider with I/O binding to torch tensors (no host copies).

    Raises
    ------
    RuntimeError
        No onnxruntime, or no CUDA provider in it.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeError(f"onnxruntime is not installed: {exc}") from exc
    avail = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in avail:
            raise RuntimeError(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                               f"(available: {', '.join(avail)}); install onnxruntime-gpu")
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
    else:
        providers = ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(artifact.read("model.onnx"), sess_options=opts, providers=providers)
    used = sess.get_providers()[0]
    if device.type == "cuda" and used != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime fell back to {used}")
    names = [o.name for o in sess.get_outputs()]
    ort_device = "cuda" if device.type == "cuda" else "cpu"
    dev_id = (device.index or 0) if device.type == "cuda" else 0

    def run(x: torch.Tensor) -> Any:
        x = x.to(torch.float32).contiguous()
        if x.is_cuda:   # ONNX Runtime reads the buffer on its own stream: torch's writes to it must be done
            torch.cuda.current_stream(x.device).synchronize()
        io = sess.io_binding()
        io.bind_input("x", ort_device, dev_id, np.float32, tuple(x.shape), x.data_ptr())
        for n in names:
            io.bind_output(n, ort_device, dev_id)
        sess.run_with_iobinding(io)  # synchronous: returns when the outputs are ready
        return io.get_outputs()

    return run, {"provider": used, "onnxruntime_version": ort.__version__}


# ----------------------------------------------------------------------------------------------- main


def outputs_close(got: Any, ref: torch.Tensor) -> float:
    """Largest absolute difference of the fractions (first output) from the FP32 eager reference."""
    first = got[0]
    if not isinstance(first, torch.Tensor):  # an ONNX Runtime OrtValue
        first = torch.from_numpy(np.asarray(first.numpy()))
    return float((first.float().cpu() - ref.cpu()).abs().max())


def bench_backend(run: Fn, device: torch.device, batches: list[int], x_full: torch.Tensor,
                  raw_full: tuple[torch.Tensor, torch.Tensor, torch.Tensor], ref: torch.Tensor, target_s: float,
                  events: bool) -> dict:
    """Network-only and end-to-end throughput of one backend at each batch size."""
    from mnedge_live.preprocessing import preprocess

    out: dict[str, Any] = {}
    try:
        out["max_fraction_difference_vs_torch_fp32"] = outputs_close(run(x_full[: ref.shape[0]]), ref)
    except Exception as exc:
        out["max_fraction_difference_vs_torch_fp32"] = f"error: {type(exc).__name__}: {exc}"
    start, values, valid = raw_full
    for b in batches:
        entry: dict[str, Any] = {}
        try:
            x = x_full[:b].contiguous()
            entry["network"] = rate(time_calls(lambda x=x: run(x), device, target_s=target_s, events=events), b)
        except Exception as exc:
            entry["network"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        try:
            s, v, m = start[:b], values[:b], valid[:b]
            entry["end_to_end"] = rate(time_calls(lambda s=s, v=v, m=m: run(preprocess(s, v, m).x), device,
                                                  target_s=target_s, events=events), b)
        except Exception as exc:
            entry["end_to_end"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out[f"batch_{b}"] = entry
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> int:
    """Run the benchmark and print the result; 0 also when there is no GPU (then the result says so)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model", help="model artifact (default: the embedded model)")
    ap.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)), help="comma-separated batch sizes")
    ap.add_argument("--target-s", type=float, default=1.0, help="rough duration of each timed loop")
    ap.add_argument("--matmul-n", type=int, default=8192, help="size of the square matmul measuring the peak rate")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test of this script only)")
    args = ap.parse_args()
    try:
        batches = sorted({int(v) for v in args.batches.split(",") if v.strip()})
    except ValueError:
        ap.error("--batches must be comma-separated integers")
    if not batches or batches[0] < 1:
        ap.error("--batches must be positive integers")
    params = {"batches": batches, "model": args.model or "embedded default", "target_s": args.target_s,
              "matmul_n": args.matmul_n, "device": args.device}

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        why = (f"torch {torch.__version__} built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
        emit({"skipped": f"no CUDA GPU: {why}", **params, "machine": machine()}, args.json)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    result: dict[str, Any] = {}
    artifact, net, flops = load_network(args.model)
    result["model"] = artifact.model_id
    result["flops_per_spectrum"] = flops
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)  # eager FP32 convolutions use TF32 if so
        result["cudnn_version"] = torch.backends.cudnn.version()
        torch.backends.cudnn.benchmark = True
        peak = {"fp16": matmul_tflops(device, torch.float16, args.matmul_n),
                "fp32": matmul_tflops(device, torch.float32, args.matmul_n, tf32=False),
                "tf32": matmul_tflops(device, torch.float32, args.matmul_n, tf32=True)}
    else:
        peak = {"fp32": matmul_tflops(device, torch.float32, min(args.matmul_n, 2048))}
    result["matmul_tflops"] = {k: round(v, 2) for k, v in peak.items()}
    floor = {k: v * 1e12 / flops for k, v in peak.items()}
    result["floor_spectra_per_s"] = {k: round(v, 1) for k, v in floor.items()}

    # inputs: raw uniform rows (forward model) and their prepared model input, on the device
    from mnedge_live.preprocessing import preprocess

    n_max = batches[-1]
    s0, v0, m0 = raw_spectra(min(RAW_POOL, n_max))
    raw = (tile(s0, n_max).to(device), tile(v0, n_max).to(device), tile(m0, n_max).to(device))
    with torch.inference_mode():
        x_full = torch.cat([preprocess(raw[0][k:k + 4096], raw[1][k:k + 4096], raw[2][k:k + 4096]).x
                            for k in range(0, n_max, 4096)]).contiguous()
    ref_run = torch_eager(net, device, torch.float32)
    n_ref = min(64, n_max)
    ref = ref_run(x_full[:n_ref])[0].float()

    backends: dict[str, Callable[[], tuple[Fn, dict]]] = {
        "tensorrt_fp16": lambda: tensorrt(net, device, torch.float16, n_max),
        "tensorrt_fp32": lambda: tensorrt(net, device, torch.float32, n_max),
        "onnxruntime_cuda": lambda: onnxruntime_cuda(artifact, device),
        "torch_eager_fp32": lambda: (torch_eager(net, device, torch.float32), {}),
        "torch_eager_fp16": lambda: (torch_eager(net, device, torch.float16), {}),
    }
    if device.type == "cpu":  # smoke test: FP16 eager is not a CPU configuration; ONNX Runtime runs on its CPU EP
        backends.pop("torch_eager_fp16")
        backends["onnxruntime_cpu"] = backends.pop("onnxruntime_cuda")
    floor_key = {"tensorrt_fp16": "fp16", "torch_eager_fp16": "fp16"}
    res: dict[str, Any] = {}
    for name, build in backends.items():
        try:
            run, info = build()
        except Exception as exc:
            res[name] = {"skipped": f"{type(exc).__name__}: {str(exc)[:500]}"}
            continue
        try:
            entry = dict(info)
            entry.update(bench_backend(run, device, batches, x_full, raw, ref, args.target_s,
                                       events=not name.startswith("onnxruntime")))
            fl = floor.get(floor_key.get(name, "fp32"))
            if fl:
                for b in batches:
                    net_entry = entry[f"batch_{b}"].get("network", {})
                    if "spectra_per_s" in net_entry:
                        net_entry["fraction_of_floor"] = round(net_entry["spectra_per_s"] / fl, 4)
            res[name] = entry
        except Exception as exc:  # never lose the other backends' numbers
            res[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=3)}
        finally:
            del run
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    # preprocessing alone, for reference
    pre: dict[str, Any] = {}
    for b in batches:
        try:
            s, v, m = raw[0][:b], raw[1][:b], raw[2][:b]
            pre[f"batch_{b}"] = rate(time_calls(lambda s=s, v=v, m=m: preprocess(s, v, m), device,
                                                target_s=args.target_s), b)
        except Exception as exc:
            pre[f"batch_{b}"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    res["preprocess_only"] = pre
    result["results"] = res
    result["notes"] = ("network: prepared (B,2,256) input on the device; end_to_end: uniform raw rows on the device "
                       "through mnedge_live.preprocessing.preprocess + network (no CPU resampling, no result objects); "
                       "floor: flops_per_spectrum over the measured dense matmul rate (fp16 for FP16 backends, "
                       "fp32 without TF32 otherwise)")
    result.update(params)
    result["machine"] = machine()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
