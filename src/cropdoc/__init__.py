"""cropdoc: train, evaluate and deploy crop-disease image classifiers.

>>> import cropdoc  # doctest: +SKIP
>>> run = cropdoc.train("PlantVillage/", arch="efficientnet_b0", out="runs/effb0")  # doctest: +SKIP
>>> model = cropdoc.load("runs/effb0/model")  # doctest: +SKIP
>>> [p.best.name for p in model.predict(["leaf.jpg"])]  # doctest: +SKIP

Importing the package is cheap: torch and the rest load on first use of the API.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import CropdocError as CropdocError
from .version import __version__ as __version__

__all__ = [
    "CropdocError",
    "Model",
    "Prediction",
    "Run",
    "TrainConfig",
    "__version__",
    "compare",
    "demo",
    "load",
    "load_bundle",
    "train",
]

# Public name -> the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "Model": "cropdoc.api",
    "Run": "cropdoc.api",
    "compare": "cropdoc.api",
    "demo": "cropdoc.api",
    "load": "cropdoc.api",
    "train": "cropdoc.api",
    "Prediction": "cropdoc.inference",
    "TrainConfig": "cropdoc.config",
    "load_bundle": "cropdoc.bundle",
}

if TYPE_CHECKING:
    from .api import Model, Run, compare, demo, load, train
    from .bundle import load_bundle
    from .config import TrainConfig
    from .inference import Prediction


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cropdoc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
