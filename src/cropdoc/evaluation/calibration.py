"""Temperature scaling: make a model's confidence mean what it says.

Networks trained with cross-entropy are usually over-confident: "97 %" is right far less
than 97 % of the time. Dividing the logits by one scalar T > 1, fitted to minimise the
NLL on the validation split (Guo et al., 2017), fixes most of that without changing a
single prediction (argmax is invariant to T), so accuracy and F1 stay exactly as they were.

The NLL is convex in 1/T, hence unimodal in log T, so a bounded golden-section search
over log T finds the optimum deterministically, with no learning rate or line search
to go wrong on a small or degenerate validation set.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import load_bundle, update_meta
from ..data.split import SplitManifest
from ..errors import DataError
from ..probabilities import softmax
from .logits import collect_logits
from .metrics import ECE_BINS, expected_calibration_error, negative_log_likelihood

__all__ = ["CalibrationResult", "calibrate", "calibrate_run", "fit_temperature", "temperature_nll"]

_logger = logging.getLogger(__name__)

T_MIN, T_MAX = 0.05, 20.0
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class CalibrationResult:
    """A fitted temperature and what it did on the data it was fitted on."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n: int
    split: str = "val"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def temperature_nll(logits: Any, labels: Any, temperature: float) -> float:
    """Mean NLL of ``softmax(logits / temperature)`` (exact log-sum-exp, no clipping)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.int64)
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float((log_norm - z[np.arange(len(y)), y]).mean())


def fit_temperature(
    logits: Any, labels: Any, *, t_min: float = T_MIN, t_max: float = T_MAX, tol: float = 1e-4
) -> float:
    """The temperature in ``[t_min, t_max]`` that minimises the NLL of ``labels``.

    Args:
        logits: (N, C) raw model outputs.
        labels: (N,) true class indices.
        t_min: lower bound (sharpening more than 20x is never a sane calibration).
        t_max: upper bound.
        tol: stop when the bracket on log T is narrower than this.

    Returns:
        T; 1.0 when there is nothing to fit on.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        _logger.warning("no samples to fit a temperature on; keeping T = 1")
        return 1.0

    def f(log_t: float) -> float:
        return temperature_nll(z, y, math.exp(log_t))

    a, b = math.log(t_min), math.log(t_max)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    t = math.exp((a + b) / 2)
    # T = 1 is the model as trained; only move away from it for a real gain.
    return t if f(math.log(t)) < f(0.0) else 1.0


def calibrate(logits: Any, labels: Any, *, split: str = "val") -> CalibrationResult:
    """Fit T on (logits, labels) and report NLL and ECE before and after."""
    t = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, t)
    return CalibrationResult(
        temperature=t,
        nll_before=negative_log_likelihood(before, labels),
        nll_after=negative_log_likelihood(after, labels),
        ece_before=expected_calibration_error(before, labels, ECE_BINS),
        ece_after=expected_calibration_error(after, labels, ECE_BINS),
        n=len(labels),
        split=split,
    )


def calibrate_run(
    run_dir: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | None = None,
    plot: bool = True,
) -> CalibrationResult:
    """Fit the temperature of a finished run on its validation split and store it.

    Writes ``temperature`` and ``calibration`` (NLL/ECE before and after, n) into
    ``model/model.json``, and ``calibration.png`` (reliability before/after) into the run
    directory. Prediction, evaluation and export read the temperature from the bundle.

    Args:
        run_dir: a run directory with ``model/`` and ``split.json``.
        data: where the dataset is now (default: the root recorded in ``split.json``).
        batch_size: images per forward pass.
        workers: DataLoader workers.
        device: ``"auto"``/None, ``"cpu"``, ``"cuda"``.
        plot: also write ``calibration.png``.

    Returns:
        The fit and its before/after numbers.

    Raises:
        DataError: no ``split.json``, an empty validation split, or images not found.
        BundleError: no readable bundle in ``run_dir/model``.

    >>> calibrate_run("runs/effb0").temperature  # doctest: +SKIP
    1.37
    """
    run = Path(run_dir)
    split_path = run / "split.json"
    if not split_path.is_file():
        raise DataError(
            f"{run} has no split.json; calibration fits on the run's validation split, "
            "so pass the run directory written by `cropdoc train`"
        )
    manifest = SplitManifest.load(split_path)
    bundle = load_bundle(run / "model")
    if manifest.classes != bundle.meta.classes:
        raise DataError(
            f"{split_path} lists classes {manifest.classes} but the bundle has "
            f"{bundle.meta.classes}; the run directory is inconsistent, retrain it"
        )
    samples = manifest.samples("val", root=Path(data) if data is not None else None)
    if not samples:
        raise DataError(f"the validation split in {split_path} is empty; nothing to calibrate on")
    out = collect_logits(
        bundle.model,
        samples,
        bundle.meta,
        batch_size=batch_size,
        workers=workers,
        device=device,
        cache_dir=run / "cache",  # training's disk cache of the val split, if it made one
    )
    if len(out.labels) == 0:
        raise DataError(
            f"none of the {len(samples)} validation images could be read (first: "
            f"{out.bad[0][0]}: {out.bad[0][1]}); pass data= where the dataset is now"
        )
    result = calibrate(out.logits, out.labels)
    if len(out.labels) < 50:
        _logger.warning(
            "temperature fitted on only %d validation images; it may not generalise",
            len(out.labels),
        )
    update_meta(bundle.path, temperature=result.temperature, calibration=result.to_dict())
    _logger.info(
        "temperature %.3f on %d val images: NLL %.4f -> %.4f, ECE %.4f -> %.4f",
        result.temperature,
        result.n,
        result.nll_before,
        result.nll_after,
        result.ece_before,
        result.ece_after,
    )
    if plot:
        from .plots import plot_reliability

        plot_reliability(
            {
                "before (T = 1)": softmax(out.logits),
                f"after (T = {result.temperature:.2f})": (softmax(out.logits, result.temperature)),
            },
            out.labels,
            run / "calibration.png",
            title=f"Calibration on the validation split ({result.n} images)",
        )
    return result
