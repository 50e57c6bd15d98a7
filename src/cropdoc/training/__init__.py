"""Training: the three-stage recipe on Lightning Fabric, ending at the model bundle.

>>> from cropdoc.training import train, TrainResult
"""

from __future__ import annotations

from .run import TrainResult as TrainResult
from .run import train as train

__all__ = ["TrainResult", "train"]
