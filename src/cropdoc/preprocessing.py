"""How an image becomes a model input: the one description every consumer builds from.

Training's eval pipeline, ``evaluate``, ``predict``, every export and ``serve`` read this
object from the bundle as stored (``model.json`` → ``preprocessing``) and never re-derive
sizes from a ratio: :meth:`Preprocessing.for_size` is the one place where the resize side
is computed from the crop size. It imports neither torch nor torchvision, so serving code
and the web export can read it cheaply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "EVAL_RESIZE_RATIO",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Interpolation",
    "Preprocessing",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Shorter side resized to ``round(S * 1.14)`` before the centre crop (255 for 224, about
#: the usual 256/224 ImageNet ratio).
EVAL_RESIZE_RATIO: float = 1.14

Interpolation = Literal["bilinear", "bicubic", "nearest"]


class Preprocessing(BaseModel):
    """Resize the shorter side to ``resize_size``, centre-crop ``image_size``, normalise.

    Attributes:
        image_size: the model's input side S (square crop).
        resize_size: the shorter side before the crop (>= S).
        mean: per-channel mean of the pretrained weights (RGB, 0..1 scale).
        std: per-channel standard deviation (RGB).
        interpolation: resampling filter of the resize.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(ge=1)
    resize_size: int = Field(ge=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"

    @model_validator(mode="after")
    def _check(self) -> Preprocessing:
        if self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size ({self.resize_size}) must be >= image_size ({self.image_size}): "
                f"the image is resized, then a centre crop is taken"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        return self

    @classmethod
    def for_size(
        cls,
        image_size: int,
        *,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        resize_ratio: float = EVAL_RESIZE_RATIO,
        interpolation: Interpolation = "bilinear",
    ) -> Preprocessing:
        """The preprocessing for a crop of ``image_size`` (resize side derived here, once).

        Raises:
            ValueError: ``resize_ratio`` below 1 (the crop would be larger than the image).
        """
        if resize_ratio < 1.0:
            raise ValueError(
                f"resize_ratio must be >= 1 (resize, then crop a smaller centre), got "
                f"{resize_ratio}"
            )
        return cls(
            image_size=image_size,
            resize_size=round(image_size * resize_ratio),
            mean=tuple(mean),
            std=tuple(std),
            interpolation=interpolation,
        )
