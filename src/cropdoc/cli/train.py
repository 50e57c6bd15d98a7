"""``cropdoc train`` and ``cropdoc demo``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..config import TrainConfig
from . import options as opts
from .app import app, out, scan_progress, with_interval

__all__ = ["demo", "train"]

_logger = logging.getLogger(__name__)


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
    for key, label in (("accuracy", "test accuracy"), ("macro_f1", "test macro-F1")):
        table.add_row(label, with_interval(result.test[key], result.test_intervals, key))
    table.add_row("test images", str(result.test["n"]))
    out.print(table)
    out.print(
        f"bundle: {result.bundle_dir}\ncurves: {result.curves}\n"
        f"history: {result.run_dir / 'history.csv'}"
    )


# --------------------------------------------------------------------------- train
def _train(data: Path | None, run_dir: Path, config: TrainConfig, resume: bool):
    """The library call of ``cropdoc train``."""
    from ..api import train as api_train

    run = api_train(
        data,
        out=run_dir,
        config=config,
        resume=resume,
        show_progress=True,
        scan_progress=scan_progress(),
    )
    return run.result


@app.command(cls=opts.LateHelp)
@opts.training_options
def train(
    data: Annotated[
        Path | None,
        typer.Argument(
            metavar="DATA",
            help="Dataset folder: one sub-folder per class, or a pre-split copy (train/ "
            "val/ test/). Optional with --resume.",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Run directory. When DIR already holds files, the run goes to DIR-2 "
            "(DIR-3, ...) instead and says so, unless --resume or --exist-ok.",
        ),
    ] = Path("runs/train"),
    arch: opts.Arch = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted run in --out. Only "
            f"{', '.join(opts.RESUME_FLAGS)} may change; any other option that differs "
            "from the run's config.yaml is refused.",
        ),
    ] = False,
    exist_ok: Annotated[
        bool,
        typer.Option(
            "--exist-ok",
            help="Write to --out exactly, never to a numbered folder (an earlier run there "
            "must be continued with --resume or deleted).",
        ),
    ] = False,
    *,
    training: opts.TrainingOptions,
) -> None:
    """Train a classifier with the three-stage transfer-learning recipe."""
    # A resumed run starts from its own config.yaml, so only the options given now change
    # it: from the defaults, the runtime would silently switch e.g. fp32 to bf16.
    # The library refuses a resume with a changed recipe, naming the option
    # (cropdoc.config.RESUME_APPLIED says which options may change).
    config = training.to_config(arch=arch, fallback=out_dir / "config.yaml" if resume else None)
    run_dir = opts.run_dir_for(out_dir, resume=resume, exist_ok=exist_ok)
    if config.runtime.devices * config.runtime.num_nodes > 1:
        sys.argv = opts.pin_out(sys.argv, run_dir)
    _print_result(_train(data, run_dir, config, resume))


# --------------------------------------------------------------------------- demo
def _demo(out_dir: Path, images_per_class: int, seed: int, weights: Path | None, arch: str | None):
    """The library call of ``cropdoc demo``."""
    from ..api import demo as api_demo

    run = api_demo(
        out_dir,
        images_per_class=images_per_class,
        seed=seed,
        weights=weights,
        arch=arch,
        show_progress=True,
        scan_progress=scan_progress(),
    )
    return run.result


@app.command()
def demo(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Where the generated data and the run go (an earlier demo run there is "
            "replaced; its images are reused).",
        ),
    ] = Path("demo-run"),
    images_per_class: Annotated[
        int, typer.Option(metavar="N", help="Generated images per class.")
    ] = 200,
    seed: Annotated[int, typer.Option(metavar="N", help="Data and training seed.")] = 42,
    weights: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="A local pretrained backbone (.safetensors/.pth): the demo then shows "
            "transfer learning from it (give its --arch). Default: from scratch, offline.",
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="The architecture of --weights, e.g. timm/tf_efficientnet_lite0.",
        ),
    ] = None,
) -> None:
    """Generate leaf images, train through all three stages, evaluate, report (CPU minutes)."""
    _print_result(_demo(out_dir, images_per_class, seed, weights, arch))
