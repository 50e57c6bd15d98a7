"""``cropdoc evaluate``: how good a bundle is, where it fails, whether its confidence holds.

Which images (:mod:`.selection`): when DATA is the folder the run was trained on (same
root, or a copy with its files), the run's own ``split.json`` test split, exactly (a
missing file is an error, not a fall-back to every image); otherwise the images of DATA
(a pre-split copy's test folder) except those the run trained on. ``--split`` picks
another split, ``--split all`` every image, ``--split-file`` another run's manifest (to
score several models on one test set). Class folders are matched to the bundle's classes
ignoring separators and case (see :mod:`cropdoc.classnames`). The bundle's own
preprocessing and temperature are used, so the numbers are those ``cropdoc predict`` and
``serve`` will give.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from ..bundle import Bundle, BundleMeta, load_bundle
from ..cpu import default_workers
from ..data.layout import dataset_root
from ..data.split import leaf_keys
from ..errors import DataError
from ..io import atomic_write_json, atomic_write_text
from ..ood import bundle_scores
from ..probabilities import softmax
from .gallery import plot_error_gallery
from .logits import Logits, collect_logits
from .metrics import bootstrap_intervals, classification_report_text, compute_metrics
from .ood import evaluate_ood_folder, ood_summary
from .plots import plot_confusion_matrix, plot_per_class_f1, plot_predictions, plot_reliability
from .report import write_eval_report, write_run_report
from .robustness import evaluate_robustness
from .selection import EVAL_SPLITS, Selection, select_images

__all__ = ["ERRORS_GALLERY", "EVAL_FILES", "EVAL_SPLITS", "EvaluationResult", "evaluate_bundle"]

_logger = logging.getLogger(__name__)

#: Grad-CAM overlays of the most confident errors (written when there are errors).
ERRORS_GALLERY = "errors_gradcam.png"
EVAL_FILES = (
    "metrics.json",
    "classification_report.txt",
    "predictions.csv",
    "confusion_matrix.png",
    "per_class_f1.png",
    "reliability.png",
    "predictions.png",
)


@dataclass
class EvaluationResult:
    """What an evaluation found and wrote."""

    out_dir: Path
    metrics: dict[str, Any]
    files: dict[str, Path]
    source: str
    class_mapping: dict[str, str] = field(default_factory=dict)
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    # Per scored image, in one order: what another model's evaluation on the same images
    # is compared with (``bootstrap_intervals(..., reference=...)``).
    paths: list[Path] = field(default_factory=list, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    predicted: np.ndarray | None = field(default=None, repr=False)
    leaves: list[str] = field(default_factory=list, repr=False)

    @property
    def renamed(self) -> dict[str, str]:
        """Only the dataset class names that differ from the bundle's (for printing)."""
        return {k: v for k, v in self.class_mapping.items() if k != v}


def _predictions_csv(
    paths: list[Path],
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    ood: tuple[np.ndarray, np.ndarray],
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "true", "predicted", "confidence", "correct", "ood_score", "abstain"])
    pred = probs.argmax(axis=1)
    rows = zip(paths, labels, pred, probs.max(axis=1), *ood, strict=True)
    for p, y, k, c, score, no in rows:
        writer.writerow(
            [str(p), classes[y], classes[k], f"{c:.4f}", int(y == k), f"{score:.6g}", int(no)]
        )
    return buf.getvalue()


def _ood(
    bundle: Bundle,
    result: Logits,
    probs: np.ndarray,
    out: Path,
    ood_dir: str | os.PathLike[str] | None,
    **collect: Any,
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any], dict[str, Path]]:
    """Per-image OOD scores and abstain flags, ``metrics.json`` ``ood``, and with
    ``ood_dir`` the figures against those unknown images (and their files)."""
    meta = bundle.meta
    scores, abstain = bundle_scores(
        meta.ood, result.logits, temperature=meta.temperature, features=result.features
    )
    summary = ood_summary(meta, scores, abstain, probs.argmax(axis=1) == result.labels)
    files: dict[str, Path] = {}
    if ood_dir is not None:
        out.mkdir(parents=True, exist_ok=True)
        summary["ood_set"], files = evaluate_ood_folder(
            bundle.model, meta, ood_dir, scores, out, **collect
        )
    return (scores, abstain), summary, files


