"""What a finished training run gets before it is handed to the user: a fitted
temperature, an out-of-distribution score and threshold, a full evaluation on its test
split, and ``report.md``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..data.split import SplitManifest
from ..errors import DataError
from ..evaluation import (
    CalibrationResult,
    EvaluationResult,
    calibrate_run,
    evaluate_bundle,
    fit_run_ood,
    write_run_report,
)

__all__ = ["finalize_run"]

_logger = logging.getLogger(__name__)


def finalize_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    evaluate: bool = True,
    workers: int | None = 0,
    device: str | None = None,
) -> tuple[CalibrationResult, EvaluationResult | None, Path]:
    """Calibrate a run on its val split, fit its OOD score, evaluate it on its test split
    into ``RUN/eval``, and write ``RUN/report.md``.

    Call it once, on global rank zero, after ``summary.json`` is written. The OOD score is
    fitted after the temperature (its ``msp`` kind reads calibrated probabilities) and the
    evaluation uses both, so ``RUN/eval`` shows calibrated confidence and abstain rates.

    Args:
        run_dir: the finished run directory.
        data: where the dataset is now (default: the root in ``split.json``).
        evaluate: also run the full evaluation (plots, per-class numbers); without it the
            report shows the training-time test accuracy and macro-F1 only.
        workers: DataLoader workers for both passes (0: in this process).
        device: ``"auto"``/None, ``"cpu"``, ``"cuda"``.

    Returns:
        The calibration, the evaluation (or None) and the report path.
    """
    run = Path(run_dir)
    root = Path(data) if data is not None else SplitManifest.load(run / "split.json").root
    calibration = calibrate_run(run, data=root, workers=workers or 0, device=device)
    try:
        fit_run_ood(run, data=root, workers=workers or 0, device=device)
    except DataError as e:  # the model is still usable, it just never abstains
        _logger.warning("no OOD score fitted (%s); predictions will not abstain", e)
    evaluation = None
    if evaluate:
        evaluation = evaluate_bundle(
            run / "model",
            root,
            out_dir=run / "eval",
            split="test",
            split_file=run / "split.json",
            workers=workers,
            device=device,
            write_report=False,
        )
    report = write_run_report(run, eval_dir=run / "eval" if evaluation else None)
    return calibration, evaluation, report
