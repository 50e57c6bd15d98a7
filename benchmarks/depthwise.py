"""Depthwise convolutions, fp32 against bf16, one shape at a time: where bf16 is slow.

    python -m benchmarks.depthwise
    python -m benchmarks.depthwise --threads 2 --batch 32

Times the forward and the backward (input and weight gradients) of one depthwise
convolution, channels-last, in fp32 and in bf16, for the shapes EfficientNet-Lite0 / -B0
and MobileNetV3 train with at 224 px. This is the evidence behind
``cropdoc.training.precision.slow_bf16_convs``: on CPUs, the bf16 backward of a depthwise
convolution with a 5x5 kernel or a stride of 2 is several times slower than fp32's, while
3x3 stride-1 ones are faster in bf16. Each row also says whether the rule lists the shape.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from cropdoc.training.precision import slow_bf16_convs

from .common import emit, machine

#: (channels, input size, kernel, stride) of depthwise convolutions at 224 px input.
SHAPES = [
    (32, 112, 3, 1),
    (96, 112, 3, 2),
    (144, 56, 3, 1),
    (144, 56, 5, 2),
    (240, 28, 5, 1),
    (240, 28, 3, 2),
    (480, 14, 3, 1),
    (480, 14, 5, 1),
    (672, 14, 5, 1),
    (672, 14, 5, 2),
    (1152, 7, 5, 1),
    (1152, 7, 3, 1),
]


def _time(fn, rounds: int) -> float:
    fn()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    channels: int, size: int, kernel: int, stride: int, dtype: torch.dtype, batch: int, rounds: int
) -> dict[str, float]:
    conv = nn.Conv2d(
        channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels
    ).to(dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    x.requires_grad_(True)
    out = conv(x)
    grad = torch.randn_like(out)

    def forward() -> None:
        with torch.no_grad():
            conv(x)

    def backward() -> None:
        torch.autograd.grad(out, (x, conv.weight), grad, retain_graph=True)

    return {
        "forward_ms": 1e3 * _time(forward, rounds),
        "backward_ms": 1e3 * _time(backward, rounds),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timed calls; the fastest counts")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for channels, size, kernel, stride in SHAPES:
        conv = nn.Conv2d(channels, channels, kernel, stride=stride, groups=channels)
        fp32 = measure(channels, size, kernel, stride, torch.float32, args.batch, args.rounds)
        bf16 = measure(channels, size, kernel, stride, torch.bfloat16, args.batch, args.rounds)
        rows.append(
            {
                "channels": channels,
                "input": size,
                "kernel": kernel,
                "stride": stride,
                "fp32": fp32,
                "bf16": bf16,
                "bf16_over_fp32_backward": bf16["backward_ms"] / fp32["backward_ms"],
                "listed_slow_in_bf16": bool(slow_bf16_convs(nn.Sequential(conv))),
            }
        )
    result = {
        "benchmark": "depthwise",
        "threads": args.threads,
        "batch": args.batch,
        "rows": rows,
        "machine": machine(),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
