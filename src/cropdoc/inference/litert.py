"""The LiteRT (TFLite) runner: checks a ``.tflite`` export from Python as a phone runs it.

The file is what ``cropdoc export --format tflite`` writes: one image per call (phones
classify one photo at a time, and the converter cannot make the batch axis dynamic for
every architecture), input ``(1, S, S, 3)`` channels-last, float32 or, for INT8, int8
with the scale and zero point stored in the file; outputs the logits (and, when the file
has a second output, the penultimate features). The runner takes the batch the other
runners take, ``(N, 3, S, S)`` float32 normalised, and quantizes, transposes and loops
as needed, so a :class:`~cropdoc.inference.Predictor` works unchanged on top of it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .errors import InferenceError

__all__ = ["LiteRtRunner", "litert_interpreter"]


def litert_interpreter(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """A LiteRT interpreter for ``path``, tensors allocated.

    Raises:
        InferenceError: ai-edge-litert is not installed, or the file cannot be loaded.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise InferenceError(
            "the tflite backend needs ai-edge-litert: pip install 'cropdoc[tflite]'"
        ) from e
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise InferenceError(
            f"LiteRT cannot load {path}: {e}; re-run `cropdoc export --format tflite`"
        ) from e
    return interpreter


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if not scale:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    q = np.clip(np.round(x / scale) + zero, info.min, info.max)
    return q.astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class LiteRtRunner:
    """LiteRT inference on the CPU, one image per invoke; thread-safe (one lock).

    Args:
        interpreter: an ``ai_edge_litert`` interpreter (see :func:`litert_interpreter`).
        name: the backend it stands for (``"tflite"`` or ``"tflite-int8"``).
    """

    def __init__(self, interpreter: Any, name: str = "tflite") -> None:
        self.interpreter = interpreter
        self.name = name
        # The signature names outputs in the order the PyTorch module returned them
        # (output_0: logits, output_1: features); plain output details are unordered.
        signature = interpreter.get_signature_runner()
        self._input = next(iter(signature.get_input_details().values()))
        outputs = signature.get_output_details()
        self._outputs = [outputs[k] for k in sorted(outputs, key=_output_number)]
        self.has_features = len(self._outputs) > 1
        shape = tuple(int(d) for d in self._input["shape"])
        if len(shape) != 4 or shape[0] != 1 or 3 not in (shape[1], shape[3]):
            raise InferenceError(f"unexpected LiteRT input shape {shape}: expected (1, S, S, 3)")
        self.channels_last = shape[3] == 3 and shape[1] != 3
        self._lock = threading.Lock()

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, name: str = "tflite", threads: int | None = None
    ) -> LiteRtRunner:
        """A runner for the ``.tflite`` file at ``path``."""
        return cls(litert_interpreter(path, threads), name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)[0]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(N, C)`` and, when the file has them, penultimate features ``(N, D)``."""
        images = batch.transpose(0, 2, 3, 1) if self.channels_last else batch
        rows: list[list[np.ndarray]] = [[] for _ in self._outputs]
        with self._lock:
            for image in images:
                x = _quantize(np.ascontiguousarray(image[None]), self._input)
                self.interpreter.set_tensor(self._input["index"], x)
                self.interpreter.invoke()
                for found, detail in zip(rows, self._outputs, strict=True):
                    found.append(_dequantize(self.interpreter.get_tensor(detail["index"]), detail))
        logits = np.concatenate(rows[0], axis=0)
        features = np.concatenate(rows[1], axis=0) if self.has_features else None
        return logits, features


def _output_number(name: str) -> int:
    """``output_1`` -> 1 (litert-torch's names); other names sort last, in their order."""
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 30
