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
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import StageConfig
from ..io import atomic_write_json
from ..models import apply_policy, build, get_arch, set_train_mode

__all__ = [
    "PrecisionPlan",
    "cpu_probe_applies",
    "cpu_supports_bf16",
    "plan_precision",
    "probe_cpu_precision",
    "probe_stage_precision",
    "resolve_precision",
]

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


def probe_stage_precision(
    arch: str, trainable: str, *, image_size: int, freeze_bn_stats: bool
) -> str:
    """Measure bf16 against fp32 for ``arch`` trained with ``trainable`` (cached per stage).

    The probe's model is set up as the stage trains it: the frozen layers, and frozen
    BatchNorm layers in eval mode when ``freeze_bn_stats``.
    """
    spec = get_arch(arch)

    def make_model() -> nn.Module:
        model = build(spec.name, classes=2, weights="none")
        apply_policy(model, spec, trainable)
        return set_train_mode(model, freeze_bn_stats=freeze_bn_stats)

    return probe_cpu_precision(make_model, f"{spec.name}/{trainable}", image_size=image_size)


@dataclass(frozen=True)
class PrecisionPlan:
    """The run's numeric precision, resolved once: what Fabric runs, and per stage.

    Attributes:
        fabric: the Fabric precision string (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``).
        by_stage: stage name → ``"bf16-mixed"`` or ``"32-true"`` when measured per stage
            (``auto`` on a bf16 CPU); Fabric then runs fp32 and those stages run under
            bf16 autocast. Empty: Fabric's precision everywhere.
    """

    fabric: str
    by_stage: dict[str, str] = field(default_factory=dict)

    def stage(self, name: str) -> str:
        """The precision stage ``name`` trains in."""
        return self.by_stage.get(name, self.fabric)

    def autocast(self, stage: str | None, device_type: str) -> AbstractContextManager:
        """bf16 autocast for a stage measured faster in it (inside Fabric's own, which wins)."""
        bf16 = stage is not None and self.by_stage.get(stage) == "bf16-mixed"
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)

    def describe(self) -> str:
        """``bf16-mixed``, or per stage: ``feature_extraction bf16-mixed, refinement 32-true``."""
        if not self.by_stage:
            return self.fabric
        if len(set(self.by_stage.values())) == 1:
            return next(iter(self.by_stage.values()))
        return ", ".join(f"{name} {p}" for name, p in self.by_stage.items())


def plan_precision(
    precision: str,
    accelerator: str,
    *,
    arch: str,
    stages: list[StageConfig],
    image_size: int,
    freeze_bn_stats: bool,
) -> PrecisionPlan:
    """Resolve the user's ``auto|32|bf16|16`` into a :class:`PrecisionPlan` for the run.

    ``auto`` on a bf16-capable CPU: the faster precision depends on what is trainable, so
    it is probed once per trainable set (cached across runs).
    """
    if not cpu_probe_applies(precision, accelerator):
        return PrecisionPlan(fabric=resolve_precision(precision, accelerator))
    by_trainable: dict[str, str] = {}
    by_stage: dict[str, str] = {}
    for stage in stages:
        if stage.trainable not in by_trainable:
            by_trainable[stage.trainable] = probe_stage_precision(
                arch, stage.trainable, image_size=image_size, freeze_bn_stats=freeze_bn_stats
            )
        by_stage[stage.name] = by_trainable[stage.trainable]
    return PrecisionPlan(fabric="32-true", by_stage=by_stage)
