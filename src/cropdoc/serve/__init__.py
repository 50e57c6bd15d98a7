"""Serving: the FastAPI app (JSON API + offline web page) and disease information."""

from __future__ import annotations

from .diseases import DiseaseInfo as DiseaseInfo
from .diseases import disease_info as disease_info

__all__ = ["DiseaseInfo", "create_app", "disease_info"]


def __getattr__(name: str):
    # The app needs FastAPI (the optional ``serve`` extra); import it only when asked for.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
