"""Inference backends behind one small interface: ``run(x) -> (fractions, log_std, side, features)``.

One class per runtime; :func:`make_backend` builds the one asked for, or for ``"auto"`` the first
of :data:`BACKEND_ORDER` that can run here.  Preference order for ``"auto"``: TensorRT
(CUDA GPU with torch-tensorrt and an engine built for this GPU), ONNX
Runtime (CUDA provider, then CPU), PyTorch.

A backend that cannot run here raises :class:`BackendUnavailable` with the
reason: not only when its package is absent, but for any failure while its
package is imported or it is set up (a torch-tensorrt built for another torch
fails its import with ``OSError: undefined symbol`` or a missing
``libnvinfer``).  ``"auto"`` then takes the next backend and logs why, as a
warning when a backend that is installed is broken; a backend asked for by
name fails with that reason.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Protocol

import numpy as np

from mnedge_live.artifact import Artifact

log = logging.getLogger(__name__)

BACKEND_ORDER = ("tensorrt", "onnxruntime", "torch")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine or with this artifact.

    ``broken``: the backend is installed but fails (as opposed to absent, or
    no GPU): worth a warning when ``"auto"`` passes over it.
    """

    def __init__(self, message: str, broken: bool = False):
        super().__init__(message)
        self.broken = broken


class Backend(Protocol):
    """What the engine needs from a runtime."""

    name: str
    device: str

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Run a prepared batch ``(B, 2, L)`` float32; return fractions, log_std, side and the
        trunk features for the OOD score (None where the model does not provide them)."""


class TorchBackend:
    """PyTorch eager on CPU or CUDA, weights loaded with ``weights_only=True``."""

    name = "torch"

    def __init__(self, artifact: Artifact, device: str | None = None):
        import torch

        from mnedge_live.network import MnEdgeCNN, NetworkConfig

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        state = torch.load(io.BytesIO(artifact.read("weights.pt")), map_location=self.device, weights_only=True)
        self.model = MnEdgeCNN(NetworkConfig.from_dict(artifact.card["network"])).to(self.device).eval()
        self.model.load_state_dict(state)
        self._lock = threading.Lock()
        self._torch = torch

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            out = self.model.forward_with_features(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device))
        return tuple(o.float().cpu().numpy() for o in out)


class OnnxRuntimeBackend:
    """ONNX Runtime with the CUDA provider when present, else the CPU provider."""

    name = "onnxruntime"

    def __init__(self, artifact: Artifact, providers: list[str] | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
            raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from exc
        except Exception as exc:  # pragma: no cover - e.g. a GPU build missing its CUDA libraries
            raise BackendUnavailable(f"onnxruntime is installed but cannot be imported: {type(exc).__name__}: {exc}",
                                     broken=True) from exc
        avail = ort.get_available_providers()
        wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # ONNX Runtime's worker threads busy-wait after each run by default; on a beamline PC they
        # would steal the cores the preprocessing (torch) needs between runs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads:  # else ONNX Runtime's default: one thread per core
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(artifact.read("model.onnx"), sess_options=opts, providers=wanted)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        out = self.session.run(None, {"x": np.ascontiguousarray(x, np.float32)})
        named = dict(zip(self.output_names, out))
        return named["fractions"], named["log_std"], named["side"], named.get("features")


class TensorRTBackend:
    """A torch-tensorrt engine from the artifact, for the GPU it was built on.

    Refuses (:class:`BackendUnavailable`) when there is no CUDA GPU, no
    torch-tensorrt, no engine in the artifact, or the engine was built for
    another GPU or TensorRT version; the engine loader then falls back.
    """

    name = "tensorrt"

    def __init__(self, artifact: Artifact, precision: str = "fp16"):
        try:
            self._setup(artifact, precision)
        except BackendUnavailable:
            raise
        except Exception as exc:  # a CUDA or TensorRT failure setting up: the next backend can still run
            raise BackendUnavailable(f"TensorRT cannot run here: {type(exc).__name__}: {exc}", broken=True) from exc

    def _setup(self, artifact: Artifact, precision: str) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover
            raise BackendUnavailable("torch is missing") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA GPU is present")
        try:
            import tensorrt
            import torch_tensorrt  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"torch-tensorrt is not installed ({exc}); install the 'tensorrt' extra") from exc
        except Exception as exc:  # e.g. OSError: undefined symbol / libnvinfer missing (a build for another torch)
            raise BackendUnavailable(f"torch-tensorrt (or tensorrt) is installed but cannot be imported ({type(exc).__name__}: "
                                     f"{exc}); install the torch-tensorrt build that matches torch "
                                     f"{torch.__version__} and its TensorRT libraries", broken=True) from exc
        engines = artifact.card.get("tensorrt", {})
        info = engines.get(precision)
        if not info:
            raise BackendUnavailable(f"the artifact has no TensorRT {precision} engine; build one with "
                                     "'mnedge-train export --tensorrt'")
        gpu = torch.cuda.get_device_name(0)
        if info.get("gpu") != gpu or info.get("tensorrt_version") != tensorrt.__version__:
            raise BackendUnavailable(f"the TensorRT engine was built for {info.get('gpu')} / TensorRT "
                                     f"{info.get('tensorrt_version')}, this machine has {gpu} / {tensorrt.__version__}")
        self.device = "cuda"
        self.module = torch.jit.load(io.BytesIO(artifact.read(info["file"])), map_location="cuda").eval()
        self._torch = torch
        self._half = precision == "fp16"

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:  # pragma: no cover
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).cuda()
            out = [o.float().cpu().numpy() for o in self.module(t.half() if self._half else t)]
        return out[0], out[1], out[2], (out[3] if len(out) > 3 else None)  # engines built before features: None


_FACTORIES = {"tensorrt": TensorRTBackend, "onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend}


def _build(name: str, artifact: Artifact, threads: int | None) -> Backend:
    """One backend; ``threads`` sizes ONNX Runtime's CPU pool (torch's pool is per process, see load_engine)."""
    if name == "onnxruntime":
        return OnnxRuntimeBackend(artifact, threads=threads)
    return _FACTORIES[name](artifact)


def make_backend(artifact: Artifact, name: str = "auto", threads: int | None = None) -> Backend:
    """Build the named backend, or for ``"auto"`` the first of :data:`BACKEND_ORDER` that works here.

    ``threads``: CPU threads for one run (None: the runtime's default, all cores).
    """
    if name != "auto":
        if name not in _FACTORIES:
            raise ValueError(f"unknown backend {name!r}; choose auto, {', '.join(BACKEND_ORDER)}")
        return _build(name, artifact, threads)
    reasons = []
    broken = False
    for candidate in BACKEND_ORDER:
        try:
            backend = _build(candidate, artifact, threads)
        except BackendUnavailable as exc:
            reasons.append(f"{candidate}: {exc}")
            broken = broken or exc.broken
            continue
        if reasons:
            log.log(logging.WARNING if broken else logging.INFO, "backend %s chosen (%s)", candidate, "; ".join(reasons))
        return backend
    raise BackendUnavailable("no backend can run this model: " + "; ".join(reasons))
