"""The ``cropdoc`` Typer app, shared console helpers and the entry point.

It parses options, calls the library, and prints. User errors (``CropdocError``) are
printed as one line without a traceback and exit with code 2.
"""

from __future__ import annotations

import errno
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from ..errors import CropdocError
from ..version import __version__

__all__ = [
    "app",
    "console",
    "data_app",
    "main",
    "out",
    "progress_callback",
    "scan_progress",
]

_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

console = Console(stderr=True)
out = Console()

app = typer.Typer(
    name="cropdoc",
    help="Train, evaluate and deploy crop-disease image classifiers.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at a dataset before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        out.print(f"cropdoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        force=True,
        handlers=[RichHandler(console=console, show_path=verbose, rich_tracebacks=False)],
    )
    for noisy in ("lightning_fabric", "lightning", "PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def progress_callback(label: str):
    """A ``(done, total)`` callback that shows a transient rich bar while work runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)
        if done >= total:
            progress.stop()

    return update


def scan_progress():
    """The bar shown while a dataset folder is checked image by image."""
    return progress_callback("scanning images")


def with_interval(value: float, intervals: dict | None, key: str) -> str:
    """``0.9722 (95% CI 0.950–0.991)``: a test score with its bootstrap interval, if any."""
    text = f"{value:.4f}"
    if intervals:
        low, high = intervals[key]
        text += f" ({intervals['level']:.0%} CI {low:.3f}–{high:.3f})"
    return text


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CropdocError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        # A full disk or a read-only folder is the user's to fix, wherever the write was
        # (history.csv, plots, reports); anything else is a bug and keeps its traceback.
        if e.errno not in _STORAGE_ERRNOS:
            raise
        console.print(
            f"[bold red]error:[/] cannot write {e.filename or 'a file'}: {e.strerror}; free "
            f"some space or fix permissions and run again (`cropdoc train --resume --out RUN` "
            f"continues an interrupted run)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
