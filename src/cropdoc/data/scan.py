"""Scan a dataset folder into a :class:`ScanReport`: classes, good images, what was left out.

The layout is read first (:mod:`cropdoc.data.layout`: one folder per class, a pre-split
copy, variants, a lone wrapper folder); then every candidate file is hashed and fully
decoded once, up front: a broken image found here is a line in a report; found in epoch 7
it is a crashed run. Nothing is silently skipped or replaced: bad files, nested copies and
byte-identical files filed under two classes (label conflicts, left out by default) are
listed in the report, and :meth:`ScanReport.problems` sums them up in one line per kind,
so a download with 20,000 conflicts gives one warning, not 20,000.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..classnames import class_key
from ..errors import DataError
from ..io import atomic_write_json
from .images import DEFAULT_MAX_PIXELS, SUPPORTED_EXTENSIONS, BadImageError, check_image
from .layout import ClassFolder, Layout, Walk, detect_layout, select_classes, walk_class
from .problems import Problem, find_problems

__all__ = ["BadFile", "LayoutSummary", "Problem", "Sample", "ScanReport", "scan_folder"]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 2  # 2: layout, notes, label conflicts and each sample's shipped split

LabelConflicts = Literal["exclude", "keep"]


@dataclass(frozen=True)
class Sample:
    """One good image: decoded successfully during the scan."""

    path: Path
    label: int
    class_name: str
    sha256: str
    width: int
    height: int
    split: str | None = None  # the split a pre-split copy filed it under


@dataclass(frozen=True)
class BadFile:
    """A file inside a class folder that cannot be used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class LayoutSummary:
    """How the folder was read (``scan_report.json`` keeps it for the split and evaluation)."""

    kind: str = "classes"  # "classes" | "pre-split"
    split_folders: dict[str, str] = field(default_factory=dict)  # split -> folder name
    variant: str | None = None
    wrapper: str | None = None

    @classmethod
    def of(cls, layout: Layout) -> LayoutSummary:
        return cls(layout.kind, dict(layout.split_folders), layout.variant, layout.wrapper)


