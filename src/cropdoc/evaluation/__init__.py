"""Evaluation: metrics, calibration, profiling, model comparison and run reports.

>>> from cropdoc.evaluation import evaluate_bundle, calibrate_run, compare
"""

from __future__ import annotations

from .calibration import CalibrationResult as CalibrationResult
from .calibration import calibrate_run as calibrate_run
from .calibration import fit_temperature as fit_temperature
from .classnames import class_key as class_key
from .classnames import find_class as find_class
from .classnames import match_classes as match_classes
from .compare import Comparison as Comparison
from .compare import compare as compare
from .compare import recommend as recommend
from .evaluate import EvaluationResult as EvaluationResult
from .evaluate import evaluate_bundle as evaluate_bundle
from .finalize import finalize_run as finalize_run
from .metrics import compute_metrics as compute_metrics
from .metrics import expected_calibration_error as expected_calibration_error
from .profile import ProfileResult as ProfileResult
from .profile import profile_bundle as profile_bundle
from .profile import profile_model as profile_model
from .profile import profile_predict as profile_predict
from .report import write_eval_report as write_eval_report
from .report import write_run_report as write_run_report
from .report import write_train_report as write_train_report

__all__ = [
    "CalibrationResult",
    "Comparison",
    "EvaluationResult",
    "ProfileResult",
    "calibrate_run",
    "class_key",
    "compare",
    "compute_metrics",
    "evaluate_bundle",
    "expected_calibration_error",
    "find_class",
    "finalize_run",
    "fit_temperature",
    "match_classes",
    "profile_bundle",
    "profile_model",
    "profile_predict",
    "recommend",
    "write_eval_report",
    "write_run_report",
    "write_train_report",
]
