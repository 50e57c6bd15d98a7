"""Which images an evaluation scores, chosen so that training images never leak in.

- DATA is the run's training folder (same root, or a copy holding the listed files): the
  run's ``split.json`` test split (``--split`` another one), exactly. A listed file that is
  missing is an error naming it, never a quiet fall-back to every image in DATA, which
  would score the model on its own training images.
- ``--split-file``: that manifest's split, exactly, the same way.
- Any other folder: its images; a pre-split copy's own test folder (``--split`` another
  one). Images byte-identical to ones the run trained or validated on (its
  ``scan_report.json`` knows their hashes) are left out and counted.
- ``--split all``: every image in DATA, the explicit choice, with a warning if the run saw
  some of them in training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..bundle import BundleMeta
from ..classnames import match_classes
from ..data.layout import detect_layout
from ..data.scan import ScanReport, scan_folder
from ..data.split import DEFAULT_GROUP_PATTERN, SPLITS, SplitManifest
from ..errors import ConfigError, DataError

__all__ = ["EVAL_SPLITS", "Selection", "select_images"]

_logger = logging.getLogger(__name__)

EVAL_SPLITS = (*SPLITS, "all")
_EXAMPLES = 3


@dataclass
class Selection:
    """The images to score, with their labels in the bundle's class order, and why these."""

    samples: list[tuple[Path, int]]
    source: str
    split: str
    mapping: dict[str, str]
    split_file: Path | None
    bad: list[tuple[Path, str]]
    skipped_unknown: int = 0
    seen_in_training: int = 0  # byte-identical to train/val images of the run
    group_pattern: str = DEFAULT_GROUP_PATTERN  # the leaf-id rule of the split, if any


def _listed_present(manifest: SplitManifest, data: Path) -> bool:
    """Is ``data`` the manifest's folder, or a copy holding at least one file it lists?"""
    if data.resolve() == Path(manifest.root).resolve():
        return True
    return any((data / rel).is_file() for items in manifest.splits.values() for rel, _ in items)


def _from_manifest(
    manifest: SplitManifest,
    where: Path,
    data: Path,
    split: str,
    meta: BundleMeta,
    ignore_unknown: bool,
) -> Selection:
    mapping = match_classes(manifest.classes, meta.classes, ignore_unknown=ignore_unknown)
    index = {c: i for i, c in enumerate(meta.classes)}
    remap = {i: index[mapping[c]] for i, c in enumerate(manifest.classes) if c in mapping}
    items = manifest.samples(split, root=data)
    samples = [(p, remap[y]) for p, y in items if y in remap]
    missing = [p for p, _ in samples if not p.is_file()]
    if samples and len(missing) == len(samples):
        raise DataError(
            f"none of the {len(samples)} '{split}' images of {where} exist under {data}; "
            f"pass the dataset folder the split was made from"
        )
    if missing:
        shown = ", ".join(p.relative_to(data).as_posix() for p in missing[:_EXAMPLES])
        raise DataError(
            f"{len(missing)} of the {len(samples)} '{split}' images listed in {where} are "
            f"missing under {data} (e.g. {shown}), so that split cannot be scored exactly; "
            "restore them or pass the folder the run was trained on, or choose --split all "
            "to score every image in DATA (training images included)"
        )
    return Selection(
        samples=samples,
        source=f"the '{split}' split of {where}",
        split=split,
        mapping=mapping,
        split_file=where,
        bad=[],
        skipped_unknown=len(items) - len(samples),
        group_pattern=manifest.group_pattern,
    )


def _seen_hashes(run_dir: Path) -> set[str]:
    """sha256 of the images the run trained and validated on (empty if unknown)."""
    report_path, split_path = run_dir / "scan_report.json", run_dir / "split.json"
    if not (report_path.is_file() and split_path.is_file()):
        return set()
    try:
        report = ScanReport.load(report_path)
        manifest = SplitManifest.load(split_path)
    except DataError as e:
        _logger.warning("cannot check for training images in DATA: %s", e)
        return set()
    used = {rel for s in ("train", "val") for rel, _ in manifest.splits.get(s, [])}
    return {s.sha256 for s in report.samples if report.relative(s.path) in used}


