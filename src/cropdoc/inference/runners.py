"""Runners: who computes the logits of a preprocessed batch (PyTorch or onnxruntime).

A runner is the only part of a :class:`~cropdoc.inference.Predictor` that differs between
backends (preprocessing and calibration are shared), which is what makes backends
comparable and lets export verify a file by running both on the same batch.

Runners never change the process's thread settings: torch compute runs inside
:func:`cropdoc.cpu.torch_threads`, which restores the previous count, and onnxruntime
gets its thread count through its session options. A notebook that loads a model keeps
the thread count it had.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..cpu import torch_threads
from ..models import LogitsAndFeatures
from .errors import InferenceError

if TYPE_CHECKING:
    from torch import nn

    from ..models import ArchSpec

__all__ = [
    "FEATURES_OUTPUT",
    "OnnxRunner",
    "Runner",
    "TorchRunner",
    "onnx_session",
    "resolve_device",
]

#: Name of the ONNX output that holds the penultimate head features (after ``logits``).
FEATURES_OUTPUT = "features"


class Runner(Protocol):
    """Computes logits ``(N, C)`` float32 for a normalised float32 batch ``(N, 3, S, S)``.

    ``run`` also returns the penultimate head features ``(N, D)`` the feature-space OOD
    score reads, or None when the runner has none (a model file exported without them).

    Attributes:
        name: the backend's name (``"torch"``, ``"onnx"``, ``"onnx-int8"``).
    """

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else Apple MPS, else CPU.

    Raises:
        InferenceError: the device is unknown or not available on this machine.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise InferenceError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from e
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available(),
    }
    if not available.get(resolved.type, True):
        raise InferenceError(f"no {resolved.type} device on this machine; use --device cpu")
    return resolved


class TorchRunner:
    """PyTorch eager inference: the reference every export is verified against.

    Args:
        model: the classifier; put in eval mode and moved to ``device``.
        device: where to compute (``"auto"`` picks CUDA, then MPS, then CPU).
        threads: intra-op threads while computing (None: the caller's setting).
        spec: the model's architecture spec; with it, :meth:`run` returns the penultimate
            features too (from the same forward pass).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        spec: ArchSpec | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.threads = threads
        self._both = LogitsAndFeatures(self.model, spec).eval() if spec is not None else None

    @property
    def has_features(self) -> bool:
        return self._both is not None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)[0]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch_threads(self.threads), torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self._both is None:
                return self.model(x).float().cpu().numpy(), None
            logits, features = self._both(x)
            return logits.float().cpu().numpy(), features.float().cpu().numpy()


class OnnxRunner:
    """onnxruntime inference on the CPU; ``session.run`` is thread-safe, so a server may
    call one runner from several threads.

    Args:
        session: an ``onnxruntime.InferenceSession`` (see :func:`onnx_session`).
        name: the backend it stands for (``"onnx"`` or ``"onnx-int8"``).
    """

    def __init__(self, session: Any, name: str = "onnx") -> None:
        self.session = session
        self.name = name
        self.input_name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        # Exports since the OOD score carry the penultimate features as a second output.
        self.has_features = FEATURES_OUTPUT in outputs
        self._outputs = [outputs[0], *([FEATURES_OUTPUT] if self.has_features else [])]

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, name: str = "onnx", threads: int | None = None
    ) -> OnnxRunner:
        """A runner for the ONNX file at ``path`` (see :func:`onnx_session`)."""
        return cls(onnx_session(path, threads), name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(self._outputs[:1], {self.input_name: batch})
        return np.asarray(out[0], dtype=np.float32)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(self._outputs, {self.input_name: batch})
        features = np.asarray(out[1], dtype=np.float32) if self.has_features else None
        return np.asarray(out[0], dtype=np.float32), features


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path``.

    Args:
        path: an ``.onnx`` file.
        threads: intra-op threads (None: onnxruntime's choice, one per physical core).

    Raises:
        InferenceError: onnxruntime is not installed, or cannot load the file.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise InferenceError(
            "the ONNX backend needs onnxruntime: pip install 'cropdoc[serve]'"
        ) from e
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    # Idle pool threads sleep instead of spinning, leaving the cores to the threads that
    # decode the next images (a server preprocesses while it infers).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped exceptions for bad files
        raise InferenceError(
            f"onnxruntime cannot load {path}: {e}; re-run `cropdoc export` to rebuild it"
        ) from e
