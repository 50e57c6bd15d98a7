"""What a prediction takes as input: image files, folders of them, upload bytes, PIL images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..data.images import is_supported
from ..errors import DataError

__all__ = ["ImageSource", "collect_images", "source_name"]

#: What :meth:`~cropdoc.inference.Predictor.predict` accepts: a path, raw file bytes (an
#: upload) or a PIL image.
ImageSource = str | os.PathLike[str] | bytes | Image.Image


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively) into image files, in a stable order.

    Files named explicitly are kept whatever their extension, so a bad one is reported
    rather than silently skipped; inside folders only supported image extensions are taken.

    Raises:
        DataError: a path does not exist.
    """
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_supported(f)))
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p} does not exist; give image files or folders of images")
    return found


def source_name(source: ImageSource, index: int) -> str:
    """How a source is named in results: its path, else ``image <index>``."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    return f"image {index}"
