"""ECE and temperature scaling on synthetic predictions, and ``calibrate_run``."""

from __future__ import annotations

import numpy as np
import pytest

from cropdoc.bundle import read_meta
from cropdoc.evaluation.calibration import calibrate, calibrate_run, fit_temperature
from cropdoc.evaluation.metrics import expected_calibration_error
from cropdoc.probabilities import softmax
from test_evaluation import copy_run, trained_tiny_run


def _sampled(n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    probs = softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_ece_near_zero_when_perfectly_calibrated():
    logits, labels = _sampled()
    assert expected_calibration_error(softmax(logits), labels) < 0.03


def test_ece_high_when_over_confident():
    logits, labels = _sampled()
    assert expected_calibration_error(softmax(logits * 4), labels) > 0.2


def test_temperature_scaling_lowers_nll_of_an_over_confident_model():
    logits, labels = _sampled()
    result = calibrate(logits * 3, labels)  # 3x sharper than the truth
    assert result.temperature == pytest.approx(3.0, rel=0.1)
    assert result.nll_after < result.nll_before - 0.1
    assert result.ece_after < 0.03 < result.ece_before


def test_calibrated_model_keeps_temperature_near_one():
    logits, labels = _sampled(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_calibrate_run_stores_temperature_and_plot(tmp_path_factory, tiny_data, tmp_path):
    run = copy_run(trained_tiny_run(tmp_path_factory, tiny_data), tmp_path / "run")
    result = calibrate_run(run)
    meta = read_meta(run / "model")
    assert meta.temperature == pytest.approx(result.temperature)
    assert meta.calibration["nll_after"] <= meta.calibration["nll_before"]
    assert meta.calibration["n"] == result.n > 0
    assert (run / "calibration.png").read_bytes()[:4] == b"\x89PNG"
