"""The ``cropdoc`` command line: a thin shell over the library.

It parses options, calls the library, and prints. User errors (``CropdocError``) are
printed as one line without a traceback and exit with code 2. Each module below adds its
commands to the one Typer ``app``.
"""

from __future__ import annotations

from . import data as data  # noqa: F401  (registers commands)
from . import deploy as deploy  # noqa: F401
from . import evaluate as evaluate  # noqa: F401
from . import train as train  # noqa: F401
from .app import app as app
from .app import main as main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
