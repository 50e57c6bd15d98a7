"""Final evaluation numbers from predicted probabilities and true labels.

Accuracy and F1 come from scikit-learn (the reference implementation people compare
against); top-k accuracy, NLL and the expected calibration error are a few lines of
numpy each. Everything takes class *probabilities*, so the caller decides the
temperature: use :func:`cropdoc.probabilities.softmax` on ``logits / T``.

Macro- and weighted-F1 average over the classes that occur in the labels or the
predictions (scikit-learn's default), not over every class of the model: when a test
folder lacks a class, that class has no F1 to average, while predicting it is still
counted as an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    precision_recall_fscore_support,
)

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "ECE_BINS",
    "INTERVAL_LEVEL",
    "bootstrap_intervals",
    "classification_report_text",
    "compute_metrics",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
    "top_k_accuracy",
]

_logger = logging.getLogger(__name__)

ECE_BINS = 15
_EPS = 1e-12
BOOTSTRAP_RESAMPLES = 1000
INTERVAL_LEVEL = 0.95
# Resample weights are built in chunks of about this many cells (rows x images).
_CHUNK_CELLS = 4_000_000


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y):
        raise ValueError(f"need probs (N, C) and labels (N,), got {p.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got {y.min()}..{y.max()}")
    return p, y


def top_k_accuracy(probs: Any, labels: Any, k: int = 3) -> float:
    """Share of samples whose true class is among the ``k`` most probable (ties: by index)."""
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    k = min(k, p.shape[1])
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean ``-log p(true class)``; probabilities are clipped at 1e-12 so one sure miss
    costs ~27.6 nats instead of infinity."""
    p, y = _check(probs, labels)
    if len(y) == 0:
        return float("nan")
    return float(-np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0)).mean())


