"""``cropdoc compare``: the recommendation rule, and two tiny archs on one split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import tiny_config
from cropdoc.errors import ConfigError
from cropdoc.workflows import compare, recommend
from test_evaluation import trained_tiny_run


def _row(name: str, f1: float, size: float, latency: float) -> dict:
    return {"name": name, "macro_f1": f1, "size_mb": size, "latency_ms_mean": latency}


ROWS = [
    _row("resnet50", 0.950, 95.0, 40.0),
    _row("efficientnet_b0", 0.945, 17.0, 12.0),
    _row("mobilenet_v3_small", 0.930, 6.0, 4.0),
]


def test_recommends_smallest_within_one_f1_point():
    name, line = recommend(ROWS)
    assert name == "efficientnet_b0"
    assert "within 1 macro-F1 point" in line and "resnet50" in line


def test_latency_budget_filters_first():
    assert recommend(ROWS, latency_budget_ms=10)[0] == "mobilenet_v3_small"
    name, line = recommend(ROWS, latency_budget_ms=1)
    assert name is None and "mobilenet_v3_small" in line and "1 ms" in line


def test_best_model_wins_when_nothing_is_close():
    rows = [_row("big", 0.95, 90, 40), _row("small", 0.80, 5, 4)]
    name, line = recommend(rows)
    assert name == "big" and "best macro-F1" in line


def test_nothing_to_compare_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="--archs"):
        compare(tmp_path, tmp_path / "out")


def test_compare_two_tiny_archs_on_one_split(tmp_path_factory, tiny_data: Path, tmp_path: Path):
    # mobilenet_v3_small: the session's tiny run, passed as --runs; efficientnet_b0 is
    # trained here. Both must end up on one split and be scored on one test set.
    mnv3 = trained_tiny_run(tmp_path_factory, tiny_data)
    out = tmp_path / "cmp"
    cfg = tiny_config(stage_epochs=[1, 0, 0])
    fast = {"warmup": 1, "runs": 2, "throughput_batch": 4, "throughput_runs": 1}
    result = compare(
        tiny_data,
        out,
        archs=["efficientnet_b0"],
        runs=[mnv3],
        config=cfg,
        workers=0,
        profile=fast,
        show_progress=False,
    )
    for name in (
        "comparison.csv",
        "comparison.md",
        "accuracy_vs_latency.png",
        "accuracy_vs_size.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["name"], r["arch"]) for r in rows] == [
        (mnv3.name, "mobilenet_v3_small"),
        ("efficientnet_b0", "efficientnet_b0"),
    ]
    for r in rows:
        for key in (
            "accuracy",
            "macro_f1",
            "ece",
            "size_mb",
            "latency_ms_mean",
            "latency_ms_p95",
            "throughput_ips",
            "train_time_min",
        ):
            assert float(r[key]) >= 0, key
    # The paired interval: against the best model, None for the best itself.
    best = max(rows, key=lambda r: float(r["macro_f1"]))
    for r in rows:
        assert float(r["macro_f1_low"]) <= float(r["macro_f1_high"])
        if r is best:
            assert r["vs_best_low"] == r["vs_best_high"] == ""
        else:
            assert -1 <= float(r["vs_best_low"]) <= float(r["vs_best_high"]) <= 1
    md = (out / "comparison.md").read_text()
    assert "Recommended:" in md and "| macro-F1 |" in md and "warning" not in md
    assert "vs the best (95% paired)" in md
    assert result.recommended in {mnv3.name, "efficientnet_b0"}
    # One split: the trained run made the same split as the reused one, and both were
    # scored on the same test images of it.
    splits = [
        json.loads((d / "split.json").read_text())["splits"]
        for d in (mnv3, out / "efficientnet_b0")
    ]
    assert splits[0] == splits[1]
    tested = [
        json.loads((out / "evals" / n / "metrics.json").read_text())
        for n in (mnv3.name, "efficientnet_b0")
    ]
    assert tested[0]["n_images"] == tested[1]["n_images"] == len(splits[0]["test"])
    assert tested[0]["source"] == tested[1]["source"]

    # Again: the finished run in OUT/efficientnet_b0 is reused, not retrained.
    weights = out / "efficientnet_b0" / "model" / "weights.safetensors"
    mtime = weights.stat().st_mtime
    again = compare(
        tiny_data,
        out,
        archs=["efficientnet_b0"],
        config=cfg,
        workers=0,
        profile=fast,
        show_progress=False,
    )
    assert [r["name"] for r in again.rows] == ["efficientnet_b0"]
    assert weights.stat().st_mtime == mtime
