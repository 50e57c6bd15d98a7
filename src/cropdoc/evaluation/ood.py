"""Fit and measure the out-of-distribution score a bundle abstains with.

The score itself is computed by :mod:`cropdoc.ood` (shared with prediction); this module
fits what it needs and measures it. At the end of training (:func:`fit_run_ood`, after
temperature scaling) the feature-space score's class means and shared covariance are
fitted on the *train* split, seen through the eval transform, and every threshold on the
*validation* split: a threshold set on the images the Gaussian was fitted on would sit too
low (those images are closer to their own means than new ones), and the val split alone
is too small for a 512-d covariance (about 20 images per class here). The threshold is the
one that turns away ``target`` (5 %) of the in-distribution val images.

Measures: AUROC (in-distribution negative, OOD positive), FPR at 95 % TPR (the share of
OOD images *accepted* when 95 % of in-distribution images are) and abstain rates.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import ledoit_wolf
from sklearn.metrics import roc_auc_score

from ..bundle import BundleMeta, OodInfo, load_bundle, resolve_bundle_dir, update_meta
from ..data.images import is_supported
from ..data.split import SplitManifest
from ..errors import ConfigError, DataError
from ..io import atomic_write_text
from ..ood import (
    DEFAULT_TARGET_FALSE_ABSTAIN,
    FALLBACK_KIND,
    OOD_KINDS,
    bundle_scores,
    needs_features,
    ood_scores,
    threshold_for,
)
from ..probabilities import softmax
from .logits import Logits, collect_logits
from .plots import plot_ood_histogram

__all__ = [
    "DEFAULT_OOD_KIND",
    "MAHALANOBIS_RANK",
    "OodFit",
    "auroc",
    "fit_mahalanobis",
    "fit_ood",
    "fit_run_ood",
    "evaluate_ood_folder",
    "fpr_at_tpr",
    "ood_report",
    "ood_summary",
    "scores_for",
]

_logger = logging.getLogger(__name__)

#: The score new bundles abstain with, picked from ``benchmarks/ood.py`` (BENCHMARKS.md).
DEFAULT_OOD_KIND = "energy"
#: Leading covariance directions kept exactly; the rest share one variance (cropdoc.ood).
MAHALANOBIS_RANK = 64
#: Smallest variance kept, as a share of the mean variance (see :func:`fit_mahalanobis`).
VARIANCE_FLOOR = 1e-6
#: Most train images the Gaussian is fitted on (a reproducible, class-spread sample).
MAX_FIT_IMAGES = 4000


@dataclass
class OodFit:
    """The outputs a score is fitted on: ``fit`` (train split) and ``val``."""

    fit: Logits
    val: Logits
    temperature: float


def fit_mahalanobis(
    features: np.ndarray, labels: np.ndarray, n_classes: int, *, rank: int = MAHALANOBIS_RANK
) -> dict[str, Any]:
    """Class means and a shrunk shared covariance, as :func:`cropdoc.ood.mahalanobis_distance`
    reads them.

    The within-class covariance is Ledoit-Wolf shrunk (a 512-d covariance from a few
    hundred images is singular otherwise), then kept as its ``rank`` leading eigenpairs and
    the mean of the other eigenvalues.

    Raises:
        DataError: a class has no image to fit its mean on.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    missing = sorted(set(range(n_classes)) - set(y.tolist()))
    if missing:
        raise DataError(f"no images of class(es) {missing} to fit the OOD score on")
    means = np.stack([f[y == c].mean(0) for c in range(n_classes)])
    cov, _ = ledoit_wolf(f - means[y], assume_centered=True)
    eigenvalues, vectors = np.linalg.eigh(cov)  # ascending
    # Floor relative to the average variance: dead units (a ReLU that never fires, common
    # in small or barely trained models) have zero variance, and 1/0 would make any
    # activation of them infinitely strange.
    floor = max(float(np.mean(np.maximum(eigenvalues, 0.0))) * VARIANCE_FLOOR, 1e-12)
    eigenvalues = np.maximum(eigenvalues[::-1], floor)
    vectors = vectors[:, ::-1]
    k = min(rank, len(eigenvalues))
    rest = eigenvalues[k:]
    return {
        "means": _rounded(means),
        "basis": _rounded(vectors[:, :k].T),
        "inv_eigenvalues": _rounded(1.0 / eigenvalues[:k]),
        "inv_residual_variance": float(1.0 / rest.mean()) if rest.size else 0.0,
        "rank": k,
        "fit_images": len(y),
    }


def _rounded(a: np.ndarray) -> list:
    """JSON-ready, at float32 precision (what the features are computed in)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64).round(7).tolist()


def scores_for(
    kind: str, outputs: Logits, temperature: float, params: dict[str, Any] | None = None
) -> np.ndarray:
    """``kind``'s score of every image in ``outputs`` (see :func:`cropdoc.ood.ood_scores`)."""
    return ood_scores(
        kind,
        outputs.logits,
        temperature=temperature,
        features=outputs.features,
        params=params,
    )


