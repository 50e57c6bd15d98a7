"""Registry, head and factory: specs agree with the real torchvision models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cropdoc.errors import ConfigError
from cropdoc.models import (
    ArchSpec,
    build,
    build_head,
    get_arch,
    list_archs,
    register_arch,
    registry,
)

ARCHS = ["resnet50", "efficientnet_b0", "mobilenet_v3_small"]


def test_list_archs_is_the_three_seed_architectures():
    assert list_archs() == ARCHS


@pytest.mark.parametrize("name", ARCHS)
def test_feature_width_and_head_attr_match_torchvision(name):
    spec = get_arch(name)
    reference = spec.builder(weights=None)
    original_head = getattr(reference, spec.head_attr)
    first_linear = next(m for m in original_head.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == spec.feature_width


@pytest.mark.parametrize(("name", "n_blocks"), [("efficientnet_b0", 9), ("mobilenet_v3_small", 13)])
def test_stage2_prefixes_are_last_30_percent_of_real_features(name, n_blocks):
    spec = get_arch(name)
    n = len(spec.builder(weights=None).features)
    assert n == n_blocks
    assert spec.stage2_prefixes == tuple(f"features.{i}" for i in range(int(n * 0.7), n))


def test_resnet50_stage2_is_layer3_layer4():
    assert get_arch("resnet50").stage2_prefixes == ("layer3", "layer4")


@pytest.mark.parametrize(
    ("name", "act"),
    [("resnet50", nn.ReLU), ("efficientnet_b0", nn.SiLU), ("mobilenet_v3_small", nn.Hardswish)],
)
def test_head_structure_and_output_shape(name, act):
    spec = get_arch(name)
    model = build(name, classes=5, weights=None).eval()
    head = getattr(model, spec.head_attr)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, act, nn.Dropout, nn.Linear]
    assert [head[0].p, head[3].p] == [0.3, 0.15]
    assert (head[1].in_features, head[1].out_features) == (spec.feature_width, 512)
    assert (head[4].in_features, head[4].out_features) == (512, 5)
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert not hasattr(model, "cropdoc_arch")


def test_build_head_options():
    head = build_head(8, 3, nn.ReLU, dropout=(0.5, 0.1), hidden=16)
    assert head[0].p == 0.5 and head[3].p == 0.1 and head[1].out_features == 16


@pytest.mark.parametrize(
    "name", ["mobilenetv3", "MobileNetV3", "MOBILENET_V3_SMALL", " mobilenet_v3_small "]
)
def test_aliases_and_case(name):
    assert get_arch(name).name == "mobilenet_v3_small"


def test_unknown_arch_lists_choices():
    with pytest.raises(ConfigError) as info:
        get_arch("vit_b_16")
    message = str(info.value)
    assert "vit_b_16" in message
    for name in [*ARCHS, "mobilenetv3"]:
        assert name in message


@pytest.mark.parametrize("classes", [1, 0, True])
def test_build_rejects_fewer_than_two_classes(classes):
    with pytest.raises(ConfigError, match="at least 2"):
        build("mobilenet_v3_small", classes=classes, weights=None)


def test_duplicate_registration_raises_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(registry, "_ARCHS", dict(registry._ARCHS))
    monkeypatch.setattr(registry, "_LOOKUP", dict(registry._LOOKUP))
    spec = get_arch("resnet50")
    with pytest.raises(ValueError, match="already registered"):
        register_arch(spec)
    clash = ArchSpec(**{**spec.__dict__, "name": "resnet50_copy", "aliases": ("MobileNetV3",)})
    with pytest.raises(ValueError, match="mobilenetv3"):
        register_arch(clash)
    assert "resnet50_copy" not in list_archs()  # atomic: nothing half-registered
    new = ArchSpec(**{**spec.__dict__, "name": "resnet50_copy", "aliases": ("r50c",)})
    assert register_arch(new) is new
    assert get_arch("R50C") is new
