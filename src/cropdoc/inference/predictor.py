"""Predict crop diseases from photos with a trained bundle, on PyTorch or onnxruntime.

Preprocessing and calibration come from the bundle's ``model.json`` (resize the shorter
side to ``resize_size``, centre-crop ``image_size``, normalise with ``mean``/``std``;
softmax of ``logits / temperature``), never from re-typed constants, so a prediction here
matches what ``cropdoc evaluate`` measured. Both backends share that Python preprocessing
and differ only in who computes the logits, which is what makes them comparable.

A bad image never stops a batch: it becomes a :class:`Prediction` with ``error`` set and
the other images are still predicted.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..bundle import BundleMeta, load_bundle, read_meta
from ..data.images import DEFAULT_MAX_PIXELS, BadImageError, load_tensor
from ..data.inspect import class_label
from ..data.transforms import build_eval_transform
from ..errors import CropdocError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "BACKENDS",
    "ClassScore",
    "ImageSource",
    "InferenceError",
    "MicroBatcher",
    "Prediction",
    "Predictor",
    "load_predictor",
    "softmax",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
#: What :meth:`Predictor.predict` accepts: a path, raw file bytes (an upload) or a PIL image.
ImageSource = str | os.PathLike[str] | bytes | Image.Image


class InferenceError(CropdocError):
    """A predictor cannot be built or run (unknown backend, missing or stale export)."""


@dataclass(frozen=True)
class ClassScore:
    """One class of a top-k list: calibrated probability and the raw logit."""

    index: int
    name: str
    label: str
    probability: float
    logit: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "class": self.name,
            "label": self.label,
            "probability": self.probability,
            "logit": self.logit,
        }


@dataclass
class Prediction:
    """The result for one image: top-k classes best first, or an error message."""

    source: str
    top: list[ClassScore] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def best(self) -> ClassScore | None:
        return self.top[0] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "source": self.source,
            "ok": self.ok,
            "class": best.name if best else None,
            "label": best.label if best else None,
            "probability": best.probability if best else None,
            "top_k": [s.to_dict() for s in self.top],
            "error": self.error,
        }


class _Runner(Protocol):
    """Computes logits for a normalised float32 batch ``(N, 3, S, S)``."""

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class _TorchRunner:
    name = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).float().numpy()


class _OnnxRunner:
    def __init__(self, session: Any, name: str) -> None:
        self.session = session
        self.name = name
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe, so a server may call this concurrently.
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Temperature-scaled softmax over the last axis, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Predictor:
    """Turns images into calibrated top-k predictions with a bundle's preprocessing.

    Build one with :func:`load_predictor`; the constructor does no I/O.

    Attributes:
        meta: the bundle's metadata (classes, sizes, normalisation, temperature).
        backend: ``"torch"``, ``"onnx"`` or ``"onnx-int8"``.
        max_pixels: images declaring more pixels are refused before decoding.

    Example:
        >>> predictor = load_predictor("runs/effb0/model", backend="onnx")  # doctest: +SKIP
        >>> [p.best.label for p in predictor.predict(["leaf.jpg"])]  # doctest: +SKIP
        ['Tomato · Late blight']
    """

    def __init__(
        self,
        meta: BundleMeta,
        runner: _Runner,
        *,
        bundle_dir: Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.meta = meta
        self.bundle_dir = bundle_dir
        self.max_pixels = max_pixels
        self._runner = runner
        self._transform = build_eval_transform(
            meta.image_size,
            mean=meta.mean,
            std=meta.std,
            resize_ratio=meta.resize_size / meta.image_size,
        )
        self._labels = [class_label(c) for c in meta.classes]

    @property
    def backend(self) -> str:
        return self._runner.name

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    def preprocess(self, source: ImageSource) -> torch.Tensor:
        """Decode one image and apply the bundle's eval transform → ``float32 (3, S, S)``.

        Paths and bytes are decoded exactly as the training and evaluation loaders decode
        them (:func:`~cropdoc.data.images.load_tensor`), so predictions match evaluation.

        Raises:
            BadImageError: the image is missing, empty, corrupt, not an image or too large.
        """
        if isinstance(source, Image.Image):
            image: Any = source.convert("RGB")
        else:
            # load_tensor reads bytes the same way as paths (an upload is a file's bytes).
            image = load_tensor(source, max_pixels=self.max_pixels)  # type: ignore[arg-type]
        return self._transform(image)

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw logits ``(N, C)`` for a preprocessed batch ``(N, 3, S, S)``."""
        array = batch.numpy() if isinstance(batch, torch.Tensor) else batch
        return self._runner(np.ascontiguousarray(array, dtype=np.float32))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of ``logits / temperature``."""
        return softmax(logits, self.meta.temperature)

    def predict(
        self,
        sources: Sequence[ImageSource],
        *,
        top_k: int = 3,
        batch_size: int = 16,
        names: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Prediction]:
        """Predict every image; a bad one gets an error entry and the rest continue.

        Args:
            sources: paths, raw image bytes or PIL images.
            top_k: classes per image, best first (capped at the number of classes).
            batch_size: images per forward pass; results do not depend on it.
            names: how to name each source in the results (default: its path, or
                ``"image <i>"`` for bytes and PIL images).
            progress: called as ``progress(done, total)`` after each batch.

        Returns:
            One :class:`Prediction` per source, in order.
        """
        if top_k < 1:
            raise InferenceError(f"top_k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
        if names is not None and len(names) != len(sources):
            raise InferenceError("names must have one entry per source")
        labels = [names[i] if names else _describe(s, i) for i, s in enumerate(sources)]
        results: list[Prediction] = [Prediction(source=label) for label in labels]
        total = len(sources)
        for start in range(0, total, batch_size):
            chunk = range(start, min(start + batch_size, total))
            batch, good = self._preprocess_many(sources, chunk, results)
            if batch is not None:
                logits = self.logits(batch)
                for i, row in zip(good, logits, strict=True):
                    results[i].top = self._top(row, top_k)
            if progress is not None:
                progress(chunk.stop, total)
        return results

    def _preprocess_many(
        self, sources: Sequence[ImageSource], indices: Sequence[int], results: list[Prediction]
    ) -> tuple[torch.Tensor | None, list[int]]:
        """Preprocess ``sources[indices]``; bad images get their error in ``results``."""
        tensors, good = [], []
        for i in indices:
            try:
                tensors.append(self.preprocess(sources[i]))
                good.append(i)
            except BadImageError as e:
                results[i].error = e.reason
                _logger.warning("skipping %s: %s", results[i].source, e.reason)
        return (torch.stack(tensors) if tensors else None), good

    def predict_one(self, source: ImageSource, *, top_k: int = 3) -> Prediction:
        """Predict a single image (see :meth:`predict`)."""
        return self.predict([source], top_k=top_k)[0]

    def _top(self, logits: np.ndarray, k: int) -> list[ClassScore]:
        probs = self.probabilities(logits)
        # Stable sort on -p: ties keep class order, so results are deterministic.
        order = np.argsort(-probs, kind="stable")[: min(k, len(probs))]
        return [
            ClassScore(
                index=int(i),
                name=self.meta.classes[i],
                label=self._labels[i],
                probability=float(probs[i]),
                logit=float(logits[i]),
            )
            for i in order
        ]


class _Job:
    __slots__ = ("batch", "done", "error", "logits")

    def __init__(self, batch: torch.Tensor) -> None:
        self.batch = batch
        self.done = threading.Event()
        self.logits: np.ndarray | None = None
        self.error: BaseException | None = None


class MicroBatcher:
    """Runs concurrent predictions as one forward pass: dynamic micro-batching for servers.

    Each caller decodes and preprocesses its own images in its own thread (decoding runs
    in parallel), then queues the tensors; one inference thread takes the first waiting
    request, gathers whatever else arrives within ``max_wait_ms`` (up to ``max_batch``
    images) and computes all their logits in one call. A batch of 32 costs far less than
    32 batches of one (per-call overhead, better kernels), so under load throughput
    approaches offline batch throughput, while a lone request waits at most ``max_wait_ms``.
    Results are the same as :meth:`Predictor.predict` (inference is per-row independent).

    Args:
        predictor: the predictor whose runner computes the logits.
        max_batch: most images per forward pass (a request larger than that runs alone).
        max_wait_ms: how long the first request of a batch waits for company.
    """

    def __init__(self, predictor: Predictor, *, max_batch: int = 32, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise InferenceError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="cropdoc-microbatch", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Stop the inference thread (queued requests are answered first)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def predict(
        self,
        sources: Sequence[ImageSource],
        *,
        top_k: int = 3,
        names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Like :meth:`Predictor.predict`, sharing forward passes with concurrent callers."""
        if top_k < 1:
            raise InferenceError(f"top_k must be at least 1, got {top_k}")
        if names is not None and len(names) != len(sources):
            raise InferenceError("names must have one entry per source")
        labels = [names[i] if names else _describe(s, i) for i, s in enumerate(sources)]
        results = [Prediction(source=label) for label in labels]
        batch, good = self.predictor._preprocess_many(sources, range(len(sources)), results)
        if batch is None:
            return results
        job = _Job(batch)
        self._ensure_thread()
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.logits is not None
        for i, row in zip(good, job.logits, strict=True):
            results[i].top = self.predictor._top(row, top_k)
        return results

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, size = [first], len(first.batch)
            deadline = time.perf_counter() + self.max_wait_s
            stop = False
            while size < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    job = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                size += len(job.batch)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        try:
            batch = jobs[0].batch if len(jobs) == 1 else torch.cat([j.batch for j in jobs])
            logits = self.predictor.logits(batch)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting caller
            for job in jobs:
                job.error = e
                job.done.set()
            return
        start = 0
        for job in jobs:
            job.logits = logits[start : start + len(job.batch)]
            start += len(job.batch)
            job.done.set()


