"""``cropdoc evaluate`` and ``cropdoc compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import options as opts
from .app import app, out, progress_callback, scan_progress

__all__ = ["compare", "evaluate"]


# --------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (RUN/model) or its run directory.")],
    data: Annotated[Path, typer.Argument(help="Dataset folder: one sub-folder per class.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where metrics and plots go.")] = Path(
        "eval"
    ),
    split: Annotated[
        str | None,
        typer.Option(
            help="test | val | train | all. Default: the run's test split when DATA is its "
            "training folder, else every image in DATA."
        ),
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(help="Take the split from this split.json (e.g. another run's)."),
    ] = None,
    ignore_unknown: Annotated[
        bool,
        typer.Option("--ignore-unknown", help="Skip class folders the model does not know."),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    workers: Annotated[
        int | None, typer.Option(help="Loader workers (default: sized for this machine)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
) -> None:
    """Score a model on a dataset: metrics, confusion matrix, calibration, examples, report."""
    from ..evaluation.evaluate import evaluate_bundle

    result = evaluate_bundle(
        bundle,
        data,
        out_dir=out_dir,
        split=split,
        split_file=split_file,
        ignore_unknown=ignore_unknown,
        batch_size=batch_size,
        workers=workers,
        device=device,
        scan_progress=scan_progress(),
        progress=progress_callback("predicting"),
    )
    m = result.metrics
    if result.renamed:
        mapping = Table(title="class folders matched to the model's classes")
        mapping.add_column("folder in DATA")
        mapping.add_column("model class")
        for folder, cls in result.renamed.items():
            mapping.add_row(folder, cls)
        out.print(mapping)
    table = Table(title=f"{m['arch']} on {result.source}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("images", str(m["n_images"]))
    table.add_row("accuracy", f"{m['accuracy']:.4f}")
    table.add_row("macro-F1", f"{m['macro_f1']:.4f}")
    table.add_row("weighted-F1", f"{m['weighted_f1']:.4f}")
    table.add_row("top-3 accuracy", f"{m['top3_accuracy']:.4f}")
    table.add_row("NLL", f"{m['nll']:.4f}")
    ece = f"{m['ece']:.4f}"
    if "uncalibrated" in m:
        ece += f" (T=1: {m['uncalibrated']['ece']:.4f})"
    table.add_row(f"ECE (T={m['temperature']:.2f})", ece)
    table.add_row("bad files skipped", str(m["n_bad_files"]))
    if m.get("skipped_unknown_images"):
        table.add_row("unknown-class images skipped", str(m["skipped_unknown_images"]))
    out.print(table)
    worst = sorted(
        ((c, v) for c, v in m["per_class"].items() if v["support"]), key=lambda cv: cv[1]["f1"]
    )[:3]
    out.print("worst classes: " + ", ".join(f"{c} (F1 {v['f1']:.3f})" for c, v in worst))
    out.print(f"wrote {len(result.files)} files to {result.out_dir}: " + ", ".join(result.files))


# --------------------------------------------------------------------------- compare
@app.command()
def compare(
    data: Annotated[Path, typer.Argument(help="Dataset folder: one sub-folder per class.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Runs, table and plots go here.")] = Path(
        "runs/compare"
    ),
    archs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated architectures to train, e.g. "
            "resnet50,efficientnet_b0,mobilenet_v3_small (default: those three, unless --runs)"
        ),
    ] = None,
    runs: Annotated[
        str | None,
        typer.Option(help="Comma-separated finished run directories to include as they are."),
    ] = None,
    latency_budget_ms: Annotated[
        float | None,
        typer.Option(help="Only recommend models at most this slow (batch-1 mean, ms)."),
    ] = None,
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
) -> None:
    """Train several architectures on one split, score them on one test set, recommend one."""
    from ..config import load_config
    from ..evaluation.compare import compare as run_compare

    arch_list = [a.strip() for a in archs.split(",") if a.strip()] if archs else []
    run_list = [Path(r.strip()) for r in runs.split(",") if r.strip()] if runs else []
    if not arch_list and not run_list:
        arch_list = ["resnet50", "efficientnet_b0", "mobilenet_v3_small"]
    overrides = opts.train_overrides(
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
    cfg = load_config(config, overrides)
    result = run_compare(
        data,
        out_dir,
        archs=arch_list,
        runs=run_list,
        config=cfg,
        latency_budget_ms=latency_budget_ms,
        device=device,
        workers=workers,
        scan_progress=scan_progress(),
    )
    from rich import box

    table = Table(
        title=f"comparison ({len(result.rows)} models, same test set)", box=box.SIMPLE_HEAD
    )
    table.add_column("model", no_wrap=True)
    for col in ("acc", "F1", "ECE", "MB", "ms", "p95", "img/s", "min"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in sorted(result.rows, key=lambda r: -r["macro_f1"]):
        table.add_row(
            r["name"],
            f"{r['accuracy']:.3f}",
            f"{r['macro_f1']:.3f}",
            f"{r['ece']:.3f}",
            f"{r['size_mb']:.1f}",
            f"{r['latency_ms_mean']:.0f}",
            f"{r['latency_ms_p95']:.0f}",
            f"{r['throughput_ips']:.0f}",
            f"{r['train_time_min']:.1f}",
        )
    out.print(table)
    out.print(
        "acc: accuracy, F1: macro-F1, MB: size, ms/p95: batch-1 latency mean/p95, "
        "img/s: batch-32 throughput, min: train time"
    )
    out.print(result.recommendation.replace("**", ""))
    out.print(f"wrote {', '.join(str(p) for p in result.files.values())}")
