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
