"""Reliability items 2 and 7 at CI size: kill -9 during a checkpoint write, then resume;
a NaN loss stops training clearly and keeps the best bundle.

All five kill points and DDP parity run at full size with
``python -m tests.reliability.run_all --full`` (see RELIABILITY.md); the reference
run here is the session's shared tiny run (same data, same config), so it costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import emit, write_config
from tests.reliability import kill_resume, numerics

from test_predictor import shared_tiny_run


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_run(tiny_data, tmp_path_factory)


@pytest.mark.slow  # two real `cropdoc train` processes (killed, then resumed)
def test_kill_during_checkpoint_write_then_resume_matches(
    tiny_data: Path, reference: Path, tmp_path: Path
):
    fig = kill_resume.run(
        kill_resume.CI_POINTS,
        tmp_path,
        data=tiny_data,
        reference=reference,
        config=write_config(tmp_path / "config.yaml"),
        scripted=False,
    )
    emit(fig)
    assert kill_resume.bars_met(fig) == []
    point = fig["points"][0]
    # The torn temp file is there after the kill, and gone once the run resumed.
    assert point["leftovers_after_kill"] and not point["corrupt_after_resume"]


def test_nan_loss_stops_with_one_line_and_keeps_best_bundle(tiny_data: Path, tmp_path: Path):
    fig = numerics.nan_stop(tiny_data, tmp_path, values=("nan",))
    emit(fig)
    assert fig["stopped_clearly_with_best_bundle"] == 1, fig["cases"]
