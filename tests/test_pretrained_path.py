"""The transfer-learning path end to end on a real ImageNet backbone (the shared Lite0
weights) and real leaves: what each stage may change, the learning rates, loader workers,
resume; and a timm ConvNeXt trained from scratch and exported to ONNX."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from cropdoc.bundle import read_meta
from cropdoc.config import load_config
from cropdoc.models import get_arch
from cropdoc.training import train
from cropdoc.training import trainer as trainer_mod

pytest.importorskip("timm")

LITE0 = Path(__file__).resolve().parents[2] / "shared/data/weights"
LITE0 = LITE0 / "tf_efficientnet_lite0.imagenet.safetensors"
ARCH = "timm/tf_efficientnet_lite0"
CLASSES = ["Potato___Early_blight", "Potato___healthy", "Tomato___Late_blight"]
PER_CLASS = 12  # -> 8 train, 2 val, 2 test images per class


@pytest.fixture(scope="module")
def leaves(plantvillage_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real leaves per class, copied out of the shared sample."""
    root = tmp_path_factory.mktemp("leaves") / "data"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for image in sorted((plantvillage_mini / name).iterdir())[:PER_CLASS]:
            shutil.copy(image, root / name / image.name)
    return root


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    if not LITE0.is_file():
        pytest.skip(f"shared Lite0 ImageNet weights not found at {LITE0}")
    from safetensors.torch import load_file

    return {f"backbone.{k}": v for k, v in load_file(str(LITE0)).items() if "classifier" not in k}


