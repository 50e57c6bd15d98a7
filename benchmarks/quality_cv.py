"""The recipe's quality on every photo of the dataset: grouped k-fold cross-validation.

    python -m benchmarks.quality_cv                        # ours-224, 5 folds (~50 min)
    python -m benchmarks.quality_cv --row seed-224 --folds 5
    python -m benchmarks.quality_cv --out runs/cv-256 --against runs/cv \\
        --options '{"image_size": 256, "stage_epochs": [2, 4, 10]}'   # paired with a run
    python -m benchmarks.quality_cv --out runs/cv-half --train-fraction 0.5   # learning curve

One test split of ``plantvillage-mini`` holds 213 photos, so its macro-F1 has a 95 %
interval about 4.5 points wide (``cropdoc evaluate`` writes it): it cannot say whether a
recipe scores 0.97 or 0.98. Here every photo is a test photo once. The photos' leaf
groups (``cropdoc.data.split.group_keys``, the rule training splits with) are dealt into
``--folds`` folds, stratified by class (scikit-learn's ``StratifiedGroupKFold``); for
each fold a pre-split copy of the dataset (symbolic links, ``train/`` and ``test/``) is
trained through the public API exactly as a user's pre-split download would be:
``cropdoc.train`` carves its val split out of ``train/`` (grouped, 15 of every 85
photos), fits the temperature and evaluates ``test/``. The folds' test predictions are
pooled: macro-F1, accuracy and errors over all photos, with a 95 % bootstrap interval
over their leaves, beside each fold's own score and time. A fold trains on about 66 % of
the photos (the single split: 70 %).

``--train-fraction`` keeps only that share of each class's training leaves (whole leaves,
drawn with the seed) and tests on the same folds: points of a learning curve, to say how
the score grows with the number of photos. A run kept with ``--out`` resumes: folds whose
evaluation finished are read back, not trained again (with the same settings only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import DATA, cpu_seconds, emit, machine
from .quality import ROWS


def fold_of_each(folds: int, seed: int) -> tuple[Any, list[str], list[int]]:
    """The scan of DATA, the leaf group of each of its samples and each sample's test fold
    (grouped, stratified)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from cropdoc.data.scan import scan_folder
    from cropdoc.data.split import group_keys

    report = scan_folder(DATA)
    labels = [s.label for s in report.samples]
    groups = group_keys(report)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = [0] * len(labels)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        for i in test:
            fold[i] = k
    return report, groups, fold


def training_kept(
    report: Any, groups: list[str], fold: list[int], k: int, fraction: float, seed: int
) -> list[bool]:
    """Which samples outside fold ``k`` to train on: ``fraction`` of each class's training
    leaf groups (at least one), drawn with ``seed`` and ``k``; every sample when 1."""
    keep = [f != k for f in fold]
    if fraction >= 1.0:
        return keep
    by_class: dict[int, list[str]] = {}
    for sample, g, train in zip(report.samples, groups, keep, strict=True):
        if train and g not in by_class.setdefault(sample.label, []):
            by_class[sample.label].append(g)
    rng = np.random.default_rng([seed, k])
    kept: set[str] = set()
    for label in sorted(by_class):
        names = sorted(by_class[label])
        n = max(1, round(fraction * len(names)))
        kept.update(names[i] for i in rng.permutation(len(names))[:n])
    return [train and g in kept for train, g in zip(keep, groups, strict=True)]


def link_fold(report: Any, fold: list[int], k: int, root: Path, train: list[bool]) -> Path:
    """``root/{train,test}/<class>/<file>``: symbolic links to DATA, fold ``k`` as test and
    the samples marked in ``train`` as training photos. An existing copy is kept as it is."""
    if root.exists():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for sample, f, t in zip(report.samples, fold, train, strict=True):
        if f != k and not t:
            continue
        rel = Path(report.relative(sample.path))
        target = partial / ("test" if f == k else "train") / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(sample.path.resolve(), target)
    partial.rename(root)
    return root


