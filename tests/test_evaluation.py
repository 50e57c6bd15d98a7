"""``evaluate_bundle`` and ``cropdoc evaluate`` end to end on one tiny trained run.

``trained_tiny_run`` trains once per session (other evaluation test files import it);
tests that change a run work on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from cropdoc.cli import app
from cropdoc.errors import DataError
from cropdoc.evaluation.evaluate import EVAL_FILES, evaluate_bundle


def trained_tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A finished tiny run, trained on first use and shared by the whole session."""
    from cropdoc.workflows import train

    run = tmp_path_factory.getbasetemp() / "evaluation-tiny-run"
    if not (run / "summary.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        train(tiny_data, run, tiny_config(stage_epochs=[1, 1, 0]), show_progress=False)
    return run


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run (same data root), for tests that change it."""
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    return trained_tiny_run(tmp_path_factory, tiny_data)


@pytest.fixture(scope="module")
def renamed_data(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """tiny_data with Kaggle-style single-underscore folder names, a bad file, and a
    class the model does not know."""
    root = tmp_path_factory.mktemp("renamed") / "data"
    folders = sorted(p for p in tiny_data.iterdir() if p.is_dir())
    for folder in folders:
        shutil.copytree(folder, root / folder.name.replace("___", "_"))
    first = folders[0]
    (root / first.name.replace("___", "_") / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    unknown = root / "Corn___Common_rust"
    unknown.mkdir()
    for image in sorted(first.glob("*.jpg"))[:3]:
        shutil.copy(image, unknown / image.name)
    return root


def test_evaluate_on_training_folder_uses_test_split_and_writes_every_file(
    tiny_run: Path, tiny_data: Path
):
    out = tiny_run / "eval"
    result = evaluate_bundle(tiny_run / "model", tiny_data, out_dir=out, workers=0)
    for name in (*EVAL_FILES, "report.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in (n for n in EVAL_FILES if n.endswith(".png")):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # The run's own test split, not all 48 images.
    split = json.loads((tiny_run / "split.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == len(split["splits"]["test"]) == result.metrics["n_images"]
    assert m["split"] == "test" and "split.json" in m["source"]
    for key in ("accuracy", "macro_f1", "weighted_f1", "top3_accuracy", "nll", "ece"):
        assert 0.0 <= m[key] < 30, key
    assert m["n_bad_files"] == 0 and m["class_mapping"] == {}
    assert set(m["per_class"]) == set(split["classes"])
    assert sum(v["support"] for v in m["per_class"].values()) == m["n_images"]
    ci = m["intervals"]  # resampling the test leaves (one photo each here)
    assert ci["n_groups"] == m["n_images"] and ci["n_resamples"] == 1000
    for key in ("accuracy", "macro_f1"):
        assert 0.0 <= ci[key][0] <= ci[key][1] <= 1.0, key
    assert "bootstrap intervals" in (out / "report.md").read_text()
    # out lies inside the run dir, so the run's report was refreshed with the evaluation.
    assert "## Confusion matrix" in (tiny_run / "report.md").read_text()
    assert "weighted avg" in (out / "classification_report.txt").read_text()


def test_other_folder_matches_renamed_classes_and_counts_bad_files(
    tiny_run: Path, renamed_data: Path, tmp_path: Path
):
    with pytest.raises(DataError, match="Corn___Common_rust.*--ignore-unknown"):
        evaluate_bundle(tiny_run / "model", renamed_data, out_dir=tmp_path / "x", workers=0)
    result = evaluate_bundle(
        tiny_run / "model", renamed_data, out_dir=tmp_path / "e", ignore_unknown=True, workers=0
    )
    m = result.metrics
    unknown = len(list((renamed_data / "Corn___Common_rust").glob("*.jpg")))
    known = len(list(renamed_data.rglob("*.jpg"))) - unknown - 1  # all but broken.jpg
    # A renamed copy of the training folder: what the run trained and validated on is
    # left out by its bytes, so only its test images are scored.
    split = json.loads((tiny_run / "split.json").read_text())["splits"]
    seen = len(split["train"]) + len(split["val"])
    assert m["split"] == "all" and m["seen_in_training_images"] == seen
    assert m["n_images"] == known - seen == len(split["test"])
    assert m["n_bad_files"] == 1 and m["bad_files"][0]["path"].endswith("broken.jpg")
    assert m["skipped_unknown_images"] == unknown
    assert result.renamed == {
        "Tomato_Early_blight": "Tomato___Early_blight",
        "Tomato_Late_blight": "Tomato___Late_blight",
        "Tomato_Septoria_leaf_spot": "Tomato___Septoria_leaf_spot",
        "Tomato_healthy": "Tomato___healthy",
    }
    assert (tmp_path / "e" / "report.md").is_file()
    every = evaluate_bundle(
        tiny_run,
        renamed_data,
        out_dir=tmp_path / "all",
        split="all",
        ignore_unknown=True,
        workers=0,
    )
    assert every.metrics["n_images"] == known  # the explicit choice: every image
    assert every.metrics["seen_in_training_images"] == seen


def test_a_split_with_a_missing_file_is_an_error_not_every_image(
    tiny_run: Path, tiny_data: Path, tmp_path: Path
):
    data = shutil.copytree(tiny_data, tmp_path / "data")
    test_files = json.loads((tiny_run / "split.json").read_text())["splits"]["test"]
    gone = test_files[0][0]
    (data / gone).unlink()
    with pytest.raises(DataError, match=rf"1 of the {len(test_files)} 'test' images") as err:
        evaluate_bundle(tiny_run, data, out_dir=tmp_path / "e", workers=0)
    assert gone in str(err.value) and "--split all" in str(err.value)
    # The same from the very folder the split was made from.
    run = copy_run(tiny_run, tmp_path / "run")
    manifest = json.loads((run / "split.json").read_text())
    (run / "split.json").write_text(json.dumps({**manifest, "root": str(data)}))
    with pytest.raises(DataError, match="cannot be scored exactly"):
        evaluate_bundle(run, data, out_dir=tmp_path / "e", workers=0)
    # --split all is the explicit way to score every image anyway.
    result = evaluate_bundle(run, data, out_dir=tmp_path / "e", split="all", workers=0)
    assert result.metrics["n_images"] == len(list(tiny_data.rglob("*.jpg"))) - 1


def test_explicit_split_needs_the_training_folder_or_a_split_file(
    tiny_run: Path, renamed_data: Path, tmp_path: Path
):
    with pytest.raises(DataError, match="--split-file"):
        evaluate_bundle(tiny_run / "model", renamed_data, out_dir=tmp_path, split="val")
    # The manifest's relative paths do not exist under renamed folders: a clear error.
    with pytest.raises(DataError, match="none of the"):
        evaluate_bundle(
            tiny_run / "model",
            renamed_data,
            out_dir=tmp_path,
            split="val",
            split_file=tiny_run / "split.json",
        )


def test_val_split_of_a_moved_copy_of_the_data(tiny_run: Path, tiny_data: Path, tmp_path: Path):
    moved = shutil.copytree(tiny_data, tmp_path / "moved")
    result = evaluate_bundle(tiny_run, moved, out_dir=tmp_path / "e", split="val", workers=0)
    split = json.loads((tiny_run / "split.json").read_text())
    assert result.metrics["n_images"] == len(split["splits"]["val"])
    assert result.metrics["split"] == "val"


def test_cli_evaluate_prints_metrics_mapping_and_files(
    tiny_run: Path, renamed_data: Path, tmp_path: Path
):
    out = tmp_path / "cli-eval"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tiny_run / "model"),
            str(renamed_data),
            "--out",
            str(out),
            "--ignore-unknown",
            "--workers",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    for text in ("macro-F1", "95% CI", "ECE", "Tomato_healthy", "Tomato___healthy", "metrics.json"):
        assert text in res.output, text
    assert (out / "metrics.json").is_file()


def test_cli_evaluate_unknown_class_is_a_user_error(
    tiny_run: Path, renamed_data: Path, tmp_path: Path
):
    res = CliRunner().invoke(
        app, ["evaluate", str(tiny_run), str(renamed_data), "--out", str(tmp_path)]
    )
    assert res.exit_code != 0
    assert isinstance(res.exception, DataError)
