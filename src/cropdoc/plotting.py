"""What every cropdoc plot shares: atomic PNG writes and fast, EXIF-correct thumbnails."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageOps, UnidentifiedImageError

from .io import atomic_path

__all__ = ["DPI", "save_figure", "thumbnail"]

_logger = logging.getLogger(__name__)

DPI = 110


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half an image)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    _logger.debug("wrote %s", target)
    return target


def thumbnail(path: Path, px: int, *, purpose: str = "a plot") -> np.ndarray | None:
    """An upright RGB thumbnail at most ``px`` wide, or None (logged) if it cannot be read.

    JPEGs are decoded at reduced size (``draft``), which is much faster for grids of many
    photos; a plot must not fail because one file went bad after the scan.
    """
    try:
        with Image.open(path) as im:
            im.draft("RGB", (px, px))
            img = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        _logger.warning("cannot open %s for %s: %s", path, purpose, e)
        return None
    img.thumbnail((px, px))
    return np.asarray(img)
