"""The one way to make a cropdoc model: ``build(arch, classes=..., weights=...)``."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from .registry import build_head, get_arch
from .spec import ArchSpec
from .weights import load_pretrained

__all__ = ["build", "drop_path_rate"]

logger = logging.getLogger(__name__)


def build(
    arch: str,
    *,
    classes: int,
    weights: str | Path | None = "imagenet",
    drop_path: float | None = None,
) -> nn.Module:
    """Build a backbone with cropdoc's head and its initial weights.

    A torchvision architecture is the plain torchvision module with its head replaced (no
    extra attributes); a ``timm/<name>`` one is a
    :class:`~cropdoc.models.timm_specs.TimmClassifier` (``backbone`` + ``head``). Callers
    that need the architecture's details keep the spec from
    :func:`~cropdoc.models.get_arch`.

    Args:
        arch: Architecture name or alias (see :func:`~cropdoc.models.list_archs`), or
            ``timm/<model name>`` for any model of timm's zoo.
        classes: Number of output classes (at least 2).
        weights: ``"imagenet"`` (torchvision's pretrained weights via the torch.hub cache;
            for timm, its default pretrained tag via the Hugging Face hub cache),
            ``"none"``/``None`` (random init), or the path of a local ``.safetensors``,
            ``.pth`` or ``.pt`` file (a full cropdoc model, or a torchvision or timm
            backbone state dict whose own classifier is dropped).
        drop_path: Stochastic-depth rate (the chance the deepest residual block is skipped
            in a training step); ``None``: the architecture's default (``spec.drop_path``:
            0.2 for EfficientNet-B0 and the timm models that have it, none for ResNet-50
            and MobileNetV3-Small). It acts in training mode only.

    Returns:
        The model, in training mode, every parameter trainable.

    Raises:
        ConfigError: ``arch`` is unknown, ``classes`` is below 2, or ``drop_path`` is
            outside [0, 1) or above 0 for an architecture without stochastic depth.
        WeightsError: The requested weights cannot be obtained or do not fit ``arch``.

    >>> model = build("mobilenetv3", classes=4, weights=None)
    >>> model.classifier[-1].out_features
    4
    """
    spec = get_arch(arch)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ConfigError(
            f"Invalid number of classes {classes!r}: a classifier needs at least 2. Check that "
            "the dataset folder has one sub-folder per class, with at least two classes."
        )
    rate = drop_path_rate(spec, drop_path)
    model = spec.builder(weights=None, **({spec.drop_path_arg: rate} if spec.drop_path_arg else {}))
    # The original head is replaced before loading, so a file's head is matched against
    # ours (loaded when it fits, skipped when it is an ImageNet 1000-class head).
    setattr(model, spec.head_attr, build_head(spec.feature_width, classes, spec.activation))
    load_pretrained(model, spec, weights)
    logger.debug("Built %s with %d classes (weights: %s).", spec.name, classes, weights)
    return model


def drop_path_rate(spec: ArchSpec, rate: float | None = None) -> float:
    """The stochastic-depth rate a model of ``spec`` trains with: ``rate``, or the spec's
    own when ``None``.

    Raises:
        ConfigError: ``rate`` is outside [0, 1), or above 0 for an architecture without
            stochastic depth.
    """
    rate = spec.drop_path if rate is None else float(rate)
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"Invalid drop path rate {rate!r}: it must be in [0, 1), e.g. 0.2.")
    if spec.drop_path_arg is None and rate > 0:
        raise ConfigError(
            f"{spec.name} has no stochastic depth, so a drop path rate of {rate:g} cannot "
            "apply; leave drop_path unset (or 0) for this architecture."
        )
    return rate
