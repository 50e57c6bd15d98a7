"""Train and eval transforms: the seed's 9-step augmentation, and resize + centre crop.

Both pipelines accept a PIL image *or* a ``uint8`` CHW tensor (the loaders decode JPEGs
straight to tensors, which is faster than going through PIL) and return a normalised
``float32`` tensor of shape ``(3, image_size, image_size)``.

The training pipeline, exactly as the seed specifies it (``image_size`` = S):

==== ========================= ======================================= ==========================
step transform                 parameters                              why
==== ========================= ======================================= ==========================
1    RandomResizedCrop         S, scale=(0.8, 1.0), antialias=True     framing, leaf size vary
2    RandomHorizontalFlip      p=0.5                                   no left or right on a leaf
3    RandomVerticalFlip        p=0.2                                   photos not always upright
4    RandomRotation            degrees=20 (uniform in +-20 deg)        hand-held camera angle
5    ColorJitter               brightness=0.2, contrast=0.2,           light and white balance
                               saturation=0.2, hue=0.05                differ between sessions
6    RandomApply(GaussianBlur) kernel 3, sigma=(0.1, 2.0), p=0.2       slight defocus
7    to tensor                 ToImage + ToDtype(float32, scale=True)  uint8 0..255 -> 0..1
8    Normalize                 mean, std (ImageNet by default)         match pretrained weights
9    RandomErasing             p=0.1, scale=(0.02, 0.1)                occlusion; after Normalize,
                                                                       so the patch is 0 = mean
==== ========================= ======================================= ==========================

Step 7 is one nested :class:`~torchvision.transforms.v2.Compose` so that the top-level
pipeline has exactly the nine steps of the table (index ``i`` is step ``i + 1``).

Evaluation is deterministic and built from a bundle's :class:`~cropdoc.preprocessing.Preprocessing`:
resize the shorter side (``round(S * 1.14)`` by default, 255 for 224), centre-crop S, to
tensor, normalise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from ..errors import ConfigError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

__all__ = ["build_eval_transform", "build_train_transform"]

_INTERPOLATION = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


def _to_float_tensor() -> v2.Compose:
    # ToImage accepts PIL images and plain tensors alike; scale=True maps uint8 to [0, 1].
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def _check(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if int(image_size) != image_size or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}.")
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(
            f"mean and std need one value per RGB channel (3 each), got {len(mean)} and {len(std)}."
        )
    if any(s <= 0 for s in std):
        raise ConfigError(f"std values must be positive, got {tuple(std)}.")


def build_train_transform(
    image_size: int = 224,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Build the seed's 9-step training augmentation (see the module docstring's table).

    Args:
        image_size: Output side length S; the model input size of the architecture.
        mean: Per-channel mean used by the pretrained weights.
        std: Per-channel standard deviation used by the pretrained weights.

    Returns:
        A ``v2.Compose`` mapping a PIL image or ``uint8`` CHW tensor to a ``float32``
        tensor ``(3, S, S)``.

    Raises:
        ConfigError: If ``image_size`` is not a positive integer or mean/std are not RGB.

    >>> t = build_train_transform(64)
    >>> t(torch.zeros(3, 80, 100, dtype=torch.uint8)).shape
    torch.Size([3, 64, 64])
    """
    _check(image_size, mean, std)
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomVerticalFlip(p=0.2),
            v2.RandomRotation(20),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.2),
            _to_float_tensor(),
            v2.Normalize(mean=list(mean), std=list(std)),
            v2.RandomErasing(p=0.1, scale=(0.02, 0.1)),
        ]
    )


def build_eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """Build the deterministic eval/inference transform a bundle's preprocessing describes.

    Resize the shorter side to ``resize_size``, centre-crop ``image_size``, to float,
    normalise. Resizing to a little more than S before cropping keeps the object scale
    close to what RandomResizedCrop shows in training while trimming the border.

    Args:
        preprocessing: as stored in the bundle (or :meth:`Preprocessing.for_size`).

    Returns:
        A ``v2.Compose`` mapping a PIL image or ``uint8`` CHW tensor to ``float32 (3, S, S)``.

    >>> t = build_eval_transform(Preprocessing.for_size(64))
    >>> t(torch.zeros(3, 80, 100, dtype=torch.uint8)).shape
    torch.Size([3, 64, 64])
    """
    p = preprocessing
    return v2.Compose(
        [
            v2.Resize(p.resize_size, interpolation=_INTERPOLATION[p.interpolation], antialias=True),
            v2.CenterCrop(p.image_size),
            _to_float_tensor(),
            v2.Normalize(mean=list(p.mean), std=list(p.std)),
        ]
    )
