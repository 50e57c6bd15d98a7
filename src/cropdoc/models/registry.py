"""Architectures as data: one frozen :class:`ArchSpec` per supported backbone.

This is the only module in cropdoc that knows architecture specifics (attribute names,
feature widths, which blocks form "the top of the backbone"). Everything else — the
factory, freezing, parameter groups, weight loading, preprocessing — reads a spec, so
adding an architecture means adding one ``register_arch(ArchSpec(...))`` call below and
nothing else.

Registration happens here, explicitly, at the bottom of this module; no other module
registers anything on import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision.models import (
    EfficientNet_B0_Weights,
    MobileNet_V3_Small_Weights,
    ResNet50_Weights,
    efficientnet_b0,
    mobilenet_v3_small,
    resnet50,
)
from torchvision.models._api import WeightsEnum

from ..errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArchSpec",
    "build_head",
    "get_arch",
    "list_archs",
    "register_arch",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Stage 2 of the block-list backbones unfreezes ``features[int(N * 0.7):]`` (seed: "last 30%
# of features blocks"); kept in tenths so the split is exact integer arithmetic.
_STAGE2_FROZEN_TENTHS = 7


@dataclass(frozen=True)
class ArchSpec:
    """Everything generic code needs to know about one architecture.

    Attributes:
        name: Canonical name, used in configs, bundles and on the command line.
        builder: torchvision constructor; called as ``builder(weights=None)``.
        weights_enum: torchvision weights enum; ``weights_enum.DEFAULT`` is the ImageNet
            checkpoint fetched for ``weights="imagenet"``.
        head_attr: Attribute of the torchvision model that cropdoc replaces with its own
            head; parameters under it form the "head" group.
        feature_width: Width of the pooled features that feed the head.
        activation: Activation used inside the head, matching the backbone's own.
        stage2_prefixes: Module-name prefixes (matched on dot boundaries) unfrozen in
            stage 2 besides the head.
        aliases: Other accepted names (e.g. the seed's ``mobilenetv3``).
        mean: Per-channel normalisation mean the pretrained weights expect.
        std: Per-channel normalisation std the pretrained weights expect.
        input_size: Square input side the pretrained weights were trained at.
        gflops_224: Forward-pass GFLOPs (2 x multiply-accumulates) per 224 px image; sizes
            the work per batch (how many threads pay) and the benchmarks' share of peak.
        int8_op_types: ONNX op types the INT8 export tries to quantize first (it falls back
            to convolutions only when the result disagrees with PyTorch too often).
            EfficientNet-B0 adds its SiLU and squeeze-excitation ops (Sigmoid, Mul, Add):
            left fp32, they put a dequantize/quantize pair around every convolution;
            measured at 224 px, batch 1: 16.7 ms with convolutions only, 10.2 ms with them.
    """

    name: str
    builder: Callable[..., nn.Module]
    weights_enum: type[WeightsEnum]
    head_attr: str
    feature_width: int
    activation: type[nn.Module]
    stage2_prefixes: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    gflops_224: float = 1.0
    int8_op_types: tuple[str, ...] = ("Conv",)


# Canonical lower-case name -> spec; lower-case name or alias -> canonical lower-case name.
_ARCHS: dict[str, ArchSpec] = {}
_LOOKUP: dict[str, str] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Add ``spec`` to the registry.

    Names and aliases share one case-insensitive namespace, so a lookup can never be
    ambiguous. Nothing is registered unless every key is free.

    Args:
        spec: The architecture description.

    Returns:
        ``spec``, so the call can be used as an expression.

    Raises:
        ValueError: The name or an alias is already registered (a programming error,
            not a user error, hence not a ``CropdocError``).
    """
    keys = [spec.name.lower(), *(alias.lower() for alias in spec.aliases)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"ArchSpec {spec.name!r} repeats a name among its aliases: {keys}.")
    for key in keys:
        if key in _LOOKUP:
            raise ValueError(
                f"An architecture is already registered under the name {key!r} "
                f"(by {_ARCHS[_LOOKUP[key]].name!r})."
            )
    canonical = keys[0]
    _ARCHS[canonical] = spec
    for key in keys:
        _LOOKUP[key] = canonical
    return spec


def get_arch(name: str) -> ArchSpec:
    """Return the spec registered under ``name`` or one of its aliases (case-insensitive).

    Args:
        name: Architecture name as typed by a user (``--arch``) or stored in a bundle.

    Returns:
        The registered :class:`ArchSpec`.

    Raises:
        ConfigError: ``name`` is unknown; the message lists the accepted names.

    >>> get_arch("MobileNetV3").name
    'mobilenet_v3_small'
    """
    key = name.lower().strip() if isinstance(name, str) else None
    if key is None or key not in _LOOKUP:
        aliases = [f"{a} (= {s.name})" for s in _ARCHS.values() for a in s.aliases]
        alias_note = f"; aliases: {', '.join(aliases)}" if aliases else ""
        raise ConfigError(
            f"Unknown architecture {name!r}. Supported: {', '.join(list_archs())}"
            f"{alias_note}. Pass one of them, e.g. --arch {list_archs()[0]}."
        )
    return _ARCHS[_LOOKUP[key]]


def list_archs() -> list[str]:
    """Canonical names of all registered architectures, in registration order."""
    return [spec.name for spec in _ARCHS.values()]


def build_head(
    in_features: int,
    num_classes: int,
    activation: type[nn.Module],
    *,
    dropout: tuple[float, float] = (0.3, 0.15),
    hidden: int = 512,
) -> nn.Sequential:
    """The classifier head shared by every architecture (seed recipe).

    Two dropouts around a hidden layer regularise a head trained from scratch on a small
    dataset; the activation matches the backbone's so features keep their distribution.

    Args:
        in_features: Width of the backbone's pooled features (``spec.feature_width``).
        num_classes: Number of output logits.
        activation: Activation class placed between the two linear layers.
        dropout: Dropout probabilities before the first and the second linear layer.
        hidden: Width of the hidden layer.

    Returns:
        ``Dropout -> Linear(in, hidden) -> act -> Dropout -> Linear(hidden, num_classes)``.
    """
    return nn.Sequential(
        nn.Dropout(dropout[0]),
        nn.Linear(in_features, hidden),
        activation(),
        nn.Dropout(dropout[1]),
        nn.Linear(hidden, num_classes),
    )


def _top_blocks(container: str, num_blocks: int) -> tuple[str, ...]:
    """Prefixes of ``container[int(num_blocks * 0.7):]``, the blocks stage 2 unfreezes."""
    first = num_blocks * _STAGE2_FROZEN_TENTHS // 10
    return tuple(f"{container}.{i}" for i in range(first, num_blocks))


# Block counts of torchvision's ``features`` Sequential, hard-coded because building a
# model at import time would be slow; tests/test_registry.py checks them against the real
# definitions. EfficientNet-B0: stem + 7 MBConv stages + head conv = 9 -> features.6..8.
# MobileNetV3-Small: stem + 11 inverted residuals + last conv = 13 -> features.9..12.
_EFFICIENTNET_B0_BLOCKS = 9
_MOBILENET_V3_SMALL_BLOCKS = 13

register_arch(
    ArchSpec(
        name="resnet50",
        builder=resnet50,
        weights_enum=ResNet50_Weights,
        head_attr="fc",
        feature_width=2048,
        activation=nn.ReLU,
        gflops_224=8.2,
        stage2_prefixes=("layer3", "layer4"),
    )
)
register_arch(
    ArchSpec(
        name="efficientnet_b0",
        builder=efficientnet_b0,
        weights_enum=EfficientNet_B0_Weights,
        head_attr="classifier",
        feature_width=1280,
        activation=nn.SiLU,
        gflops_224=0.80,
        stage2_prefixes=_top_blocks("features", _EFFICIENTNET_B0_BLOCKS),
        int8_op_types=("Conv", "Sigmoid", "Mul", "Add"),
    )
)
register_arch(
    ArchSpec(
        name="mobilenet_v3_small",
        builder=mobilenet_v3_small,
        weights_enum=MobileNet_V3_Small_Weights,
        head_attr="classifier",
        feature_width=576,
        activation=nn.Hardswish,
        gflops_224=0.12,
        stage2_prefixes=_top_blocks("features", _MOBILENET_V3_SMALL_BLOCKS),
        aliases=("mobilenetv3",),
    )
)
