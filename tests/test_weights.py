"""Weights: local files (safetensors / .pth, full model or torchvision backbone), refusal of
pickled payloads, mismatches, and the ImageNet cache with no network."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cropdoc.errors import WeightsError
from cropdoc.models import build, get_arch, is_head_param

ARCH = "mobilenet_v3_small"  # the smallest backbone keeps these tests fast


def _backbone(model: nn.Module, spec) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not is_head_param(k, spec)}


def _assert_backbone_equal(model: nn.Module, reference: nn.Module) -> None:
    spec = get_arch(ARCH)
    got, want = _backbone(model, spec), _backbone(reference, spec)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("form", ["full", "backbone"])
def test_local_file_loads(tmp_path, no_network, suffix, form):
    spec = get_arch(ARCH)
    if form == "full":
        source = build(ARCH, classes=3, weights=None)
    else:
        source = spec.builder(weights=None)  # torchvision's own 1000-class head
    path = _save(source.state_dict(), tmp_path / f"w{suffix}")
    model = build(ARCH, classes=3, weights=path)
    _assert_backbone_equal(model, source)
    head, source_head = model.classifier.state_dict(), source.classifier.state_dict()
    if form == "full":  # our head comes along
        assert all(torch.equal(head[k], source_head[k]) for k in head)
    else:  # torchvision's head is skipped, ours stays at random init
        assert head["4.weight"].shape == (3, 512)


def test_seed_checkpoint_format_with_wrapper_prefixes(tmp_path):
    source = build(ARCH, classes=3, weights=None)
    checkpoint = {
        "epoch": 7,
        "model_state_dict": {f"module.{k}": v for k, v in source.state_dict().items()},
        "optimizer_state_dict": {},
    }
    torch.save(checkpoint, tmp_path / "mobilenetv3_best.pth")
    model = build(ARCH, classes=3, weights=str(tmp_path / "mobilenetv3_best.pth"))
    _assert_backbone_equal(model, source)


def test_other_class_count_keeps_backbone_skips_head(tmp_path):
    source = build(ARCH, classes=7, weights=None)
    path = _save(source.state_dict(), tmp_path / "w.safetensors")
    model = build(ARCH, classes=3, weights=path)
    _assert_backbone_equal(model, source)
    assert model.classifier[4].out_features == 3


def test_mismatched_arch_names_keys_and_fitting_arch(tmp_path):
    path = _save(get_arch("resnet50").builder(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError) as info:
        build(ARCH, classes=3, weights=path)
    message = str(info.value)
    assert "mobilenet_v3_small" in message and "missing keys" in message
    assert "seems to fit 'resnet50'" in message
    assert "conv1.weight" in message and "features.0.0.weight" in message  # offending keys


def test_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(WeightsError, match="Refusing to load"):
        build(ARCH, classes=3, weights=path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["missing.pth", "weights.bin"])
def test_missing_or_unsupported_file(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".bin"):
        path.write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"--weights|Supported"):
        build(ARCH, classes=3, weights=path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsError, match="Cannot read"):
        build(ARCH, classes=3, weights=path)


@pytest.mark.parametrize("weights", [None, "none", "NONE"])
def test_no_weights_never_touches_network(no_network, weights):
    assert build(ARCH, classes=3, weights=weights).classifier[4].out_features == 3


def test_imagenet_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = get_arch(ARCH)
    url = spec.weights_enum.DEFAULT.url
    expected = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    with pytest.raises(WeightsError) as info:
        build(ARCH, classes=3)  # weights="imagenet" is the default
    message = str(info.value)
    assert str(expected) in message
    assert url in message
    assert "--weights none" in message and "--weights PATH" in message
    assert calls == [(url, str(expected))]
    assert socket.getdefaulttimeout() is None  # the download timeout was restored


def test_imagenet_cached_file_loads_without_network(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = get_arch(ARCH)
    cached = tmp_path / "hub" / "checkpoints" / spec.weights_enum.DEFAULT.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    reference = spec.builder(weights=None)
    torch.save(reference.state_dict(), cached)
    model = build(ARCH, classes=3, weights="imagenet")
    _assert_backbone_equal(model, reference)


# -- timm architectures ------------------------------------------------------------------

TIMM_ARCH = "timm/mobilenetv3_small_050"  # 1.6 M parameters
LITE0 = Path(__file__).resolve().parents[2] / "shared/data/weights"
LITE0 = LITE0 / "tf_efficientnet_lite0.imagenet.safetensors"


def _timm_state(model_name: str) -> dict[str, torch.Tensor]:
    """A timm model's own state dict (with timm's 1000-class classifier)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(model_name, pretrained=False).state_dict()


