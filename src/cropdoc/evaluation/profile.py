"""How big and how fast a model is: parameters, size on disk, latency, throughput.

:func:`profile_predict` times any ``predict(batch)`` callable, so a torch model, an
onnxruntime session or a remote endpoint are measured the same way: warm-up calls first
(lazy initialisation, allocator growth, oneDNN/cuDNN kernel selection), then batch-1
latency per call (mean and p95; p95 is what a user waiting on one photo notices) and
batch-N throughput. Figures are for the current machine and its current load: compare
models measured in one session, not numbers from different machines.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bundle import load_bundle
from .logits import resolve_device

__all__ = [
    "ProfileResult",
    "Timing",
    "bundle_size_mb",
    "count_parameters",
    "profile_bundle",
    "profile_callable",
    "profile_model",
    "profile_predict",
]

_logger = logging.getLogger(__name__)


@dataclass
class Timing:
    """Latency and throughput of one ``predict`` callable."""

    latency_ms_mean: float
    latency_ms_p95: float
    throughput_ips: float
    latency_runs: int
    throughput_batch: int


@dataclass
class ProfileResult:
    """One model's size and speed, as ``cropdoc compare`` tabulates it."""

    backend: str
    device: str
    params: int
    size_mb: float
    image_size: int
    latency_ms_mean: float
    latency_ms_p95: float
    throughput_ips: float
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or not): what the deployed model carries."""
    return sum(p.numel() for p in model.parameters())


def bundle_size_mb(path: str | os.PathLike[str]) -> float:
    """Size on disk of a bundle folder (or one file) in MB (10^6 bytes)."""
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def profile_predict(
    predict: Callable[[Any], Any],
    make_batch: Callable[[int], Any],
    *,
    warmup: int = 5,
    runs: int = 30,
    throughput_batch: int = 32,
    throughput_runs: int = 3,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Time ``predict`` after warm-up.

    Args:
        predict: runs the model on a batch; its result is ignored.
        make_batch: ``make_batch(n)`` returns a batch of ``n`` inputs in whatever form
            ``predict`` takes (a torch tensor, a numpy array, a list of images...). Built
            outside the timed region.
        warmup: untimed calls at each batch size first.
        runs: timed batch-1 calls (latency).
        throughput_batch: batch size for throughput.
        throughput_runs: timed calls at that batch size.
        sync: called after each ``predict`` before the clock stops (e.g.
            ``torch.cuda.synchronize``: CUDA returns before the work is done).

    Returns:
        Mean and p95 batch-1 latency in ms, and images per second at ``throughput_batch``.
    """
    sync = sync or (lambda: None)
    one, many = make_batch(1), make_batch(throughput_batch)
    for _ in range(max(warmup, 0)):
        predict(one)
        sync()
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        predict(one)
        sync()
        times.append(time.perf_counter() - start)
    for _ in range(min(max(warmup, 0), 2)):
        predict(many)
        sync()
    start = time.perf_counter()
    for _ in range(max(throughput_runs, 1)):
        predict(many)
        sync()
    elapsed = time.perf_counter() - start
    ms = np.asarray(times) * 1e3
    return Timing(
        latency_ms_mean=float(ms.mean()),
        latency_ms_p95=float(np.percentile(ms, 95)),
        throughput_ips=throughput_batch * max(throughput_runs, 1) / max(elapsed, 1e-9),
        latency_runs=len(times),
        throughput_batch=throughput_batch,
    )


def profile_callable(
    predict: Callable[[Any], Any],
    make_batch: Callable[[int], Any],
    *,
    backend: str,
    device: str,
    image_size: int,
    params: int = 0,
    size_mb: float = float("nan"),
    threads: int = 0,
    **timing: Any,
) -> ProfileResult:
    """Profile any backend into the same :class:`ProfileResult` the torch path gives.

    For example an onnxruntime session: ``predict = lambda x: sess.run(None, {name: x})``,
    ``make_batch = lambda n: np.random.rand(n, 3, S, S).astype(np.float32)``,
    ``size_mb`` = the ``.onnx`` file's size.
    """
    t = profile_predict(predict, make_batch, **timing)
    return ProfileResult(
        backend=backend,
        device=device,
        params=params,
        size_mb=size_mb,
        image_size=image_size,
        latency_ms_mean=t.latency_ms_mean,
        latency_ms_p95=t.latency_ms_p95,
        throughput_ips=t.throughput_ips,
        threads=threads,
    )


def profile_model(
    model: nn.Module,
    image_size: int,
    *,
    device: str | torch.device | None = None,
    size_mb: float = float("nan"),
    **timing: Any,
) -> ProfileResult:
    """Profile a torch model on random ``(N, 3, S, S)`` inputs on ``device``.

    Args:
        model: the model (put in eval mode, moved to ``device``).
        image_size: input side S.
        device: ``"auto"``/None, ``"cpu"``, ``"cuda"``.
        size_mb: its size on disk, if known.
        **timing: passed to :func:`profile_predict` (``warmup``, ``runs``, ...).
    """
    dev = resolve_device(device)
    model = model.eval().to(dev)

    @torch.inference_mode()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def make_batch(n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, image_size, image_size, generator=generator).to(dev)

    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    t = profile_predict(predict, make_batch, sync=sync, **timing)
    return ProfileResult(
        backend="torch",
        device=str(dev),
        params=count_parameters(model),
        size_mb=size_mb,
        image_size=image_size,
        latency_ms_mean=t.latency_ms_mean,
        latency_ms_p95=t.latency_ms_p95,
        throughput_ips=t.throughput_ips,
        threads=torch.get_num_threads(),
    )


def profile_bundle(
    path: str | os.PathLike[str], *, device: str | None = None, **timing: Any
) -> ProfileResult:
    """Load a bundle and profile it at its own input size (see :func:`profile_model`).

    >>> profile_bundle("runs/effb0/model").latency_ms_p95  # doctest: +SKIP
    """
    bundle = load_bundle(path)
    result = profile_model(
        bundle.model,
        bundle.meta.preprocessing.image_size,
        device=device,
        size_mb=bundle_size_mb(bundle.path),
        **timing,
    )
    _logger.info(
        "%s: %d params, %.1f MB, batch-1 %.1f ms (p95 %.1f), batch-%d %.0f img/s on %s",
        bundle.meta.arch,
        result.params,
        result.size_mb,
        result.latency_ms_mean,
        result.latency_ms_p95,
        timing.get("throughput_batch", 32),
        result.throughput_ips,
        result.device,
    )
    return result
