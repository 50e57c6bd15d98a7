"""User-facing errors.

Every failure a user can cause (a bad path, a bad image, a wrong class count, no network
for weights) raises a :class:`CropdocError` subclass whose message says what was wrong,
what is allowed and what to do. The CLI prints these without a traceback.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ConfigError",
    "CropdocError",
    "DataError",
    "TrainingError",
    "WeightsError",
]


class CropdocError(Exception):
    """Base class for errors that are the user's to fix, not bugs."""


class ConfigError(CropdocError):
    """A configuration value or CLI option is invalid."""


class DataError(CropdocError):
    """The dataset folder, an image or a split manifest is unusable."""


class WeightsError(CropdocError):
    """Pretrained or local weights cannot be loaded."""


class BundleError(CropdocError):
    """A model bundle or checkpoint is missing, corrupt or inconsistent."""


class TrainingError(CropdocError):
    """Training cannot continue (for example, the loss became NaN)."""
