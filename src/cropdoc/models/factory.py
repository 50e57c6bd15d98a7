"""The one way to make a cropdoc model: ``build(arch, classes=..., weights=...)``."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from .registry import build_head, get_arch
from .weights import load_pretrained

__all__ = ["build"]

logger = logging.getLogger(__name__)


def build(arch: str, *, classes: int, weights: str | Path | None = "imagenet") -> nn.Module:
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

    Returns:
        The model, in training mode, every parameter trainable.

    Raises:
        ConfigError: ``arch`` is unknown or ``classes`` is below 2.
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
    model = spec.builder(weights=None)
    # The original head is replaced before loading, so a file's head is matched against
    # ours (loaded when it fits, skipped when it is an ImageNet 1000-class head).
    setattr(model, spec.head_attr, build_head(spec.feature_width, classes, spec.activation))
    load_pretrained(model, spec, weights)
    logger.debug("Built %s with %d classes (weights: %s).", spec.name, classes, weights)
    return model
