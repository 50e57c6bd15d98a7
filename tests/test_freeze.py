"""Freeze policies, parameter groups and the frozen-BatchNorm policy, per architecture."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from cropdoc.errors import ConfigError
from cropdoc.models import (
    apply_policy,
    build,
    freeze_backbone,
    full_unfreeze,
    get_arch,
    is_head_param,
    param_groups,
    partial_unfreeze,
    set_train_mode,
    trainable_names,
)

# Written out independently of the registry, so a wrong spec fails here.
EXPECTED = {
    "resnet50": ("fc.", ("layer3.", "layer4.")),
    "efficientnet_b0": ("classifier.", ("features.6.", "features.7.", "features.8.")),
    "mobilenet_v3_small": (
        "classifier.",
        ("features.9.", "features.10.", "features.11.", "features.12."),
    ),
    # A derived timm spec: the wrapper's head, the last 3 of ResNet-18's 8 blocks.
    "timm/resnet18": ("head.", ("backbone.layer3.1.", "backbone.layer4.")),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def arch(request):
    """(name, spec, model) built once per architecture; each test sets the policy it needs."""
    name = request.param
    return name, get_arch(name), build(name, classes=4, weights=None)


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def test_freeze_backbone_leaves_exactly_the_head(arch):
    name, spec, model = arch
    head_prefix, _ = EXPECTED[name]
    freeze_backbone(model, spec)
    expected = [n for n in _names(model) if n.startswith(head_prefix)]
    assert trainable_names(model) == expected
    assert len(expected) == 4  # two Linear layers: weight + bias each


def test_partial_unfreeze_is_head_plus_stage2(arch):
    name, spec, model = arch
    head_prefix, stage2 = EXPECTED[name]
    partial_unfreeze(model, spec)
    expected = [n for n in _names(model) if n.startswith((head_prefix, *stage2))]
    assert trainable_names(model) == expected
    assert len(expected) < len(_names(model))


def test_mobilenet_partial_boundaries():
    spec = get_arch("mobilenet_v3_small")
    model = build(spec.name, classes=3, weights=None)
    partial_unfreeze(model, spec)
    trainable = set(trainable_names(model))
    names = _names(model)
    assert any(n.startswith("features.9.") for n in trainable)
    assert not any(n.startswith("features.8.") for n in trainable)
    # dot boundary: prefix "features.1" must not reach features.10..12
    narrow = dataclasses.replace(spec, stage2_prefixes=("features.1",))
    partial_unfreeze(model, narrow)
    trainable = set(trainable_names(model))
    assert any(n.startswith("features.1.") for n in trainable)
    assert not any(
        n.startswith(("features.10.", "features.11.", "features.12.")) for n in trainable
    )
    assert trainable == {n for n in names if n.startswith(("features.1.", "classifier."))}


def test_full_unfreeze_and_apply_policy(arch):
    name, spec, model = arch
    full_unfreeze(model)
    assert trainable_names(model) == _names(model)
    apply_policy(model, spec, "head")
    assert all(n.startswith(EXPECTED[name][0]) for n in trainable_names(model))
    apply_policy(model, spec, "all")
    assert trainable_names(model) == _names(model)
    with pytest.raises(ConfigError, match="'head', 'partial' and 'all'"):
        apply_policy(model, spec, "top")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "lrs"),
    [
        ("head", {"head": 1e-3}),
        ("partial", {"backbone": 1e-4, "head": 1e-3}),
        ("all", {"backbone": 1e-5, "head": 5e-5}),
    ],
)
def test_param_groups_partition_trainable_params(arch, policy, lrs):
    _, spec, model = arch
    apply_policy(model, spec, policy)
    groups = param_groups(model, spec, backbone_lr=lrs.get("backbone", 1e-4), head_lr=lrs["head"])
    assert {g["name"]: g["lr"] for g in groups} == lrs
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    for group in groups:
        for param_name, param in model.named_parameters():
            if any(param is p for p in group["params"]):
                assert is_head_param(param_name, spec) == (group["name"] == "head")
    torch.optim.AdamW(groups)  # accepted as-is by an optimizer


def test_nothing_trainable_raises(arch):
    _, spec, model = arch
    headless = dataclasses.replace(spec, head_attr="no_such_head")
    with pytest.raises(ConfigError, match="no trainable parameter"):
        freeze_backbone(model, headless)
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        param_groups(model, spec, backbone_lr=1e-4, head_lr=1e-3)


def test_partial_with_foreign_spec_raises():
    model = build("mobilenet_v3_small", classes=3, weights=None)
    with pytest.raises(ConfigError, match="layer3"):
        partial_unfreeze(model, get_arch("resnet50"))


def test_param_groups_rejects_nonpositive_lr(arch):
    _, spec, model = arch
    full_unfreeze(model)
    with pytest.raises(ConfigError, match="backbone_lr"):
        param_groups(model, spec, backbone_lr=0.0, head_lr=1e-3)


def test_wrapper_prefixes_are_ignored():
    spec = get_arch("resnet50")
    assert is_head_param("module._orig_mod.fc.1.weight", spec)
    assert not is_head_param("module.fcx.weight", spec)


def _batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def test_frozen_batchnorm_keeps_running_stats():
    spec = get_arch("mobilenet_v3_small")
    model = build(spec.name, classes=3, weights=None)
    x = torch.randn(4, 3, 64, 64) * 3 + 1  # far from the init statistics (mean 0, var 1)

    freeze_backbone(model, spec)
    set_train_mode(model)
    assert model.training and getattr(model, spec.head_attr).training  # head dropout active
    before = {n: bn.running_mean.clone() for n, bn in _batchnorms(model).items()}
    model(x)
    for n, bn in _batchnorms(model).items():
        assert not bn.training, n
        assert torch.equal(bn.running_mean, before[n]), n

    partial_unfreeze(model, spec)
    set_train_mode(model)
    bns = _batchnorms(model)
    frozen, trainable = bns["features.0.1"], bns["features.12.1"]
    frozen_before, trainable_before = frozen.running_mean.clone(), trainable.running_mean.clone()
    model(x)
    assert not frozen.training and torch.equal(frozen.running_mean, frozen_before)
    assert trainable.training and not torch.equal(trainable.running_mean, trainable_before)

    full_unfreeze(model)
    set_train_mode(model)
    assert all(bn.training for bn in _batchnorms(model).values())  # stage 3: every BN trains


def test_batchnorm_policy_auto_fixes_every_layer_for_pretrained_weights():
    from cropdoc.models import BatchNormPolicy, set_train_mode

    auto = BatchNormPolicy.resolve("auto", "auto", pretrained=True)
    assert (auto.freeze_stats, auto.fix_all_stats, auto.momentum) == (True, True, None)
    scratch = BatchNormPolicy.resolve("auto", "auto", pretrained=False)
    assert (scratch.freeze_stats, scratch.fix_all_stats, scratch.momentum) == (False, False, 0.1)
    frozen = BatchNormPolicy.resolve("frozen", 0.05, pretrained=True)
    assert (frozen.freeze_stats, frozen.fix_all_stats, frozen.momentum) == (True, False, 0.05)

    model = build("mobilenet_v3_small", classes=3, weights="none")
    spec = get_arch("mobilenet_v3_small")
    apply_policy(model, spec, "all")  # everything trainable
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    set_train_mode(model, freeze_bn_stats=True, fix_all_bn_stats=True)
    assert bns and not any(m.training for m in bns)  # statistics stay, weights still train
    assert all(p.requires_grad for m in bns for p in m.parameters())
    set_train_mode(model, freeze_bn_stats=True)
    assert all(m.training for m in bns)  # trainable layers follow the data
