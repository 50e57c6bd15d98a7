"""Train, then finalize: what ``cropdoc train`` and :func:`cropdoc.train` run.

Training (``cropdoc.training``) ends at the bundle; this workflow then fits the
temperature on the val split, evaluates the test split into ``RUN/eval`` and writes
``RUN/report.md`` (``cropdoc.evaluation``), so neither capability imports the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..config import TrainConfig
from ..errors import CropdocError
from ..io import atomic_write_json
from ..training import TrainResult
from ..training import train as train_bundle
from .finalize import finalize_run

__all__ = ["train"]

_logger = logging.getLogger(__name__)


def train(
    data: str | Path | None,
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    finalize: bool = True,
    show_progress: bool = True,
    scan_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train with the three-stage recipe, then calibrate, evaluate and report.

    Args:
        data: the dataset root; with ``resume`` it may be None (``split.json`` knows it).
        out: the run directory.
        config: settings (defaults: :class:`~cropdoc.config.TrainConfig`).
        resume: continue the interrupted run in ``out``.
        finalize: fit the temperature, evaluate the test split and write ``report.md``.
        show_progress: progress bars on rank zero.
        scan_progress: ``(done, total)`` callback while scanning images.

    Raises:
        CropdocError: bad data, configuration, weights or checkpoint.
    """
    result = train_bundle(
        data,
        out,
        config,
        resume=resume,
        show_progress=show_progress,
        scan_progress=scan_progress,
    )
    if finalize and result.global_rank == 0:
        try:
            _, evaluation, _ = finalize_run(
                result.run_dir, result.data, workers=result.workers, device=result.device
            )
        except CropdocError as e:  # the trained bundle is already safe; don't fail the run
            _logger.warning("training finished, but calibration/evaluation/report failed: %s", e)
        else:
            if evaluation is not None:
                result.test_intervals = evaluation.metrics.get("intervals")
                atomic_write_json(result.run_dir / "summary.json", result.to_dict())
    return result
