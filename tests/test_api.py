"""The public Python API: the README's example, run exactly as written, and the API's parts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cropdoc
from cropdoc.data.synthetic import DEMO_CLASSES, generate_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no python code block"
    return match.group(1)


def test_readme_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 8, "keep it short"
    # The example reads a folder "leaves/" with one sub-folder per class.
    generate_dataset(
        tmp_path / "leaves", images_per_class=10, image_size=48, classes=DEMO_CLASSES[:3], seed=5
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 -- our own README
    run, model = namespace["run"], namespace["model"]
    assert (tmp_path / "runs" / "leaves" / "model" / "model.json").is_file()
    assert run.bundle_dir.resolve() == (tmp_path / "runs/leaves/model").resolve()
    assert model.classes == sorted(DEMO_CLASSES[:3])
    assert 0.0 <= run.test["macro_f1"] <= 1.0 and run.test["n"] > 0


def test_import_is_light_and_lists_its_api() -> None:
    code = (
        "import time, sys; t = time.perf_counter(); import cropdoc; "
        "dt = time.perf_counter() - t; "
        "assert 'torch' not in sys.modules, 'import cropdoc imported torch'; "
        "print(dt)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("train", "load", "Model", "Run", "compare", "demo", "load_bundle"):
        assert name in cropdoc.__all__
        assert getattr(cropdoc, name) is not None
    with pytest.raises(AttributeError):
        cropdoc.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> cropdoc.Run:
    out = tmp_path_factory.mktemp("api") / "run"
    return cropdoc.train(
        tiny_data,
        out=out,
        arch="mobilenet_v3_small",
        weights="none",
        recipe="three-stage",
        stage_epochs=[1, 1, 1],
        image_size=32,
        batch_size=8,
        workers=0,
        precision="32",
    )


def test_train_options_reach_the_config(trained: cropdoc.Run) -> None:
    meta = cropdoc.load(trained.bundle_dir).meta
    assert meta.arch == "mobilenet_v3_small"
    assert meta.preprocessing.image_size == 32
    assert [s["epochs"] for s in meta.recipe] == [1, 1, 1]
    assert meta.training.weights == "none"
    assert meta.training.drop_path == 0.0  # MobileNetV3-Small has no stochastic depth
    assert trained.result.epochs_run == 3


def test_predict_takes_paths_folders_pil_and_arrays(trained: cropdoc.Run, tiny_data: Path) -> None:
    model = trained.load()
    folder = tiny_data / model.classes[0]
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    pil = Image.open(files[0]).convert("RGB")
    preds = model.predict([files[0], pil, np.asarray(pil)], top_k=2)
    assert [len(p.top) for p in preds] == [2, 2, 2]
    assert all(p.ok for p in preds)
    # The same photo as a path, a PIL image and an array gives the same probabilities.
    probs = [p.best.probability for p in preds]
    assert probs[0] == pytest.approx(probs[1]) == pytest.approx(probs[2])
    from_folder = model.predict(folder)
    assert [Path(p.source).name for p in from_folder] == [f.name for f in files]
    with pytest.raises(cropdoc.CropdocError, match="uint8"):
        model.predict(np.zeros((4, 4), dtype=np.float32))


def test_evaluate_and_export(trained: cropdoc.Run, tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")  # the [serve] extra
    model = trained.load()
    result = model.evaluate(tiny_data, out=tmp_path / "eval")
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert result.metrics["n"] == trained.test["n"]
    report = model.export("onnx")
    assert Path(report.path).is_file()
    assert cropdoc.load(trained.bundle_dir).meta.exports["onnx"]
    with pytest.raises(cropdoc.CropdocError, match="format"):
        model.export("pdf")


def test_drop_path_the_architecture_cannot_take_fails_before_the_scan(
    tiny_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(cropdoc.CropdocError, match="has no stochastic depth"):
        cropdoc.train(tiny_data, out=tmp_path / "x", arch="resnet50", drop_path=0.1)
    assert not (tmp_path / "x" / "scan_report.json").exists()


def test_unknown_option_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(cropdoc.CropdocError, match="unknown training option.*learning_rte"):
        cropdoc.train(tiny_data, out=tmp_path / "x", learning_rte=1e-3)
