"""Reliability items 5 and 6 at CI size, against a real ``cropdoc serve`` on 127.0.0.1:
150 fuzzed malformed requests (5xx = 0, alive after), then 200 valid requests from 8
clients (errors = 0, RSS growth after warm-up < 50 MB). Latency is printed, not asserted.

Full size (600 fuzzed; 1,000 requests from 32 clients):
``python -m tests.reliability.uploads --full``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.helpers import emit
from tests.reliability import uploads

from test_predictor import shared_tiny_run


@pytest.fixture(scope="module")
def figures(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("uploads")
    run = shutil.copytree(shared_tiny_run(tiny_data, tmp_path_factory), work / "run")
    fig = uploads.run(run / "model", work, tiny_data, fuzz_n=150, load_n=200, clients=8)
    emit(fig)
    return fig


def test_fuzzed_uploads_never_get_a_5xx(figures: dict):
    fuzz = figures["fuzz"]
    assert fuzz["requests"] == 150
    assert fuzz["5xx"] == 0, fuzz["5xx_kinds"]
    assert fuzz["server_alive_after"] and fuzz["valid_prediction_after"]
    assert fuzz["tracebacks_in_log"] == 0


def test_load_has_no_errors_and_bounded_memory(figures: dict):
    load = figures["load"]
    assert load["requests"] == 200 and load["errors"] == 0, load["error_kinds"]
    assert load["rss_mb"]["growth_after_warmup"] < uploads.RSS_BAR_MB
