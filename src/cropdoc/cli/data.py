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
        Path, typer.Argument(metavar="DATA", help="Dataset folder: one sub-folder per class.")
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out", metavar="DIR", help="Write plots and JSON here.")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(metavar="NAMES", help="Only these class folders (comma-separated)."),
    ] = None,
) -> None:
    """Counts, bad files, image sizes, duplicates and leaf groups; optional plots."""
    from ..data.inspect import plot_class_distribution, plot_samples, summarize
    from ..data.scan import scan_folder
    from ..data.split import make_split

    report = scan_folder(
        data, classes=classes.split(",") if classes else None, progress=scan_progress()
    )
    summary = summarize(report)
    table = Table(title=f"{data}  ({summary['n_classes']} classes, {summary['n_images']} images)")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for name, count in report.counts().items():
        table.add_row(name, str(count), f"{count / max(summary['n_images'], 1):.1%}")
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
        from ..io import atomic_write_json

        out_dir.mkdir(parents=True, exist_ok=True)
        plot_class_distribution(report, out_dir / "class_distribution.png")
        plot_samples(report, out_dir / "samples.png")
        report.save(out_dir / "scan_report.json")
        atomic_write_json(out_dir / "summary.json", summary)
        out.print(
            f"wrote {out_dir / 'class_distribution.png'}, {out_dir / 'samples.png'}, "
            f"{out_dir / 'scan_report.json'}"
        )
