"""``report.md`` after training and after evaluation."""

from __future__ import annotations

import re
from pathlib import Path

from cropdoc.bundle import read_meta
from cropdoc.evaluation.report import write_eval_report, write_train_report
from cropdoc.workflows import finalize_run
from test_evaluation import copy_run, trained_tiny_run


def _links_resolve(report: Path) -> list[str]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    for link in links:
        assert not Path(link).is_absolute(), link
        assert (report.parent / link).is_file(), link
    return links


def test_report_after_training(tmp_path_factory, tiny_data, tmp_path):
    run = copy_run(trained_tiny_run(tmp_path_factory, tiny_data), tmp_path / "run")
    for stale in run.glob("*/metrics.json"):  # the shared run may have been evaluated
        stale.unlink()
    text = write_train_report(run).read_text()
    for section in (
        "## Data",
        "## Recipe",
        "## Training curves",
        "## Final metrics",
        "## Reproduce",
    ):
        assert section in text, section
    assert "Tomato · Late blight" in text and "test accuracy" in text
    assert "cropdoc train" in text and "cropdoc evaluate" in text
    # train() already calibrated the run (finalize_run), so its reliability plot may show.
    links = _links_resolve(run / "report.md")
    assert links[0] == "curves.png" and set(links) <= {"curves.png", "calibration.png"}


def test_finalize_run_calibrates_evaluates_and_reports(tmp_path_factory, tiny_data, tmp_path):
    run = copy_run(trained_tiny_run(tmp_path_factory, tiny_data), tmp_path / "run")
    calibration, evaluation, report = finalize_run(run)
    assert read_meta(run / "model").temperature == calibration.temperature
    assert evaluation is not None and evaluation.metrics["temperature"] == calibration.temperature
    text = report.read_text()
    for section in (
        "## Data",
        "## Recipe",
        "## Training curves",
        "## Final metrics",
        "## Confusion matrix",
        "## Calibration",
        "## Worst classes",
        "## Example predictions",
        "## Reproduce",
    ):
        assert section in text, section
    links = _links_resolve(report)
    assert {
        "curves.png",
        "calibration.png",
        "eval/confusion_matrix.png",
        "eval/reliability.png",
        "eval/predictions.png",
    } <= set(links)


def test_eval_report_outside_the_run_links_back(tmp_path_factory, tiny_data, tmp_path):
    from cropdoc.evaluation.evaluate import evaluate_bundle

    run = trained_tiny_run(tmp_path_factory, tiny_data)
    out = tmp_path / "elsewhere"
    evaluate_bundle(run / "model", tiny_data, out_dir=out, workers=0, write_report=False)
    text = write_eval_report(out, run_dir=run).read_text()
    assert "## Final metrics" in text and "## Recipe" in text
    _links_resolve(out / "report.md")
