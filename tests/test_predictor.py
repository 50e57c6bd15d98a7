"""Predictor: torch and onnxruntime agree, batching is invisible, top-k, bad files, CLI.

One tiny bundle is trained per test session (see :func:`shared_tiny_run`) and shared with
the export, serve and browser tests; tests that change a bundle work on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from cropdoc.bundle import read_meta
from cropdoc.cli import app
from cropdoc.inference import InferenceError, Predictor, collect_images, load_predictor
from cropdoc.inference.predictor import _TorchRunner, softmax


def shared_tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run directory with a verified ONNX export, made once per session.

    The ONNX export is made on demand by ``load_predictor(backend="onnx")``, which is one
    of the behaviours under test.
    """
    run = tmp_path_factory.getbasetemp() / "deploy-shared" / "run"
    if not (run / "model" / "model.json").is_file() or "onnx" not in read_meta(run).exports:
        from cropdoc.training.run import train

        shutil.rmtree(run.parent, ignore_errors=True)
        train(tiny_data, run, tiny_config(), show_progress=False)
        load_predictor(run / "model", backend="onnx")
    return run


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run directory (bundle, split and exports)."""
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_run(tiny_data, tmp_path_factory)


@pytest.fixture(scope="module")
def images(tiny_data: Path) -> list[Path]:
    files = collect_images([tiny_data])
    return files[::4]  # 12 images spread over the 4 classes


@pytest.fixture(scope="module")
def torch_predictor(run: Path) -> Predictor:
    return load_predictor(run / "model", backend="torch")


def test_on_demand_export_is_recorded(run: Path):
    record = read_meta(run).exports["onnx"]
    assert (run / "model" / record["path"]).is_file()
    assert record["verification"]["passed"] is True
    assert record["weights_sha256"] == read_meta(run).weights_sha256


def test_torch_and_onnx_logits_agree(run: Path, images: list[Path], torch_predictor: Predictor):
    onnx = load_predictor(run / "model", backend="onnx", export_if_missing=False)
    assert (torch_predictor.backend, onnx.backend) == ("torch", "onnx")
    batch = torch.stack([torch_predictor.preprocess(p) for p in images])
    np.testing.assert_allclose(onnx.logits(batch), torch_predictor.logits(batch), atol=1e-4, rtol=0)
    a = torch_predictor.predict(images)
    b = onnx.predict(images)
    assert [p.best.name for p in a] == [p.best.name for p in b]


def test_batch_equals_one_by_one(images: list[Path], torch_predictor: Predictor):
    together = torch_predictor.predict(images, batch_size=5, top_k=4)
    alone = [torch_predictor.predict_one(p, top_k=4) for p in images]
    for x, y in zip(together, alone, strict=True):
        assert [s.name for s in x.top] == [s.name for s in y.top]
        np.testing.assert_allclose(
            [s.probability for s in x.top], [s.probability for s in y.top], atol=1e-6
        )


def test_top_k_is_sorted_named_and_calibrated(
    run: Path, images: list[Path], torch_predictor: Predictor
):
    meta = read_meta(run)
    k_all = meta.num_classes
    full = torch_predictor.predict_one(images[0], top_k=k_all)
    probs = [s.probability for s in full.top]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert sorted(s.name for s in full.top) == sorted(meta.classes)
    assert all(s.name == meta.classes[s.index] and "·" in s.label for s in full.top)
    assert len(torch_predictor.predict_one(images[0], top_k=2).top) == 2
    assert len(torch_predictor.predict_one(images[0], top_k=99).top) == k_all

    # Temperature comes from model.json: probabilities are softmax(logits / T). The run's
    # own T was fitted after training; a hotter one must flatten the distribution further.
    hotter = meta.temperature * 2.5
    meta.temperature = hotter
    hot = Predictor(meta, _TorchRunner(torch_predictor._runner.model))
    scaled = hot.predict_one(images[0], top_k=k_all)
    logits = np.array([s.logit for s in scaled.top])
    np.testing.assert_allclose(
        [s.probability for s in scaled.top], softmax(logits, hotter)[0:k_all], rtol=1e-5
    )
    assert scaled.best.probability < full.best.probability


def test_bad_files_get_errors_and_the_rest_continue(
    tmp_path: Path, images: list[Path], torch_predictor: Predictor
):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    cut = tmp_path / "cut.jpg"
    data = images[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    sources = [images[0], empty, text, tmp_path / "missing.jpg", cut, images[1]]
    results = torch_predictor.predict(sources, batch_size=4)
    assert [r.ok for r in results] == [True, False, False, False, False, True]
    assert results[1].error == "empty file"
    assert results[2].error == "not an image"
    assert results[3].error == "file not found"
    assert results[4].error.startswith("truncated or corrupt")
    assert results[0].to_dict()["class"] == results[0].best.name
    # Raw bytes (an upload) give the same answer as the file.
    from_bytes = torch_predictor.predict([images[0].read_bytes()], names=["upload.jpg"])[0]
    assert from_bytes.source == "upload.jpg"
    assert from_bytes.best.probability == pytest.approx(results[0].best.probability, abs=1e-7)


def test_unknown_backend_and_missing_int8_say_what_to_do(run: Path):
    with pytest.raises(InferenceError, match="choose one of torch, onnx, onnx-int8"):
        load_predictor(run / "model", backend="tensorrt")
    if "onnx_int8" not in read_meta(run).exports:
        with pytest.raises(InferenceError, match="cropdoc export"):
            load_predictor(run / "model", backend="onnx-int8")


def test_cli_predict_json_csv_and_exit_codes(run: Path, images: list[Path], tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in images[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(run / "model"), str(folder), "--json", "--top-k", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4
    assert sum(r["ok"] for r in rows) == 3
    assert all(len(r["top_k"]) == 2 for r in rows if r["ok"])

    res = runner.invoke(app, ["predict", str(run / "model"), str(folder), "--csv"])
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0].startswith("path,class,probability,class_2")

    res = runner.invoke(app, ["predict", str(run / "model"), str(folder / "broken.jpg")])
    assert res.exit_code == 1
