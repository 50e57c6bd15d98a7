"""The model step alone (no data loading): the ceiling each setting allows, side by side.

Complements ``train_step``: it times forward + backward + AdamW on one random batch for
every combination of threads, memory format and precision asked for, so the effect of
each lever, and the best any loop could reach, is visible without the loader. Optional:
a ``torch.profiler`` table of the top ops, and ``torch.compile`` against eager (slow:
compilation takes minutes).

    python -m benchmarks.compute_only --archs mobilenet_v3_small --stages 3
    python -m benchmarks.compute_only --archs resnet50 --stages 3 --threads 2 \\
        --formats cl --precisions bf16 --profile
    python -m benchmarks.compute_only --archs timm/tf_efficientnet_lite0 --stages 3 \\
        --threads 2 --formats cl --precisions fp32,bf16,bf16dw

Precisions: ``fp32``, ``bf16`` (autocast) and ``bf16dw`` (autocast with the depthwise
convolutions whose bf16 backward is slow kept in fp32: the product's
``bf16-mixed+fp32-depthwise`` mode).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from cropdoc.models import apply_policy, build, get_arch, set_train_mode
from cropdoc.training.precision import BF16, BF16_FP32_DEPTHWISE, FP32, precision_context

from .common import emit, machine

TRAINABLE = {1: "head", 2: "partial", 3: "all"}
MODES = {"fp32": FP32, "bf16": BF16, "bf16dw": BF16_FP32_DEPTHWISE}


def _setup(arch: str, stage: int, channels_last: bool, size: int, batch: int):
    spec = get_arch(arch)
    model = build(arch, classes=12, weights="none")
    apply_policy(model, spec, TRAINABLE[stage])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    set_train_mode(model, freeze_bn_stats=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 12, (batch,))
    return model, opt, x, y


def _step(model: nn.Module, opt, x, y, mode: str) -> None:
    with precision_context(mode, "cpu", model):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def _rate(model, opt, x, y, mode: str, steps: int) -> float:
    _step(model, opt, x, y, mode)  # warm-up: kernel selection, allocator
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        _step(model, opt, x, y, mode)
        times.append(time.perf_counter() - t)
    return len(x) / min(times)


def measure(
    arch: str,
    stage: int,
    threads: int,
    fmt: str,
    precision: str,
    *,
    size: int,
    batch: int,
    steps: int,
    profile: bool,
    compile_: bool,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model, opt, x, y = _setup(arch, stage, fmt == "cl", size, batch)
    mode = MODES[precision]
    row: dict[str, Any] = {
        "arch": arch,
        "stage": stage,
        "threads": threads,
        "format": fmt,
        "precision": precision,
        "images_per_s": _rate(model, opt, x, y, mode, steps),
    }
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            _step(model, opt, x, y, mode)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        row["top_ops_self_cpu_share"] = {
            e.key: round(e.self_cpu_time_total / total, 4) for e in events[:10]
        }
    if compile_:
        compiled = torch.compile(model)
        t = time.perf_counter()
        _step(compiled, opt, x, y, mode)
        row["compile_first_step_s"] = time.perf_counter() - t
        # Interleaved so a load change hits both alike.
        eager, comp = [], []
        for _ in range(2):
            comp.append(_rate(compiled, opt, x, y, mode, steps))
            eager.append(_rate(model, opt, x, y, mode, steps))
        row["compiled_images_per_s"], row["eager_images_per_s"] = comp, eager
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="mobilenet_v3_small,efficientnet_b0,resnet50")
    p.add_argument("--stages", default="1,3")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--formats", default="nchw,cl", help="nchw and/or cl (channels_last)")
    p.add_argument("--precisions", default="fp32,bf16", help=f"comma-separated of {list(MODES)}")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps; the fastest counts")
    p.add_argument("--profile", action="store_true", help="add a torch.profiler top-10")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = p.parse_args(argv)
    rows = [
        measure(
            arch,
            int(stage),
            int(threads),
            fmt,
            precision,
            size=args.image_size,
            batch=args.batch,
            steps=args.steps,
            profile=args.profile,
            compile_=args.compile,
        )
        for arch in args.archs.split(",")
        for stage in args.stages.split(",")
        for threads in args.threads.split(",")
        for fmt in args.formats.split(",")
        for precision in args.precisions.split(",")
    ]
    result = {"benchmark": "compute_only", "rows": rows, "machine": machine()}
    emit(result)
    return result


if __name__ == "__main__":
    main()