def run_fold(
    name: str, k: int, data: Path, out: Path, seed: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Train one fold and read back its test predictions."""
    import cropdoc
    from cropdoc.config import load_config

    timing = out.with_name("timing.json")
    if not timing.exists():  # a finished fold of a resumed run is read back as it is
        options = {**ROWS[name], **extra}
        nested = {key: options.pop(key) for key in ("stages", "optim") if key in options}
        shutil.rmtree(out, ignore_errors=True)  # a fold killed half-way starts again
        started, cpu = time.perf_counter(), cpu_seconds()
        cropdoc.train(data, out=out, config=load_config(overrides=nested), seed=seed, **options)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        timing.write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}))
    spent = json.loads(timing.read_text())
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    predictions = read_predictions(out)
    return {
        "fold": k,
        "train_images": training_photos(data),
        "test_images": metrics["n_images"],
        "test_macro_f1": metrics["macro_f1"],
        "test_macro_f1_interval": metrics["intervals"]["macro_f1"],
        "test_errors": sum(t != p for _, t, p in predictions),
        "minutes": spent["wall_s"] / 60,
        "cpu_minutes": spent["cpu_s"] / 60,
        "predictions": predictions,
    }


def training_photos(data: Path) -> int:
    """How many photos a fold's pre-split copy holds in ``train/`` (val is carved from it)."""
    return sum(1 for f in (data / "train").rglob("*") if not f.is_dir())


def read_predictions(run_dir: Path) -> list[tuple[str, str, str]]:
    """(file name, true class, predicted class) of each test photo of a fold's run."""
    with open(run_dir / "eval" / "predictions.csv", newline="") as fh:
        return [(Path(r["path"]).name, r["true"], r["predicted"]) for r in csv.DictReader(fh)]


def encode_classes(rows: list[tuple[str, ...]]) -> tuple[list[str], list[np.ndarray]]:
    """The class names in ``rows`` (file name, then class columns) and each class column
    as indices into them."""
    classes = sorted({c for row in rows for c in row[1:]})
    index = {c: i for i, c in enumerate(classes)}
    columns = list(zip(*(row[1:] for row in rows), strict=True))
    return classes, [np.array([index[c] for c in column]) for column in columns]


def paired(mine: list[tuple[str, str, str]], theirs: list[tuple[str, str, str]]) -> dict[str, Any]:
    """This run's pooled macro-F1 minus another's on the same photos: a 95 % paired
    bootstrap interval over their leaves."""
    from cropdoc.data.split import leaf_keys
    from cropdoc.evaluation import bootstrap_intervals

    other = {(t, name): p for name, t, p in theirs}
    rows = [(name, t, p, other[(t, name)]) for name, t, p in mine if (t, name) in other]
    classes, (y, pred, ref) = encode_classes(rows)
    ci = bootstrap_intervals(
        y,
        pred,
        len(classes),
        groups=leaf_keys([(t, name) for name, t, _, _ in rows]),
        reference=ref,
    )
    return {
        "images": len(rows),
        "macro_f1_difference": ci["macro_f1_difference"],
        "accuracy_difference": ci["accuracy_difference"],
    }


def pooled(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Every fold's test photos together: one score per photo of the dataset."""
    from cropdoc.data.split import leaf_keys
    from cropdoc.evaluation import bootstrap_intervals
    from cropdoc.evaluation.metrics import compute_metrics

    rows = [p for f in folds for p in f["predictions"]]
    classes, (y, pred) = encode_classes(rows)
    probs = np.eye(len(classes))[pred]  # only the argmax matters for F1 and accuracy
    m = compute_metrics(probs, y, classes)
    leaves = leaf_keys([(t, name) for name, t, _ in rows])
    ci = bootstrap_intervals(y, pred, len(classes), groups=leaves)
    return {
        "images": len(rows),
        "leaves": ci["n_groups"],
        "macro_f1": m["macro_f1"],
        "macro_f1_interval": ci["macro_f1"],
        "accuracy": m["accuracy"],
        "accuracy_interval": ci["accuracy"],
        "errors": int((y != pred).sum()),
        "minutes_per_fold": sum(f["minutes"] for f in folds) / len(folds),
        "cpu_minutes_per_fold": sum(f["cpu_minutes"] for f in folds) / len(folds),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", default="ours-224", choices=sorted(ROWS))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42, help="fold assignment and training seed")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: temp)")
    p.add_argument(
        "--against",
        type=Path,
        default=None,
        help="the --out of an earlier run with the same --folds and --seed: the pooled "
        "macro-F1 difference from it, as a 95%% paired bootstrap interval",
    )
    p.add_argument(
        "--options",
        type=json.loads,
        default={},
        help="more cropdoc.train keywords as JSON, e.g. a quick check of the mechanics: "
        '\'{"stage_epochs": [1, 0, 0], "image_size": 64}\'',
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="train on this share of each class's training leaves (0-1], same test folds",
    )
    args = p.parse_args(argv)
    if not 0.0 < args.train_fraction <= 1.0:
        p.error(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    report, groups, fold = fold_of_each(args.folds, args.seed)
    settings = {
        "row": args.row,
        "folds": args.folds,
        "seed": args.seed,
        "options": args.options,
        "train_fraction": args.train_fraction,
    }
    result: dict[str, Any] = {"machine": machine(), "data": str(DATA), **settings}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        kept = out / "settings.json"
        if kept.exists() and json.loads(kept.read_text()) != settings:
            p.error(f"{out} holds a run with other settings ({kept}); choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(settings, indent=2))
        for k in range(args.folds):
            train = training_kept(report, groups, fold, k, args.train_fraction, args.seed)
            data = link_fold(report, fold, k, out / f"fold{k}" / "data", train)
            row = run_fold(args.row, k, data, out / f"fold{k}" / "run", args.seed, args.options)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "predictions"}), flush=True)
    result["folds"] = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
    result["pooled"] = pooled(results)
    if args.against is not None:
        theirs = [
            row
            for k in range(args.folds)
            for row in read_predictions(args.against / f"fold{k}" / "run")
        ]
        mine = [row for r in results for row in r["predictions"]]
        result["against"] = {"out": str(args.against), **paired(mine, theirs)}
    emit(result)
    return result


if __name__ == "__main__":
    main()