def fit_ood(
    kind: str,
    data: OodFit,
    *,
    n_classes: int,
    target: float = DEFAULT_TARGET_FALSE_ABSTAIN,
) -> OodInfo:
    """Fit ``kind`` (params on ``data.fit``, threshold on ``data.val``) for ``target``.

    Raises:
        ValueError: an unknown kind.
        DataError: no validation images, or a class missing from the fit images.
    """
    if kind not in OOD_KINDS:
        raise ValueError(f"unknown OOD score kind {kind!r}; known: {', '.join(OOD_KINDS)}")
    if len(data.val.labels) == 0:
        raise DataError("no validation images to set the abstain threshold on")
    params: dict[str, Any] = {}
    if needs_features(kind):
        params = fit_mahalanobis(data.fit.features, data.fit.labels, n_classes)
    val = scores_for(kind, data.val, data.temperature, params)
    threshold = threshold_for(val, target)
    return OodInfo(
        kind=kind,
        threshold=threshold,
        target_false_abstain=target,
        params=params,
        metrics={
            "val_images": len(val),
            "val_abstain_rate": float((val > threshold).mean()),
            "fit_images": int(params.get("fit_images", 0)),
        },
    )


def auroc(id_scores: np.ndarray, ood_scores_: np.ndarray) -> float:
    """Area under the ROC of telling OOD (positive) from in-distribution by the score."""
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores_))]
    return float(roc_auc_score(y, np.r_[id_scores, ood_scores_]))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores_: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD images accepted at the threshold that accepts ``tpr`` of the others."""
    t = threshold_for(id_scores, 1.0 - tpr)
    return float((np.asarray(ood_scores_) <= t).mean())


def ood_report(
    id_scores: np.ndarray, ood_scores_: np.ndarray, threshold: float | None
) -> dict[str, Any]:
    """AUROC, FPR95 and (with a threshold) the abstain rate on each set."""
    report: dict[str, Any] = {
        "auroc": auroc(id_scores, ood_scores_),
        "fpr95": fpr_at_tpr(id_scores, ood_scores_),
        "n_id": len(id_scores),
        "n_ood": len(ood_scores_),
    }
    if threshold is not None:
        report["abstain_rate_id"] = float((np.asarray(id_scores) > threshold).mean())
        report["abstain_rate_ood"] = float((np.asarray(ood_scores_) > threshold).mean())
    return report


def _fit_samples(manifest: SplitManifest, root: Path | None) -> list[tuple[Path, int]]:
    """The train split, thinned evenly to :data:`MAX_FIT_IMAGES` (every class kept)."""
    samples = manifest.samples("train", root=root)
    if len(samples) <= MAX_FIT_IMAGES:
        return samples
    step = len(samples) / MAX_FIT_IMAGES
    return [samples[int(i * step)] for i in range(MAX_FIT_IMAGES)]


def collect_fit_outputs(
    run_dir: Path,
    meta: BundleMeta,
    model: Any,
    *,
    data: str | os.PathLike[str] | None,
    workers: int,
    device: str | None,
    train: bool = True,
) -> OodFit:
    """Logits and features of the run's train sample and val split, for :func:`fit_ood`.

    ``train=False`` skips the train sample (logit scores fit nothing on it): ``fit`` is
    then the val outputs too.
    """
    manifest = SplitManifest.load(run_dir / "split.json")
    root = Path(data) if data is not None else None
    kwargs: dict[str, Any] = {
        "workers": workers,
        "device": device,
        "features": True,
        "cache_dir": run_dir / "cache",  # training's disk cache, where it matches
    }
    val = collect_logits(model, manifest.samples("val", root=root), meta, **kwargs)
    fit = collect_logits(model, _fit_samples(manifest, root), meta, **kwargs) if train else val
    return OodFit(fit=fit, val=val, temperature=meta.temperature)


def fit_run_ood(
    run_dir: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    kind: str = DEFAULT_OOD_KIND,
    target: float = DEFAULT_TARGET_FALSE_ABSTAIN,
    workers: int = 0,
    device: str | None = None,
) -> OodInfo:
    """Fit the abstain score of a finished, calibrated run and store it as ``model.json`` ``ood``.

    Args:
        run_dir: a run directory with ``model/`` and ``split.json`` (or its ``model/``).
        data: where the dataset is now (default: the root in ``split.json``).
        kind: one of :data:`cropdoc.ood.OOD_KINDS`.
        target: the share of in-distribution val images the threshold may turn away.
        workers: DataLoader workers.
        device: ``"auto"``/None, ``"cpu"``, ``"cuda"``.

    Raises:
        DataError: no ``split.json``, or no readable val images.
        ConfigError: an unknown ``kind`` or a ``target`` outside ``[0, 1)``.
    """
    run = resolve_bundle_dir(run_dir).parent
    if not (run / "split.json").is_file():
        raise DataError(f"{run} has no split.json; the OOD score is fitted on the run's splits")
    bundle = load_bundle(run / "model")
    if kind not in OOD_KINDS:
        raise ConfigError(f"unknown OOD score kind {kind!r}; choose {', '.join(OOD_KINDS)}")
    if not 0.0 <= target < 1.0:
        raise ConfigError(f"target false-abstain rate must be in [0, 1), got {target}")
    outputs = collect_fit_outputs(
        run,
        bundle.meta,
        bundle.model,
        data=data,
        workers=workers,
        device=device,
        train=needs_features(kind),
    )
    info = fit_ood(kind, outputs, n_classes=bundle.meta.num_classes, target=target)
    update_meta(bundle.path, ood=info.model_dump(mode="json"))
    _logger.info(
        "OOD score %s: threshold %.4g abstains on %.1f%% of %d val images (target %.0f%%)",
        info.kind,
        info.threshold,
        100 * info.metrics["val_abstain_rate"],
        info.metrics["val_images"],
        100 * target,
    )
    return info


# --------------------------------------------------------------------------- evaluate


def ood_summary(
    meta: BundleMeta, scores: np.ndarray, abstain: np.ndarray, correct: np.ndarray
) -> dict[str, Any]:
    """``metrics.json`` ``ood``: the score, its threshold, how often the model abstained and
    how accurate it is on the images it did not abstain on."""
    ood = meta.ood
    kept = ~abstain
    return {
        "kind": ood.kind if ood is not None else FALLBACK_KIND,
        "fitted": ood is not None,
        "threshold": ood.threshold if ood is not None else None,
        "target_false_abstain": ood.target_false_abstain if ood is not None else None,
        "abstain_rate": float(abstain.mean()) if len(abstain) else 0.0,
        "n_abstained": int(abstain.sum()),
        "accuracy_accepted": float(correct[kept].mean()) if kept.any() else None,
        "score_median": float(np.median(scores)) if len(scores) else None,
    }


def _ood_images(folder: Path) -> list[tuple[Path, int]]:
    if not folder.is_dir():
        raise DataError(f"OOD folder {folder} does not exist or is not a folder; check the path")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and is_supported(p))
    if not images:
        raise DataError(f"no images in {folder} (JPEG, PNG, WebP, BMP, TIFF, HEIC)")
    return [(p, 0) for p in images]


def _ood_csv(outputs: Logits, meta: BundleMeta, scores: np.ndarray, abstain: np.ndarray) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "predicted", "confidence", "ood_score", "abstain"])
    probs = softmax(outputs.logits, meta.temperature)
    for path, p, s, a in zip(outputs.paths, probs, scores, abstain, strict=True):
        writer.writerow(
            [str(path), meta.classes[int(p.argmax())], f"{p.max():.4f}", f"{s:.6g}", int(a)]
        )
    return buf.getvalue()


def evaluate_ood_folder(
    model: Any,
    meta: BundleMeta,
    folder: str | os.PathLike[str],
    id_scores: np.ndarray,
    out: Path,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Score every image under ``folder`` (none of the model's classes) against the
    in-distribution ``id_scores``: AUROC, FPR95, abstain rates, a histogram and a CSV.

    Returns:
        The figures (for ``metrics.json`` ``ood.ood_set``) and the files written.

    Raises:
        DataError: no such folder, or no readable image in it.
    """
    where = Path(folder)
    outputs = collect_logits(
        model,
        _ood_images(where),
        meta,
        batch_size=batch_size,
        workers=workers,
        device=device,
        features=True,
    )
    if len(outputs.logits) == 0:
        raise DataError(f"none of the images in {where} could be read")
    scores, abstain = bundle_scores(
        meta.ood, outputs.logits, temperature=meta.temperature, features=outputs.features
    )
    threshold = meta.ood.threshold if meta.ood is not None else None
    figures = ood_report(id_scores, scores, threshold)
    if threshold is None:  # nothing abstains without a fitted threshold
        figures.update(abstain_rate_id=0.0, abstain_rate_ood=0.0)
    figures.update(folder=str(where), n_bad_files=len(outputs.bad))
    files = {
        "ood_predictions.csv": out / "ood_predictions.csv",
        "ood_histogram.png": out / "ood_histogram.png",
    }
    atomic_write_text(files["ood_predictions.csv"], _ood_csv(outputs, meta, scores, abstain))
    kind = meta.ood.kind if meta.ood is not None else FALLBACK_KIND
    plot_ood_histogram(
        {"evaluated (known classes)": id_scores, f"{where.name} (unknown)": scores},
        threshold,
        files["ood_histogram.png"],
        kind=kind,
        title=f"AUROC {figures['auroc']:.3f}, FPR@95%TPR {figures['fpr95']:.1%}; abstains on "
        f"{figures['abstain_rate_ood']:.1%} unknown vs {figures['abstain_rate_id']:.1%} known",
    )
    return figures, files
