"""``cropdoc export --format tflite`` and ``predict --backend tflite``: LiteRT, verified.

A MobileNetV3-Small bundle at 32 px (random weights: no training, so the file stays
within a minute) verified on real leaves, run with the LiteRT interpreter:

- fp32 through the CLI: figures printed and stored in ``model.json`` (max |logit
  difference| <= 1e-3 on the real leaves), logits and features outputs, and
  ``cropdoc predict --backend tflite`` answers like torch;
- INT8 (AI Edge Quantizer, calibrated on real leaves, ``force``): the agreement figures
  are computed on the leaves and stored, and the ``tflite-int8`` backend runs;
- refusal: a quantizer stand-in writing a file that disagrees with torch is not written,
  its figures go to ``exports["tflite_int8_refused"]``, the CLI exits 1; ``--force``
  writes it.

Skips without litert-torch / ai-edge-litert (``pip install 'cropdoc[tflite]'``) or the
real leaves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import tiny_bundle_meta
from typer.testing import CliRunner

from cropdoc.bundle import load_bundle, read_meta, save_bundle
from cropdoc.cli import app
from cropdoc.export import export_tflite
from cropdoc.export import tflite as tflite_module
from cropdoc.inference import collect_images, load_predictor
from cropdoc.models import build

pytest.importorskip("litert_torch", reason="TFLite export needs pip install 'cropdoc[tflite]'")
pytest.importorskip("ai_edge_litert", reason="TFLite needs pip install 'cropdoc[tflite]'")

WIDE = {"COLUMNS": "200"}
PER_CLASS = 8


@pytest.fixture(scope="module")
def leaves(plantvillage_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real leaves of three classes (verification and calibration images)."""
    root = tmp_path_factory.mktemp("leaves")
    for folder in sorted(p for p in plantvillage_mini.iterdir() if p.is_dir())[:3]:
        (root / folder.name).mkdir()
        for image in collect_images([folder])[:PER_CLASS]:
            shutil.copy(image, root / folder.name / image.name)
    return root


@pytest.fixture(scope="module")
def exported(leaves: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class 32 px bundle with its fp32 TFLite export, made through the CLI."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tflite") / "model"
    save_bundle(folder, build("mobilenet_v3_small", classes=3, weights="none"), tiny_bundle_meta())
    args = ["export", str(folder), "--format", "tflite", "--calibration", str(leaves)]
    res = CliRunner().invoke(app, args, env=WIDE)
    assert res.exit_code == 0, res.output
    assert "TFLite fp32: written" in res.stdout and "max |logit diff| vs torch" in res.stdout
    return folder


@pytest.fixture
def bundle(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported bundle."""
    return Path(shutil.copytree(exported, tmp_path / "model"))


def test_fp32_export_is_verified_on_real_leaves_and_recorded(exported: Path, leaves: Path):
    record = read_meta(exported).exports["tflite"]
    v = record["verification"]
    assert v["metric"] == "max_abs_logit_diff" and v["threshold"] == 1e-3 and v["passed"]
    assert 0 <= v["max_abs_logit_diff"] <= 1e-3
    assert v["images"] == 3 * PER_CLASS and str(leaves) in v["source"]
    assert record["outputs"] == ["logits", "features"]
    assert (exported / record["path"]).stat().st_size == record["size_bytes"]
    assert {"litert-torch", "ai-edge-litert"} <= set(record["versions"])

    lite, ref = load_predictor(exported, backend="tflite"), load_predictor(exported)
    batch = np.stack([lite.preprocess(p).numpy() for p in collect_images([leaves])[:5]])
    (logits, features), (want, want_features) = lite.outputs(batch), ref.outputs(batch)
    assert logits.shape == (5, 3) and np.abs(logits - want).max() <= 1e-3
    assert np.abs(features - want_features).max() <= 1e-3


def test_cli_predict_with_the_tflite_backend(exported: Path, leaves: Path):
    photos = [str(p) for p in collect_images([leaves])[::PER_CLASS]]
    res = CliRunner().invoke(
        app, ["predict", str(exported), *photos, "--backend", "tflite", "--json"], env=WIDE
    )
    assert res.exit_code == 0, res.output
    got = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    want = load_predictor(exported).predict(photos)
    assert [r["class"] for r in got] == [p.best.name for p in want]
    for r, p in zip(got, want, strict=True):
        assert r["probability"] == pytest.approx(p.best.probability, abs=1e-4)


def test_int8_agreement_is_measured_on_real_leaves_and_stored(bundle: Path, leaves: Path):
    report = export_tflite(bundle, int8=True, data=[leaves], force=True)
    assert report.written and report.path == bundle / "model.int8.tflite"
    v = read_meta(bundle).exports["tflite_int8"]["verification"]
    assert v["metric"] == "top1_agreement" and v["threshold"] == 0.99
    assert 0.0 <= v["top1_agreement"] <= 1.0 and v["images"] == 3 * PER_CLASS
    assert v["calibration_images"] == 3 * PER_CLASS
    assert report.size_bytes < (bundle / "model.tflite").stat().st_size / 2
    int8 = load_predictor(bundle, backend="tflite-int8")
    assert all(p.ok for p in int8.predict(collect_images([leaves])[:3]))


def _disagreeing_quantizer(bundle: Path, leaves: Path):
    """A stand-in for the INT8 quantizer writing a file that disagrees with torch.

    Real quantization of this model may well agree, and converting a second model would
    double the test's time; so the verified fp32 file is copied with the classifier bias
    (stored once, as raw float32) replaced by one that always picks the class torch picks
    least often: top-1 agreement is then at most 1/3.
    """
    loaded = load_bundle(bundle)
    head = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    bias = head.bias.detach().numpy().astype("<f4")
    picked = [p.best.index for p in load_predictor(bundle).predict(collect_images([leaves]))]
    rare = int(np.argmin(np.bincount(picked, minlength=len(bias))))
    boosted = np.zeros_like(bias)
    boosted[rare] = 1e4

    def quantize(fp32: Path, target: Path, calibration) -> None:
        assert calibration, "the quantizer must receive calibration batches"
        data = fp32.read_bytes()
        assert data.count(bias.tobytes()) == 1
        target.write_bytes(data.replace(bias.tobytes(), boosted.tobytes()))

    return quantize


def test_int8_below_the_threshold_is_refused_unless_forced(
    bundle: Path, leaves: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(tflite_module, "_quantize", _disagreeing_quantizer(bundle, leaves))
    report = export_tflite(bundle, int8=True, data=[leaves])
    assert not report.written and report.verification.top1_agreement < 0.99
    assert not (bundle / "model.int8.tflite").exists()
    exports = read_meta(bundle).exports
    assert "tflite_int8" not in exports
    refused = exports["tflite_int8_refused"]["verification"]
    assert refused["top1_agreement"] == pytest.approx(report.verification.top1_agreement)

    # The CLI makes fp32 first: a copy of the verified file stands in for the converter.
    fp32 = (bundle / "model.tflite").read_bytes()
    monkeypatch.setattr(
        tflite_module, "_convert", lambda model, arch, size, target: target.write_bytes(fp32)
    )
    args = ["export", str(bundle), "--format", "tflite", "--int8", "--calibration", str(leaves)]
    res = CliRunner().invoke(app, args, env=WIDE)
    assert res.exit_code == 1, res.output
    assert "TFLite INT8: NOT written" in res.stdout

    forced = export_tflite(bundle, int8=True, data=[leaves], force=True)
    assert forced.written and read_meta(bundle).exports["tflite_int8"]["forced"] is True
