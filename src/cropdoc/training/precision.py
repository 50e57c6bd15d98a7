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

bf16 has one trap on CPUs: the backward pass of a *depthwise* convolution with a 5x5
kernel or a stride of 2 was 2.6-13x slower in bf16 than in fp32 on the AMD EPYC the
benchmarks last ran on (per-shape figures in BENCHMARKS.md, ``benchmarks/depthwise.py``),
while 3x3 stride-1 depthwise convolutions were faster in bf16. EfficientNet and
MobileNetV3 have both kinds, so the probe also times a third mode,
:data:`BF16_FP32_DEPTHWISE`: bf16 autocast with just those convolutions run in fp32
(:func:`fp32_depthwise`). There, compute alone, EfficientNet-B0 trained end to end at 21.9
img/s against 15.3 in bf16 and 13.5 in fp32, and a full fine-tuning epoch of the
pretrained EfficientNet-Lite0 in the quality benchmark fell from 55-67 s to 45-55 s.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import StageConfig
from ..io import atomic_write_json
from ..models import apply_policy, build, get_arch, set_train_mode

__all__ = [
    "BF16",
    "BF16_FP32_DEPTHWISE",
    "FP32",
    "PrecisionPlan",
    "cpu_probe_applies",
    "cpu_supports_bf16",
    "fp32_depthwise",
    "plan_precision",
    "probe_cpu_precision",
    "probe_stage_precision",
    "resolve_precision",
    "slow_bf16_convs",
]

_logger = logging.getLogger(__name__)

_EXPLICIT = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}

#: The modes a stage can train in on a CPU: Fabric's fp32 and bf16 autocast, and bf16
#: autocast with the depthwise convolutions whose bf16 backward is slow kept in fp32.
FP32, BF16, BF16_FP32_DEPTHWISE = "32-true", "bf16-mixed", "bf16-mixed+fp32-depthwise"
_BF16_MODES = (BF16, BF16_FP32_DEPTHWISE)
#: Bumped when the probe's candidates change, so older cached answers are measured again.
_PROBE_VERSION = 2


