"""The ``cropdoc`` command line: a thin shell over the library.

It parses options, calls the library, and prints. User errors (``CropdocError``) are
printed as one line without a traceback and exit with code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from . import __version__
from .errors import CropdocError

__all__ = ["app", "main"]

console = Console(stderr=True)
out = Console()

app = typer.Typer(
    name="cropdoc",
    help="Train, evaluate and deploy crop-disease image classifiers.",
    no_args_is_help=True,
    add_completion=False,
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


def _scan_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("scanning images"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("scan", total=None)

    def update(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)
        if done >= total:
            progress.stop()

    return update


def _parse_floats(text: str | None, name: str, n: int | None = None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from e
    if n is not None and len(values) != n:
        raise typer.BadParameter(f"{name} needs {n} comma-separated numbers, got {text!r}")
    return values


# --------------------------------------------------------------------------- data inspect
@data_app.command("inspect")
def data_inspect(
    data: Annotated[Path, typer.Argument(help="Dataset folder: one sub-folder per class.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write plots and JSON here.")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Only these classes (comma-separated).")
    ] = None,
) -> None:
    """Counts, bad files, image sizes, duplicates and leaf groups; optional plots."""
    from .data.inspect import plot_class_distribution, plot_samples, summarize
    from .data.scan import scan_folder
    from .data.split import make_split

    report = scan_folder(
        data, classes=classes.split(",") if classes else None, progress=_scan_progress()
    )
    summary = summarize(report)
    table = Table(title=f"{data}  ({summary['n_classes']} classes, {summary['n_images']} images)")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for name, count in report.counts().items():
        table.add_row(name, str(count), f"{count / max(summary['n_images'], 1):.1%}")
    out.print(table)
    out.print(f"imbalance ratio (largest / smallest class): {summary['imbalance_ratio']:.2f}")
    sizes = summary.get("image_sizes", {})
    if sizes:
        out.print(f"image sizes: {sizes}")
    manifest = make_split(report)
    out.print(
        f"leaf/photo groups: {manifest.stats.get('n_groups')} "
        f"({manifest.stats.get('n_multi_image_groups')} with several images); "
        f"byte-identical duplicate groups: {len(report.duplicate_groups())}"
    )
    if report.bad_files:
        bad = Table(title=f"{len(report.bad_files)} bad file(s), excluded from training")
        bad.add_column("file")
        bad.add_column("reason")
        for b in report.bad_files:
            bad.add_row(
                str(
                    b.path.relative_to(report.root)
                    if b.path.is_relative_to(report.root)
                    else b.path
                ),
                b.reason,
            )
        out.print(bad)
    else:
        out.print("bad files: 0")
    if out_dir is not None:
        from .io import atomic_write_json

        out_dir.mkdir(parents=True, exist_ok=True)
        plot_class_distribution(report, out_dir / "class_distribution.png")
        plot_samples(report, out_dir / "samples.png")
        report.save(out_dir / "scan_report.json")
        atomic_write_json(out_dir / "summary.json", summary)
        out.print(
            f"wrote {out_dir / 'class_distribution.png'}, {out_dir / 'samples.png'}, "
            f"{out_dir / 'scan_report.json'}"
        )


# --------------------------------------------------------------------------- train
def _train_overrides(
    arch,
    weights,
    image_size,
    batch_size,
    stage_epochs,
    recipe,
    device,
    devices,
    precision,
    workers,
    balance,
    seed,
    deterministic,
    split,
) -> dict[str, Any]:
    return {
        "arch": arch,
        "weights": weights,
        "recipe": recipe,
        "stage_epochs": [int(e) for e in _parse_floats(stage_epochs, "--stage-epochs")]
        if stage_epochs
        else None,
        "data": {
            "image_size": image_size,
            "batch_size": batch_size,
            "workers": workers,
            "balance": balance,
            "split": _parse_floats(split, "--split", 3),
        },
        "runtime": {
            "accelerator": device,
            "devices": devices,
            "precision": precision,
            "seed": seed,
            "deterministic": deterministic,
        },
    }


def _print_result(result) -> None:
    table = Table(
        title=f"{result.arch}: done in {result.elapsed_s / 60:.1f} min "
        f"({result.epochs_run} epochs, precision {result.precision})"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("best val macro-F1", f"{result.best_val_f1:.4f}")
    if result.best:
        table.add_row(
            "best epoch",
            f"stage {result.best.get('stage')} "
            f"({result.best.get('stage_name')}), epoch {result.best.get('epoch')}",
        )
    table.add_row("test accuracy", f"{result.test['accuracy']:.4f}")
    table.add_row("test macro-F1", f"{result.test['macro_f1']:.4f}")
    table.add_row("test images", str(result.test["n"]))
    out.print(table)
    out.print(
        f"bundle: {result.bundle_dir}\ncurves: {result.curves}\n"
        f"history: {result.run_dir / 'history.csv'}"
    )


@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Argument(help="Dataset folder (one sub-folder per class). Optional with --resume."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/train"),
    arch: Annotated[
        str | None,
        typer.Option(
            help="resnet50 | efficientnet_b0 | mobilenet_v3_small [default: efficientnet_b0]"
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config; CLI options override it.")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="imagenet | none | PATH to a .pth/.safetensors state dict [default: imagenet]"
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size in pixels [default: 224].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="[default: 32]")] = None,
    stage_epochs: Annotated[
        str | None, typer.Option(help="Epochs per stage, e.g. 5,10,10 (the seed's).")
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="auto | three-stage | scratch. auto: three-stage, or one scratch stage with "
            "--weights none [default: auto]"
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | mps [default: auto]")
    ] = None,
    devices: Annotated[
        int | None, typer.Option(help="Processes/GPUs; >1 runs DDP [default: 1]")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto | 32 | bf16 | 16 [default: auto]")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Loader workers [default: sized for this machine]")
    ] = None,
    balance: Annotated[
        str | None,
        typer.Option(help="none | loss | sampler: counter class imbalance [default: none]"),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="train,val,test ratios [default: 0.7,0.15,0.15]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="[default: 42]")] = None,
    deterministic: Annotated[
        bool | None,
        typer.Option(
            "--deterministic/--no-deterministic", help="Deterministic algorithms (slower)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
) -> None:
    """Train a classifier with the three-stage transfer-learning recipe."""
    from .config import load_config
    from .training.run import train as run_train

    overrides = _train_overrides(
        arch,
        weights,
        image_size,
        batch_size,
        stage_epochs,
        recipe,
        device,
        devices,
        precision,
        workers,
        balance,
        seed,
        deterministic,
        split,
    )
    cfg = load_config(config, overrides)
    result = run_train(data, out_dir, cfg, resume=resume, scan_progress=_scan_progress())
    _print_result(result)


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where data and the run go.")] = Path(
        "demo-run"
    ),
    images_per_class: Annotated[int, typer.Option(help="Generated images per class.")] = 80,
    seed: Annotated[int, typer.Option(help="Data and training seed.")] = 42,
) -> None:
    """Generate leaf images, train through all three stages, evaluate, report (CPU minutes)."""
    from .demo import run_demo

    result = run_demo(
        out_dir, images_per_class=images_per_class, seed=seed, scan_progress=_scan_progress()
    )
    _print_result(result)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CropdocError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
