"""cropdoc: train, evaluate and deploy crop-disease image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import CropdocError as CropdocError

__all__ = ["CropdocError", "__version__"]
