"""Workflows: the jobs users run, composed from training, evaluation and export.

>>> from cropdoc.workflows import train, compare, run_demo
"""

from __future__ import annotations

from .compare import Comparison as Comparison
from .compare import compare as compare
from .compare import recommend as recommend
from .demo import demo_config as demo_config
from .demo import run_demo as run_demo
from .finalize import finalize_run as finalize_run
from .train import train as train

__all__ = [
    "Comparison",
    "compare",
    "demo_config",
    "finalize_run",
    "recommend",
    "run_demo",
    "train",
]
