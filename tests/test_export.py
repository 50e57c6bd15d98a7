"""Export: the verification figures are computed and stored, and the INT8 refusal works."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from cropdoc.bundle import load_bundle, read_meta, update_meta
from cropdoc.cli import app
from cropdoc.data.split import SplitManifest
from cropdoc.export import ExportError, ensure_export, export_int8
from cropdoc.export import int8 as int8_module
from cropdoc.inference import collect_images, load_predictor, recorded_export
from test_predictor import copy_run, shared_tiny_run


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_run(tiny_data, tmp_path_factory)


def test_fp32_export_has_dynamic_batch_and_stored_figures(run: Path, tiny_data: Path):
    meta = read_meta(run)
    record = meta.exports["onnx"]
    v = record["verification"]
    assert v["metric"] == "max_abs_logit_diff" and v["threshold"] == 1e-3
    assert 0 <= v["max_abs_logit_diff"] <= 1e-3 and v["passed"]
    # Verified on the run's real validation images, all of them.
    assert v["images"] == len(SplitManifest.load(run / "split.json").splits["val"])
    assert "split.json" in v["source"]
    path = run / "model" / record["path"]
    graph = onnx.load(str(path)).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    predictor = load_predictor(run / "model", backend="onnx")
    for n in (1, 3, 7):
        assert predictor.logits(torch.zeros(n, 3, 32, 32)).shape == (n, meta.num_classes)


def test_stale_export_is_ignored(run: Path, tmp_path: Path):
    copy = copy_run(run, tmp_path / "run")
    assert recorded_export(copy / "model") is not None
    exports = read_meta(copy).exports
    exports["onnx"] = {**exports["onnx"], "weights_sha256": "0" * 64}
    update_meta(copy / "model", exports=exports)
    assert recorded_export(copy / "model") is None


def test_int8_export_via_cli_prints_and_stores_figures(run: Path, tmp_path: Path):
    copy = copy_run(run, tmp_path / "run")
    res = CliRunner().invoke(
        app, ["export", str(copy / "model"), "--format", "onnx", "--int8", "--force"]
    )
    assert res.exit_code == 0, res.output
    assert "top-1 agreement vs torch" in res.stdout and "INT8" in res.stdout
    record = read_meta(copy).exports["onnx_int8"]
    assert (copy / "model" / record["path"]).is_file()
    v = record["verification"]
    assert v["metric"] == "top1_agreement" and v["threshold"] == 0.99
    assert 0.0 <= v["top1_agreement"] <= 1.0 and v["calibration_images"] > 0
    assert record["quantized_ops"] == ["Conv"]  # MobileNetV3's recipe in the registry
    int8 = load_predictor(copy / "model", backend="onnx-int8")
    images = collect_images([SplitManifest.load(copy / "split.json").root])[:4]
    assert all(p.ok for p in int8.predict(images))


def _disagreeing_quantizer(run: Path):
    """A stand-in for the INT8 quantizer that writes a model which disagrees with torch.

    Real quantization of the tiny model agrees with PyTorch; the refusal path needs a
    file that does not, deterministically. This one is the same network with the
    classifier rows rotated by one, so its top-1 never matches.
    """
    bundle = load_bundle(run / "model")
    head = [m for m in bundle.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(1, dims=0))
        head.bias.copy_(head.bias.roll(1, dims=0))

    def quantize(fp32: Path, target: Path, calibration, workdir: Path, op_types=()) -> None:
        assert calibration, "the quantizer must receive calibration batches"
        torch.onnx.export(
            bundle.model,
            (torch.zeros(2, 3, 32, 32),),
            str(target),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )

    return quantize


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_int8_below_threshold_is_refused_unless_forced(run: Path, tmp_path: Path, monkeypatch):
    copy = copy_run(run, tmp_path / "run")
    monkeypatch.setattr(int8_module, "_quantize", _disagreeing_quantizer(copy))
    report = export_int8(copy / "model")
    assert not report.written and not report.verification.passed
    assert report.verification.top1_agreement < 0.99
    assert not (copy / "model" / "model.int8.onnx").exists()
    exports = read_meta(copy).exports
    assert "onnx_int8" not in exports
    refused = exports["onnx_int8_refused"]["verification"]
    assert refused["top1_agreement"] == pytest.approx(report.verification.top1_agreement)

    res = CliRunner().invoke(app, ["export", str(copy / "model"), "--int8"])
    assert res.exit_code == 1
    assert "NOT written" in res.stdout and "top-1 agreement vs torch" in res.stdout

    forced = export_int8(copy / "model", force=True)
    assert forced.written and forced.forced
    assert read_meta(copy).exports["onnx_int8"]["forced"] is True
    logits = load_predictor(copy / "model", backend="onnx-int8").logits(
        np.zeros((2, 3, 32, 32), np.float32)
    )
    assert logits.shape == (2, 4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_int8_falls_back_to_convolutions_only_when_the_fast_recipe_disagrees(
    run: Path, tmp_path: Path, monkeypatch
):
    import dataclasses

    from cropdoc.models import get_arch

    copy = copy_run(run, tmp_path / "run")
    spec = dataclasses.replace(get_arch("mobilenet_v3_small"), int8_op_types=("Conv", "Mul"))
    monkeypatch.setattr(int8_module, "get_arch", lambda name: spec)
    disagreeing, real = _disagreeing_quantizer(copy), int8_module._quantize
    calls: list[tuple[str, ...]] = []

    def quantize(fp32, target, calibration, workdir, op_types=("Conv",)):
        calls.append(tuple(op_types))
        quantizer = disagreeing if tuple(op_types) != ("Conv",) else real
        quantizer(fp32, target, calibration, workdir, op_types)

    monkeypatch.setattr(int8_module, "_quantize", quantize)
    report = export_int8(copy / "model", force=False, min_agreement=0.5)
    assert calls == [("Conv", "Mul"), ("Conv",)]
    assert report.written and report.verification.top1_agreement >= 0.5
    assert read_meta(copy).exports["onnx_int8"]["quantized_ops"] == ["Conv"]


def test_int8_without_known_images_asks_for_calibration_data(run: Path, tmp_path: Path):
    lone = tmp_path / "lone"
    shutil.copytree(run / "model", lone / "model")
    with pytest.raises(ExportError, match="--calibration"):
        export_int8(lone / "model")


def test_ensure_export_never_makes_int8_and_rejects_unknown_backends(run: Path, tmp_path: Path):
    copy = copy_run(run, tmp_path / "run")
    if "onnx_int8" not in read_meta(copy).exports:
        with pytest.raises(ExportError, match="--int8"):
            ensure_export(copy / "model", "onnx-int8")
    assert not (copy / "model" / "model.int8.onnx").exists()
    assert ensure_export(copy / "model", "auto") is None
    assert ensure_export(copy / "model", "onnx") == recorded_export(copy / "model")
    with pytest.raises(ExportError, match="choose one of"):
        ensure_export(copy / "model", "tensorrt")
