"""Evaluation plots: confusion matrix, per-class F1, reliability, example predictions,
and the accuracy trade-off scatter of ``cropdoc compare``.

Each plot is drawn on a standalone :class:`~matplotlib.figure.Figure` (Agg canvas, no
pyplot), so it never touches the process-wide backend, and is written atomically. Class
names are shown as "Crop · Disease" (see :func:`cropdoc.classnames.class_label`),
sized so 12-40 classes stay readable.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..classnames import class_label
from ..plotting import save_figure, thumbnail
from .metrics import ECE_BINS, expected_calibration_error, reliability_bins

__all__ = [
    "plot_confusion_matrix",
    "plot_ood_histogram",
    "plot_per_class_f1",
    "plot_predictions",
    "plot_reliability",
    "plot_tradeoff",
]

_logger = logging.getLogger(__name__)

_DPI = 110
_GREEN, _RED = "#1a7f37", "#c62828"


def plot_confusion_matrix(
    counts: Any, classes: Sequence[str], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Rows = true class, columns = predicted; colour = share of the row, text = count.

    Colouring by row share makes a class with 10 images as visible as one with 1,000;
    the counts keep the absolute picture. Zero cells stay blank so errors stand out.
    """
    cm = np.asarray(counts, dtype=np.int64)
    n = len(classes)
    row_sum = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sum, out=np.zeros(cm.shape, dtype=float), where=row_sum > 0)
    labels = [class_label(c) for c in classes]
    cell = 0.55 if n <= 15 else max(0.28, 8.0 / n)
    side = cell * n
    fig = Figure(figsize=(side + 3.2, side + 2.4))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = max(5.0, min(9.0, cell * 16))
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                colour = "white" if share[i, j] > 0.55 else ("black" if i == j else _RED)
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color=colour,
                    fontweight="bold" if i != j else "normal",
                )
    ax.set_xticks(
        range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize + 1
    )
    ax.set_yticks(
        range(n),
        [f"{lab} ({int(row_sum[i, 0])})" for i, lab in enumerate(labels)],
        fontsize=fontsize + 1,
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("share of the true class")
    ax.set_title(title or "Confusion matrix (colour: row share, text: count)", fontsize=11)
    return save_figure(fig, path, dpi=_DPI)


def plot_per_class_f1(
    per_class: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike[str],
    *,
    macro_f1: float | None = None,
    title: str = "",
) -> Path:
    """Horizontal F1 bars per class, worst at the top, with precision/recall and support."""
    items = [(c, m) for c, m in per_class.items() if m.get("support", 0) > 0]
    items.sort(key=lambda cm: (cm[1]["f1"], cm[0]))
    n = len(items)
    fig = Figure(figsize=(9.0, 0.38 * n + 1.4))
    ax = fig.add_subplot()
    cmap = colormaps["RdYlGn"]
    f1 = [m["f1"] for _, m in items]
    y = np.arange(n)
    ax.barh(y, f1, color=[cmap(0.15 + 0.8 * v) for v in f1], edgecolor="#555555", linewidth=0.4)
    for i, (_, m) in enumerate(items):
        ax.text(
            min(m["f1"], 1.0) + 0.01,
            i,
            f"{m['f1']:.2f}  (P {m['precision']:.2f}, R {m['recall']:.2f}, n={m['support']})",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, [class_label(c) for c, _ in items], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.45)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1 score")
    if macro_f1 is not None:
        ax.axvline(macro_f1, color="#333333", linestyle="--", linewidth=1)
        ax.text(macro_f1, -0.7, f" macro-F1 {macro_f1:.3f}", fontsize=8, va="bottom")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title or "F1 per class (worst first)", fontsize=11, pad=14)
    return save_figure(fig, path, dpi=_DPI)


