"""The numbers and plots behind ``cropdoc data inspect``.

Everything here reads a :class:`~cropdoc.data.scan.ScanReport` and never touches the
images again except to draw thumbnails, so inspecting a big folder costs one scan. Plots
are drawn on a standalone :class:`matplotlib.figure.Figure` (the Agg canvas, no pyplot), so
they never depend on, or change, the process-wide matplotlib backend, and are written
atomically so a viewer never sees half a PNG.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..classnames import class_label, split_crop_disease
from ..errors import DataError
from ..plotting import save_figure, thumbnail

if TYPE_CHECKING:
    from .scan import ScanReport

__all__ = ["plot_class_distribution", "plot_samples", "summarize"]

_log = logging.getLogger(__name__)

_DPI = 110
_THUMB_PX = 160  # decoded thumbnail side; plenty for a cell of ~1.4 inch at 110 dpi
_MAX_SAMPLES_HEIGHT_IN = 26.0  # beyond this, cells shrink instead of the figure growing


# --------------------------------------------------------------------------- numbers


def _reason_kind(reason: str) -> str:
    # Scan reasons carry per-file detail after a colon ("truncated or corrupt image: ...");
    # counting by the part before it groups like with like.
    return reason.split(":", 1)[0].strip() or reason


def _stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(report: ScanReport) -> dict[str, Any]:
    """Headline numbers of a scanned dataset, JSON-serialisable.

    Args:
        report: A scan of the dataset folder.

    Returns:
        A dict with ``n_classes``, ``n_images`` (good images), ``n_bad``, ``counts``
        (per class, in class order), ``imbalance_ratio`` (largest / smallest class; ``None``
        when a class is empty), ``image_sizes`` (``width`` and ``height`` min/median/max,
        ``most_common`` ``[w, h]`` and ``most_common_count``; ``None`` without images),
        ``bad_by_reason`` (count per kind of problem, most frequent first), and
        ``duplicate_groups`` / ``duplicate_images`` (byte-identical copies, a leakage risk).
    """
    counts = report.counts()
    values = list(counts.values())
    imbalance = max(values) / min(values) if values and min(values) > 0 else None

    size: dict[str, Any] | None = None
    if report.samples:
        widths = [s.width for s in report.samples]
        heights = [s.height for s in report.samples]
        common, n_common = Counter(zip(widths, heights, strict=True)).most_common(1)[0]
        size = {
            "width": _stats(widths),
            "height": _stats(heights),
            "most_common": list(common),
            "most_common_count": n_common,
        }

    reasons = Counter(_reason_kind(b.reason) for b in report.bad_files)
    groups = report.duplicate_groups()
    return {
        "n_classes": len(report.classes),
        "n_images": len(report.samples),
        "n_bad": len(report.bad_files),
        "counts": counts,
        "imbalance_ratio": imbalance,
        "image_sizes": size,
        "bad_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "duplicate_groups": len(groups),
        "duplicate_images": sum(len(g) for g in groups),
    }


# --------------------------------------------------------------------------- plots


def _crop_colours(crops: list[str]) -> dict[str, Any]:
    unique = list(dict.fromkeys(crops))
    if len(unique) <= 10:
        cmap, order = colormaps["tab10"], list(range(10))
    else:  # tab20 pairs dark/light shades: use all dark ones before any light one
        cmap, order = colormaps["tab20"], list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {crop: cmap(order[i % len(order)]) for i, crop in enumerate(unique)}


def _require_classes(report: ScanReport) -> None:
    if not report.classes:
        raise DataError(f"nothing to plot: no classes in the scan of {report.root}")


def plot_class_distribution(report: ScanReport, path: str | os.PathLike[str]) -> Path:
    """Horizontal bar chart of images per class, coloured by crop; returns ``path``.

    Classes are grouped by crop (in order of first appearance, healthy first) so a lopsided
    crop or disease stands out, and each bar carries its count so nobody has to read the axis.

    Raises:
        DataError: If the report has no classes.
    """
    _require_classes(report)
    counts = report.counts()
    parts = {name: split_crop_disease(name) for name in report.classes}
    colours = _crop_colours([parts[n][0] for n in report.classes])
    crops = list(colours)
    order = sorted(
        report.classes,
        key=lambda n: (crops.index(parts[n][0]), parts[n][1] != "healthy", n.lower()),
    )

    n = len(order)
    fig = Figure(figsize=(8.0, 1.3 + 0.32 * n))
    ax = fig.add_subplot()
    y = np.arange(n)
    values = [counts[name] for name in order]
    ax.barh(y, values, color=[colours[parts[name][0]] for name in order], height=0.72)
    ax.set_yticks(y, [class_label(name) for name in order])
    ax.set_ylim(n - 0.4, -0.6)  # top to bottom, without the default empty margins
    top = max(values) if max(values) > 0 else 1
    ax.set_xlim(0, top * 1.12)
    for yi, v in zip(y, values, strict=True):
        ax.text(v + top * 0.01, yi, str(v), va="center", ha="left", fontsize=9)
    ax.set_xlabel("images")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)

    summary = summarize(report)
    title = f"Images per class — {summary['n_images']} images, {n} classes"
    if summary["imbalance_ratio"] is not None and n > 1:
        title += f", imbalance {summary['imbalance_ratio']:.1f}×"
    if summary["n_bad"]:
        title += f", {summary['n_bad']} bad files"
    ax.set_title(title, fontsize=11, loc="left")
    if len(colours) > 1:
        handles = [Patch(color=c, label=crop) for crop, c in colours.items()]
        # Outside the axes: inside, it would cover the longest bars and their counts.
        ax.legend(
            handles=handles,
            title="crop",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            title_fontsize=9,
            frameon=False,
        )
    return save_figure(fig, path, dpi=_DPI)


def plot_samples(
    report: ScanReport, path: str | os.PathLike[str], *, per_class: int = 4, seed: int = 0
) -> Path:
    """A grid of example images, one row per class, to eyeball labels and image quality.

    Examples are a seeded random pick per class (sorted by path), so the same report and
    seed give the same picture. Cells shrink for many classes so the figure stays a sane
    size; a file that no longer opens leaves an empty cell and a warning, not a crash.

    Args:
        report: A scan of the dataset folder.
        path: PNG file to write.
        per_class: Thumbnails per row.
        seed: Chooses which images are shown.

    Returns:
        ``path``.

    Raises:
        DataError: If the report has no classes or ``per_class < 1``.
    """
    _require_classes(report)
    if per_class < 1:
        raise DataError(f"per_class must be at least 1, got {per_class}")
    by_class: dict[str, list[Path]] = {name: [] for name in report.classes}
    for sample in report.samples:
        by_class[sample.class_name].append(sample.path)
    rng = np.random.default_rng(seed)

    n_rows = len(report.classes)
    cell = min(1.4, _MAX_SAMPLES_HEIGHT_IN / n_rows)  # inches per thumbnail
    gap, label_w, title_h, pad = 0.05, 2.3, 0.45, 0.05  # gap as a fraction of a cell
    grid_w = cell * (per_class + gap * (per_class - 1))
    grid_h = cell * (n_rows + gap * (n_rows - 1))
    width, height = label_w + grid_w + pad, title_h + grid_h + pad
    fig = Figure(figsize=(width, height))
    # Square cells packed edge to edge; the labels get a fixed strip on the left.
    axes = fig.subplots(
        n_rows, per_class, squeeze=False, gridspec_kw={"wspace": gap, "hspace": gap}
    )
    fig.subplots_adjust(
        left=label_w / width,
        right=(label_w + grid_w) / width,
        bottom=pad / height,
        top=(pad + grid_h) / height,
    )
    fontsize = max(6.0, min(10.0, cell * 7))
    for row, name in enumerate(report.classes):
        paths = sorted(by_class[name])
        if len(paths) > per_class:
            picked = sorted(rng.choice(len(paths), size=per_class, replace=False))
            paths = [paths[i] for i in picked]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            thumb = (
                thumbnail(paths[col], _THUMB_PX, purpose="the sample grid")
                if col < len(paths)
                else None
            )
            if thumb is not None:
                ax.imshow(thumb)
                ax.set_aspect("equal")
        axes[row][0].set_ylabel(
            f"{class_label(name)}\n({len(by_class[name])})",
            rotation=0,
            ha="right",
            va="center",
            fontsize=fontsize,
            labelpad=8,
        )
    fig.suptitle(
        f"Examples per class ({per_class} each, seed {seed}; image count in brackets)",
        fontsize=11,
        x=0.02,
        y=1 - 0.12 / height,
        ha="left",
        va="top",
    )
    return save_figure(fig, path, dpi=_DPI)
