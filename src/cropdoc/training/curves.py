"""The 2×2 training-curves plot: loss, accuracy, validation macro-F1, learning rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..plotting import save_figure

__all__ = ["plot_curves"]


def plot_curves(history: Sequence[Any], path: str | Path, *, title: str = "") -> Path:
    """Plot ``history`` rows (EpochStats or dicts) to ``path``; dashed lines mark stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r if isinstance(r, dict) else asdict(r) for r in history]
    x = list(range(1, len(rows) + 1))
    col = {
        k: [float(r[k]) for r in rows]
        for k in ("train_loss", "val_loss", "train_acc", "val_acc", "val_f1", "lr")
    }
    boundaries = [i + 0.5 for i in range(1, len(rows)) if rows[i]["stage"] != rows[i - 1]["stage"]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [
        (axes[0, 0], "Loss", [("train_loss", "train"), ("val_loss", "val")], False),
        (axes[0, 1], "Accuracy", [("train_acc", "train"), ("val_acc", "val")], False),
        (axes[1, 0], "Validation macro-F1", [("val_f1", "val F1")], False),
        (axes[1, 1], "Learning rate (head)", [("lr", "lr")], True),
    ]
    for ax, name, series, log in panels:
        for key, label in series:
            ax.plot(x, col[key], marker="o", markersize=3, label=label)
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle="--", linewidth=1)
        if log:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    if col["val_f1"]:
        best = max(range(len(rows)), key=lambda i: col["val_f1"][i])
        axes[1, 0].scatter(
            [x[best]],
            [col["val_f1"][best]],
            color="red",
            zorder=3,
            label=f"best {col['val_f1'][best]:.3f}",
        )
        axes[1, 0].legend()
    stages = []
    for r in rows:
        if not stages or stages[-1] != (r["stage"], r.get("stage_name", "")):
            stages.append((r["stage"], r.get("stage_name", "")))
    subtitle = "  |  ".join(f"stage {s}: {n}" for s, n in stages)
    fig.suptitle(f"{title}\n{subtitle}" if title else subtitle)
    fig.tight_layout()
    target = save_figure(fig, path)
    plt.close(fig)
    return target