def _describe(source: ImageSource, index: int) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return f"image {index}"


def load_predictor(
    bundle: str | os.PathLike[str],
    *,
    backend: str = "torch",
    onnx_path: str | os.PathLike[str] | None = None,
    export_if_missing: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int | None = None,
) -> Predictor:
    """Load a bundle for prediction on the chosen backend.

    The ONNX backends use the file recorded in ``model.json`` ``exports`` (``onnx`` or
    ``onnx_int8``). When no fp32 export exists, or it was made from other weights, one is
    exported and verified on the spot (``export_if_missing``), so ``--backend onnx`` works
    on a fresh bundle; INT8 is never made implicitly because it needs calibration data and
    an agreement check (``cropdoc export --int8``).

    Args:
        bundle: a bundle folder or its run directory.
        backend: ``"torch"``, ``"onnx"`` or ``"onnx-int8"``.
        onnx_path: use this ONNX file instead of the recorded export.
        export_if_missing: export fp32 ONNX when the ONNX backend has nothing to load.
        max_pixels: refuse larger images before decoding them.
        threads: onnxruntime intra-op threads (default: its own choice).

    Raises:
        InferenceError: unknown backend, or no usable export.
        BundleError: the bundle is missing or corrupt.
    """
    if backend not in BACKENDS:
        raise InferenceError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        loaded = load_bundle(bundle)
        return Predictor(
            loaded.meta, _TorchRunner(loaded.model), bundle_dir=loaded.path, max_pixels=max_pixels
        )
    from .export import bundle_dir_of, recorded_export

    folder = bundle_dir_of(bundle)
    meta = read_meta(folder)
    key = "onnx_int8" if backend == "onnx-int8" else "onnx"
    path = Path(onnx_path) if onnx_path is not None else recorded_export(folder, key)
    if path is None:
        if key == "onnx_int8":
            raise InferenceError(
                f"{folder} has no verified INT8 export; run `cropdoc export {folder} "
                f"--format onnx --int8` first, or use --backend onnx"
            )
        if not export_if_missing:
            raise InferenceError(
                f"{folder} has no ONNX export; run `cropdoc export {folder} --format onnx`"
            )
        from .export import export_onnx

        _logger.info("no up-to-date ONNX export in %s; exporting one now", folder)
        path = export_onnx(folder).path
        meta = read_meta(folder)
    if not path.is_file():
        raise InferenceError(f"ONNX file {path} not found; re-run `cropdoc export {folder}`")
    # With onnxruntime computing the logits, torch only preprocesses single images, which
    # gains nothing from intra-op threads, while its OpenMP team fights onnxruntime's pool
    # for the cores: measured on 2 cores, 1.3 ms/img with one thread vs 5-31 ms with two.
    torch.set_num_threads(1)
    return Predictor(
        meta,
        _OnnxRunner(_onnx_session(path, threads), backend),
        bundle_dir=folder,
        max_pixels=max_pixels,
    )


def _onnx_session(path: Path, threads: int | None = None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise InferenceError(
            "the ONNX backend needs onnxruntime: pip install 'cropdoc[serve]'"
        ) from e
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spinning, leaving the cores to the threads that
    # decode the next images (a server preprocesses while it infers).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped exceptions for bad files
        raise InferenceError(
            f"onnxruntime cannot load {path}: {e}; re-run `cropdoc export` to rebuild it"
        ) from e