def _assert_timm_backbone(model: nn.Module, state: dict[str, torch.Tensor], classifier: str):
    got = model.backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_state_dict_loads_without_its_classifier(tmp_path, no_network, suffix):
    state = _timm_state("mobilenetv3_small_050")
    assert "classifier.weight" in state  # timm's ImageNet head, to be dropped
    model = build(TIMM_ARCH, classes=3, weights=_save(state, tmp_path / f"w{suffix}"))
    _assert_timm_backbone(model, state, "classifier")
    assert model.head[4].weight.shape == (3, 512)


def test_shared_lite0_imagenet_file_loads(no_network):
    if not LITE0.is_file():
        pytest.skip(f"shared Lite0 weights not found at {LITE0}")
    from safetensors.torch import load_file

    model = build("timm/tf_efficientnet_lite0", classes=4, weights=LITE0)
    state = load_file(str(LITE0))
    got = model.backbone.state_dict()
    assert {k for k in state if k not in got} == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(got[k], v) for k, v in state.items() if k in got)


def test_torchvision_state_dict_loads_into_timm_resnet(tmp_path, no_network):
    """timm's ResNet keeps torchvision's names: a torchvision file (``fc`` dropped) fits."""
    from torchvision.models import resnet18

    state = resnet18(weights=None).state_dict()
    model = build("timm/resnet18", classes=3, weights=_save(state, tmp_path / "tv.pth"))
    _assert_timm_backbone(model, state, "fc")


def test_cropdoc_timm_model_file_loads_with_its_head(tmp_path, no_network):
    source = build(TIMM_ARCH, classes=3, weights=None)
    model = build(TIMM_ARCH, classes=3, weights=_save(source.state_dict(), tmp_path / "m.pth"))
    want, got = source.state_dict(), model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_timm_mismatch_is_refused_with_counts(tmp_path):
    state = _timm_state("mobilenetv3_small_050")
    state.pop("conv_stem.weight")  # missing
    state["blocks.0.0.conv_dw.weight"] = torch.zeros(1, 1, 3, 3)  # wrong shape
    state["extra.weight"] = torch.zeros(1)  # unexpected
    with pytest.raises(WeightsError) as info:
        build(TIMM_ARCH, classes=3, weights=_save(state, tmp_path / "w.safetensors"))
    message = str(info.value)
    backbone = build(TIMM_ARCH, classes=3, weights=None).backbone.state_dict()
    total = sum(not k.endswith("num_batches_tracked") for k in backbone)
    assert "none were loaded" in message
    assert f"{total - 2} of its {total} backbone tensors match" in message
    assert "1 missing keys (backbone.conv_stem.weight)" in message
    assert "1 unexpected keys (backbone.extra.weight)" in message
    assert "1 shape mismatches (backbone.blocks.0.0.conv_dw.weight" in message


def test_other_timm_model_file_is_refused(tmp_path):
    path = _save(_timm_state("resnet10t"), tmp_path / "r10t.safetensors")
    with pytest.raises(WeightsError, match=r"do not fit 'timm/mobilenetv3_small_050'.* 0 of"):
        build(TIMM_ARCH, classes=3, weights=path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, so nothing real is found or written."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def test_timm_imagenet_offline_fails_fast_with_instructions(hf_cache, monkeypatch):
    import time

    import huggingface_hub

    def no_dns(address, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    def retrying_download(*args, **kwargs):
        raise AssertionError("the hub client's retry loop was entered")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", retrying_download)
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        build(TIMM_ARCH, classes=3, weights="imagenet")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    hub_id = get_arch(TIMM_ARCH).timm.hf_hub_id
    assert hub_id in message and f"{hub_id}/resolve/main/model.safetensors" in message
    assert "--weights FILE" in message and "--weights none" in message


def test_timm_imagenet_offline_mode_never_probes(hf_cache, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        build(TIMM_ARCH, classes=3, weights="imagenet")


def test_timm_imagenet_cached_file_loads_without_network(hf_cache, no_network):
    state = _timm_state("mobilenetv3_small_050")
    repo = get_arch(TIMM_ARCH).timm.hf_hub_id  # timm/mobilenetv3_small_050.lamb_in1k
    folder = hf_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    _save(state, snapshot / "model.safetensors")
    model = build(TIMM_ARCH, classes=3, weights="imagenet")
    _assert_timm_backbone(model, state, "classifier")