def plot_reliability(
    probs_by_name: Mapping[str, Any],
    labels: Any,
    path: str | os.PathLike[str],
    *,
    n_bins: int = ECE_BINS,
    title: str = "",
) -> Path:
    """Reliability diagram(s): accuracy vs confidence per bin, one panel per entry.

    Bars on the diagonal mean "p % confident" is right p % of the time; bars below it are
    over-confidence. The strip underneath shows how many images fall in each bin, since
    a big gap in a near-empty bin matters little.
    """
    names = list(probs_by_name)
    fig = Figure(figsize=(4.6 * len(names), 5.4))
    grid = fig.add_gridspec(2, len(names), height_ratios=[4, 1], hspace=0.08, wspace=0.25)
    for k, name in enumerate(names):
        probs = probs_by_name[name]
        bins = reliability_bins(probs, labels, n_bins)
        ece = expected_calibration_error(probs, labels, n_bins)
        edges = np.asarray(bins["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        acc = np.nan_to_num(np.asarray(bins["accuracy"]))
        conf = np.asarray(bins["confidence"])
        count = np.asarray(bins["count"])
        ax = fig.add_subplot(grid[0, k])
        ax.bar(
            centres, acc, width=width * 0.95, color="#4c72b0", edgecolor="#2a4a80", label="accuracy"
        )
        gap_bottom = np.where(np.isnan(conf), 0, np.minimum(acc, conf))
        gap_height = np.where(np.isnan(conf), 0, np.abs(conf - acc))
        ax.bar(
            centres,
            gap_height,
            bottom=gap_bottom,
            width=width * 0.95,
            color=_RED,
            alpha=0.25,
            edgecolor=_RED,
            hatch="//",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="#555555", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelbottom=False)
        ax.set_ylabel("accuracy" if k == 0 else "")
        ax.set_title(f"{name}\nECE {ece:.3f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax_n = fig.add_subplot(grid[1, k], sharex=ax)
        ax_n.bar(centres, count, width=width * 0.95, color="#888888")
        ax_n.set_xlabel("confidence (top-1 probability)")
        ax_n.set_ylabel("images" if k == 0 else "")
        ax_n.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11, y=0.99)
    return save_figure(fig, path, dpi=_DPI)


def plot_predictions(
    paths: Sequence[Path],
    labels: Any,
    probs: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    n_correct: int = 8,
    n_wrong: int = 8,
    seed: int = 0,
) -> Path:
    """A grid of example predictions: correct ones (seeded pick) in green, then the most
    confident mistakes in red, each titled with true class, predicted class and confidence.

    The most confident mistakes are shown first because they are the ones to look at:
    a mislabelled image, a look-alike disease, or a leaf the model never learnt.
    """
    y = np.asarray(labels)
    p = np.asarray(probs)
    pred, conf = p.argmax(axis=1), p.max(axis=1)
    right = np.flatnonzero(pred == y)
    wrong = np.flatnonzero(pred != y)
    rng = np.random.default_rng(seed)
    picked_right = sorted(rng.choice(right, size=min(n_correct, len(right)), replace=False))
    picked_wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:n_wrong]
    picked = [int(i) for i in picked_right] + [int(i) for i in picked_wrong]
    cols = 4
    rows = max(1, math.ceil(len(picked) / cols))
    fig = Figure(figsize=(cols * 3.0, rows * 3.35 + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(picked):
            ax.set_axis_off()
            continue
        i = picked[k]
        ok = pred[i] == y[i]
        thumb = thumbnail(Path(paths[i]), 192, purpose="the predictions grid")
        if thumb is not None:
            ax.imshow(thumb)
        colour = _GREEN if ok else _RED
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(3)
        ax.set_title(
            f"true: {class_label(classes[y[i]])}\npred: {class_label(classes[pred[i]])}\n"
            f"{conf[i]:.0%} {'✓' if ok else '✗'}",
            color=colour,
            fontsize=8,
        )
    fig.suptitle(
        f"{len(picked_right)} correct (green, random) and {len(picked_wrong)} wrong "
        f"(red, most confident first) of {len(y)} images",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save_figure(fig, path, dpi=_DPI)


def plot_tradeoff(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    budget: float | None = None,
) -> Path:
    """One point per model (``rows[i]["name"]``): e.g. macro-F1 against latency or size."""
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
    for k, row in enumerate(rows):
        ax.scatter(row[x], row[y], s=90, color=cmap(k % 10), zorder=3, edgecolor="black")
        ax.annotate(
            row["name"], (row[x], row[y]), xytext=(7, 5), textcoords="offset points", fontsize=9
        )
    if budget is not None:
        ax.axvline(budget, color=_RED, linestyle="--", linewidth=1)
        ax.text(
            budget, ax.get_ylim()[0], f" budget {budget:g}", color=_RED, fontsize=8, va="bottom"
        )
    xs = [r[x] for r in rows]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.2)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title, fontsize=11)
    return save_figure(fig, path, dpi=_DPI)


def plot_ood_histogram(
    scores: Mapping[str, Any],
    threshold: float | None,
    path: str | os.PathLike[str],
    *,
    kind: str = "",
    title: str = "",
) -> Path:
    """Score histograms of each set (in-distribution first) and the abstain threshold.

    Shared bins on a log axis when the score spans decades (Mahalanobis distances do), so
    the overlap, which is what decides the abstain rates, stays visible.
    """
    arrays = {name: np.asarray(v, dtype=float) for name, v in scores.items() if len(v)}
    values = np.concatenate(list(arrays.values()))
    positive = values.min() > 0
    log = positive and values.max() / values.min() > 100
    lo, hi = values.min(), values.max()
    bins = np.geomspace(lo, hi, 41) if log else np.linspace(lo, hi if hi > lo else lo + 1, 41)
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    colours = [_GREEN, _RED, "#6a3d9a", "#ff7f00", "#1f78b4"]
    for (name, v), colour in zip(arrays.items(), colours * 4, strict=False):
        ax.hist(v, bins=bins, alpha=0.45, color=colour, label=f"{name} ({len(v)})")
    if threshold is not None:
        ax.axvline(threshold, color="#222222", linestyle="--", linewidth=1.2)
        ax.text(threshold, ax.get_ylim()[1] * 0.95, " abstain →", va="top", fontsize=9)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"OOD score{f' ({kind})' if kind else ''}: higher = stranger")
    ax.set_ylabel("images")
    ax.legend(fontsize=9, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=11)
    return save_figure(fig, path, dpi=_DPI)
