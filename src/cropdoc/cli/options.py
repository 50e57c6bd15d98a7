"""Training options shared by ``cropdoc train`` and ``cropdoc compare``.

Every option defaults to None ("not given"), so the default lives once, in ``config.py``;
:func:`train_overrides` turns the given ones into a nested config override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .app import parse_floats

__all__ = [
    "Arch",
    "BalanceOpt",
    "BatchSize",
    "ConfigFile",
    "Deterministic",
    "Device",
    "Devices",
    "ImageSize",
    "Precision",
    "Recipe",
    "Seed",
    "SplitRatios",
    "StageEpochs",
    "WeightsOpt",
    "Workers",
    "train_overrides",
]

Arch = Annotated[
    str | None,
    typer.Option(help="resnet50 | efficientnet_b0 | mobilenet_v3_small (default: efficientnet_b0)"),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML config; options win.")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        help="imagenet | none | PATH to a .pth/.safetensors state dict (default: imagenet)"
    ),
]
ImageSize = Annotated[int | None, typer.Option(help="Input size in pixels (default: 224).")]
BatchSize = Annotated[int | None, typer.Option(help=" (default: 32)")]
StageEpochs = Annotated[
    str | None, typer.Option(help="Epochs per stage, e.g. 5,10,10 (the seed's).")
]
Recipe = Annotated[
    str | None,
    typer.Option(
        help="auto | three-stage | scratch. auto: three-stage, or one scratch stage with "
        "--weights none (default: auto)"
    ),
]
Device = Annotated[str | None, typer.Option(help="auto | cpu | cuda | mps (default: auto)")]
Devices = Annotated[int | None, typer.Option(help="Processes/GPUs; >1 runs DDP (default: 1)")]
Precision = Annotated[str | None, typer.Option(help="auto | 32 | bf16 | 16 (default: auto)")]
Workers = Annotated[
    int | None, typer.Option(help="Loader workers (default: sized for this machine)")
]
BalanceOpt = Annotated[
    str | None,
    typer.Option(
        "--balance", help="none | loss | sampler: counter class imbalance (default: none)"
    ),
]
SplitRatios = Annotated[
    str | None,
    typer.Option("--split", help="train,val,test ratios (default: 0.7,0.15,0.15)"),
]
Seed = Annotated[int | None, typer.Option(help=" (default: 42)")]
Deterministic = Annotated[
    bool | None,
    typer.Option("--deterministic/--no-deterministic", help="Deterministic algorithms (slower)."),
]


def train_overrides(
    *,
    arch: str | None = None,
    weights: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    stage_epochs: str | None = None,
    recipe: str | None = None,
    device: str | None = None,
    devices: int | None = None,
    precision: str | None = None,
    workers: int | None = None,
    balance: str | None = None,
    split: str | None = None,
    seed: int | None = None,
    deterministic: bool | None = None,
) -> dict[str, Any]:
    """The given options as a nested override for :func:`cropdoc.config.load_config`."""
    epochs = parse_floats(stage_epochs, "--stage-epochs")
    return {
        "arch": arch,
        "weights": weights,
        "recipe": recipe,
        "stage_epochs": [int(e) for e in epochs] if epochs else None,
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
