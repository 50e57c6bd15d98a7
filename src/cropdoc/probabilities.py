"""Logits to probabilities, the one way every part of cropdoc does it.

Evaluation, calibration and prediction must turn logits into probabilities identically,
or a model scores differently in ``cropdoc evaluate`` than it answers in ``predict`` and
``serve``; so there is one function, here, on numpy alone (no torch), which a server or
an exported model's checker can import cheaply.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["softmax"]


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature`` over the last axis.

    Computed in float64 after subtracting the row maximum, so large logits neither
    overflow nor lose the small probabilities that NLL and calibration depend on.

    Args:
        logits: ``(C,)`` or ``(N, C)`` array-like.
        temperature: the calibration temperature T > 0 (1: uncalibrated).

    Returns:
        A float64 array of the same shape whose last axis sums to 1.

    >>> softmax([0.0, 0.0]).tolist()
    [0.5, 0.5]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