def _leaves(result: Logits, meta: BundleMeta, group_pattern: str) -> list[str]:
    """The leaf of each scored photo, which the intervals resample (photos of one leaf are
    not independent evidence); every photo its own leaf when the split's pattern (a
    hand-written ``split.json``) cannot say."""
    items = [(meta.classes[y], str(p)) for p, y in zip(result.paths, result.labels, strict=True)]
    try:
        return leaf_keys(items, group_pattern=group_pattern)
    except DataError as e:
        _logger.warning("every photo counted as its own leaf in the intervals: %s", e)
        return [path for _, path in items]


def _metrics(
    result: Logits,
    probs: np.ndarray,
    pred: np.ndarray,
    leaves: list[str],
    meta: BundleMeta,
    selection: Selection,
    bad: list[tuple[Path, str]],
) -> dict[str, Any]:
    """``metrics.json``: the scores, and what they were computed on."""
    classes = list(meta.classes)
    metrics = compute_metrics(probs, result.labels, classes)
    if meta.temperature != 1.0:
        raw = compute_metrics(softmax(result.logits), result.labels, classes)
        metrics["uncalibrated"] = {"nll": raw["nll"], "ece": raw["ece"]}
    cm = confusion_matrix(result.labels, pred, labels=list(range(len(classes))))
    metrics.update(
        {
            "intervals": bootstrap_intervals(result.labels, pred, len(classes), groups=leaves),
            "n_images": len(result.labels),
            "n_bad_files": len(bad),
            "bad_files": [{"path": str(p), "reason": r} for p, r in bad],
            "skipped_unknown_images": selection.skipped_unknown,
            "seen_in_training_images": selection.seen_in_training,
            "temperature": meta.temperature,
            "split": selection.split,
            "split_file": str(selection.split_file) if selection.split_file else None,
            "source": selection.source,
            "arch": meta.arch,
            "classes": classes,
            "class_mapping": {k: v for k, v in selection.mapping.items() if k != v},
            "confusion_matrix": cm.tolist(),
        }
    )
    return metrics


def _write_outputs(
    out: Path,
    meta: BundleMeta,
    selection: Selection,
    result: Logits,
    probs: np.ndarray,
    metrics: dict[str, Any],
    ood: tuple[np.ndarray, np.ndarray],
) -> dict[str, Path]:
    """Write :data:`EVAL_FILES` into ``out``; return them by name."""
    classes, n, arch = list(meta.classes), len(result.labels), meta.arch
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in EVAL_FILES}
    atomic_write_json(files["metrics.json"], metrics)
    atomic_write_text(
        files["classification_report.txt"],
        f"{arch} on {selection.source} ({n} images, temperature {meta.temperature:.3f})\n\n"
        + classification_report_text(probs, result.labels, classes),
    )
    atomic_write_text(
        files["predictions.csv"],
        _predictions_csv(result.paths, result.labels, probs, classes, ood),
    )
    plot_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]),
        classes,
        files["confusion_matrix.png"],
        title=f"{arch}: confusion matrix on {n} images "
        f"(accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f})",
    )
    plot_per_class_f1(
        metrics["per_class"],
        files["per_class_f1.png"],
        macro_f1=metrics["macro_f1"],
        title=f"{arch}: F1 per class on {n} images (worst first)",
    )
    fitted = " (fitted)" if meta.temperature != 1.0 else ""
    plot_reliability(
        {f"T = {meta.temperature:.2f}{fitted}": probs},
        result.labels,
        files["reliability.png"],
        title=f"Reliability on {n} images",
    )
    plot_predictions(result.paths, result.labels, probs, classes, files["predictions.png"])
    return files


