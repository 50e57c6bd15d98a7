"""Choosing the numeric precision: what the user asked, or what is fastest here.

``auto``: fp16 with a gradient scaler on CUDA (the seed's AMP); full fp32 on Apple MPS
(autocast there is not reliable); on a CPU with native bf16 (AVX-512 BF16 / AMX) a short
measured probe decides between bf16 autocast and fp32 for each stage, because the answer
differs by architecture and by what is trainable. Measured here at 224 px, batch 32, 2
threads (``benchmarks/compute_only.py``): bf16 makes ResNet-50 2.4-2.9× faster in every
stage and EfficientNet-B0 1.8× faster with a frozen backbone (equal trained end to end);
MobileNetV3-Small is 1.1× faster frozen (438 vs 387 img/s) but 1.5× slower trained end to
end (49 vs 72: depthwise convolution backward). The probe times a few training steps of a
fresh model, set up as the stage trains it, in both precisions and caches the winner per
(architecture and trainable set, image size, CPU, torch version) in
``$XDG_CACHE_HOME/cropdoc/precision.json``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write_json

__all__ = ["cpu_probe_applies", "cpu_supports_bf16", "probe_cpu_precision", "resolve_precision"]

_logger = logging.getLogger(__name__)

_EXPLICIT = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (else autocast emulates it slowly)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cropdoc" / "precision.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int
) -> tuple[float, float]:
    """Seconds per training step in fp32 and in bf16 autocast.

    The two are timed alternately and the fastest step of each is kept: on a shared machine
    a burst of other work slows whichever step it hits, and the minimum is the figure such
    a burst cannot inflate, so a busy moment does not get cached as the machine's answer.
    """
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    step(False), step(True)  # warm-up: kernel selection, allocator
    fp32, bf16 = [], []
    for _ in range(rounds):
        fp32.append(step(False))
        bf16.append(step(True))
    return min(fp32), min(bf16)


def probe_cpu_precision(
    make_model: Callable[[], nn.Module],
    key: str,
    *,
    image_size: int,
    batch_size: int = 8,
    steps: int = 3,
) -> str:
    """Return ``"bf16-mixed"`` or ``"32-true"``, whichever trains faster here (cached).

    Args:
        make_model: builds a fresh model (weights need not be pretrained), with the layers
            frozen and in the train/eval mode the stage trains it with.
        key: identifies the architecture (and trainable set) in the cache.
        image_size: the training input size.
        batch_size: the probe's batch (small, to keep the probe to a few seconds).
        steps: timed steps per precision (alternating, fastest kept) after a warm-up.
    """
    cache = _cache_file()
    cache_key = f"{key}|{image_size}|{_cpu_name()}|torch {torch.__version__}"
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    if cache_key in known:
        return known[cache_key]["precision"]
    model = make_model().to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, image_size, image_size).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 2, (batch_size,))
    fp32, bf16 = _time_steps(model, x, y, rounds=steps)
    # fp32 is the numerically safer default: bf16 must win clearly, not by noise.
    choice = "bf16-mixed" if bf16 < 0.9 * fp32 else "32-true"
    _logger.info(
        "precision probe for %s at %d px: fp32 %.0f img/s, bf16 %.0f img/s -> %s (cached in %s)",
        key,
        image_size,
        batch_size / fp32,
        batch_size / bf16,
        choice,
        cache,
    )
    known[cache_key] = {"precision": choice, "fp32_s_per_step": fp32, "bf16_s_per_step": bf16}
    try:
        atomic_write_json(cache, known)
    except OSError as e:  # a read-only home must not stop training
        _logger.debug("could not cache the precision probe: %s", e)
    return choice


def cpu_probe_applies(precision: str, accelerator: str = "auto") -> bool:
    """True when :func:`resolve_precision` would measure (``auto`` on a bf16-capable CPU)."""
    return resolve_precision(precision, accelerator, probe=lambda: "probe") == "probe"


def resolve_precision(
    precision: str,
    accelerator: str = "auto",
    *,
    probe: Callable[[], str] | None = None,
) -> str:
    """Map ``auto|32|bf16|16`` to a Fabric precision string for this machine.

    Args:
        precision: the user's choice.
        accelerator: the requested accelerator.
        probe: on a bf16-capable CPU with ``auto``, called to measure the faster precision;
            without it bf16 is assumed.
    """
    if precision in _EXPLICIT:
        return _EXPLICIT[precision]
    acc = accelerator.lower()
    if acc in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return "16-mixed"
    mps = getattr(torch.backends, "mps", None)
    if acc in ("auto", "mps") and mps is not None and mps.is_available():
        return "32-true"
    if not cpu_supports_bf16():
        return "32-true"
    return probe() if probe is not None else "bf16-mixed"
