"""Serving: the FastAPI app (JSON API + offline web page) and its server processes.

>>> from cropdoc.serve import create_app, run_server  # needs the ``serve`` extra
"""

from __future__ import annotations

from typing import Any

from ..diseases import DiseaseInfo as DiseaseInfo
from ..diseases import disease_info as disease_info

__all__ = [
    "DiseaseInfo",
    "ProcessPlan",
    "ServeSettings",
    "create_app",
    "disease_info",
    "plan_processes",
    "run_server",
]

# The app needs FastAPI (the optional ``serve`` extra): import it only when asked for.
_LAZY = {
    "ServeSettings": "app",
    "create_app": "app",
    "ProcessPlan": "workers",
    "plan_processes": "workers",
    "run_server": "workers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