def evaluate_bundle(
    bundle_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    split: str | None = None,
    split_file: str | os.PathLike[str] | None = None,
    ignore_unknown: bool = False,
    ood_dir: str | os.PathLike[str] | None = None,
    robustness: bool = False,
    variant: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | None = None,
    write_report: bool = True,
    scan_progress: Callable[[int, int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Evaluate a bundle on a dataset folder and write metrics, a report and plots.

    Args:
        bundle_path: a bundle folder (``RUN/model``) or its run directory.
        data: dataset folder, one sub-folder per class.
        out_dir: where :data:`EVAL_FILES` (and ``report.md``) go.
        split: ``test``/``val``/``train``: that split of the run's (or ``split_file``'s)
            manifest, exactly (a listed file that is missing is an error); ``all``: every
            image in ``data``; None: ``test`` when ``data`` is the run's training folder,
            a pre-split copy's test folder, else the images the run did not train on.
        split_file: a ``split.json`` to take the split from (e.g. another run's, so
            several models are scored on one test set).
        ignore_unknown: skip class folders the model does not know instead of failing.
        ood_dir: a folder of images of none of the model's classes (unseen diseases,
            non-leaf photos): AUROC, FPR at 95 % TPR and abstain rates of the bundle's
            OOD score against the evaluated images, ``ood_histogram.png`` and
            ``ood_predictions.csv``. Without it, ``metrics.json`` still has the abstain
            rate and each row of ``predictions.csv`` its ``ood_score`` and ``abstain``.
        robustness: also score (up to 300 of) the images under phone-photo corruptions
            at three severities: ``robustness.json``, ``robustness.png``, a report section.
        variant: the variant folder of ``data`` to read when it holds several.
        batch_size: images per forward pass.
        workers: DataLoader workers (None: sized for the machine).
        device: ``"auto"``/None, ``"cpu"``, ``"cuda"``.
        write_report: also write ``report.md`` into ``out_dir`` (and refresh the run's
            ``report.md`` when ``out_dir`` lies inside the run directory).
        scan_progress: ``(done, total)`` while scanning a folder.
        progress: ``(done, total)`` while predicting.

    Returns:
        Metrics, the files written and the class mapping used.

    Raises:
        DataError: no usable images, an unknown class (unless ``ignore_unknown``), or a
            split that does not fit the data.
        BundleError: the bundle cannot be loaded.
        ConfigError: an unknown ``split``.

    >>> r = evaluate_bundle("runs/b0/model", "data", out_dir="runs/b0/eval")  # doctest: +SKIP
    >>> r.metrics["macro_f1"]  # doctest: +SKIP
    """
    bundle = load_bundle(bundle_path)
    meta = bundle.meta
    data_path = Path(data)
    if data_path.is_dir():
        data_path = dataset_root(data_path, variant=variant)
    out = Path(out_dir)
    selection = select_images(
        bundle.path,
        meta,
        data_path,
        split,
        Path(split_file) if split_file is not None else None,
        ignore_unknown,
        scan_progress,
    )
    if not selection.samples:
        raise DataError(f"no images to evaluate in {selection.source}")
    _logger.info(
        "evaluating %s on %d images: %s", bundle.path, len(selection.samples), selection.source
    )
    collect = {
        "batch_size": batch_size,
        "workers": default_workers() if workers is None else workers,
        "device": device,
    }
    result = collect_logits(
        bundle.model,
        selection.samples,
        meta,
        progress=progress,
        features=True,
        cache_dir=bundle.path.parent / "cache",  # the run's disk cache, when it has these
        **collect,
    )
    bad = selection.bad + result.bad
    if len(result.labels) == 0:
        raise DataError(f"none of the {len(selection.samples)} images could be read: {bad[:3]}")
    probs = softmax(result.logits, meta.temperature)
    pred = probs.argmax(axis=1)
    leaves = _leaves(result, meta, selection.group_pattern)
    metrics = _metrics(result, probs, pred, leaves, meta, selection, bad)
    metrics.update(data=str(data_path), bundle=str(bundle.path))
    ood, metrics["ood"], ood_files = _ood(bundle, result, probs, out, ood_dir, **collect)
    files = _write_outputs(out, meta, selection, result, probs, metrics, ood)
    files.update(ood_files)
    gallery = plot_error_gallery(
        bundle.model, meta, result.paths, result.labels, probs, out / ERRORS_GALLERY
    )
    if gallery is not None:
        files[ERRORS_GALLERY] = gallery
    if robustness:
        summary = evaluate_robustness(bundle, selection.samples, out, **collect)
        metrics["robustness"] = {"file": "robustness.json", "n_images": summary["n_images"]}
        atomic_write_json(files["metrics.json"], metrics)
        files.update({n: out / n for n in ("robustness.json", "robustness.png")})
    evaluation = EvaluationResult(
        out_dir=out,
        metrics=metrics,
        files=files,
        source=selection.source,
        class_mapping=selection.mapping,
        bad_files=bad,
        paths=list(result.paths),
        labels=result.labels,
        predicted=pred,
        leaves=leaves,
    )
    if write_report:
        run_dir = bundle.path.parent
        is_run = (run_dir / "split.json").is_file()
        files["report.md"] = write_eval_report(out, run_dir=run_dir if is_run else None)
        if is_run and out.resolve().is_relative_to(run_dir.resolve()):
            write_run_report(run_dir, eval_dir=out)
    _logger.info(
        "accuracy %.4f, macro-F1 %.4f, ECE %.4f on %d images; wrote %s",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["ece"],
        metrics["n_images"],
        out,
    )
    return evaluation
