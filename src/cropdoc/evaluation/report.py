"""``report.md``: one page a person reads after training or evaluation.

It is assembled only from files the run and the evaluation already wrote
(``scan_report.json``, ``split.json``, ``config.yaml``, ``history.csv``, ``summary.json``,
``model/model.json``, ``eval/metrics.json`` and the plots), so it can be rebuilt at any
time and never disagrees with them. Plots are embedded by relative path, so the run
directory can be moved or zipped and the page still renders (GitHub, VS Code, any
Markdown viewer).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..bundle import META_FILE, BundleMeta, read_meta
from ..classnames import class_label
from ..errors import BundleError
from ..io import atomic_write_text

__all__ = ["write_eval_report", "write_run_report", "write_train_report"]

_logger = logging.getLogger(__name__)

_WORST = 5


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_meta(folder: Path) -> BundleMeta | None:
    """The bundle's typed metadata; None (and a warning) when there is none or it is bad:
    a report is still worth writing from the files that are there."""
    if not (folder / META_FILE).is_file():
        return None
    try:
        return read_meta(folder)
    except BundleError as e:
        _logger.warning("report without the bundle's details: %s", e)
        return None


def _rel(target: Path, base: Path) -> str:
    return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()


def _img(path: Path, base: Path, alt: str) -> list[str]:
    return [f"![{alt}]({_rel(path, base)})", ""] if path.is_file() else []


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, int | float) else "–"


def _num(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) else "–"


# --------------------------------------------------------------------------- sections


def _data_section(run_dir: Path) -> list[str]:
    scan = _json(run_dir / "scan_report.json")
    split = _json(run_dir / "split.json")
    if not scan and not split:
        return []
    lines = ["## Data", ""]
    root = scan.get("root") or split.get("root", "?")
    counts: dict[str, int] = scan.get("counts", {})
    lines.append(
        f"- dataset: `{root}` — {len(counts) or len(split.get('classes', []))} classes, "
        f"{scan.get('n_images', '?')} good images, {scan.get('n_bad_files', 0)} bad files "
        f"excluded, {len(scan.get('duplicate_groups', []))} groups of byte-identical duplicates"
    )
    stats = split.get("stats", {})
    sizes = stats.get("split_sizes", {})
    if sizes:
        lines.append(
            f"- split (seed {split.get('seed')}, ratios {split.get('ratios')}, grouped by leaf: "
            f"{stats.get('n_groups', '?')} groups): "
            + ", ".join(f"{k} {v}" for k, v in sizes.items())
        )
    lines.append("")
    per_split = stats.get("per_split_class_counts", {})
    if counts and per_split:
        rows = [
            [class_label(c), counts[c], *(per_split.get(s, {}).get(c, 0) for s in sizes)]
            for c in counts
        ]
        lines += _table(["class", "images", *sizes], rows)
    bad = scan.get("bad_files", [])
    if bad:
        lines += ["Bad files (not used):", ""]
        lines += [f"- `{b['path']}`: {b['reason']}" for b in bad[:20]]
        if len(bad) > 20:
            lines.append(f"- … and {len(bad) - 20} more (see `scan_report.json`)")
        lines.append("")
    for w in stats.get("warnings", []):
        lines.append(f"> warning: {w}")
    return lines + ([""] if stats.get("warnings") else [])


def _history(run_dir: Path) -> list[dict[str, str]]:
    try:
        with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _recipe_section(run_dir: Path, meta: BundleMeta | None, summary: dict[str, Any]) -> list[str]:
    stages = (meta.recipe if meta else None) or summary.get("stages") or []
    if not stages or meta is None:
        return []
    history = _history(run_dir)
    run_per_stage: dict[str, int] = {}
    for row in history:
        run_per_stage[row["stage"]] = run_per_stage.get(row["stage"], 0) + 1
    t, pre = meta.training, meta.preprocessing
    lines = [
        "## Recipe",
        "",
        f"- architecture `{meta.arch}`, weights `{t.weights}`, input "
        f"{pre.image_size} px (resize {pre.resize_size}, centre crop), "
        f"precision `{t.precision}`, seed {t.seed}, class balance `{t.balance}`"
        + (f", stochastic depth {t.drop_path:g}" if t.drop_path else "")
        + (f", weights averaged (EMA, decay {t.ema:g})" if t.ema else ""),
        "",
    ]
    rows = [
        [
            i + 1,
            s.get("name"),
            s.get("trainable"),
            s.get("epochs"),
            run_per_stage.get(str(i + 1), 0),
            f"{s.get('lr'):g}",
            f"{s['backbone_lr']:g}" if s.get("backbone_lr") else "= lr",
        ]
        for i, s in enumerate(stages)
    ]
    lines += _table(
        ["stage", "name", "trainable", "epochs (max)", "epochs run", "lr (head)", "backbone lr"],
        rows,
    )
    return lines


def _curves_section(run_dir: Path, base: Path, meta: BundleMeta | None) -> list[str]:
    if not (run_dir / "curves.png").is_file():
        return []
    best = meta.best if meta else {}
    lines = ["## Training curves", ""]
    lines += _img(run_dir / "curves.png", base, "training curves")
    if best:
        lines += [
            f"Best model: stage {best.get('stage')} ({best.get('stage_name')}), epoch "
            f"{best.get('epoch')} — val macro-F1 {_num(best.get('val_f1'))}, val accuracy "
            f"{_pct(best.get('val_acc'))}.",
            "",
        ]
    return lines


def _metrics_section(metrics: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    lines = ["## Final metrics", ""]
    if metrics:
        lines.append(
            f"On {metrics.get('source')}: {metrics.get('n_images')} images"
            f" ({metrics.get('n_bad_files', 0)} unreadable, skipped)"
            f", temperature {_num(metrics.get('temperature'), 3)}."
        )
        lines.append("")
        lines += _table(
            ["accuracy", "macro-F1", "weighted-F1", "top-3 accuracy", "NLL", "ECE"],
            [
                [
                    _pct(metrics.get("accuracy")),
                    _num(metrics.get("macro_f1")),
                    _num(metrics.get("weighted_f1")),
                    _pct(metrics.get("top3_accuracy")),
                    _num(metrics.get("nll")),
                    _num(metrics.get("ece")),
                ]
            ],
        )
        lines += _interval_lines(metrics.get("intervals"))
        mapping = metrics.get("class_mapping") or {}
        if mapping:
            lines += ["Class folders matched to the model's classes:", ""]
            lines += [f"- `{k}` → `{v}`" for k, v in mapping.items()]
            lines.append("")
    elif summary.get("test"):
        test = summary["test"]
        lines += _table(
            ["test accuracy", "test macro-F1", "test images"],
            [[_pct(test.get("accuracy")), _num(test.get("macro_f1")), test.get("n")]],
        )
        lines += ["Run `cropdoc evaluate` for the confusion matrix and calibration.", ""]
    else:
        return []
    return lines


def _interval_lines(intervals: dict[str, Any] | None) -> list[str]:
    """The bootstrap intervals in one sentence (nothing for an older metrics.json)."""
    if not intervals:
        return []
    acc, f1 = intervals["accuracy"], intervals["macro_f1"]
    return [
        f"{intervals['level']:.0%} bootstrap intervals ({intervals['n_resamples']} resamples of "
        f"the {intervals['n_groups']} leaves): accuracy {_pct(acc[0])}–{_pct(acc[1])}, "
        f"macro-F1 {_num(f1[0], 3)}–{_num(f1[1], 3)}: how far the scores could move on "
        "another draw of test photos of this size.",
        "",
    ]


def _plots_section(eval_dir: Path | None, base: Path) -> list[str]:
    if eval_dir is None:
        return []
    lines: list[str] = []
    if (eval_dir / "confusion_matrix.png").is_file():
        lines += ["## Confusion matrix", ""]
        lines += _img(eval_dir / "confusion_matrix.png", base, "confusion matrix")
        lines += _img(eval_dir / "per_class_f1.png", base, "F1 per class")
    return lines


def _calibration_section(
    meta: BundleMeta | None,
    metrics: dict[str, Any],
    run_dir: Path | None,
    eval_dir: Path | None,
    base: Path,
) -> list[str]:
    cal = (meta.calibration if meta else None) or {}
    if not cal and not metrics:
        return []
    lines = ["## Calibration", ""]
    if cal:
        lines += [
            f"Temperature T = {cal['temperature']:.3f}, fitted on {cal.get('n')} "
            f"{cal.get('split', 'val')} images (predictions divide logits by T; argmax and "
            "accuracy are unchanged).",
            "",
        ]
        lines += _table(
            ["", "NLL", "ECE (15 bins)"],
            [
                ["before (T = 1)", _num(cal.get("nll_before")), _num(cal.get("ece_before"))],
                ["after", _num(cal.get("nll_after")), _num(cal.get("ece_after"))],
            ],
        )
    else:
        lines += ["No temperature was fitted (T = 1).", ""]
    if run_dir is not None:
        lines += _img(run_dir / "calibration.png", base, "calibration on the validation split")
    if metrics:
        raw = metrics.get("uncalibrated")
        line = f"On the evaluation images: ECE {_num(metrics.get('ece'))}"
        if raw:
            line += f" (uncalibrated {_num(raw.get('ece'))})"
        lines += [
            line + f", mean confidence {_pct(metrics.get('mean_confidence'))}, "
            f"accuracy {_pct(metrics.get('accuracy'))}.",
            "",
        ]
    if eval_dir is not None:
        lines += _img(eval_dir / "reliability.png", base, "reliability diagram")
    return lines


def _ood_section(metrics: dict[str, Any], eval_dir: Path | None, base: Path) -> list[str]:
    """How often the model says "not recognised", and how well that separates unknowns."""
    ood = metrics.get("ood")
    if not ood:
        return []
    lines = ["## Out-of-distribution: when the model abstains", ""]
    if not ood.get("fitted"):
        lines += [
            f"No OOD score is fitted in this bundle: `ood_score` is `{ood['kind']}` "
            "(1 - top-1 probability) and the model never abstains.",
            "",
        ]
    else:
        target = ood.get("target_false_abstain")
        lines += [
            f"Score `{ood['kind']}` (higher = stranger), threshold {_num(ood['threshold'])}, "
            f"set to turn away {_pct(target)} of the validation images. On these images it "
            f"abstains on {_pct(ood['abstain_rate'])}; accuracy on the rest "
            f"{_pct(ood.get('accuracy_accepted'))}.",
            "",
        ]
    vs = ood.get("ood_set")
    if vs:
        lines += _table(
            ["unknown images", "AUROC", "FPR at 95 % TPR", "abstain: known", "abstain: unknown"],
            [
                [
                    f"`{vs['folder']}` ({vs['n_ood']})",
                    _num(vs["auroc"]),
                    _pct(vs["fpr95"]),
                    _pct(vs["abstain_rate_id"]),
                    _pct(vs["abstain_rate_ood"]),
                ]
            ],
        )
        if eval_dir is not None and (eval_dir / "ood_histogram.png").is_file():
            lines += _img(eval_dir / "ood_histogram.png", base, "OOD score histogram")
    return lines


def _robustness_section(eval_dir: Path | None, base: Path) -> list[str]:
    """Macro-F1 and abstain rate per corruption and severity (``--robustness``)."""
    if eval_dir is None or not (eval_dir / "robustness.json").is_file():
        return []
    r = _json(eval_dir / "robustness.json")
    clean = r.get("clean", {})
    lines = [
        "## Robustness: phone-photo corruptions",
        "",
        f"{r.get('n_images')} test images, clean macro-F1 {_num(clean.get('macro_f1'), 3)}, "
        f"abstain {_pct(clean.get('abstain_rate'))}. Each cell: macro-F1 / abstain rate "
        "(abstaining on a photo too damaged to read is the wanted answer).",
        "",
    ]
    rows = [
        [f"`{name}`"]
        + [
            f"{_num(sev[s]['macro_f1'], 3)} / {_pct(sev[s]['abstain_rate'])}"
            for s in sorted(sev, key=int)
        ]
        for name, sev in r.get("corruptions", {}).items()
    ]
    lines += _table(["corruption", "severity 1", "severity 2", "severity 3"], rows)
    return lines + _img(eval_dir / "robustness.png", base, "robustness")


def _gallery_section(eval_dir: Path | None, base: Path) -> list[str]:
    if eval_dir is None or not (eval_dir / "errors_gradcam.png").is_file():
        return []
    return [
        "## Most confident errors: where the model looked",
        "",
        "Grad-CAM overlays for the class the model predicted: warm colours mattered most. A "
        "map on the background instead of the leaf points to a shortcut in the data.",
        "",
        *_img(eval_dir / "errors_gradcam.png", base, "Grad-CAM of the most confident errors"),
    ]


def _worst_section(metrics: dict[str, Any], eval_dir: Path | None, base: Path) -> list[str]:
    per_class: dict[str, dict[str, Any]] = metrics.get("per_class", {})
    present = [(c, m) for c, m in per_class.items() if m.get("support", 0) > 0]
    if not present:
        return []
    classes: list[str] = metrics.get("classes", list(per_class))
    cm = metrics.get("confusion_matrix")
    worst = sorted(present, key=lambda cm_: (cm_[1]["f1"], cm_[0]))[:_WORST]
    rows = []
    for name, m in worst:
        confused = "–"
        if cm is not None and name in classes:
            i = classes.index(name)
            off = [(n, j) for j, n in enumerate(cm[i]) if j != i and n > 0]
            if off:
                n, j = max(off)
                confused = f"{class_label(classes[j])} ({n} of {m['support']})"
        rows.append(
            [
                class_label(name),
                _num(m["f1"], 3),
                _num(m["precision"], 3),
                _num(m["recall"], 3),
                m["support"],
                confused,
            ]
        )
    lines = ["## Worst classes", ""]
    lines += _table(["class", "F1", "precision", "recall", "images", "most often taken for"], rows)
    if eval_dir is not None:
        lines += ["## Example predictions", ""]
        lines += _img(eval_dir / "predictions.png", base, "example predictions")
    return lines


def _reproduce_section(
    run_dir: Path | None, eval_dir: Path | None, metrics: dict[str, Any]
) -> list[str]:
    lines = ["## Reproduce", "", "```sh"]
    data = _json(run_dir / "split.json").get("root", "DATA") if run_dir is not None else "DATA"
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        lines.append(
            f"cropdoc train {data} --config {run_dir / 'config.yaml'} "
            f"--out {run_dir.parent / (run_dir.name + '-repro')}"
        )
    if metrics:
        cmd = f"cropdoc evaluate {metrics.get('bundle')} {metrics.get('data')}"
        cmd += f" --split {metrics.get('split')}"
        if metrics.get("split_file"):
            cmd += f" --split-file {metrics['split_file']}"
        if metrics.get("skipped_unknown_images"):
            cmd += " --ignore-unknown"
        lines.append(cmd + f" --out {eval_dir}")
    elif run_dir is not None:
        lines.append(f"cropdoc evaluate {run_dir / 'model'} {data} --out {run_dir / 'eval'}")
    return lines + ["```", ""]


# --------------------------------------------------------------------------- public


def _build(base: Path, run_dir: Path | None, eval_dir: Path | None) -> str:
    meta = _read_meta(run_dir / "model") if run_dir is not None else None
    metrics = _json(eval_dir / "metrics.json") if eval_dir is not None else {}
    if meta is None and metrics.get("bundle"):
        meta = _read_meta(Path(metrics["bundle"]))
    summary = _json(run_dir / "summary.json") if run_dir is not None else {}
    arch = meta.arch if meta else metrics.get("arch", "model")
    if run_dir is not None:
        root = _json(run_dir / "split.json").get("root", "")
        title = f"# {arch} on {Path(root).name or 'its data'}: run report"
    else:
        title = f"# {arch}: evaluation report"
    lines = [
        title,
        "",
        f"_Generated {datetime.now(UTC).isoformat(timespec='seconds')} from the files in "
        f"`{base}`; rebuilt after each training and evaluation._",
        "",
    ]
    if (
        run_dir is not None
        and base.resolve() != run_dir.resolve()
        and (run_dir / "report.md").is_file()
    ):
        lines += [f"Run: [{run_dir}]({_rel(run_dir / 'report.md', base)})", ""]
    if run_dir is not None:
        lines += _data_section(run_dir)
        lines += _recipe_section(run_dir, meta, summary)
        lines += _curves_section(run_dir, base, meta)
    lines += _metrics_section(metrics, summary)
    lines += _plots_section(eval_dir if metrics else None, base)
    lines += _calibration_section(meta, metrics, run_dir, eval_dir if metrics else None, base)
    lines += _ood_section(metrics, eval_dir if metrics else None, base)
    lines += _gallery_section(eval_dir if metrics else None, base)
    lines += _robustness_section(eval_dir if metrics else None, base)
    lines += _worst_section(metrics, eval_dir, base)
    lines += _reproduce_section(run_dir, eval_dir if metrics else None, metrics)
    return "\n".join(lines).rstrip() + "\n"


def _latest_eval(run_dir: Path) -> Path | None:
    found = [
        p.parent
        for p in run_dir.glob("*/metrics.json")
        if (p.parent / "confusion_matrix.png").is_file()
    ]
    return max(found, key=lambda p: (p / "metrics.json").stat().st_mtime) if found else None


def write_run_report(
    run_dir: str | os.PathLike[str], *, eval_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``RUN/report.md``: data, recipe, curves, metrics, calibration, worst classes.

    Args:
        run_dir: a run directory written by ``cropdoc train``.
        eval_dir: the evaluation to show (default: the newest ``RUN/*/metrics.json``,
            usually ``RUN/eval``; without one, the training-time test numbers are shown).

    Returns:
        The path of ``report.md``.
    """
    run = Path(run_dir)
    ev = Path(eval_dir) if eval_dir is not None else _latest_eval(run)
    path = run / "report.md"
    atomic_write_text(path, _build(run, run, ev))
    _logger.info("wrote %s", path)
    return path


def write_train_report(run_dir: str | os.PathLike[str]) -> Path:
    """The report right after training (what ``workflows.train`` calls)."""
    return write_run_report(run_dir)


def write_eval_report(
    eval_dir: str | os.PathLike[str], *, run_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``EVAL/report.md`` for an evaluation; with ``run_dir``, include the run's
    data, recipe and curves too."""
    ev = Path(eval_dir)
    path = ev / "report.md"
    atomic_write_text(path, _build(ev, Path(run_dir) if run_dir is not None else None, ev))
    _logger.info("wrote %s", path)
    return path
