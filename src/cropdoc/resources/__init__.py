"""Data files shipped inside the package (``diseases.json``, ...).

Read through :mod:`importlib.resources`, never ``__file__``, so they work from a wheel, an
editable install or a zip. Foundation module: no torch, no matplotlib.

>>> "Tomato___healthy" in read_text("diseases.json")
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

__all__ = ["files", "path", "read_bytes", "read_text"]


def files() -> Traversable:
    """The folder of packaged resources (a ``Traversable``, not necessarily on disk)."""
    return resources.files(__name__)


def _resource(name: str) -> Traversable:
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"resource name must be relative inside the package, got {name!r}")
    found = files().joinpath(*parts)
    if not found.is_file():
        shipped = sorted(p.name for p in files().iterdir() if not p.name.startswith("_"))
        raise FileNotFoundError(
            f"cropdoc resource {name!r} is missing (shipped: {shipped}); "
            f"reinstall cropdoc, its package data is incomplete"
        )
    return found


def read_text(name: str, *, encoding: str = "utf-8") -> str:
    """The text of resource ``name`` (e.g. ``"diseases.json"``).

    Raises:
        FileNotFoundError: if the installation lacks it (names what is there).
    """
    return _resource(name).read_text(encoding=encoding)


def read_bytes(name: str) -> bytes:
    """The bytes of resource ``name``."""
    return _resource(name).read_bytes()


@contextmanager
def path(name: str) -> Iterator[Path]:
    """A real file path of resource ``name`` while the ``with`` block lasts.

    For code that needs a file name (a zipped install is extracted to a temporary file).

    >>> with path("diseases.json") as p:
    ...     p.is_file()
    True
    """
    with resources.as_file(_resource(name)) as real:
        yield real
