"""timm's zoo behind the registry: derived specs (head, stage 2, preprocessing, cost, INT8
ops) per model family, the wrapper model, freezing, bundles and ONNX export."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from cropdoc.bundle import BundleMeta, load_bundle, save_bundle
from cropdoc.errors import ConfigError
from cropdoc.models import (
    TimmClassifier,
    apply_policy,
    build,
    get_arch,
    is_head_param,
    list_archs,
    param_groups,
    register_arch,
    registry,
    trainable_names,
)
from cropdoc.preprocessing import Preprocessing

timm = pytest.importorskip("timm")

# Written out by hand from each model's block layout (not from the code under test):
# the last N - int(0.7 N) of N blocks, plus what timm leaves after the blocks.
STAGE2 = {
    # 16 blocks (1, 2, 2, 3, 3, 4, 1 per stage) -> the last 5: blocks.5.*, blocks.6.0;
    # conv_head/bn2 sit in the last block's group in timm's matcher.
    "tf_efficientnet_lite0": ("blocks.5", "blocks.6", "conv_head", "bn2"),
    # 16 blocks (1, 2, 3, 4, 2, 3, 1) -> blocks.4.1 on; conv_head is unmatched (top).
    "mobilenetv3_large_100": ("blocks.4.1", "blocks.5", "blocks.6", "conv_head"),
    # 8 blocks layer1.0 .. layer4.1 -> the last 3.
    "resnet18": ("layer3.1", "layer4"),
    # 12 blocks (2, 2, 6, 2) -> stages.2.blocks.4 on (stage 3's downsample goes with its
    # first block); head.norm is unmatched (top).
    "convnext_atto": ("stages.2.blocks.4", "stages.2.blocks.5", "stages.3", "head"),
    # 12 blocks -> blocks.8 .. 11; the final norm is merged into the last block.
    "vit_tiny_patch16_224": ("blocks.8", "blocks.9", "blocks.10", "blocks.11", "norm"),
}
ACTIVATION = {
    "tf_efficientnet_lite0": nn.ReLU,  # ReLU6
    "mobilenetv3_large_100": nn.Hardswish,
    "resnet18": nn.ReLU,
    "convnext_atto": nn.GELU,
    "vit_tiny_patch16_224": nn.GELU,
}
# Pooled width (MobileNetV3's conv_head makes it 1280, not num_features = 960).
WIDTH = {
    "tf_efficientnet_lite0": 1280,
    "mobilenetv3_large_100": 1280,
    "resnet18": 512,
    "convnext_atto": 320,
    "vit_tiny_patch16_224": 192,
}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("model_name", list(STAGE2))
def test_derived_spec_per_family(model_name):
    spec = get_arch(f"timm/{model_name}")
    assert spec.name == f"timm/{model_name}" and spec.head_attr == "head"
    assert spec.stage2_prefixes == tuple(f"backbone.{p}" for p in STAGE2[model_name])
    assert spec.activation is ACTIVATION[model_name]
    assert spec.feature_width == WIDTH[model_name]
    assert spec.timm is not None and spec.timm.hf_hub_id.startswith(f"timm/{model_name}.")
    # Linear layers (a ViT's) add MatMul; convnext_atto's MLP is 1x1 convolutions.
    has_linear = model_name == "vit_tiny_patch16_224"
    assert spec.int8_op_types == (("Conv", "MatMul") if has_linear else ("Conv",))
    # Stage 2 is about the top 30 % of the blocks: never the stem, never most of the model.
    with torch.device("meta"):
        model = spec.builder(weights=None)
    names = [n for n, _ in model.backbone.named_parameters()]
    top = [n for n in names if _under(f"backbone.{n}", spec.stage2_prefixes)]
    assert 0.2 < len(top) / len(names) < 0.45
    assert not _under(f"backbone.{names[0]}", spec.stage2_prefixes)


def test_preprocessing_and_cost_come_from_timm():
    lite0 = get_arch("timm/tf_efficientnet_lite0")
    # timm's pretrained config for the TF port: 0.5/0.5 normalisation, bicubic, crop 0.875.
    assert lite0.mean == lite0.std == (0.5, 0.5, 0.5)
    assert lite0.interpolation == "bicubic" and lite0.input_size == 224
    assert lite0.resize_ratio == pytest.approx(1 / 0.875)
    assert lite0.gflops_224 == pytest.approx(0.77, abs=0.02)  # published: 0.39 GMACs
    assert get_arch("timm/resnet18").gflops_224 == pytest.approx(3.6, abs=0.1)  # 1.8 GMACs
    p = Preprocessing.for_size(
        96,
        mean=lite0.mean,
        std=lite0.std,
        interpolation=lite0.interpolation,
        resize_ratio=lite0.resize_ratio,
    )
    assert (p.resize_size, p.interpolation) == (110, "bicubic")
    # The torchvision specs are unchanged: bilinear, 1.14.
    for name in list_archs():
        spec = get_arch(name)
        assert (spec.interpolation, spec.resize_ratio, spec.timm) == ("bilinear", 1.14, None)


def test_lookup_is_derived_cached_and_never_registered():
    before = list_archs()
    spec = get_arch("timm/convnext_atto")
    assert get_arch(" TIMM/ConvNeXt_Atto ") is spec  # cached, case-insensitive
    assert list_archs() == before == ["resnet50", "efficientnet_b0", "mobilenet_v3_small"]
    with pytest.raises(ValueError, match="derived from timm"):
        register_arch(registry.ArchSpec(**{**spec.__dict__, "name": "timm/mine"}))


def test_pretrained_tag_selects_its_config():
    spec = get_arch("timm/resnet18.tv_in1k")
    assert spec.timm.hf_hub_id == "timm/resnet18.tv_in1k"
    assert spec.interpolation == "bilinear"  # torchvision's weights, torchvision's resize
    with pytest.raises(ConfigError, match=r"pretrained tag 'nope'.*resnet18\.a1_in1k"):
        get_arch("timm/resnet18.nope")


def test_unknown_timm_name_names_close_matches():
    with pytest.raises(ConfigError) as info:
        get_arch("timm/convnext_attoo")
    message = str(info.value)
    assert "convnext_attoo" in message and "timm/convnext_atto," in message
    with pytest.raises(ConfigError, match="timm/<name>"):
        get_arch("convnext_atto")  # a timm model without the prefix: the hint says how


def test_built_model_head_freeze_and_groups():
    spec = get_arch("timm/convnext_atto")
    model = build(spec.name, classes=3, weights="none")
    assert isinstance(model, TimmClassifier)
    head = model.head
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert (head[1].in_features, head[4].out_features) == (320, 3)
    with torch.inference_mode():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    names = [n for n, _ in model.named_parameters()]
    apply_policy(model, spec, "head")
    assert trainable_names(model) == [n for n in names if n.startswith("head.")]
    apply_policy(model, spec, "partial")
    expected = [n for n in names if n.startswith("head.") or _under(n, spec.stage2_prefixes)]
    assert trainable_names(model) == expected
    assert not any(is_head_param(n, spec) for n in names if n.startswith("backbone.head."))
    apply_policy(model, spec, "all")
    groups = param_groups(model, spec, backbone_lr=1e-5, head_lr=5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-5), ("head", 5e-5)]


def test_bundle_round_trip(tmp_path):
    """``load_bundle`` rebuilds a timm model from its name alone (``weights="none"``)."""
    model = build("timm/resnet18", classes=2, weights="none").eval()
    meta = BundleMeta(
        arch="timm/resnet18", classes=["a", "b"], preprocessing=Preprocessing.for_size(32)
    )
    save_bundle(tmp_path / "model", model, meta)
    loaded = load_bundle(tmp_path / "model")
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_legacy_onnx_export_of_same_padding_model():
    """TF "same" padding (Lite0) traces to fixed pads; the exporter accepts it."""
    pytest.importorskip("onnx")
    model = build("timm/tf_efficientnet_lite0", classes=3, weights="none").eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), buffer, dynamo=False)
    assert len(buffer.getvalue()) > 1_000_000


def test_vit_runs_at_the_training_size_not_only_its_pretraining_size():
    """ViT-like models are built with ``dynamic_img_size``: 64 px works, not just 224."""
    model = build("timm/vit_tiny_patch16_224", classes=2, weights="none").eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def _drop_rates(model: nn.Module) -> list[float]:
    from torchvision.ops import StochasticDepth

    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    return rates + [m.p for m in model.modules() if isinstance(m, StochasticDepth)]


def test_stochastic_depth_rate_per_family_default_and_refusals():
    # timm models that take drop_path_rate train at 0.2 by default; the deepest block's
    # rate is the configured one (timm scales it linearly down to 0 at the first block).
    for name in ("timm/tf_efficientnet_lite0", "timm/convnext_atto", "timm/resnet18"):
        spec = get_arch(name)
        assert (spec.drop_path_arg, spec.drop_path) == ("drop_path_rate", 0.2), name

    def rates(arch: str, drop_path: float | None = None) -> list[float]:
        with torch.device("meta"):
            return _drop_rates(build(arch, classes=3, weights=None, drop_path=drop_path))

    lite0 = rates("timm/tf_efficientnet_lite0")
    assert len(lite0) == 15 and max(lite0) == pytest.approx(0.2 * 15 / 16)
    assert max(rates("timm/convnext_atto", 0.3)) == pytest.approx(0.3)
    assert rates("timm/tf_efficientnet_lite0", 0) == []
    # torchvision: EfficientNet-B0's own stochastic depth (0.2 unless set), none in ResNet-50.
    assert max(rates("efficientnet_b0")) == pytest.approx(0.2 * 15 / 16)
    assert max(rates("efficientnet_b0", 0.4)) == pytest.approx(0.4 * 15 / 16)
    assert rates("resnet50", 0.0) == []
    # A timm model without stochastic depth (VGG) gets none, and a rate is refused.
    vgg = get_arch("timm/vgg11")
    assert (vgg.drop_path_arg, vgg.drop_path) == (None, 0.0)
    for arch in ("resnet50", "mobilenet_v3_small", "timm/vgg11"):
        with pytest.raises(ConfigError, match="has no stochastic depth"):
            build(arch, classes=3, weights=None, drop_path=0.1)
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        build("timm/tf_efficientnet_lite0", classes=3, weights=None, drop_path=1.0)


def test_drop_path_acts_in_training_only():
    torch.manual_seed(0)
    model = build("timm/tf_efficientnet_lite0", classes=3, weights=None, drop_path=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))
