"""``cropdoc evaluate``, ``cropdoc fit-ood`` and ``cropdoc compare``."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from . import options as opts
from .app import app, out, progress_callback, scan_progress, with_interval

__all__ = ["compare", "evaluate", "fit_ood"]

_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- evaluate
def _evaluate(bundle: Path, data: Path, **options: Any):
    """The library call of ``cropdoc evaluate``."""
    from ..api import load

    options["out"] = options.pop("out_dir")
    return load(bundle).evaluate(
        data, scan_progress=scan_progress(), progress=progress_callback("predicting"), **options
    )


@app.command()
def evaluate(
    bundle: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="Model bundle (RUN/model) or its run directory."),
    ],
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="Dataset folder: one sub-folder per class, or a pre-split copy.",
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Where metrics and plots go (an earlier evaluation's files there are replaced).",
        ),
    ] = Path("eval"),
    split: Annotated[
        opts.EvalSplit | None,
        typer.Option(
            help="Default: the run's test split when DATA is its training folder (exactly: "
            "a missing file is an error), a pre-split copy's test folder, else the images "
            "of DATA the run did not train on. all: every image in DATA."
        ),
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Take the split from this split.json (e.g. another run's)."
        ),
    ] = None,
    ignore_unknown: Annotated[
        bool,
        typer.Option("--ignore-unknown", help="Skip class folders the model does not know."),
    ] = False,
    ood: Annotated[
        Path | None,
        typer.Option(
            "--ood",
            metavar="OOD_DIR",
            help="Images of none of the model's classes (unseen diseases, non-leaf photos): "
            "AUROC, FPR at 95% TPR and abstain rates on both sets, ood_histogram.png.",
        ),
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="Also score the images under phone-photo corruptions (blur, noise, JPEG, "
            "light, colour cast, rotation, scale, off-centre crop, cluttered background) at 3 "
            "severities: robustness.json, robustness.png, a report section.",
        ),
    ] = False,
    variant: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Read this variant folder when DATA holds several (color, grayscale, segmented).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward pass.")] = 64,
    workers: opts.WorkersOpt = None,
    device: opts.DeviceOpt = None,
) -> None:
    """Score a model on a dataset: metrics, confusion matrix, calibration, abstain rate
    (OOD score), examples, report."""
    result = _evaluate(
        bundle,
        data,
        out_dir=out_dir,
        split=split.value if split else None,
        split_file=split_file,
        ignore_unknown=ignore_unknown,
        ood=ood,
        robustness=robustness,
        variant=variant,
        batch_size=batch_size,
        workers=workers,
        device=device.value if device else None,
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
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        table.add_row(label, with_interval(m[key], m.get("intervals"), key))
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
    if m.get("seen_in_training_images"):
        kept = "scored" if m["split"] == "all" else "left out"
        table.add_row(f"seen in training ({kept})", str(m["seen_in_training_images"]))
    out.print(table)
    _print_ood(m.get("ood") or {})
    worst = sorted(
        ((c, v) for c, v in m["per_class"].items() if v["support"]), key=lambda cv: cv[1]["f1"]
    )[:3]
    out.print("worst classes: " + ", ".join(f"{c} (F1 {v['f1']:.3f})" for c, v in worst))
    out.print(f"wrote {len(result.files)} files to {result.out_dir}: " + ", ".join(result.files))


def _print_ood(ood: dict[str, Any]) -> None:
    """The abstain rate, and with --ood the figures against the unknown images."""
    if not ood:
        return
    if not ood.get("fitted"):
        out.print(f"OOD score: {ood['kind']} (not fitted: this bundle never abstains)")
    else:
        out.print(
            f"OOD score {ood['kind']}, threshold {ood['threshold']:.4g}: abstains on "
            f"{ood['abstain_rate']:.1%} of these images"
        )
    vs = ood.get("ood_set")
    if vs:
        table = Table(title=f"known classes vs {vs['folder']} ({vs['n_ood']} images)")
        for col in ("AUROC", "FPR@95%TPR", "abstain known", "abstain unknown"):
            table.add_column(col, justify="right")
        table.add_row(
            f"{vs['auroc']:.4f}",
            f"{vs['fpr95']:.1%}",
            f"{vs['abstain_rate_id']:.1%}",
            f"{vs['abstain_rate_ood']:.1%}",
        )
        out.print(table)


# --------------------------------------------------------------------------- fit-ood
class OodKind(StrEnum):
    """What ``cropdoc fit-ood --score`` fits (``cropdoc.ood.OOD_KINDS``)."""

    energy = "energy"
    msp = "msp"
    mahalanobis = "mahalanobis"


@app.command("fit-ood")
def fit_ood(
    bundle: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="Model bundle (RUN/model) or its run directory."),
    ],
    score: Annotated[
        OodKind | None,
        typer.Option(
            help="energy (default: best in BENCHMARKS.md), msp (calibrated max softmax) or "
            "mahalanobis (penultimate features; an ONNX export without them is not used)."
        ),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(
            help="Share of the run's val images the threshold may turn away (default: 0.05).",
            metavar="RATE",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Where the dataset is now, if it moved since training.", metavar="DIR"),
    ] = None,
    workers: opts.WorkersOpt = None,
    device: opts.DeviceOpt = None,
) -> None:
    """Refit the score a model abstains with ("not recognised") on its run's val split."""
    from ..api import load

    info = load(bundle).fit_ood(
        kind=score.value if score else None,
        target=target,
        data=data,
        workers=workers or 0,
        device=device.value if device else None,
    )
    m = info.metrics
    out.print(
        f"OOD score {info.kind}: threshold {info.threshold:.4g} turns away "
        f"{m['val_abstain_rate']:.1%} of {m['val_images']} val images "
        f"(target {info.target_false_abstain:.0%}); saved in model.json",
        highlight=False,
    )


