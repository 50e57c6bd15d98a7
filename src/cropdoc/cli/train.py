"""``cropdoc train`` and ``cropdoc demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .app import app, out, parse_floats, scan_progress


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
        "stage_epochs": [int(e) for e in parse_floats(stage_epochs, "--stage-epochs")]
        if stage_epochs
        else None,
        "data": {
            "image_size": image_size,
            "batch_size": batch_size,
            "workers": workers,
            "balance": balance,
            "split": parse_floats(split, "--split", 3),
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
    from ..config import load_config
    from ..training.run import train as run_train

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
    result = run_train(data, out_dir, cfg, resume=resume, scan_progress=scan_progress())
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
    from ..demo import run_demo

    result = run_demo(
        out_dir, images_per_class=images_per_class, seed=seed, scan_progress=scan_progress()
    )
    _print_result(result)
