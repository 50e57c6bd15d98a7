"""Architectures as data: one frozen :class:`ArchSpec` per supported backbone.

This is the only module in cropdoc that knows architecture specifics (attribute names,
feature widths, which blocks form "the top of the backbone"). Everything else — the
factory, freezing, parameter groups, weight loading, preprocessing — reads a spec.

Two kinds of spec:

* the seed's three torchvision architectures, declared by hand at the bottom of this
  module (explicitly; no other module registers anything on import);
* any timm model, as ``timm/<model name>``: its spec is *derived* from the model on first
  lookup (:func:`~cropdoc.models.timm_specs.derive_timm_spec`) and cached, never
  registered, so timm's 1,000+ models cost nothing until one is asked for.
"""

from __future__ import annotations

import logging

from torch import nn
from torchvision.models import (
    EfficientNet_B0_Weights,
    MobileNet_V3_Small_Weights,
    ResNet50_Weights,
    efficientnet_b0,
    mobilenet_v3_small,
    resnet50,
)

from ..errors import ConfigError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .spec import ArchSpec
from .timm_specs import TIMM_PREFIX, derive_timm_spec, is_timm_name

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

# Stage 2 of the block-list backbones unfreezes ``features[int(N * 0.7):]`` (seed: "last 30%
# of features blocks"); kept in tenths so the split is exact integer arithmetic.
_STAGE2_FROZEN_TENTHS = 7


# Canonical lower-case name -> spec; lower-case name or alias -> canonical lower-case name.
_ARCHS: dict[str, ArchSpec] = {}
_LOOKUP: dict[str, str] = {}
# Derived timm specs, by lower-case name: derived once per process (a meta-device build).
_DERIVED: dict[str, ArchSpec] = {}


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
    if any(is_timm_name(key) for key in keys):
        raise ValueError(f"{TIMM_PREFIX!r} names are derived from timm, not registered: {keys}.")
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
    """Return the spec of ``name``: a registered name or alias, or ``timm/<model name>``.

    Lookups are case-insensitive. A timm spec is derived from the model on first use and
    cached for the process.

    Args:
        name: Architecture name as typed by a user (``--arch``) or stored in a bundle.

    Returns:
        The registered or derived :class:`ArchSpec`.

    Raises:
        ConfigError: ``name`` is unknown; the message lists the accepted names (for a
            timm name: close matches among timm's models).

    >>> get_arch("MobileNetV3").name
    'mobilenet_v3_small'
    >>> get_arch("timm/resnet18").stage2_prefixes
    ('backbone.layer3.1', 'backbone.layer4')
    """
    key = name.lower().strip() if isinstance(name, str) else None
    if key is not None and is_timm_name(key):
        if key not in _DERIVED:
            _DERIVED[key] = derive_timm_spec(key)
        return _DERIVED[key]
    if key is None or key not in _LOOKUP:
        aliases = [f"{a} (= {s.name})" for s in _ARCHS.values() for a in s.aliases]
        alias_note = f"; aliases: {', '.join(aliases)}" if aliases else ""
        raise ConfigError(
            f"Unknown architecture {name!r}. Supported: {', '.join(list_archs())}"
            f"{alias_note}; or any timm model as {TIMM_PREFIX}<name> (e.g. "
            f"{TIMM_PREFIX}convnext_atto). Pass one of them, e.g. --arch {list_archs()[0]}."
        )
    return _ARCHS[_LOOKUP[key]]


def list_archs() -> list[str]:
    """Canonical names of the registered architectures, in registration order (timm's
    models, any of ``timm.list_models()`` as ``timm/<name>``, are not listed)."""
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
        # torchvision's own default, the rate its ImageNet weights were trained with.
        drop_path_arg="stochastic_depth_prob",
        drop_path=0.2,
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