def reliability_bins(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Confidence vs accuracy per equal-width confidence bin (the reliability diagram).

    Returns:
        ``edges`` (n_bins + 1), and per bin ``confidence`` (mean top-1 probability),
        ``accuracy`` and ``count``; empty bins have NaN confidence and accuracy.
    """
    p, y = _check(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 cannot happen (>= 1/C).
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {
        "edges": edges.tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_acc.tolist(),
        "count": count.tolist(),
    }


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over confidence bins.

    0 means the model's top-1 confidence is, on average, exactly how often it is right;
    0.2 means it is off by 20 points (usually over-confident).
    """
    bins = reliability_bins(probs, labels, n_bins)
    count = np.asarray(bins["count"])
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float(np.nansum(gap * count) / count.sum())


def compute_metrics(
    probs: Any, labels: Any, classes: Sequence[str], *, n_bins: int = ECE_BINS
) -> dict[str, Any]:
    """Every headline number of an evaluation, JSON-ready.

    Args:
        probs: (N, C) class probabilities (after temperature scaling, if any).
        labels: (N,) true class indices into ``classes``.
        classes: the model's class names, in index order.
        n_bins: confidence bins for the ECE.

    Returns:
        ``n``, ``accuracy``, ``macro_f1``, ``weighted_f1``, ``top3_accuracy``, ``nll``,
        ``ece``, ``mean_confidence`` and ``per_class``: ``{class: {precision, recall, f1,
        support}}`` for every class of the model (support 0 where absent).
    """
    p, y = _check(probs, labels)
    if p.shape[1] != len(classes):
        raise ValueError(f"probs have {p.shape[1]} columns but there are {len(classes)} classes")
    if len(y) == 0:
        raise ValueError("no samples to evaluate")
    pred = p.argmax(axis=1)
    all_labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=all_labels, zero_division=0
    )
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "top3_accuracy": top_k_accuracy(p, y, 3),
        "nll": negative_log_likelihood(p, y),
        "ece": expected_calibration_error(p, y, n_bins),
        "mean_confidence": float(p.max(axis=1).mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


def bootstrap_intervals(
    labels: Any,
    pred: Any,
    n_classes: int,
    *,
    groups: Sequence[Any] | None = None,
    reference: Any | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile-bootstrap confidence intervals of accuracy and macro-F1.

    A test set of a few hundred photos gives a macro-F1 that another draw of photos would
    move by a point or more; the interval says how far. Each resample draws the test set's
    *groups* with replacement (``groups``: one key per image, e.g. its leaf, so several
    photos of one leaf count once; by default every image is its own group) and scores
    the images of the drawn groups exactly as :func:`compute_metrics` does (macro-F1 over
    the classes present in the resample's labels or predictions). Resample ``r`` is the
    ``r``-th draw of ``rng.integers(0, n_groups, n_groups)`` from
    ``numpy.random.default_rng(seed)``, so the intervals are reproducible.

    With ``reference`` (another model's predictions on the same images) the intervals of
    the *differences* ``pred - reference`` come too, both models scored on each resample:
    the paired comparison, in which the photos both models get right (or both miss) move
    the two scores together instead of widening the gap's interval. An interval that
    holds 0 says this test set does not tell the two apart.

    Args:
        labels: (N,) true class indices.
        pred: (N,) predicted class indices.
        n_classes: number of classes of the model.
        groups: optional (N,) group key of each image.
        reference: optional (N,) predictions of another model on the same images.
        n_resamples: bootstrap resamples.
        level: coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        seed: the resampling seed.

    Returns:
        ``{"accuracy": [lo, hi], "macro_f1": [lo, hi], "level", "n_resamples",
        "n_groups"}``, JSON-ready; with ``reference`` also ``accuracy_difference`` and
        ``macro_f1_difference`` (this model minus the reference).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    if y.ndim != 1 or y.shape != p.shape or len(y) == 0:
        raise ValueError(
            f"need labels and predictions of the same length N > 0, got {y.shape} and {p.shape}"
        )
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < level < 1 and n_resamples >= 1, got {level} and {n_resamples}")
    ref = None if reference is None else np.asarray(reference, dtype=np.int64)
    if ref is not None and ref.shape != y.shape:
        raise ValueError(f"reference predictions {ref.shape} for {y.shape} labels")
    if groups is None:
        group_of = np.arange(len(y))
    else:
        if len(groups) != len(y):
            raise ValueError(f"{len(groups)} group keys for {len(y)} images")
        _, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_groups = int(group_of.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n_groups, len(y)))
    scores: list[np.ndarray] = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_groups, size=(rows, n_groups))
        offsets = (np.arange(rows) * n_groups)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=rows * n_groups)
        weights = counts.reshape(rows, n_groups)[:, group_of].astype(np.float64)
        score = _weighted_scores(weights, y, p, n_classes)
        if ref is not None:
            score = np.hstack([score, score - _weighted_scores(weights, y, ref, n_classes)])
        scores.append(score)
    # (n_resamples, 2 or 4): accuracy, macro-F1 [, their differences from the reference]
    stats = np.concatenate(scores)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail], axis=0)
    keys = ["accuracy", "macro_f1"]
    if ref is not None:
        keys += ["accuracy_difference", "macro_f1_difference"]
    out: dict[str, Any] = {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(keys)}
    return {**out, "level": level, "n_resamples": n_resamples, "n_groups": n_groups}


def _weighted_scores(
    weights: np.ndarray, y: np.ndarray, p: np.ndarray, n_classes: int
) -> np.ndarray:
    """Accuracy and macro-F1 of each row of ``weights`` (R, N): image i counted w[r, i] times."""
    eye = np.eye(n_classes)
    true_1h, pred_1h = eye[y], eye[p]
    support = weights @ true_1h
    predicted = weights @ pred_1h
    hits = weights @ (true_1h * pred_1h)
    present = (support + predicted) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2.0 * hits / (support + predicted), 0.0)
    macro = f1.sum(axis=1) / present.sum(axis=1)
    accuracy = hits.sum(axis=1) / weights.sum(axis=1)
    return np.stack([accuracy, macro], axis=1)


def classification_report_text(probs: Any, labels: Any, classes: Sequence[str]) -> str:
    """scikit-learn's text report: a row per class that occurs in the labels or predictions
    (so its averages equal :func:`compute_metrics`'), plus accuracy and averages."""
    p, y = _check(probs, labels)
    pred = p.argmax(axis=1)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    return classification_report(
        y,
        pred,
        labels=present,
        target_names=[classes[i] for i in present],
        digits=4,
        zero_division=0,
    )