def _config(**overrides: Any):
    base: dict[str, Any] = {
        "arch": ARCH,
        "weights": str(LITE0),
        # The seed's rates (asserted below) and the policy where the trainable layers'
        # BatchNorm statistics follow the data (the default, "fixed", keeps all of them).
        "recipe": "seed",
        "optim": {"bn_stats": "frozen"},
        "stage_epochs": [1, 2, 1],
        "data": {"image_size": 64, "batch_size": 8, "workers": 1},
        "runtime": {"precision": "32", "accelerator": "cpu"},
    }
    return load_config(overrides={**base, **overrides})


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _record_epochs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Per training epoch: stage, lr per group, loader workers, what changed."""
    real = trainer_mod.Trainer.train_one_epoch
    epochs: list[dict[str, Any]] = []

    def recorded(self, loader, desc):
        model = self.raw_model
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        in_groups = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        out = real(self, loader, desc)
        after = model.state_dict()
        inner = getattr(loader, "_dataloader", loader)
        params = dict(model.named_parameters())
        epochs.append(
            {
                "stage": self._stage_index + 1,
                "lrs": lrs,
                "optimized": {n for n, p in params.items() if id(p) in in_groups},
                "workers": inner.num_workers,
                "changed": {k for k in before if not torch.equal(before[k], after[k])},
                "params": set(params),
                "after": {k: v.detach().clone() for k, v in after.items()},
            }
        )
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_one_epoch", recorded)
    return epochs


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    real = trainer_mod.Trainer.train_one_epoch
    calls = {"n": 0}

    def flaky(self, loader, desc):
        calls["n"] += 1
        if calls["n"] > epochs:
            raise KeyboardInterrupt("simulated kill")
        return real(self, loader, desc)

    monkeypatch.setattr(trainer_mod.Trainer, "train_one_epoch", flaky)


@pytest.mark.slow
def test_three_stages_on_real_imagenet_features_and_resume(
    leaves, pretrained, tmp_path, monkeypatch
):
    spec = get_arch(ARCH)
    config = _config()
    with monkeypatch.context() as m:
        epochs = _record_epochs(m)
        reference = train(leaves, tmp_path / "ref", config, show_progress=False)
    assert [e["stage"] for e in epochs] == [1, 2, 2, 3]
    assert all(e["workers"] == 1 for e in epochs)  # real loader processes

    def head(name: str) -> bool:
        return name.startswith("head.")

    def top(name: str) -> bool:
        return _under(name, spec.stage2_prefixes)

    # Stage 1: the head learns; every backbone tensor, BatchNorm running statistics
    # included, is bit-identical to the pretrained file.
    stage1 = epochs[0]
    assert stage1["optimized"] == {n for n in stage1["params"] if head(n)}
    assert stage1["changed"] and all(head(k) for k in stage1["changed"])
    backbone_after = {k: v for k, v in stage1["after"].items() if k.startswith("backbone.")}
    assert set(pretrained) <= set(backbone_after)
    for key, value in pretrained.items():
        assert torch.equal(backbone_after[key], value), key
    assert all(k.endswith("num_batches_tracked") for k in set(backbone_after) - set(pretrained))

    # Stage 2: exactly the derived top 30 % and the head train; BatchNorm layers in the
    # top blocks follow the data, every other tensor is still the pretrained one.
    for epoch in epochs[1:3]:
        trainable = {n for n in epoch["params"] if head(n) or top(n)}
        assert epoch["optimized"] == trainable
        assert {k for k in epoch["changed"] if k in epoch["params"]} == trainable
        buffers = epoch["changed"] - epoch["params"]
        assert buffers and all(top(k) for k in buffers)  # running stats of top BN layers
        for key, value in pretrained.items():
            if not top(key):
                assert torch.equal(epoch["after"][key], value), key

    # Stage 3: everything trains, the backbone at 1e-5 and the head at 5e-5.
    stage3 = epochs[3]
    assert stage3["lrs"] == pytest.approx({"backbone": 1e-5, "head": 5e-5})
    assert stage3["optimized"] == stage3["params"]
    assert "backbone.conv_stem.weight" in stage3["changed"]

    rows = _history(tmp_path / "ref")
    assert [int(r["stage"]) for r in rows] == [1, 2, 2, 3]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-4)
    assert lrs[2] < lrs[1] and lrs[3] == pytest.approx(5e-5)  # cosine within stage 2

    # The bundle carries timm's preprocessing for the model: 0.5/0.5, bicubic, crop 0.875.
    meta = read_meta(tmp_path / "ref" / "model")
    assert meta.arch == ARCH
    assert meta.training.drop_path == 0.2  # timm's stochastic depth, cropdoc's default rate
    p = meta.preprocessing
    assert (p.image_size, p.resize_size, p.interpolation) == (64, 73, "bicubic")
    assert p.mean == p.std == (0.5, 0.5, 0.5)

    # Killed in the middle of stage 2, then resumed: the same history as without the kill.
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train(leaves, run, config, show_progress=False)
    assert len(_history(run)) == 2
    resumed = train(None, run, config, resume=True, show_progress=False)
    ref_rows, rows = _history(tmp_path / "ref"), _history(run)
    assert len(rows) == len(ref_rows)
    for a, b in zip(ref_rows, rows, strict=True):
        assert (a["stage"], a["epoch"]) == (b["stage"], b["epoch"])
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_f1"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
    assert resumed.best_val_f1 == pytest.approx(reference.best_val_f1)
    assert resumed.test["accuracy"] == pytest.approx(reference.test["accuracy"])


@pytest.mark.slow
def test_timm_convnext_trains_from_scratch_and_exports_to_onnx(leaves, tmp_path):
    onnx = pytest.importorskip("onnx")
    config = load_config(
        overrides={
            "arch": "timm/convnext_atto",
            "weights": "none",
            "recipe": "three-stage",
            "stage_epochs": [1, 1, 1],
            "data": {"image_size": 32, "batch_size": 8, "workers": 0},
            "runtime": {"precision": "32", "accelerator": "cpu"},
        }
    )
    result = train(leaves, tmp_path / "run", config, show_progress=False)
    assert [int(r["stage"]) for r in _history(tmp_path / "run")] == [1, 2, 3]
    assert read_meta(tmp_path / "run" / "model").arch == "timm/convnext_atto"

    model = result.model.float().eval()
    x = torch.randn(2, 3, 32, 32)
    target = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(target),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    onnx.checker.check_model(str(target))
    ort = pytest.importorskip("onnxruntime")
    with torch.inference_mode():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(target)).run(None, {"image": x.numpy()})[0]
    assert abs(got - expected).max() < 1e-4
