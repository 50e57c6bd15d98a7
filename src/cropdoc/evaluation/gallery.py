"""The most confident mistakes, with where the model looked: a Grad-CAM gallery.

A confident error is the one a user acts on; its heatmap shows whether the model looked at
the lesion and misread it, or looked at the background, the label or the pot (a dataset
shortcut). One tile per image, most confident first: the overlay for the class it
predicted, with the true class and the confidence.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..bundle import BundleMeta
from ..classnames import class_label
from ..data.images import BadImageError
from ..inference import Explainer
from ..plotting import save_figure

__all__ = ["confident_errors", "plot_error_gallery"]

_logger = logging.getLogger(__name__)


def confident_errors(labels: np.ndarray, probs: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` wrong predictions with the highest confidence, highest first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    order = np.argsort(-probs[wrong, pred[wrong]], kind="stable")
    return [int(i) for i in wrong[order][:n]]


def plot_error_gallery(
    model: Any,
    meta: BundleMeta,
    paths: list[Path],
    labels: np.ndarray,
    probs: np.ndarray,
    path: str | os.PathLike[str],
    *,
    n: int = 8,
) -> Path | None:
    """Write the gallery of the ``n`` most confident errors; None when there are none."""
    picked = confident_errors(labels, probs, n)
    if not picked:
        return None
    explainer = Explainer(model, meta)
    cols = min(4, len(picked))
    rows = math.ceil(len(picked) / cols)
    fig = Figure(figsize=(3.1 * cols, 3.5 * rows))
    for k, i in enumerate(picked):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.axis("off")
        predicted = int(probs[i].argmax())
        try:
            e = explainer.explain(paths[i], class_index=predicted)
        except BadImageError as err:  # the file changed since it was scored
            _logger.warning("no heatmap for %s: %s", paths[i], err.reason)
            continue
        ax.imshow(e.overlay)
        ax.set_title(
            f"true: {class_label(meta.classes[labels[i]])}\n"
            f"said: {e.label} ({probs[i, predicted]:.0%})",
            fontsize=8,
        )
    fig.suptitle(
        f"Most confident errors: where the model looked (Grad-CAM on {explainer.layer})",
        fontsize=10,
    )
    return save_figure(fig, path)
