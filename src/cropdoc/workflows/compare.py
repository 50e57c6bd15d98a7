"""``cropdoc compare``: which architecture to ship, decided on one split and one test set.

Each architecture is trained into ``OUT/<arch>`` with the same settings; the split is made
once (the first run's ``split.json``) and every model is scored on that split's test
images, so differences come from the models, not from the data they saw. Size and speed
are measured in the same process, one model after another.

The recommendation follows a stated rule: among models within the latency budget (if
one is given), take the best macro-F1; every model within one F1 point (0.01) of it is
"as good", and of those the smallest on disk wins (ties: the faster). Small models are
cheaper to ship, to serve and to put on a phone. The table also says how much the test
set can tell: each model's 95 % bootstrap interval, and the paired interval of its
difference from the best model (both scored on the same resampled leaves), which holds 0
when this test set does not tell the two apart.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..data.split import SplitManifest
from ..errors import ConfigError, DataError
from ..evaluation import (
    EvaluationResult,
    bootstrap_intervals,
    evaluate_bundle,
    plot_tradeoff,
    profile_bundle,
)
from ..io import atomic_write_json, atomic_write_text
from ..models import get_arch
from .train import train

__all__ = ["COLUMNS", "F1_TOLERANCE", "Comparison", "compare", "recommend"]

_logger = logging.getLogger(__name__)

F1_TOLERANCE = 0.01
COLUMNS = [
    "name",
    "arch",
    "accuracy",
    "macro_f1",
    "macro_f1_low",
    "macro_f1_high",
    "vs_best_low",
    "vs_best_high",
    "ece",
    "params_m",
    "size_mb",
    "latency_ms_mean",
    "latency_ms_p95",
    "throughput_ips",
    "train_time_min",
    "run_dir",
]


@dataclass
class Comparison:
    """The comparison table, its recommendation and the files written."""

    rows: list[dict[str, Any]]
    recommendation: str
    recommended: str | None
    files: dict[str, Path] = field(default_factory=dict)


def recommend(
    rows: Sequence[dict[str, Any]],
    *,
    latency_budget_ms: float | None = None,
    tolerance: float = F1_TOLERANCE,
) -> tuple[str | None, str]:
    """Apply the rule of the module docstring.

    Returns:
        (name of the recommended model or None, one line saying what and why).
    """
    if not rows:
        return None, "no models to compare"
    eligible = list(rows)
    if latency_budget_ms is not None:
        eligible = [r for r in rows if r["latency_ms_mean"] <= latency_budget_ms]
        if not eligible:
            fastest = min(rows, key=lambda r: r["latency_ms_mean"])
            return None, (
                f"no model meets the {latency_budget_ms:g} ms latency budget; the fastest is "
                f"{fastest['name']} at {fastest['latency_ms_mean']:.1f} ms"
            )
    best = max(eligible, key=lambda r: r["macro_f1"])
    close = [r for r in eligible if r["macro_f1"] >= best["macro_f1"] - tolerance]
    pick = min(close, key=lambda r: (r["size_mb"], r["latency_ms_mean"]))
    budget = f" and under {latency_budget_ms:g} ms" if latency_budget_ms is not None else ""
    why = (
        "it has the best macro-F1"
        if pick is best
        else f"it is within {tolerance * 100:g} F1 point of the best ({best['name']}, "
        f"{best['macro_f1']:.4f})"
    )
    return pick["name"], (
        f"Recommended: **{pick['name']}** (macro-F1 {pick['macro_f1']:.4f}, "
        f"{pick['size_mb']:.1f} MB, {pick['latency_ms_mean']:.1f} ms): the smallest model "
        f"within {tolerance * 100:g} macro-F1 point of the best{budget}; {why}."
    )


def _same_test_split(a: SplitManifest, b: SplitManifest) -> bool:
    return a.classes == b.classes and sorted(a.splits.get("test", [])) == sorted(
        b.splits.get("test", [])
    )


def _train_one(
    data: Path,
    run_dir: Path,
    config: TrainConfig,
    show_progress: bool,
    scan_progress: Callable[[int, int], None] | None,
) -> None:
    """Train into ``run_dir`` unless it already holds a finished run (compare restarts
    where it stopped); an interrupted run is resumed."""
    if (run_dir / "summary.json").is_file():
        _logger.info("reusing the finished run in %s", run_dir)
        return
    resume = (run_dir / "last.ckpt").is_file()
    _logger.info("%s %s in %s", "resuming" if resume else "training", config.arch, run_dir)
    train(
        data,
        run_dir,
        config,
        resume=resume,
        show_progress=show_progress,
        scan_progress=scan_progress,
    )


def _row(name: str, run_dir: Path, metrics: dict[str, Any], prof: dict[str, Any]) -> dict:
    summary: dict[str, Any] = {}
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        _logger.warning("%s has no summary.json; train time unknown", run_dir)
    elapsed = summary.get("elapsed_s")
    return {
        "name": name,
        "arch": metrics["arch"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "macro_f1_low": metrics["intervals"]["macro_f1"][0],
        "macro_f1_high": metrics["intervals"]["macro_f1"][1],
        "ece": metrics["ece"],
        "params_m": prof["params"] / 1e6,
        "size_mb": prof["size_mb"],
        "latency_ms_mean": prof["latency_ms_mean"],
        "latency_ms_p95": prof["latency_ms_p95"],
        "throughput_ips": prof["throughput_ips"],
        "train_time_min": elapsed / 60 if isinstance(elapsed, int | float) else math.nan,
        "run_dir": str(run_dir),
    }


def _against_best(rows: list[dict[str, Any]], evaluations: list[EvaluationResult]) -> None:
    """Each row's macro-F1 minus the best model's, as a 95 % paired bootstrap interval
    over the test leaves (``vs_best_low/high``; None for the best itself).

    Both models are scored on the same resamples, so the photos every model finds hard
    cancel out: an interval holding 0 means this test set does not tell the two apart.
    """
    best = max(range(len(rows)), key=lambda i: rows[i]["macro_f1"])
    ref = evaluations[best]
    index = {path: i for i, path in enumerate(ref.paths)}
    for row, evaluation in zip(rows, evaluations, strict=True):
        row["vs_best_low"] = row["vs_best_high"] = None
        if evaluation is ref or ref.predicted is None or evaluation.predicted is None:
            continue
        mine = [i for i, path in enumerate(evaluation.paths) if path in index]
        theirs = [index[evaluation.paths[i]] for i in mine]
        if not mine:
            continue
        n_classes = len(evaluation.metrics["classes"])
        diff = bootstrap_intervals(
            evaluation.labels[mine],
            evaluation.predicted[mine],
            n_classes,
            groups=[evaluation.leaves[i] for i in mine],
            reference=ref.predicted[theirs],
        )["macro_f1_difference"]
        row["vs_best_low"], row["vs_best_high"] = diff


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _markdown(
    rows: list[dict[str, Any]],
    recommendation: str,
    test_source: str,
    n_test: int,
    device: str,
    warnings_: list[str],
) -> str:
    header = (
        "| model | arch | accuracy | macro-F1 | 95% interval | vs the best (95% paired) | ECE "
        "| params (M) | size (MB) | latency mean (ms) | latency p95 (ms) "
        "| throughput (img/s, batch 32) | train time (min) |"
    )
    lines = [
        "# Model comparison",
        "",
        f"All models scored on the same {n_test} test images ({test_source}); size and speed "
        f"measured one after another on `{device}` (batch-1 latency after warm-up; "
        "throughput at batch 32).",
        "",
        header,
        "|" + "|".join(["---"] * 2 + ["---:"] * 11) + "|",
    ]
    for r in sorted(rows, key=lambda r: -r["macro_f1"]):
        t = r["train_time_min"]
        vs = (
            "best"
            if r["vs_best_low"] is None
            else f"{r['vs_best_low']:+.3f} to {r['vs_best_high']:+.3f}"
        )
        lines.append(
            f"| {r['name']} | {r['arch']} | {r['accuracy']:.1%} | {r['macro_f1']:.4f} | "
            f"{r['macro_f1_low']:.3f}–{r['macro_f1_high']:.3f} | {vs} | "
            f"{r['ece']:.4f} | {r['params_m']:.2f} | {r['size_mb']:.1f} | "
            f"{r['latency_ms_mean']:.1f} | {r['latency_ms_p95']:.1f} | "
            f"{r['throughput_ips']:.0f} | {'–' if math.isnan(t) else f'{t:.1f}'} |"
        )
    lines += ["", recommendation, ""]
    tied = [r["name"] for r in rows if r["vs_best_low"] is not None and r["vs_best_high"] >= 0]
    lines += [
        'Intervals: 95 % bootstrap over the test leaves; "vs the best" is the paired '
        "difference in macro-F1 (both models on the same resamples)."
        + (
            f" This test set does not tell {', '.join(tied)} apart from the best: their "
            "intervals hold 0."
            if tied
            else ""
        ),
        "",
    ]
    lines += [f"> warning: {w}" for w in warnings_]
    lines += [
        "",
        "![macro-F1 vs latency](accuracy_vs_latency.png)",
        "",
        "![macro-F1 vs size](accuracy_vs_size.png)",
        "",
    ]
    return "\n".join(lines)


def compare(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    archs: Sequence[str] = (),
    runs: Sequence[str | os.PathLike[str]] = (),
    config: TrainConfig | None = None,
    latency_budget_ms: float | None = None,
    device: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    profile: dict[str, Any] | None = None,
    show_progress: bool = True,
    scan_progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Train (or reuse) several models, score them on one test set, tabulate and recommend.

    Args:
        data: the dataset folder.
        out: where ``<arch>/`` runs, ``evals/<name>/`` (each model's evaluation on the
            shared test set), ``comparison.csv``, ``comparison.md`` and the plots go.
        archs: architectures to train into ``out/<arch>`` with ``config`` (a finished run
            there is reused, an interrupted one resumed).
        runs: finished run directories to include without training.
        config: training settings shared by all archs (its ``arch`` is replaced).
        latency_budget_ms: only models at most this slow (batch-1 mean) are recommended.
        device: evaluation and profiling device (``"auto"``/None, ``"cpu"``, ``"cuda"``).
        batch_size: evaluation batch size.
        workers: evaluation DataLoader workers.
        profile: options for :func:`~.profile.profile_predict` (``warmup``, ``runs``,
            ``throughput_batch``, ``throughput_runs``).
        show_progress: training progress bars.
        scan_progress: ``(done, total)`` while scanning images.

    Returns:
        The table rows, the recommendation and the files written.

    Raises:
        ConfigError: nothing to compare, or one name twice.
        DataError: the runs do not share one test split.

    >>> archs = ["efficientnet_b0", "mobilenet_v3_small"]
    >>> compare("PlantVillage", "runs/cmp", archs=archs).recommended  # doctest: +SKIP
    """
    data_path, out_dir = Path(data), Path(out)
    entries = _entries(archs, runs, out_dir)
    config = config or TrainConfig()
    for name, run_dir in entries[len(runs) :]:
        cfg = config.model_copy(update={"arch": name})
        _train_one(data_path, run_dir, cfg, show_progress, scan_progress)
    reference = entries[0][1] / "split.json"
    warnings_ = _check_splits(entries, reference, out_dir)

    rows: list[dict[str, Any]] = []
    evaluations: list[EvaluationResult] = []
    test_source, n_test, dev = "", 0, ""
    for name, run_dir in entries:
        evaluation = evaluate_bundle(
            run_dir / "model",
            data_path,
            out_dir=out_dir / "evals" / name,
            split="test",
            split_file=reference,
            batch_size=batch_size,
            workers=workers,
            device=device,
        )
        prof = profile_bundle(run_dir / "model", device=device, **(profile or {})).to_dict()
        rows.append(_row(name, run_dir, evaluation.metrics, prof))
        evaluations.append(evaluation)
        test_source, n_test, dev = evaluation.source, evaluation.metrics["n_images"], prof["device"]
    _against_best(rows, evaluations)

    recommended, line = recommend(rows, latency_budget_ms=latency_budget_ms)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        name: out_dir / name
        for name in ("comparison.csv", "comparison.md", "comparison.json")
        + ("accuracy_vs_latency.png", "accuracy_vs_size.png")
    }
    atomic_write_text(files["comparison.csv"], _csv(rows))
    atomic_write_text(
        files["comparison.md"], _markdown(rows, line, test_source, n_test, dev, warnings_)
    )
    atomic_write_json(
        files["comparison.json"],
        {
            "rows": rows,
            "recommended": recommended,
            "recommendation": line,
            "rule": f"smallest model within {F1_TOLERANCE} macro-F1 of the best"
            + (f", latency <= {latency_budget_ms} ms" if latency_budget_ms is not None else ""),
            "test_split": str(reference),
            "device": dev,
            "warnings": warnings_,
        },
    )
    _plot(rows, files, dev, n_test, latency_budget_ms)
    _logger.info(line.replace("**", ""))
    return Comparison(rows=rows, recommendation=line, recommended=recommended, files=files)


