"""Predict crop diseases from photos with a trained bundle, on PyTorch or onnxruntime.

Preprocessing and calibration come from the bundle's ``model.json`` as stored
(``preprocessing``: resize the shorter side, centre-crop, normalise; ``temperature``:
softmax of ``logits / T``), never from re-typed constants, so a prediction here matches
what ``cropdoc evaluate`` measured. Backends share that preprocessing and differ only in
the :mod:`~cropdoc.inference.runners` runner that computes the logits.

:func:`load_predictor` only loads: the ONNX backends need an up-to-date export recorded in
the bundle (``cropdoc export``, or :func:`cropdoc.export.ensure_export`), and say which
command makes one when it is missing. A bad image never stops a batch: it becomes a
:class:`Prediction` with ``error`` set and the other images are still predicted.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..bundle import BundleMeta, load_bundle, read_meta, resolve_bundle_dir
from ..classnames import class_label
from ..cpu import torch_threads
from ..data.images import DEFAULT_MAX_PIXELS, BadImageError, load_tensor
from ..data.transforms import build_eval_transform
from ..models import get_arch
from ..ood import FALLBACK_KIND, bundle_scores, needs_features
from ..probabilities import softmax
from .artifacts import EXPORT_KEYS, export_command, recorded_export
from .errors import InferenceError
from .litert import LiteRtRunner
from .runners import OnnxRunner, Runner, TorchRunner, resolve_device
from .sources import ImageSource, source_name

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "ClassScore",
    "MicroBatcher",
    "Prediction",
    "Predictor",
    "load_predictor",
]

_logger = logging.getLogger(__name__)

#: ``auto``: onnx when the bundle has an up-to-date ONNX export, onnxruntime is installed
#: and the device is the CPU; torch otherwise.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "tflite", "tflite-int8")
#: Images per forward pass for ``predict`` and the most a server merges into one: batch
#: 32 is where the CPU backends reach their offline throughput (BENCHMARKS.md).
DEFAULT_BATCH_SIZE = 32


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
    """The result for one image: top-k classes best first, or an error message.

    ``ood_score`` is higher for images unlike the training data (``cropdoc.ood``);
    ``abstain`` is True when it passes the bundle's threshold: the photo is not one of the
    crops/diseases the model knows, or not a clear leaf photo, and ``top`` should not be
    acted on. A bundle without a fitted score reports ``1 - p_max`` and never abstains.
    """

    source: str
    top: list[ClassScore] = field(default_factory=list)
    error: str | None = None
    ood_score: float | None = None
    abstain: bool = False

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
            "ood_score": self.ood_score,
            "abstain": self.abstain,
            "error": self.error,
        }


class Predictor:
    """Turns images into calibrated top-k predictions with a bundle's preprocessing.

    Build one with :func:`load_predictor`; the constructor does no I/O.

    Attributes:
        meta: the bundle's metadata (classes, preprocessing, temperature).
        backend: ``"torch"``, ``"onnx"`` or ``"onnx-int8"``.
        max_pixels: images declaring more pixels are refused before decoding.
        preprocess_threads: torch intra-op threads while decoding and transforming
            (None: the caller's setting); restored afterwards.

    Example:
        >>> predictor = load_predictor("runs/effb0/model", backend="onnx")  # doctest: +SKIP
        >>> [p.best.label for p in predictor.predict(["leaf.jpg"])]  # doctest: +SKIP
        ['Tomato · Late blight']
    """

    def __init__(
        self,
        meta: BundleMeta,
        runner: Runner,
        *,
        bundle_dir: Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        preprocess_threads: int | None = None,
    ) -> None:
        self.meta = meta
        self.bundle_dir = bundle_dir
        self.max_pixels = max_pixels
        self.preprocess_threads = preprocess_threads
        self._runner = runner
        self._transform = build_eval_transform(meta.preprocessing)
        self._labels = [class_label(c) for c in meta.classes]
        self.ood_kind = meta.ood.kind if meta.ood is not None else FALLBACK_KIND
        if needs_features(self.ood_kind) and not getattr(runner, "has_features", True):
            raise InferenceError(
                f"the {runner.name} model file has no 'features' output, which the bundle's "
                f"{self.ood_kind} OOD score needs; re-export it with `cropdoc export`"
            )

    @property
    def backend(self) -> str:
        return self._runner.name

    @property
    def runner(self) -> Runner:
        """What computes the logits (a :class:`~cropdoc.inference.runners.Runner`)."""
        return self._runner

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

    def outputs(self, batch: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(N, C)`` and, when the runner gives them, penultimate features ``(N, D)``."""
        array = batch.numpy() if isinstance(batch, torch.Tensor) else batch
        array = np.ascontiguousarray(array, dtype=np.float32)
        run = getattr(self._runner, "run", None)
        return run(array) if run is not None else (self._runner(array), None)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of ``logits / temperature``."""
        return softmax(logits, self.meta.temperature)

    def ood_scores(
        self, logits: np.ndarray, features: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bundle's OOD score per row and whether it abstains (``cropdoc.ood``)."""
        return bundle_scores(
            self.meta.ood, logits, temperature=self.meta.temperature, features=features
        )

    def _fill(
        self,
        results: list[Prediction],
        indices: Sequence[int],
        outputs: tuple[np.ndarray, np.ndarray | None],
        top_k: int,
    ) -> None:
        """Top-k, OOD score and abstain decision of ``results[indices]`` from one batch."""
        logits, features = outputs
        scores, abstain = self.ood_scores(logits, features)
        for i, row, score, no in zip(indices, logits, scores, abstain, strict=True):
            results[i].top = self._top(row, top_k)
            results[i].ood_score = float(score)
            results[i].abstain = bool(no)

    def predict(
        self,
        sources: Sequence[ImageSource],
        *,
        top_k: int = 3,
        batch_size: int = DEFAULT_BATCH_SIZE,
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
        if batch_size < 1:
            raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
        results = _empty_results(sources, top_k, names)
        total = len(sources)
        for start in range(0, total, batch_size):
            chunk = range(start, min(start + batch_size, total))
            batch, good = self._preprocess_many(sources, chunk, results)
            if batch is not None:
                self._fill(results, good, self.outputs(batch), top_k)
            if progress is not None:
                progress(chunk.stop, total)
        return results

    def _preprocess_many(
        self, sources: Sequence[ImageSource], indices: Sequence[int], results: list[Prediction]
    ) -> tuple[torch.Tensor | None, list[int]]:
        """Preprocess ``sources[indices]``; bad images get their error in ``results``."""
        tensors, good = [], []
        with torch_threads(self.preprocess_threads):
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


def _empty_results(
    sources: Sequence[ImageSource], top_k: int, names: Sequence[str] | None
) -> list[Prediction]:
    """One unfilled :class:`Prediction` per source, after checking the arguments."""
    if top_k < 1:
        raise InferenceError(f"top_k must be at least 1, got {top_k}")
    if names is not None and len(names) != len(sources):
        raise InferenceError("names must have one entry per source")
    return [
        Prediction(source=names[i] if names is not None else source_name(s, i))
        for i, s in enumerate(sources)
    ]


class _Job:
    __slots__ = ("batch", "done", "error", "outputs")

    def __init__(self, batch: torch.Tensor) -> None:
        self.batch = batch
        self.done = threading.Event()
        self.outputs: tuple[np.ndarray, np.ndarray | None] | None = None
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

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch: int = DEFAULT_BATCH_SIZE,
        max_wait_ms: float = 5.0,
    ) -> None:
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
        results = _empty_results(sources, top_k, names)
        batch, good = self.predictor._preprocess_many(sources, range(len(sources)), results)
        if batch is None:
            return results
        job = _Job(batch)
        self._ensure_thread()
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.outputs is not None
        self.predictor._fill(results, good, job.outputs, top_k)
        return results

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and what else arrives before the deadline; True when told to stop."""
        jobs, size = [first], len(first.batch)
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                if remaining > 0:
                    job = self._queue.get(timeout=remaining)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            size += len(job.batch)
        return jobs, False

    def _run(self, jobs: list[_Job]) -> None:
        try:
            batch = jobs[0].batch if len(jobs) == 1 else torch.cat([j.batch for j in jobs])
            logits, features = self.predictor.outputs(batch)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting caller
            for job in jobs:
                job.error = e
                job.done.set()
            return
        start = 0
        for job in jobs:
            end = start + len(job.batch)
            job.outputs = (logits[start:end], None if features is None else features[start:end])
            start = end
            job.done.set()


# --------------------------------------------------------------------------- loading


def load_predictor(
    bundle: str | os.PathLike[str],
    *,
    backend: str = "torch",
    onnx_path: str | os.PathLike[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int | None = None,
    device: str | torch.device = "auto",
) -> Predictor:
    """Load a bundle for prediction on the chosen backend; never exports.

    The ONNX and TFLite backends load the file recorded in ``model.json`` ``exports``
    (``onnx``, ``onnx_int8``, ``tflite``, ``tflite_int8``) when it was made from the
    current weights; otherwise this raises and
    names the ``cropdoc export`` command that makes it (from Python:
    :func:`cropdoc.export.ensure_export`). Thread settings apply to this predictor's work
    only; the process's torch thread count is left as it was.

    Args:
        bundle: a bundle folder or its run directory.
        backend: one of :data:`BACKENDS`.
        onnx_path: use this exported file (``.onnx``; ``.tflite`` for the tflite backends)
            instead of the recorded export.
        max_pixels: refuse larger images before decoding them.
        threads: intra-op threads for computing logits (None: the library's default).
        device: where the torch backend computes (``"auto"``: CUDA, then MPS, then CPU);
            the ONNX and TFLite backends run on the CPU.

    Raises:
        InferenceError: unknown backend or device, or no usable export.
        BundleError: the bundle is missing or corrupt.

    Example:
        >>> predictor = load_predictor("runs/effb0/model", backend="onnx")  # doctest: +SKIP
    """
    if backend not in BACKENDS:
        raise InferenceError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    folder = resolve_bundle_dir(bundle)
    backend = _resolve_backend(folder, backend, device, explicit_file=onnx_path is not None)
    if backend == "torch":
        loaded = load_bundle(folder)
        spec = get_arch(loaded.meta.arch)
        runner = TorchRunner(loaded.model, device=device, threads=threads, spec=spec)
        return Predictor(
            loaded.meta,
            runner,
            bundle_dir=folder,
            max_pixels=max_pixels,
            preprocess_threads=threads,
        )
    if str(device) not in ("auto", "cpu"):
        raise InferenceError(
            f"the {backend} backend runs on the CPU; use --device cpu, or --backend torch "
            f"to compute on {device}"
        )
    path = _export_file(folder, backend, onnx_path)
    if backend.startswith("tflite"):
        runner: Runner = LiteRtRunner.from_file(path, name=backend, threads=threads)
    else:
        runner = OnnxRunner.from_file(path, name=backend, threads=threads)
    # torch only preprocesses here: single images gain nothing from intra-op threads, while
    # its OpenMP team fights onnxruntime's pool for the cores (measured on 2 cores:
    # 1.3 ms/img with one thread vs 5-31 ms with two).
    return Predictor(
        read_meta(folder), runner, bundle_dir=folder, max_pixels=max_pixels, preprocess_threads=1
    )


def _resolve_backend(
    folder: Path, backend: str, device: str | torch.device, *, explicit_file: bool
) -> str:
    """``auto`` → onnx when it can be loaded as is and the device is the CPU, else torch."""
    if backend != "auto":
        return backend
    if resolve_device(device).type != "cpu":
        chosen, why = "torch", f"computing on {resolve_device(device)}"
    elif importlib.util.find_spec("onnxruntime") is None:
        chosen, why = "torch", "onnxruntime is not installed"
    elif explicit_file or recorded_export(folder, EXPORT_KEYS["onnx"]) is not None:
        chosen, why = "onnx", "the bundle's verified ONNX export"
    else:
        chosen = "torch"
        why = f"no up-to-date ONNX export; `{export_command(folder, 'onnx')}` makes one"
    _logger.info("backend auto: %s (%s)", chosen, why)
    return chosen


def _export_file(folder: Path, backend: str, given: str | os.PathLike[str] | None) -> Path:
    """The file to load: ``given``, else the bundle's up-to-date recorded export."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise InferenceError(f"{backend} model file {path} not found")
        return path
    path = recorded_export(folder, EXPORT_KEYS[backend])
    if path is None:
        int8 = backend.endswith("-int8")
        fallback = backend.removesuffix("-int8") if int8 else "torch"
        kind = {"onnx": "ONNX", "tflite": "TFLite"}[backend.removesuffix("-int8")]
        kind = f"{kind} INT8" if int8 else kind
        raise InferenceError(
            f"{folder} has no up-to-date {kind} export: run `{export_command(folder, backend)}`"
            f" first, or use --backend {fallback}"
        )
    return path
