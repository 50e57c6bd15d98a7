"""``cropdoc train`` and ``cropdoc demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import options as opts
from .app import app, out, scan_progress


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


# --------------------------------------------------------------------------- train
@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Argument(help="Dataset folder (one sub-folder per class). Optional with --resume."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/train"),
    arch: opts.Arch = None,
    config: opts.ConfigFile = None,
    weights: opts.WeightsOpt = None,
    image_size: opts.ImageSize = None,
    batch_size: opts.BatchSize = None,
    stage_epochs: opts.StageEpochs = None,
    recipe: opts.Recipe = None,
    device: opts.Device = None,
    devices: opts.Devices = None,
    precision: opts.Precision = None,
    workers: opts.Workers = None,
    balance: opts.BalanceOpt = None,
    split: opts.SplitRatios = None,
    seed: opts.Seed = None,
    deterministic: opts.Deterministic = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
) -> None:
    """Train a classifier with the three-stage transfer-learning recipe."""
    from ..config import load_config
    from ..training.run import train as run_train

    overrides = opts.train_overrides(
        arch=arch,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        stage_epochs=stage_epochs,
        recipe=recipe,
        device=device,
        devices=devices,
        precision=precision,
        workers=workers,
        balance=balance,
        split=split,
        seed=seed,
        deterministic=deterministic,
    )
    if resume and config is None and (out_dir / "config.yaml").is_file():
        # Resume with the run's own settings and let only the options given now override
        # them: built from defaults, the runtime would silently switch e.g. fp32 to bf16.
        config = out_dir / "config.yaml"
    cfg = load_config(config, overrides)
    result = run_train(data, out_dir, cfg, resume=resume, scan_progress=scan_progress())
    _print_result(result)


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where data and the run go.")] = Path(
        "demo-run"
    ),
    images_per_class: Annotated[int, typer.Option(help="Generated images per class.")] = 200,
    seed: Annotated[int, typer.Option(help="Data and training seed.")] = 42,
) -> None:
    """Generate leaf images, train through all three stages, evaluate, report (CPU minutes)."""
    from ..demo import run_demo

    result = run_demo(
        out_dir, images_per_class=images_per_class, seed=seed, scan_progress=scan_progress()
    )
    _print_result(result)
