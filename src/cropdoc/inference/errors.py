"""The error of the inference capability, apart so every inference module can raise it."""

from __future__ import annotations

from ..errors import CropdocError

__all__ = ["InferenceError"]


class InferenceError(CropdocError):
    """A predictor cannot be built or run (unknown backend, missing or stale export)."""