@dataclass
class ScanReport:
    """What a dataset folder holds: classes, good images, bad files, what was left out.

    ``classes`` fixes the label of each class (its index); ``samples`` is sorted by
    (label, path) so two scans of the same folder are identical. ``notes`` lists what the
    layout left out, by kind (``nested_copies``, ``copy_folders``, ``loose_images``,
    ``unknown_split_classes``, ``ignored_folders``, ``merged_folders``), as paths relative
    to ``root``; ``label_conflicts`` holds the groups of byte-identical files found under
    different classes (left out of ``samples`` unless the scan kept them).
    """

    root: Path
    classes: list[str]
    samples: list[Sample]
    bad_files: list[BadFile] = field(default_factory=list)
    layout: LayoutSummary = field(default_factory=LayoutSummary)
    notes: dict[str, list[str]] = field(default_factory=dict)
    label_conflicts: list[list[str]] = field(default_factory=list)
    conflicts_kept: bool = False

    def counts(self) -> dict[str, int]:
        """Good images per class, in class order."""
        counts = dict.fromkeys(self.classes, 0)
        for sample in self.samples:
            counts[sample.class_name] += 1
        return counts

    def duplicate_groups(self) -> list[list[Path]]:
        """Groups (size >= 2) of byte-identical good images, sorted for stable output."""
        by_hash: dict[str, list[Path]] = defaultdict(list)
        for sample in self.samples:
            by_hash[sample.sha256].append(sample.path)
        groups = [sorted(paths) for paths in by_hash.values() if len(paths) > 1]
        return sorted(groups)

    def relative(self, path: Path) -> str:
        """``path`` relative to ``root``, POSIX style (how reports and manifests store it)."""
        return path.relative_to(self.root).as_posix()

    def problems(self) -> list[Problem]:
        """One :class:`Problem` per kind (count, a few examples, one readable line)."""
        return find_problems(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; paths relative to ``root`` so the folder can move."""
        return {
            "version": _FORMAT_VERSION,
            "root": str(self.root),
            "layout": {
                "kind": self.layout.kind,
                "split_folders": dict(self.layout.split_folders),
                "variant": self.layout.variant,
                "wrapper": self.layout.wrapper,
            },
            "classes": list(self.classes),
            "counts": self.counts(),
            "n_images": len(self.samples),
            "n_bad_files": len(self.bad_files),
            "problems": [p.to_dict() for p in self.problems()],
            "samples": [_sample_dict(self, s) for s in self.samples],
            "bad_files": [
                {"path": self.relative(b.path), "reason": b.reason} for b in self.bad_files
            ],
            "duplicate_groups": [
                [self.relative(p) for p in group] for group in self.duplicate_groups()
            ],
            "label_conflicts": [list(g) for g in self.label_conflicts],
            "label_conflicts_kept": self.conflicts_kept,
            "notes": {k: list(v) for k, v in self.notes.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the report atomically as JSON (``scan_report.json`` in a run dir)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, root: Path | None = None) -> ScanReport:
        """Read a report written by :meth:`save`; ``root`` overrides where the data now is."""
        data = _read_json(Path(path), "scan report")
        try:
            base = Path(root) if root is not None else Path(data["root"])
            classes = [str(c) for c in data["classes"]]
            samples = [_sample_from(base, classes, s) for s in data["samples"]]
            bad = [BadFile(base / b["path"], str(b["reason"])) for b in data["bad_files"]]
            layout = data.get("layout") or {}
            summary = LayoutSummary(
                kind=str(layout.get("kind", "classes")),
                split_folders={str(k): str(v) for k, v in layout.get("split_folders", {}).items()},
                variant=layout.get("variant"),
                wrapper=layout.get("wrapper"),
            )
            notes = {str(k): [str(x) for x in v] for k, v in data.get("notes", {}).items()}
            conflicts = [[str(x) for x in g] for g in data.get("label_conflicts", [])]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise DataError(
                f"scan report {path} is malformed ({type(e).__name__}: {e}); "
                "delete it and scan the data folder again"
            ) from e
        return cls(
            root=base,
            classes=classes,
            samples=samples,
            bad_files=bad,
            layout=summary,
            notes=notes,
            label_conflicts=conflicts,
            conflicts_kept=bool(data.get("label_conflicts_kept", False)),
        )


def _sample_dict(report: ScanReport, s: Sample) -> dict[str, Any]:
    d: dict[str, Any] = {
        "path": report.relative(s.path),
        "label": s.label,
        "sha256": s.sha256,
        "width": s.width,
        "height": s.height,
    }
    if s.split is not None:
        d["split"] = s.split
    return d


def _sample_from(base: Path, classes: list[str], s: dict[str, Any]) -> Sample:
    split = s.get("split")
    return Sample(
        path=base / s["path"],
        label=int(s["label"]),
        class_name=classes[int(s["label"])],
        sha256=str(s["sha256"]),
        width=int(s["width"]),
        height=int(s["height"]),
        split=None if split is None else str(split),
    )


def scan_folder(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    variant: str | None = None,
    label_conflicts: LabelConflicts = "exclude",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_images_per_class: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Read a dataset folder's layout and validate every image in it.

    Args:
        root: the dataset folder: one sub-folder per class (its name is the class name,
            images at any depth below it), or a pre-split copy (``train/``, ``val/`` or
            ``valid/``, ``test/``, each with class folders); see :mod:`.layout`.
        classes: keep only these classes, in this order (their labels are their positions,
            so a model's class list can be passed to line labels up). ``None``: all class
            folders, sorted by name.
        variant: the variant folder to read when ``root`` holds several (``color``, ...).
        label_conflicts: ``exclude`` (default) leaves byte-identical files filed under two
            classes out of ``samples`` (their label is unknowable); ``keep`` keeps them.
        max_pixels: images declaring more pixels are reported as bad, not decoded.
        min_images_per_class: fewer good images than this in a class is an error.
        progress: called as ``progress(done, total)`` in the calling thread as images finish.

    Returns:
        The report; bad files and everything left out are listed in it, not raised.

    Raises:
        DataError: the folder is missing or not a folder, has no class folders, holds
            variants and none was chosen, a class is unknown, or a class has no or too few
            good images.

    >>> report = scan_folder("data/plantvillage")  # doctest: +SKIP
    >>> report.counts()  # doctest: +SKIP
    >>> for problem in report.problems(): print(problem.message)  # doctest: +SKIP
    """
    layout = detect_layout(root, variant=variant)
    class_names, walks, notes = _walk_all(layout, select_classes(layout, classes))
    jobs, bad, bad_class = _jobs(class_names, walks)
    results = _inspect_all([path for _, path, _ in jobs], max_pixels, progress)
    samples: list[Sample] = []
    for (label, path, split), result in zip(jobs, results, strict=True):
        if isinstance(result, str):
            bad[path], bad_class[path] = result, class_names[label]
        else:
            sha, (width, height) = result
            samples.append(Sample(path, label, class_names[label], sha, width, height, split))
    samples.sort(key=lambda s: (s.label, s.path))
    conflicts, conflicting = _label_conflicts(samples, layout.root)
    excluded: Counter[str] = Counter()
    if label_conflicts == "exclude":
        excluded.update(s.class_name for s in samples if s.path in conflicting)
        samples = [s for s in samples if s.path not in conflicting]
    order = sorted(bad, key=lambda p: p.relative_to(layout.root))
    report = ScanReport(
        root=layout.root,
        classes=class_names,
        samples=samples,
        bad_files=[BadFile(p, bad[p]) for p in order],
        layout=LayoutSummary.of(layout),
        notes=notes,
        label_conflicts=conflicts,
        conflicts_kept=label_conflicts == "keep",
    )
    _check_counts(report, min_images_per_class, bad_class, excluded)
    logger.info(
        "scanned %s (%s): %d classes, %d good images, %d bad files, %d duplicate groups, "
        "%d kind(s) of problem",
        layout.root,
        layout.describe(),
        len(class_names),
        len(report.samples),
        len(report.bad_files),
        len(report.duplicate_groups()),
        len(report.problems()),
    )
    return report


def _walk_all(
    layout: Layout, wanted: list[str]
) -> tuple[list[str], list[tuple[ClassFolder, Walk]], dict[str, list[str]]]:
    """Walk the wanted class folders; a class folder holding nothing but nested copies of
    other classes (``DATA/PlantVillage/<every class>``) is no class, and is left out."""
    keys = {c: class_key(c) for c in layout.classes}
    every = frozenset(k for k in keys.values() if k)
    walks = [
        (f, walk_class(f.path, every - {keys[f.name]})) for f in layout.folders if f.name in wanted
    ]
    notes = {k: list(v) for k, v in layout.notes.items()}
    nested = [p.relative_to(layout.root).as_posix() for _, w in walks for p in w.nested]
    if nested:
        notes["nested_copies"] = nested
    by_class: dict[str, list[Walk]] = defaultdict(list)
    for f, w in walks:
        by_class[f.name].append(w)
    copies = [
        c
        for c in wanted
        if any(w.nested for w in by_class[c]) and not any(w.files or w.broken for w in by_class[c])
    ]
    if copies:
        notes["copy_folders"] = copies
    kept = [c for c in wanted if c not in copies]
    return kept, [(f, w) for f, w in walks if f.name in kept], notes


def _jobs(
    class_names: list[str], walks: list[tuple[ClassFolder, Walk]]
) -> tuple[list[tuple[int, Path, str | None]], dict[Path, str], dict[Path, str]]:
    """Images to decode as (label, path, split); other files are bad, with their class."""
    label_of = {c: i for i, c in enumerate(class_names)}
    jobs: list[tuple[int, Path, str | None]] = []
    bad: dict[Path, str] = {}
    bad_class: dict[Path, str] = {}
    for folder, walk in walks:
        for path in walk.broken:
            bad[path], bad_class[path] = "broken symbolic link", folder.name
        for path in walk.files:
            if path.suffix.lower() in SUPPORTED_EXTENSIONS:
                jobs.append((label_of[folder.name], path, folder.split))
                continue
            suffix = path.suffix
            bad[path] = f"unsupported extension '{suffix}'" if suffix else "no file extension"
            bad_class[path] = folder.name
    return jobs, bad, bad_class


def _label_conflicts(samples: list[Sample], root: Path) -> tuple[list[list[str]], set[Path]]:
    """Groups of byte-identical images filed under more than one class, and their paths."""
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_hash[s.sha256].append(s)
    groups = [g for g in by_hash.values() if len({s.label for s in g}) > 1]
    conflicts = sorted(sorted(s.path.relative_to(root).as_posix() for s in g) for g in groups)
    return conflicts, {s.path for g in groups for s in g}


def _inspect_file(path: Path, max_pixels: int) -> tuple[str, tuple[int, int]] | str:
    """(sha256, size) of a good image, or the reason it is bad."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read file: {e.strerror or e}"
    sha = hashlib.sha256(data).hexdigest()
    try:
        return sha, check_image(data, max_pixels=max_pixels)
    except BadImageError as e:
        return e.reason


def _inspect_all(
    paths: list[Path], max_pixels: int, progress: Callable[[int, int], None] | None
) -> list[tuple[str, tuple[int, int]] | str]:
    # PIL and hashlib release the GIL while decoding/hashing, so threads scale on cores.
    results: list[tuple[str, tuple[int, int]] | str] = [""] * len(paths)
    if not paths:
        return results
    workers = max(1, min(os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cropdoc-scan") as pool:
        futures = {pool.submit(_inspect_file, p, max_pixels): i for i, p in enumerate(paths)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(done, len(paths))
    return results


def _check_counts(
    report: ScanReport, min_images: int, bad_class: dict[Path, str], excluded: Counter[str]
) -> None:
    """A class too small to train or score is an error that says why it is small: bad
    files, or label conflicts left out (those are not bad files, so they are named apart)."""
    bad_per_class: dict[str, int] = dict.fromkeys(report.classes, 0)
    for name in bad_class.values():
        bad_per_class[name] += 1

    def why(name: str) -> str:
        text = f"{bad_per_class[name]} bad files"
        if excluded[name]:
            text += f", {excluded[name]} left out as label conflicts"
        return text

    problems = []
    for name, count in report.counts().items():
        if count == 0:
            problems.append(f"class folder '{name}' has no usable images ({why(name)})")
        elif count < min_images:
            problems.append(
                f"class '{name}' has {count} good image(s), fewer than the minimum of "
                f"{min_images} ({why(name)})"
            )
    if problems:
        keep = any(excluded.values())
        hint = ", keep label conflicts with --label-conflicts keep" if keep else ""
        raise DataError(
            "; ".join(problems) + ". Add images, fix the bad files (see the scan report)"
            f"{hint}, or leave the class out with a class filter"
        )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{what} {path} not found; check the path") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path} cannot be read ({e}); delete it and recreate it") from e
    if not isinstance(data, dict):
        raise DataError(f"{what} {path} is not a JSON object; delete it and recreate it")
    return data
