"""``cropdoc evaluate``: how good a bundle is, where it fails, whether its confidence holds.

Which images: when DATA is the folder the run was trained on (same root, or a copy with
the same files), the run's own ``split.json`` test split, so training images never leak
into the figures; otherwise every image in DATA. ``--split`` picks another split of the
manifest, ``--split-file`` another run's manifest (to score several models on one test
set). Class folders are matched to the bundle's classes ignoring separators and case
(see :mod:`cropdoc.classnames`). The bundle's own preprocessing and temperature are used, so the
numbers are those ``cropdoc predict`` and ``serve`` will give.
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
from ..classnames import match_classes
from ..cpu import default_workers
from ..data.scan import scan_folder
from ..data.split import SPLITS, SplitManifest
from ..errors import ConfigError, DataError
from ..io import atomic_write_json, atomic_write_text
from ..ood import bundle_scores
from ..probabilities import softmax
from .gallery import plot_error_gallery
from .logits import Logits, collect_logits
from .metrics import classification_report_text, compute_metrics
from .ood import evaluate_ood_folder, ood_summary
from .plots import plot_confusion_matrix, plot_per_class_f1, plot_predictions, plot_reliability
from .report import write_eval_report, write_run_report
from .robustness import evaluate_robustness

__all__ = ["ERRORS_GALLERY", "EVAL_FILES", "EVAL_SPLITS", "EvaluationResult", "evaluate_bundle"]

_logger = logging.getLogger(__name__)

EVAL_SPLITS = (*SPLITS, "all")
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

    @property
    def renamed(self) -> dict[str, str]:
        """Only the dataset class names that differ from the bundle's (for printing)."""
        return {k: v for k, v in self.class_mapping.items() if k != v}


@dataclass
class _Selection:
    samples: list[tuple[Path, int]]
    source: str
    split: str
    mapping: dict[str, str]
    split_file: Path | None
    bad: list[tuple[Path, str]]
    skipped_unknown: int = 0


def _same_data(manifest: SplitManifest, data: Path) -> bool:
    """Is ``data`` the folder the manifest was made from (or a copy holding its files)?"""
    if data.resolve() == Path(manifest.root).resolve():
        return True
    listed = [rel for items in manifest.splits.values() for rel, _ in items]
    return bool(listed) and all((data / rel).is_file() for rel in listed)


def _from_manifest(
    manifest: SplitManifest,
    where: Path,
    data: Path,
    split: str,
    meta: BundleMeta,
    ignore_unknown: bool,
) -> _Selection:
    mapping = match_classes(manifest.classes, meta.classes, ignore_unknown=ignore_unknown)
    index = {c: i for i, c in enumerate(meta.classes)}
    remap = {i: index[mapping[c]] for i, c in enumerate(manifest.classes) if c in mapping}
    items = manifest.samples(split, root=data)
    samples = [(p, remap[y]) for p, y in items if y in remap]
    missing = [(p, "file not found") for p, _ in samples if not p.is_file()]
    if samples and len(missing) == len(samples):
        raise DataError(
            f"none of the {len(samples)} '{split}' images of {where} exist under {data}; "
            f"pass the dataset folder the split was made from"
        )
    samples = [(p, y) for p, y in samples if p.is_file()]
    return _Selection(
        samples=samples,
        source=f"the '{split}' split of {where}",
        split=split,
        mapping=mapping,
        split_file=where,
        bad=missing,
        skipped_unknown=len(items) - len(samples) - len(missing),
    )


def _from_folder(
    data: Path,
    meta: BundleMeta,
    ignore_unknown: bool,
    scan_progress: Callable[[int, int], None] | None,
) -> _Selection:
    if not data.is_dir():
        raise DataError(f"data folder {data} does not exist or is not a folder; check the path")
    folders = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"no class folders in {data}; expected DATA/<class name>/<image files>")
    # Match before scanning: an unknown class fails in a second, not after decoding everything.
    mapping = match_classes(folders, meta.classes, ignore_unknown=ignore_unknown)
    if not mapping:
        raise DataError(f"none of the class folders in {data} is a class of the model")
    report = scan_folder(
        data, classes=list(mapping), min_images_per_class=1, progress=scan_progress
    )
    index = {c: i for i, c in enumerate(meta.classes)}
    samples = [(s.path, index[mapping[s.class_name]]) for s in report.samples]
    skipped = 0
    for name in sorted(set(folders) - set(mapping)):
        skipped += sum(1 for p in (data / name).rglob("*") if p.is_file())
    return _Selection(
        samples=samples,
        source=f"every image in {data}",
        split="all",
        mapping=mapping,
        split_file=None,
        bad=[(b.path, b.reason) for b in report.bad_files],
        skipped_unknown=skipped,
    )


def _select(
    bundle_dir: Path,
    meta: BundleMeta,
    data: Path,
    split: str | None,
    split_file: Path | None,
    ignore_unknown: bool,
    scan_progress: Callable[[int, int], None] | None,
) -> _Selection:
    if split is not None and split not in EVAL_SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of {', '.join(EVAL_SPLITS)}")
    if split == "all":
        return _from_folder(data, meta, ignore_unknown, scan_progress)
    if split_file is not None:
        if not data.is_dir():
            raise DataError(f"data folder {data} does not exist; check the path")
        manifest = SplitManifest.load(split_file)
        return _from_manifest(manifest, split_file, data, split or "test", meta, ignore_unknown)
    own = bundle_dir.parent / "split.json"
    if own.is_file() and data.is_dir():
        manifest = SplitManifest.load(own)
        if _same_data(manifest, data):
            return _from_manifest(manifest, own, data, split or "test", meta, ignore_unknown)
    if split is not None:
        raise DataError(
            f"--split {split} needs the training split of {data}, but {own} "
            f"{'was made from another folder' if own.is_file() else 'does not exist'}; "
            "pass --split-file RUN_DIR/split.json, or --split all to use every image in DATA"
        )
    return _from_folder(data, meta, ignore_unknown, scan_progress)


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


def _metrics(
    result: Logits,
    probs: np.ndarray,
    meta: BundleMeta,
    selection: _Selection,
    bad: list[tuple[Path, str]],
) -> dict[str, Any]:
    """``metrics.json``: the scores, and what they were computed on."""
    classes = list(meta.classes)
    metrics = compute_metrics(probs, result.labels, classes)
    if meta.temperature != 1.0:
        raw = compute_metrics(softmax(result.logits), result.labels, classes)
        metrics["uncalibrated"] = {"nll": raw["nll"], "ece": raw["ece"]}
    cm = confusion_matrix(result.labels, probs.argmax(axis=1), labels=list(range(len(classes))))
    metrics.update(
        {
            "n_images": len(result.labels),
            "n_bad_files": len(bad),
            "bad_files": [{"path": str(p), "reason": r} for p, r in bad],
            "skipped_unknown_images": selection.skipped_unknown,
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
    selection: _Selection,
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
            manifest; ``all``: every image in ``data``; None: ``test`` when ``data`` is the
            run's training folder, else ``all``.
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
    out = Path(out_dir)
    selection = _select(
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
        bundle.model, selection.samples, meta, progress=progress, features=True, **collect
    )
    bad = selection.bad + result.bad
    if len(result.labels) == 0:
        raise DataError(f"none of the {len(selection.samples)} images could be read: {bad[:3]}")
    probs = softmax(result.logits, meta.temperature)
    metrics = _metrics(result, probs, meta, selection, bad)
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
