"""Bundle save/load: self-describing, atomic, never unpickled, strict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cropdoc import bundle as bundle_mod
from cropdoc.bundle import BundleMeta, load_bundle, read_meta, save_bundle, update_meta
from cropdoc.errors import BundleError
from cropdoc.models import build
from cropdoc.preprocessing import Preprocessing

CLASSES = ["Tomato___healthy", "Tomato___Late_blight", "Potato___Early_blight"]


def _meta(**kw) -> BundleMeta:
    base = dict(
        arch="mobilenet_v3_small",
        classes=list(CLASSES),
        preprocessing=Preprocessing(image_size=32, resize_size=36),
    )
    return BundleMeta(**{**base, **kw})


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("mobilenet_v3_small", classes=len(CLASSES), weights="none").eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_predicts_the_same(tmp_path: Path):
    model = _model(0)
    save_bundle(tmp_path / "model", model, _meta(temperature=1.5))
    loaded = load_bundle(tmp_path / "model")
    assert loaded.meta.classes == CLASSES and loaded.meta.temperature == 1.5
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x))
    data = json.loads((tmp_path / "model" / "model.json").read_text())
    assert {"arch", "classes", "num_classes", "preprocessing", "versions"} <= set(data)
    assert data["preprocessing"] == {
        "image_size": 32,
        "resize_size": 36,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }
    # A run directory works as well as its model/ folder.
    assert load_bundle(tmp_path).meta.arch == "mobilenet_v3_small"


def test_crash_during_write_keeps_previous_bundle(tmp_path: Path, monkeypatch):
    target = tmp_path / "model"
    first = _model(0)
    save_bundle(target, first, _meta())

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod, "save_file", crash)
    with pytest.raises(BundleError, match="No space left"):
        save_bundle(target, _model(1), _meta())
    monkeypatch.undo()
    assert _same_weights(load_bundle(target).model, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp left behind


def test_crash_between_the_two_renames_falls_back_to_old(tmp_path: Path, monkeypatch):
    target = tmp_path / "model"
    first = _model(0)
    save_bundle(target, first, _meta())
    real_replace = os.replace

    def die_on_second(src, dst):
        if Path(src).name.startswith("model.tmp-"):
            raise KeyboardInterrupt("killed between renames")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(target, _model(1), _meta())
    monkeypatch.undo()
    assert not target.exists() and (tmp_path / "model.old").exists()
    assert _same_weights(load_bundle(target).model, first)
    save_bundle(target, _model(2), _meta())  # the next write recovers cleanly
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_meta_disagreeing_with_weights_is_a_clear_error(tmp_path: Path):
    save_bundle(tmp_path / "model", _model(0), _meta())
    meta_path = tmp_path / "model" / "model.json"
    data = json.loads(meta_path.read_text())
    data["classes"] = CLASSES + ["Extra"]
    data["num_classes"] = 4
    data["weights_sha256"] = ""
    meta_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(tmp_path / "model")
    data["classes"], data["num_classes"], data["arch"] = CLASSES, 3, "resnet50"
    meta_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(tmp_path / "model")


def test_tampered_weights_fail_the_checksum(tmp_path: Path):
    save_bundle(tmp_path / "model", _model(0), _meta())
    weights = tmp_path / "model" / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(tmp_path / "model")


def test_missing_bundle_and_update_meta(tmp_path: Path):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nowhere")
    save_bundle(tmp_path / "model", _model(0), _meta())
    update_meta(tmp_path / "model", temperature=1.3, metrics={"test": {"accuracy": 0.5}})
    meta = read_meta(tmp_path / "model")
    assert meta.temperature == 1.3 and meta.metrics["test"]["accuracy"] == 0.5
    load_bundle(tmp_path / "model")  # still consistent with its weights


def test_update_meta_keeps_unknown_keys_and_refuses_unknown_fields(tmp_path: Path):
    save_bundle(tmp_path / "model", _model(0), _meta())
    path = tmp_path / "model" / "model.json"
    data = json.loads(path.read_text())
    data["from_a_newer_cropdoc"] = {"x": 1}
    path.write_text(json.dumps(data))
    update_meta(tmp_path / "model", temperature=1.2)
    assert json.loads(path.read_text())["from_a_newer_cropdoc"] == {"x": 1}
    with pytest.raises(BundleError, match="no field.*temprature"):
        update_meta(tmp_path / "model", temprature=1.0)
    with pytest.raises(BundleError, match="temperature"):
        update_meta(tmp_path / "model", temperature=-1.0)
    assert read_meta(tmp_path / "model").temperature == 1.2  # the bad update wrote nothing


def test_format_1_model_json_is_read(tmp_path: Path):
    """Bundles written before the typed metadata (flat sizes, details at the top level)."""
    save_bundle(tmp_path / "model", _model(0), _meta())
    path = tmp_path / "model" / "model.json"
    data = json.loads(path.read_text())
    pre = data.pop("preprocessing")
    data.pop("training")
    data.update(
        format_version=1,
        image_size=pre["image_size"],
        resize_size=pre["resize_size"],
        mean=pre["mean"],
        std=pre["std"],
        weights="imagenet",
        balance="loss",
        seed=7,
        precision="bf16-mixed",
    )
    path.write_text(json.dumps(data))
    meta = read_meta(tmp_path / "model")
    assert meta.preprocessing == Preprocessing(image_size=32, resize_size=36)
    assert (meta.training.weights, meta.training.balance, meta.training.seed) == (
        "imagenet",
        "loss",
        7,
    )
    assert meta.training.precision == "bf16-mixed"
    load_bundle(tmp_path / "model")


def test_invalid_meta_names_the_field(tmp_path: Path):
    save_bundle(tmp_path / "model", _model(0), _meta())
    path = tmp_path / "model" / "model.json"
    data = json.loads(path.read_text())
    data["preprocessing"]["resize_size"] = 16  # smaller than the crop
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="preprocessing.*resize_size"):
        read_meta(tmp_path / "model")