def _folder_split(report: ScanReport, data: Path, split: str | None) -> str | None:
    """The shipped split to score in a pre-split folder (None: every image)."""
    if report.layout.kind != "pre-split" or split == "all":
        return None
    wanted = split or "test"
    if wanted not in report.layout.split_folders:
        have = ", ".join(f"{f}/" for f in report.layout.split_folders.values())
        raise DataError(
            f"{data} is a pre-split copy ({have}) with no {wanted} folder; choose "
            f"--split {' or '.join(report.layout.split_folders)}, or --split all"
        )
    return wanted


def _from_folder(
    data: Path,
    run_dir: Path,
    meta: BundleMeta,
    split: str | None,
    ignore_unknown: bool,
    scan_progress: Callable[[int, int], None] | None,
) -> Selection:
    layout = detect_layout(data)
    # Match before scanning: an unknown class fails in a second, not after decoding everything.
    mapping = match_classes(layout.classes, meta.classes, ignore_unknown=ignore_unknown)
    if not mapping:
        raise DataError(f"none of the class folders in {data} is a class of the model")
    report = scan_folder(
        data, classes=list(mapping), min_images_per_class=1, progress=scan_progress
    )
    for problem in report.problems():
        _logger.warning(problem.message)
    shipped = _folder_split(report, data, split)
    chosen = [s for s in report.samples if shipped is None or s.split == shipped]
    seen = _seen_hashes(run_dir)
    n_seen = sum(1 for s in chosen if s.sha256 in seen)
    if n_seen and split != "all":
        _logger.warning(
            "%d image(s) in %s are byte-identical to images this model was trained or "
            "validated on; left out (--split all scores them too)",
            n_seen,
            data,
        )
        chosen = [s for s in chosen if s.sha256 not in seen]
    elif n_seen:
        _logger.warning(
            "%d of these images were seen in training: expect optimistic figures", n_seen
        )
    index = {c: i for i, c in enumerate(meta.classes)}
    prefix = f"{report.layout.split_folders[shipped]}/" if shipped else ""
    folders = [f.path for f in layout.folders if f.name not in mapping]
    return Selection(
        samples=[(s.path, index[mapping[s.class_name]]) for s in chosen],
        source=f"the {prefix} folder of {data}" if shipped else f"every image in {data}",
        split=shipped or "all",
        mapping=mapping,
        split_file=None,
        bad=[
            (b.path, b.reason)
            for b in report.bad_files
            if report.relative(b.path).startswith(prefix)
        ],
        skipped_unknown=sum(1 for f in folders for p in f.rglob("*") if p.is_file()),
        seen_in_training=n_seen,
    )


def select_images(
    bundle_dir: Path,
    meta: BundleMeta,
    data: Path,
    split: str | None,
    split_file: Path | None,
    ignore_unknown: bool,
    scan_progress: Callable[[int, int], None] | None,
) -> Selection:
    """The images ``cropdoc evaluate`` scores (see the module docstring for the rules).

    Raises:
        ConfigError: an unknown ``split``.
        DataError: a split that cannot be found exactly, or unusable data.
    """
    if split is not None and split not in EVAL_SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of {', '.join(EVAL_SPLITS)}")
    if not data.is_dir():
        raise DataError(f"data folder {data} does not exist or is not a folder; check the path")
    run_dir = bundle_dir.parent
    if split == "all":
        return _from_folder(data, run_dir, meta, split, ignore_unknown, scan_progress)
    if split_file is not None:
        manifest = SplitManifest.load(split_file)
        return _from_manifest(manifest, split_file, data, split or "test", meta, ignore_unknown)
    own = run_dir / "split.json"
    if own.is_file():
        manifest = SplitManifest.load(own)
        if _listed_present(manifest, data):
            return _from_manifest(manifest, own, data, split or "test", meta, ignore_unknown)
    if split is not None and detect_layout(data).kind != "pre-split":
        raise DataError(
            f"--split {split} needs the training split of {data}, but {own} "
            f"{'was made from another folder' if own.is_file() else 'does not exist'}; "
            "pass --split-file RUN_DIR/split.json, or --split all to use every image in DATA"
        )
    return _from_folder(data, run_dir, meta, split, ignore_unknown, scan_progress)
