"""Profiling any ``predict(batch)`` callable (no timing assertions)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cropdoc.evaluation.profile import (
    bundle_size_mb,
    count_parameters,
    profile_model,
    profile_predict,
)


def test_profile_predict_takes_any_callable_and_input_type():
    calls: list[int] = []

    def predict(batch: np.ndarray) -> None:  # e.g. an onnxruntime session's run
        calls.append(len(batch))

    t = profile_predict(
        predict,
        lambda n: np.zeros((n, 3, 8, 8), np.float32),
        warmup=2,
        runs=5,
        throughput_batch=4,
        throughput_runs=3,
    )
    assert calls.count(1) == 2 + 5 and calls.count(4) == 2 + 3
    assert t.latency_runs == 5 and t.throughput_batch == 4
    assert t.latency_ms_mean >= 0 and t.latency_ms_p95 >= 0
    assert t.throughput_ips > 0


def test_profile_model_reports_params_and_device():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    r = profile_model(model, 16, device="cpu", size_mb=1.5, warmup=1, runs=3, throughput_batch=2)
    assert r.params == count_parameters(model) == 3 * 4 * 9 + 4 + 4 * 2 + 2
    assert r.device == "cpu" and r.backend == "torch" and r.size_mb == 1.5
    assert r.latency_ms_mean > 0 and r.throughput_ips > 0
    assert r.threads == torch.get_num_threads()


def test_bundle_size(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"x" * 500)
    assert bundle_size_mb(tmp_path) == 0.0015
    assert bundle_size_mb(tmp_path / "a") == 0.001
