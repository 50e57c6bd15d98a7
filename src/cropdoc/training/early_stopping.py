"""Patience-based early stopping on a metric that should go up (validation macro-F1)."""

from __future__ import annotations

import math

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Stop when ``metric`` has not improved for ``patience`` consecutive epochs.

    Args:
        patience: epochs without improvement tolerated before stopping.
        min_delta: an improvement must beat the best by more than this.

    Example:
        >>> es = EarlyStopping(patience=2)
        >>> [es.step(v) for v in (0.5, 0.6, 0.55, 0.58)]
        [False, False, False, True]
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best_score = -math.inf
        self.counter = 0
        self.improved = False

    def step(self, metric: float) -> bool:
        """Record one epoch's metric; return True when patience is exhausted."""
        if metric > self.best_score + self.min_delta:
            self.best_score = float(metric)
            self.counter = 0
            self.improved = True
        else:
            self.counter += 1
            self.improved = False
        return self.counter >= self.patience

    @property
    def should_stop(self) -> bool:
        return self.counter >= self.patience

    def state_dict(self) -> dict[str, float | int | bool]:
        return {
            "best_score": self.best_score,
            "counter": self.counter,
            "improved": self.improved,
            "patience": self.patience,
            "min_delta": self.min_delta,
        }

    def load_state_dict(self, state: dict[str, float | int | bool]) -> None:
        self.best_score = float(state["best_score"])
        self.counter = int(state["counter"])
        self.improved = bool(state["improved"])