def slow_bf16_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The depthwise convolutions whose bf16 backward is slow on CPUs: kernel > 3 or stride > 1.

    Measured per shape (``benchmarks/depthwise.py``): with a 5x5 kernel or a stride of 2
    the bf16 backward of a depthwise convolution was 2.6-13x slower than fp32's; 3x3
    stride-1 depthwise convolutions were faster in bf16. Dense and pointwise convolutions are not
    depthwise and never listed.
    """
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
        and (max(m.kernel_size) > 3 or max(m.stride) > 1)
    ]


@contextmanager
def fp32_depthwise(model: nn.Module, device_type: str = "cpu") -> Iterator[None]:
    """Run :func:`slow_bf16_convs` in fp32 inside an autocast region.

    Each such convolution's ``forward`` is wrapped (on the instance, so its own forward,
    timm's ``Conv2dSame`` padding included, still runs) to switch autocast off and take an
    fp32 input; its backward then runs in fp32 too. Parameters, buffers and state-dict keys
    are untouched, and the wrappers are removed on exit.
    """
    patched: list[tuple[nn.Module, object]] = []
    for conv in slow_bf16_convs(model):
        own = conv.__dict__.get("forward")  # an instance forward someone else set, if any
        inner = conv.forward

        def forward(x: torch.Tensor, _inner=inner) -> torch.Tensor:
            with torch.autocast(device_type, enabled=False):
                return _inner(x.float())

        conv.forward = forward  # type: ignore[method-assign]
        patched.append((conv, own))
    try:
        yield
    finally:
        for conv, own in patched:
            if own is None:
                del conv.forward
            else:
                conv.forward = own  # type: ignore[method-assign]


class precision_context(AbstractContextManager):  # noqa: N801 - used like a function
    """The region one training step of ``mode`` runs its forward in (reusable: each
    ``with`` enters it afresh, as ``torch.autocast`` objects are).

    ``model``: needed for :data:`BF16_FP32_DEPTHWISE` (its slow depthwise convolutions
    are switched to fp32 for the region); the other modes are plain autocast settings.
    """

    def __init__(self, mode: str, device_type: str, model: nn.Module | None = None) -> None:
        self.mode, self.device_type, self.model = mode, device_type, model
        self._stack: ExitStack | None = None

    def __enter__(self) -> precision_context:
        stack = ExitStack()
        stack.enter_context(
            torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.mode in _BF16_MODES)
        )
        if self.mode == BF16_FP32_DEPTHWISE and self.model is not None:
            stack.enter_context(fp32_depthwise(self.model, self.device_type))
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> bool | None:
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc) if stack is not None else None


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
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int, modes: list[str]
) -> dict[str, float]:
    """Seconds per training step in each of ``modes`` (:data:`FP32`, :data:`BF16`, ...).

    The modes are timed in turn, round after round, and the fastest step of each is kept:
    on a shared machine a burst of other work slows whichever step it hits, and the minimum
    is the figure such a burst cannot inflate, so a busy moment does not get cached as the
    machine's answer.
    """
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step(mode: str) -> float:
        start = time.perf_counter()
        with precision_context(mode, "cpu", model):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for mode in modes:  # warm-up: kernel selection, allocator
        step(mode)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            times[mode].append(step(mode))
    return {mode: min(t) for mode, t in times.items()}


def probe_cpu_precision(
    make_model: Callable[[], nn.Module],
    key: str,
    *,
    image_size: int,
    batch_size: int = 8,
    steps: int = 3,
) -> str:
    """Return the mode that trains fastest here: :data:`FP32`, :data:`BF16` or
    :data:`BF16_FP32_DEPTHWISE` (cached).

    The last is a candidate only when the model has :func:`slow_bf16_convs`. fp32 is the
    numerically safer default, so a bf16 mode must beat it by 10 %, not by noise.

    Args:
        make_model: builds a fresh model (weights need not be pretrained), with the layers
            frozen and in the train/eval mode the stage trains it with.
        key: identifies the architecture (and trainable set) in the cache.
        image_size: the training input size.
        batch_size: the probe's batch (small, to keep the probe to a few seconds).
        steps: timed steps per mode (in turn, fastest kept) after a warm-up.
    """
    cache = _cache_file()
    cache_key = f"{key}|{image_size}|{_cpu_name()}|torch {torch.__version__}|probe {_PROBE_VERSION}"
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
    modes = [FP32, BF16] + ([BF16_FP32_DEPTHWISE] if slow_bf16_convs(model) else [])
    times = _time_steps(model, x, y, rounds=steps, modes=modes)
    bf16 = min(modes[1:], key=times.__getitem__)
    choice = bf16 if times[bf16] < 0.9 * times[FP32] else FP32
    _logger.info(
        "precision probe for %s at %d px: %s -> %s (cached in %s)",
        key,
        image_size,
        ", ".join(f"{mode} {batch_size / t:.0f} img/s" for mode, t in times.items()),
        choice,
        cache,
    )
    known[cache_key] = {"precision": choice, "s_per_step": times}
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
        by_stage: stage name → :data:`FP32`, :data:`BF16` or :data:`BF16_FP32_DEPTHWISE`
            when measured per stage (``auto`` on a bf16 CPU); Fabric then runs fp32 and
            the bf16 stages run under bf16 autocast. Empty: Fabric's precision everywhere.
    """

    fabric: str
    by_stage: dict[str, str] = field(default_factory=dict)

    def stage(self, name: str) -> str:
        """The precision stage ``name`` trains in."""
        return self.by_stage.get(name, self.fabric)

    def autocast(
        self, stage: str | None, device_type: str, model: nn.Module | None = None
    ) -> AbstractContextManager:
        """The forward's autocast for a stage measured faster in bf16 (inside Fabric's own,
        which wins); for :data:`BF16_FP32_DEPTHWISE`, ``model``'s slow depthwise
        convolutions run in fp32 inside it."""
        mode = self.by_stage.get(stage, FP32) if stage is not None else FP32
        return precision_context(mode, device_type, model)

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
