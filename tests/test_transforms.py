"""Tests for the train (seed's 9 steps) and eval transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision.transforms import v2

from cropdoc.data.transforms import build_eval_transform, build_train_transform
from cropdoc.errors import ConfigError
from cropdoc.preprocessing import EVAL_RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def _uint8_tensor(h: int = 120, w: int = 100, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _pil(h: int = 120, w: int = 100, seed: int = 0) -> Image.Image:
    return Image.fromarray(_uint8_tensor(h, w, seed).permute(1, 2, 0).numpy(), mode="RGB")


def _eval(image_size: int, **kwargs) -> v2.Compose:
    return build_eval_transform(Preprocessing.for_size(image_size, **kwargs))


@pytest.mark.parametrize("make_input", [_uint8_tensor, _pil], ids=["uint8-tensor", "pil"])
@pytest.mark.parametrize("build", [build_train_transform, _eval], ids=["train", "eval"])
def test_output_shape_dtype_and_normalisation(make_input, build) -> None:
    torch.manual_seed(0)
    out = build(64)(make_input())
    assert out.shape == (3, 64, 64)
    assert out.dtype == torch.float32
    # Uniform noise in [0, 1] normalised with ImageNet stats lands roughly in [-2.2, 2.7].
    assert -2.5 < float(out.min()) and float(out.max()) < 2.8
    assert abs(float(out.mean())) < 1.0


def test_train_transform_has_the_seeds_nine_steps_with_exact_parameters() -> None:
    steps = build_train_transform(96).transforms
    assert len(steps) == 9

    crop, hflip, vflip, rot, jitter, blur, to_tensor, norm, erase = steps
    assert isinstance(crop, v2.RandomResizedCrop)
    assert list(crop.size) == [96, 96]
    assert tuple(crop.scale) == (0.8, 1.0)
    assert crop.antialias is True

    assert isinstance(hflip, v2.RandomHorizontalFlip) and hflip.p == 0.5
    assert isinstance(vflip, v2.RandomVerticalFlip) and vflip.p == 0.2

    assert isinstance(rot, v2.RandomRotation)
    assert list(rot.degrees) == [-20.0, 20.0]

    assert isinstance(jitter, v2.ColorJitter)
    assert tuple(jitter.brightness) == pytest.approx((0.8, 1.2))
    assert tuple(jitter.contrast) == pytest.approx((0.8, 1.2))
    assert tuple(jitter.saturation) == pytest.approx((0.8, 1.2))
    assert tuple(jitter.hue) == pytest.approx((-0.05, 0.05))

    assert isinstance(blur, v2.RandomApply) and blur.p == 0.2
    (gauss,) = blur.transforms
    assert isinstance(gauss, v2.GaussianBlur)
    assert list(gauss.kernel_size) == [3, 3]
    assert list(gauss.sigma) == pytest.approx([0.1, 2.0])

    assert isinstance(to_tensor, v2.Compose)
    to_image, to_dtype = to_tensor.transforms
    assert isinstance(to_image, v2.ToImage)
    assert isinstance(to_dtype, v2.ToDtype)
    assert to_dtype.dtype == torch.float32 and to_dtype.scale is True

    assert isinstance(norm, v2.Normalize)
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD

    assert isinstance(erase, v2.RandomErasing)
    assert erase.p == 0.1 and tuple(erase.scale) == (0.02, 0.1)


def test_custom_mean_std_are_used() -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    for build in (build_train_transform, _eval):
        norms = [t for t in build(32, mean=mean, std=std).transforms if isinstance(t, v2.Normalize)]
        assert len(norms) == 1
        assert tuple(norms[0].mean) == mean and tuple(norms[0].std) == std


def test_train_transform_is_random() -> None:
    t = build_train_transform(48)
    x = _uint8_tensor()
    torch.manual_seed(1)
    a = t(x)
    b = t(x)
    assert not torch.equal(a, b)


def test_eval_transform_is_deterministic_and_sizes_are_right() -> None:
    t = _eval(224)
    resize, crop, _, _ = t.transforms
    assert isinstance(resize, v2.Resize) and list(resize.size) == [round(224 * EVAL_RESIZE_RATIO)]
    assert list(resize.size) == [255]
    assert isinstance(crop, v2.CenterCrop) and list(crop.size) == [224, 224]

    x = _uint8_tensor(300, 400)
    torch.manual_seed(0)
    a = t(x)
    torch.manual_seed(123)
    b = t(x)
    assert torch.equal(a, b)
    assert a.shape == (3, 224, 224)


def test_eval_transform_matches_between_pil_and_tensor_input() -> None:
    # Loaders decode to tensors, predict() may get PIL images: both must see the same thing.
    img = _pil(90, 110, seed=3)
    tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    t = _eval(64)
    assert torch.allclose(t(img), t(tensor), atol=0.1)


def test_eval_transform_uses_every_preprocessing_field() -> None:
    pre = Preprocessing(
        image_size=40,
        resize_size=52,
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
        interpolation="bicubic",
    )
    resize, crop, _, norm = build_eval_transform(pre).transforms
    assert list(resize.size) == [52] and resize.interpolation == v2.InterpolationMode.BICUBIC
    assert list(crop.size) == [40, 40]
    assert tuple(norm.mean) == pre.mean and tuple(norm.std) == pre.std


@pytest.mark.parametrize("image_size", [32, 64, 100, 224])
def test_for_size_derives_the_resize_side_from_the_ratio(image_size: int) -> None:
    assert Preprocessing.for_size(image_size).resize_size == round(image_size * EVAL_RESIZE_RATIO)
    assert Preprocessing.for_size(image_size, resize_ratio=1.0).resize_size == image_size
    assert Preprocessing.for_size(image_size, resize_ratio=1.5).resize_size == round(
        image_size * 1.5
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": 3.5},
        {"mean": (0.5, 0.5)},
        {"std": (0.2, 0.0, 0.2)},
    ],
)
def test_bad_arguments_raise_config_error(kwargs) -> None:
    with pytest.raises(ConfigError):
        build_train_transform(**kwargs)


@pytest.mark.parametrize(
    "fields",
    [
        {"image_size": 64, "resize_size": 57},  # resize smaller than the crop
        {"image_size": 0, "resize_size": 10},
        {"image_size": 64, "resize_size": 73, "std": (0.2, 0.0, 0.2)},
        {"image_size": 64, "resize_size": 73, "mean": (0.5, 0.5)},
        {"image_size": 64, "resize_size": 73, "interpolation": "lanczos"},
    ],
)
def test_preprocessing_rejects_what_no_eval_transform_can_do(fields) -> None:
    with pytest.raises(ValidationError):
        Preprocessing(**fields)
