"""Evaluation: metrics, calibration, OOD scores, profiling and reports.

>>> from cropdoc.evaluation import evaluate_bundle, calibrate_run
"""

from __future__ import annotations

from ..classnames import class_key as class_key
from ..classnames import find_class as find_class
from ..classnames import match_classes as match_classes
from .calibration import CalibrationResult as CalibrationResult
from .calibration import calibrate_run as calibrate_run
from .calibration import fit_temperature as fit_temperature
from .evaluate import EvaluationResult as EvaluationResult
from .evaluate import evaluate_bundle as evaluate_bundle
from .metrics import bootstrap_intervals as bootstrap_intervals
from .metrics import compute_metrics as compute_metrics
from .metrics import expected_calibration_error as expected_calibration_error
from .ood import DEFAULT_OOD_KIND as DEFAULT_OOD_KIND
from .ood import auroc as auroc
from .ood import fit_ood as fit_ood
from .ood import fit_run_ood as fit_run_ood
from .ood import fpr_at_tpr as fpr_at_tpr
from .ood import ood_report as ood_report
from .plots import plot_tradeoff as plot_tradeoff
from .profile import ProfileResult as ProfileResult
from .profile import profile_bundle as profile_bundle
from .profile import profile_model as profile_model
from .profile import profile_predict as profile_predict
from .report import write_eval_report as write_eval_report
from .report import write_run_report as write_run_report
from .report import write_train_report as write_train_report

__all__ = [
    "DEFAULT_OOD_KIND",
    "CalibrationResult",
    "EvaluationResult",
    "ProfileResult",
    "calibrate_run",
    "auroc",
    "bootstrap_intervals",
    "class_key",
    "compute_metrics",
    "evaluate_bundle",
    "expected_calibration_error",
    "find_class",
    "fit_ood",
    "fit_run_ood",
    "fit_temperature",
    "fpr_at_tpr",
    "match_classes",
    "ood_report",
    "plot_tradeoff",
    "profile_bundle",
    "profile_model",
    "profile_predict",
    "write_eval_report",
    "write_run_report",
    "write_train_report",
]