def _entries(
    archs: Sequence[str], runs: Sequence[str | os.PathLike[str]], out_dir: Path
) -> list[tuple[str, Path]]:
    """(name, run dir) of every model to compare: the given runs, then the archs to train."""
    if not archs and not runs:
        raise ConfigError("nothing to compare: give --archs and/or --runs")
    repeated = sorted({a for a in archs if list(archs).count(a) > 1})
    if repeated:
        raise ConfigError(f"architecture(s) {repeated} listed twice in --archs; list each once")
    entries: list[tuple[str, Path]] = [(Path(r).name, Path(r)) for r in runs]
    for run in (p for _, p in entries):
        if not (run / "model" / "model.json").is_file() or not (run / "split.json").is_file():
            raise DataError(f"{run} is not a finished run (needs model/ and split.json)")
    for arch in archs:
        name = get_arch(arch).name
        entries.append((name, out_dir / name))
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"two models share a name in {names}; rename a run directory")
    return entries


def _check_splits(entries: list[tuple[str, Path]], reference: Path, out_dir: Path) -> list[str]:
    """One split for all: the first run's.

    Trained archs make the same split because make_split is deterministic given the
    files, ratios and seed, which they share; this makes sure of it. A run trained here on
    another split is an error; a run given with ``--runs`` only a warning (returned).
    """
    ref_manifest = SplitManifest.load(reference)
    warnings_: list[str] = []
    for name, run_dir in entries:
        if not _same_test_split(ref_manifest, SplitManifest.load(run_dir / "split.json")):
            message = (
                f"{name} was trained on a different split than {reference}; its score on "
                "that test set may include images it was trained on"
            )
            if run_dir.parent == out_dir:
                raise DataError(message + "; delete its run directory and compare again")
            _logger.warning(message)
            warnings_.append(message)
    return warnings_


def _plot(
    rows: list[dict[str, Any]],
    files: dict[str, Path],
    dev: str,
    n_test: int,
    latency_budget_ms: float | None,
) -> None:
    plot_tradeoff(
        rows,
        "latency_ms_mean",
        "macro_f1",
        files["accuracy_vs_latency.png"],
        xlabel=f"batch-1 latency, mean (ms, {dev})",
        ylabel="test macro-F1",
        title=f"macro-F1 vs latency ({n_test} test images)",
        budget=latency_budget_ms,
    )
    plot_tradeoff(
        rows,
        "size_mb",
        "macro_f1",
        files["accuracy_vs_size.png"],
        xlabel="bundle size on disk (MB)",
        ylabel="test macro-F1",
        title=f"macro-F1 vs model size ({n_test} test images)",
    )
