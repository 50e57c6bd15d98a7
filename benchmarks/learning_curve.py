"""How the recipe's quality grows with the number of training photos: a learning curve.

    python -m benchmarks.quality_cv --out runs/cv-0.5 --train-fraction 0.5   # one per point
    python -m benchmarks.learning_curve runs/cv-0.5 runs/cv-0.75 runs/cv --target 0.98

Reads runs of ``benchmarks.quality_cv`` that differ only in ``--train-fraction``: the same
folds, so every run scores the same photos, each by a model that never saw its leaf. For
each run: the photos a fold's ``train/`` held (cropdoc carves its val split out of them)
and the pooled macro-F1. Through the points it fits the usual power law of the error,
``1 - macro-F1 = a * n ** -b`` (least squares on the logarithms), and solves it for the
``n`` at which macro-F1 reaches ``--target``. The fit is repeated on bootstrap resamples of
the test leaves (one resample scores every run on the same photos), which gives 95 %
intervals of ``b`` and of that ``n``. It is an extrapolation: it tells the order of the
data a target takes, not a promise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .common import emit, machine
from .quality_cv import encode_classes, read_predictions, training_photos


def load_run(out: Path) -> dict[str, Any]:
    """A ``quality_cv --out`` directory: its settings, photos per fold and predictions."""
    settings = json.loads((out / "settings.json").read_text())
    folds = range(settings["folds"])
    train = [training_photos(out / f"fold{k}" / "data") for k in folds]
    rows = [row for k in folds for row in read_predictions(out / f"fold{k}" / "run")]
    return {"out": out, "settings": settings, "train_photos": float(np.mean(train)), "rows": rows}


def macro_f1(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of each row of photo ``weights`` (resamples x photos), over the classes
    present in a resample's labels or predictions, as ``compute_metrics`` scores."""
    hit = (y == pred).astype(np.float64)
    truth = np.eye(n_classes)[y]  # photos x classes
    guess = np.eye(n_classes)[pred]
    tp = weights @ (truth * hit[:, None])
    support, predicted = weights @ truth, weights @ guess
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = denominator > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def power_law(n: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``log error = log a - b log n`` for each row of ``error`` (fits x
    points): the exponents ``b`` and the ``log a``."""
    x = np.log(n)
    x_centred = x - x.mean()
    logs = np.log(error)
    slope = (logs - logs.mean(axis=1, keepdims=True)) @ x_centred / (x_centred @ x_centred)
    return -slope, logs.mean(axis=1) - slope * x.mean()


def interval(samples: np.ndarray) -> list[float | None]:
    """The 95 % percentile interval of the bootstrap rows (row 0 is the point estimate);
    None for an end that is infinite."""
    ends = np.quantile(samples[1:], [0.025, 0.975])
    return [float(e) if np.isfinite(e) else None for e in ends]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="quality_cv --out directories (>= 2)")
    p.add_argument("--target", type=float, default=0.98, help="the macro-F1 to solve for")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    args = p.parse_args(argv)
    if len(args.runs) < 2 or not 0 < args.target < 1:
        p.error("need two or more runs and 0 < --target < 1")
    from cropdoc.data.split import leaf_keys

    runs = sorted((load_run(out) for out in args.runs), key=lambda r: r["train_photos"])
    same = {k: v for k, v in runs[0]["settings"].items() if k != "train_fraction"}
    for run in runs[1:]:
        other = {k: v for k, v in run["settings"].items() if k != "train_fraction"}
        if other != same:
            p.error(f"{run['out']} and {runs[0]['out']} differ in more than --train-fraction")
    photos = sorted((t, name) for name, t, _ in runs[0]["rows"])
    predicted = []
    for run in runs:
        by_photo = {(t, name): c for name, t, c in run["rows"]}
        if sorted(by_photo) != photos:
            p.error(f"{run['out']} scored other photos than {runs[0]['out']}")
        predicted.append([by_photo[key] for key in photos])
    # One row per photo: its name, true class and each run's prediction.
    rows = [(name, t, *c) for (t, name), *c in zip(photos, *predicted, strict=True)]
    classes, (y, *preds) = encode_classes(rows)

    _, leaf_of = np.unique(np.array(leaf_keys(photos)), return_inverse=True)
    n_leaves = int(leaf_of.max()) + 1
    rng = np.random.default_rng(args.seed)
    draws = rng.integers(0, n_leaves, size=(args.resamples, n_leaves))
    counts = np.stack([np.bincount(d, minlength=n_leaves) for d in draws])
    weights = np.vstack([np.ones((1, len(y))), counts[:, leaf_of].astype(np.float64)])
    f1 = np.stack([macro_f1(weights, y, pred, len(classes)) for pred in preds], axis=1)

    n = np.array([r["train_photos"] for r in runs])
    b, log_a = power_law(n, 1.0 - f1)
    # Where a * n^-b = 1 - target; a curve that does not fall never gets there.
    with np.errstate(divide="ignore", over="ignore"):
        needed = np.where(b > 0, np.exp((log_a - np.log(1.0 - args.target)) / b), np.inf)
    lo, hi = np.quantile(f1[1:], [0.025, 0.975], axis=0)
    result = {
        "machine": machine(),
        "settings": same,
        "points": [
            {
                "out": str(r["out"]),
                "train_fraction": r["settings"]["train_fraction"],
                "train_photos_per_fold": r["train_photos"],
                "macro_f1": float(f1[0, i]),
                "macro_f1_interval": [float(lo[i]), float(hi[i])],
                "errors": int((preds[i] != y).sum()),
            }
            for i, r in enumerate(runs)
        ],
        "fit": {
            "law": "1 - macro_f1 = a * n ** -b, n = photos in a fold's train/",
            "b": float(b[0]),
            "b_interval": interval(b),
            "target": args.target,
            "train_photos_for_target": float(needed[0]) if np.isfinite(needed[0]) else None,
            "train_photos_for_target_interval": interval(needed),
            "times_the_largest_run": float(needed[0] / n[-1]) if np.isfinite(needed[0]) else None,
            "times_the_largest_run_interval": interval(needed / n[-1]),
            "resamples": args.resamples,
            "leaves": n_leaves,
        },
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