# --------------------------------------------------------------------------- compare
def _compare(data: Path, out_dir: Path, **options: Any):
    """The library call of ``cropdoc compare``."""
    from ..api import compare as api_compare

    return api_compare(
        data, out=out_dir, show_progress=True, scan_progress=scan_progress(), **options
    )


def _names(text: str | None) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()] if text else []


@app.command(cls=opts.LateHelp)
@opts.training_options
def compare(
    data: Annotated[
        Path, typer.Argument(metavar="DATA", help="Dataset folder: one sub-folder per class.")
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Runs, table and plots go here. Comparing again into the same DIR reuses "
            "its finished runs and resumes interrupted ones (add an architecture without "
            "training the others again).",
        ),
    ] = Path("runs/compare"),
    archs: Annotated[
        str | None, typer.Option(metavar="NAMES", help="Architectures to train, comma-separated.")
    ] = None,
    runs: Annotated[
        str | None,
        typer.Option(
            metavar="DIRS",
            help="Finished run directories to include as they are (comma-separated).",
        ),
    ] = None,
    latency_budget_ms: Annotated[
        float | None,
        typer.Option(metavar="MS", help="Only recommend models at most this slow (batch-1 mean)."),
    ] = None,
    *,
    training: opts.TrainingOptions,
) -> None:
    """Train several architectures on one split, score them on one test set, recommend one."""
    config = training.to_config()
    arch_list, run_list = _names(archs), [Path(r) for r in _names(runs)]
    if not arch_list and not run_list:
        arch_list = opts.known_archs()
    if out_dir.is_dir() and next(out_dir.iterdir(), None) is not None:
        _logger.info("%s exists: reusing its finished runs, resuming interrupted ones", out_dir)
    result = _compare(
        data,
        out_dir,
        archs=arch_list,
        runs=run_list,
        config=config,
        latency_budget_ms=latency_budget_ms,
        device=training.device.value if training.device else None,
        workers=training.workers,
    )
    from rich import box

    table = Table(
        title=f"comparison ({len(result.rows)} models, same test set)", box=box.SIMPLE_HEAD
    )
    table.add_column("model", no_wrap=True)
    for col in ("acc", "F1", "ECE", "MB", "ms", "p95", "img/s", "min"):
        table.add_column(col, justify="right", no_wrap=True)
    ranked = sorted(result.rows, key=lambda r: -r["macro_f1"])
    for r in ranked:
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
    for r in ranked[1:]:
        low, high = r["vs_best_low"], r["vs_best_high"]
        if low is not None:
            verdict = "not told apart by this test set" if high >= 0 else "worse on this test set"
            out.print(
                f"{r['name']} minus {ranked[0]['name']}: macro-F1 {low:+.3f} to {high:+.3f} "
                f"(95% paired bootstrap): {verdict}"
            )
    out.print(result.recommendation.replace("**", ""))
    out.print(f"wrote {', '.join(str(p) for p in result.files.values())}")
