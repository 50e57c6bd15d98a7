"""Training augmentation cost per image (one thread): textbook PIL, the seed's v2, ours.

All three apply the seed's nine steps to the same real photos at 224 px, interleaved.
``reference`` decodes nothing (PIL images are opened beforehand) and runs classic
``torchvision.transforms`` on PIL; ``seed_v2`` runs ``build_train_transform`` on uint8
tensors; ``ours`` runs ``FastTrainAugment`` on the decoded-cache tensors (short side
round(1.14 × size), as training does). The parts of ours are timed too, blur at p = 1.

    python -m benchmarks.augment
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from cropdoc.data.augment import FastTrainAugment
from cropdoc.data.images import load_tensor
from cropdoc.data.transforms import build_train_transform

from .common import emit, machine, median, ratio, samples
from .train_step import reference_transform


def _ms_per_image(fn: Callable[[Any], Any], inputs: list[Any]) -> float:
    start = time.perf_counter()
    for x in inputs:
        fn(x)
    return (time.perf_counter() - start) / len(inputs) * 1000


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # what one loader worker has
    size = args.image_size
    paths = [path for path, _ in samples(args.images)]
    pil = []
    for path in paths:
        with Image.open(path) as img:
            pil.append(img.convert("RGB"))
    tensors = [load_tensor(path) for path in paths]
    cached = [v2.functional.resize(t, round(size * 1.14), antialias=True) for t in tensors]
    ours = FastTrainAugment(size)
    blur_always = FastTrainAugment(size)
    blur_always.blur_p = 1.0
    normalised = [ours(c) for c in cached]
    cases: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "reference (PIL, torchvision.transforms)": (reference_transform(size), pil),
        "seed_v2 (build_train_transform)": (build_train_transform(size), tensors),
        "ours (FastTrainAugment)": (ours, cached),
        "ours: crop + flips + rotation (CropFlipRotate)": (ours.geometry, cached),
        "ours: blur, p = 1": (blur_always._blur, normalised),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved rounds
        for name, (fn, inputs) in cases.items():
            times[name].append(_ms_per_image(fn, inputs))
    ms = {name: median(v) for name, v in times.items()}
    ref = ms["reference (PIL, torchvision.transforms)"]
    result = {
        "benchmark": "augment",
        "image_size": size,
        "images": len(paths),
        "ms_per_image": ms,
        "ours_vs_reference": ratio(ms["ours (FastTrainAugment)"], ref),
        "machine": machine(),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
