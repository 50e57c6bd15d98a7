"""``cropdoc data ...``: look at a dataset before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import data_app, out, scan_progress


# --------------------------------------------------------------------------- data inspect
@data_app.command("inspect")
def data_inspect(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="Dataset folder: one sub-folder per class, or a pre-split copy (train/ "
            "val/ test/).",
        ),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", metavar="DIR", help="Write plots, summary.json and scan_report.json here."
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(metavar="NAMES", help="Only these class folders (comma-separated)."),
    ] = None,
    variant: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Read this variant folder when DATA holds several (color, grayscale, segmented).",
        ),
    ] = None,
) -> None:
    """Layout, counts, bad files, image sizes, duplicates, leaf groups; optional plots."""
    from ..data.scan import scan_folder

    report = scan_folder(
        data,
        classes=classes.split(",") if classes else None,
        variant=variant,
        progress=scan_progress(),
    )
    _print_counts(data, report)
    _print_split(report)
    problems = report.problems()
    for problem in problems:
        out.print(f"[yellow]problem:[/] {problem.message}", highlight=False, soft_wrap=True)
    if not problems:
        out.print("problems: none (no bad files, label conflicts or nested copies)")
    if out_dir is not None:
        _write(report, out_dir)
    elif problems:
        out.print("the full lists: add --out DIR (scan_report.json)")


def _print_counts(data: Path, report) -> None:
    from ..data.inspect import summarize

    summary = summarize(report)
    layout = report.layout
    where = f" in {report.root}" if report.root != data.resolve() else ""
    kind = "pre-split" if layout.kind == "pre-split" else "one folder per class"
    out.print(f"layout: {kind}{where}", highlight=False)
    table = Table(title=f"{data}  ({summary['n_classes']} classes, {summary['n_images']} images)")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    splits = [s for s in ("train", "val", "test") if s in layout.split_folders]
    for split in splits:
        table.add_column(f"{layout.split_folders[split]}/", justify="right")
    per_split = {(s.class_name, s.split): 0 for s in report.samples}
    for s in report.samples:
        per_split[(s.class_name, s.split)] += 1
    for name, count in report.counts().items():
        cells = [str(per_split.get((name, split), 0)) for split in splits]
        table.add_row(name, str(count), f"{count / max(summary['n_images'], 1):.1%}", *cells)
    out.print(table)
    ratio = summary.get("imbalance_ratio")
    if ratio is not None:
        out.print(f"imbalance ratio (largest / smallest class): {ratio:.2f}")
    sizes = summary.get("image_sizes") or {}
    if sizes:
        w, h = sizes["width"], sizes["height"]
        common = sizes.get("most_common")
        out.print(
            f"image sizes: width {w['min']}–{w['max']} (median {w['median']:g}), "
            f"height {h['min']}–{h['max']} (median {h['median']:g})"
            + (
                f"; most common {common[0]}×{common[1]} ({sizes.get('most_common_count')} images)"
                if common
                else ""
            )
        )


def _print_split(report) -> None:
    from ..data.split import make_split

    manifest = make_split(report)
    stats = manifest.stats
    out.print(
        f"leaf/photo groups: {stats.get('n_groups')} "
        f"({stats.get('n_multi_image_groups')} with several images); "
        f"byte-identical duplicate groups: {len(report.duplicate_groups())}"
    )
    if stats.get("source") != "shipped":
        return
    sizes = ", ".join(f"{s} {n}" for s, n in stats["split_sizes"].items())
    carved = "; ".join(f"{s}: {how}" for s, how in stats["carved"].items())
    out.print(
        f"split: the one DATA ships with ({sizes}{'; ' + carved if carved else ''}); "
        "`cropdoc train --resplit` pools the folders and splits them grouped by leaf",
        highlight=False,
    )
    across = stats["groups_across_splits"]
    if across:
        out.print(
            f"[yellow]leakage risk:[/] {across} leaf group(s) appear in more than one shipped "
            f"split, e.g. {', '.join(stats['groups_across_splits_examples'])}",
            highlight=False,
        )


def _write(report, out_dir: Path) -> None:
    from ..data.inspect import plot_class_distribution, plot_samples, summarize
    from ..io import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_class_distribution(report, out_dir / "class_distribution.png")
    plot_samples(report, out_dir / "samples.png")
    report.save(out_dir / "scan_report.json")
    atomic_write_json(out_dir / "summary.json", summarize(report))
    out.print(
        f"wrote {out_dir / 'class_distribution.png'}, {out_dir / 'samples.png'}, "
        f"{out_dir / 'scan_report.json'}"
    )
