"""Predictor: torch and onnxruntime agree, batching is invisible, top-k, bad files, CLI;
loading never exports and never changes the process's thread count.

One tiny bundle is trained per test session (see :func:`shared_tiny_run`) and shared with
the export, serve and browser tests; tests that change a bundle work on a copy.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from cropdoc.bundle import read_meta, update_meta
from cropdoc.cli import app
from cropdoc.data.transforms import build_eval_transform
from cropdoc.export import ensure_export
from cropdoc.inference import (
    InferenceError,
    Predictor,
    TorchRunner,
    collect_images,
    load_predictor,
)
from cropdoc.preprocessing import Preprocessing
from cropdoc.probabilities import softmax


def shared_tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run directory with a verified ONNX export, made once per session.

    The export is made by ``ensure_export`` (what ``predict --backend onnx`` calls), which
    is one of the behaviours under test.
    """
    run = tmp_path_factory.getbasetemp() / "deploy-shared" / "run"
    if not (run / "model" / "model.json").is_file() or "onnx" not in read_meta(run).exports:
        from cropdoc.workflows import train

        shutil.rmtree(run.parent, ignore_errors=True)
        train(tiny_data, run, tiny_config(), show_progress=False)
        ensure_export(run / "model", "onnx")
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


def test_ensured_export_is_recorded(run: Path):
    record = read_meta(run).exports["onnx"]
    assert (run / "model" / record["path"]).is_file()
    assert record["verification"]["passed"] is True
    assert record["weights_sha256"] == read_meta(run).weights_sha256


def test_torch_and_onnx_logits_agree(run: Path, images: list[Path], torch_predictor: Predictor):
    onnx = load_predictor(run / "model", backend="onnx")
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
    hot = Predictor(meta, TorchRunner(torch_predictor.runner.model))
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
    with pytest.raises(InferenceError, match="choose one of auto, torch, onnx, onnx-int8"):
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


def _without_onnx(run: Path, dest: Path) -> Path:
    """A copy of the run whose bundle has no ONNX export (file and record removed)."""
    copy = copy_run(run, dest)
    exports = read_meta(copy).exports
    (copy / "model" / exports.pop("onnx")["path"]).unlink()
    update_meta(copy / "model", exports=exports)
    return copy


def test_loading_never_exports_and_says_which_command_to_run(run: Path, tmp_path: Path):
    copy = _without_onnx(run, tmp_path / "run")
    with pytest.raises(InferenceError) as err:
        load_predictor(copy / "model", backend="onnx")
    message = str(err.value)
    assert "\n" not in message and "cropdoc export" in message and "--format onnx" in message
    assert not (copy / "model" / "model.onnx").exists()
    assert "onnx" not in read_meta(copy).exports
    with pytest.raises(InferenceError, match="--int8"):
        load_predictor(copy / "model", backend="onnx-int8")
    # auto only uses an export that is already there.
    assert load_predictor(copy / "model", backend="auto").backend == "torch"
    assert load_predictor(run / "model", backend="auto").backend == "onnx"


def test_ensure_export_exports_only_when_missing_or_stale(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    copy = _without_onnx(run, tmp_path / "run")
    assert ensure_export(copy / "model", "torch") is None
    with caplog.at_level(logging.INFO, logger="cropdoc.export"):
        path = ensure_export(copy / "model", "onnx")
    assert path is not None and path.is_file()
    assert "exporting one now" in caplog.text
    caplog.clear()
    mtime = path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="cropdoc.export"):
        assert ensure_export(copy / "model", "onnx") == path
    assert path.stat().st_mtime_ns == mtime and "exporting" not in caplog.text
    exports = read_meta(copy).exports
    exports["onnx"] = {**exports["onnx"], "weights_sha256": "0" * 64}  # made from other weights
    update_meta(copy / "model", exports=exports)
    ensure_export(copy / "model", "onnx")
    assert read_meta(copy).exports["onnx"]["weights_sha256"] == read_meta(copy).weights_sha256


def test_cli_predict_onnx_works_on_a_bundle_without_export(
    run: Path, images: list[Path], tmp_path: Path
):
    copy = _without_onnx(run, tmp_path / "run")
    res = CliRunner().invoke(
        app, ["predict", str(copy / "model"), str(images[0]), "--backend", "onnx", "--json"]
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.splitlines()[-1])
    assert row["ok"] and read_meta(copy).exports["onnx"]["verification"]["passed"]


class _ThreadProbe(torch.nn.Module):
    """Wraps a model and records the intra-op thread count each forward pass ran with."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.model(x)


def _threads_in_new_thread() -> int:
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_loading_and_predicting_leave_the_process_thread_count_alone(
    run: Path, images: list[Path], torch_predictor: Predictor
):
    before = torch.get_num_threads()
    odd = before + 2  # a count no backend would choose, so a change is visible
    torch.set_num_threads(odd)
    try:
        for backend in ("torch", "onnx"):
            predictor = load_predictor(run / "model", backend=backend, threads=1, device="cpu")
            assert all(p.ok for p in predictor.predict(images[:3], batch_size=2))
            assert torch.get_num_threads() == odd, backend
            assert _threads_in_new_thread() == odd, backend
        # The torch runner computes with its own count, inside the call only.
        probe = _ThreadProbe(torch_predictor.runner.model)
        own = Predictor(torch_predictor.meta, TorchRunner(probe, threads=1))
        own.predict(images[:2])
        assert probe.seen == [1] and torch.get_num_threads() == odd
    finally:
        torch.set_num_threads(before)


def test_unknown_device_and_onnx_off_the_cpu_are_refused(run: Path):
    with pytest.raises(InferenceError, match="runs on the CPU"):
        load_predictor(run / "model", backend="onnx", device="cuda")
    with pytest.raises(InferenceError, match="unknown device"):
        load_predictor(run / "model", backend="torch", device="abacus")


def test_preprocessing_is_the_bundle_s_as_stored(torch_predictor: Predictor):
    from PIL import Image

    # A resize side no ratio of the crop would give: a re-derived one would differ.
    stored = Preprocessing(image_size=32, resize_size=61, mean=(0.4, 0.5, 0.6), std=(0.2,) * 3)
    meta = torch_predictor.meta.model_copy(update={"preprocessing": stored})
    predictor = Predictor(meta, torch_predictor.runner)
    image = Image.linear_gradient("L").convert("RGB").resize((90, 70))
    want = build_eval_transform(stored)(image)
    derived = build_eval_transform(Preprocessing.for_size(32, mean=stored.mean, std=stored.std))
    torch.testing.assert_close(predictor.preprocess(image), want)
    assert not torch.allclose(predictor.preprocess(image), derived(image))


def test_one_softmax_shared_by_evaluation_and_inference():
    from cropdoc.evaluation import calibration, evaluate, metrics
    from cropdoc.inference import predictor

    assert evaluate.softmax is calibration.softmax is predictor.softmax is softmax
    assert not hasattr(metrics, "softmax")
    np.testing.assert_allclose(softmax(np.array([[1.0, 1.0], [0.0, 1000.0]])), [[0.5, 0.5], [0, 1]])
    np.testing.assert_allclose(softmax([2.0, 0.0], 2.0), softmax([1.0, 0.0]))


def test_cli_predict_help_lists_choices_without_python_types():
    res = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "auto|torch|onnx|onnx-int8" in res.stdout and "auto|cpu|cuda|mps" in res.stdout
    assert "<str>" not in res.stdout and "<int>" not in res.stdout
