"""Scan a folder-per-class dataset (PlantVillage layout) into a :class:`ScanReport`.

Every candidate file is hashed and fully decoded once, up front: a broken image found
here is a line in a report; found in epoch 7 it is a crashed run. Bad files are listed,
never silently skipped or replaced, and byte-identical duplicates are reported so the
split can keep them together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import atomic_write_json
from .images import DEFAULT_MAX_PIXELS, SUPPORTED_EXTENSIONS, BadImageError, check_image

__all__ = ["BadFile", "Sample", "ScanReport", "scan_folder"]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_LAYOUT_HINT = "expected one sub-folder per class, e.g. DATA/Tomato___healthy/leaf1.jpg"


@dataclass(frozen=True)
class Sample:
    """One good image: decoded successfully during the scan."""

    path: Path
    label: int
    class_name: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class BadFile:
    """A file inside a class folder that cannot be used, and why."""

    path: Path
    reason: str


@dataclass
class ScanReport:
    """What a dataset folder holds: classes, good images, bad files.

    ``classes`` fixes the label of each class (its index); ``samples`` is sorted by
    (label, relative path) so two scans of the same folder are identical.
    """

    root: Path
    classes: list[str]
    samples: list[Sample]
    bad_files: list[BadFile] = field(default_factory=list)

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; paths relative to ``root`` so the folder can move."""
        return {
            "version": _FORMAT_VERSION,
            "root": str(self.root),
            "classes": list(self.classes),
            "counts": self.counts(),
            "n_images": len(self.samples),
            "n_bad_files": len(self.bad_files),
            "samples": [
                {
                    "path": self.relative(s.path),
                    "label": s.label,
                    "sha256": s.sha256,
                    "width": s.width,
                    "height": s.height,
                }
                for s in self.samples
            ],
            "bad_files": [
                {"path": self.relative(b.path), "reason": b.reason} for b in self.bad_files
            ],
            "duplicate_groups": [
                [self.relative(p) for p in group] for group in self.duplicate_groups()
            ],
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
            samples = [
                Sample(
                    path=base / s["path"],
                    label=int(s["label"]),
                    class_name=classes[int(s["label"])],
                    sha256=str(s["sha256"]),
                    width=int(s["width"]),
                    height=int(s["height"]),
                )
                for s in data["samples"]
            ]
            bad = [BadFile(base / b["path"], str(b["reason"])) for b in data["bad_files"]]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise DataError(
                f"scan report {path} is malformed ({type(e).__name__}: {e}); "
                "delete it and scan the data folder again"
            ) from e
        return cls(root=base, classes=classes, samples=samples, bad_files=bad)


def scan_folder(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_images_per_class: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Scan a folder with one sub-folder per class and validate every image in it.

    Args:
        root: the dataset folder; each non-hidden sub-folder is a class (its name is the
            class name) and may hold images at any depth.
        classes: keep only these classes, in this order (their labels are their positions,
            so a model's class list can be passed to line labels up). ``None``: all class
            folders, sorted by name.
        max_pixels: images declaring more pixels are reported as bad, not decoded.
        min_images_per_class: fewer good images than this in a class is an error.
        progress: called as ``progress(done, total)`` in the calling thread as images finish.

    Returns:
        The report; bad files are listed in it, not raised.

    Raises:
        DataError: the folder is missing or not a folder, has no class folders, a class is
            unknown, or a class has no or too few good images.

    >>> report = scan_folder("data/plantvillage")  # doctest: +SKIP
    >>> report.counts()  # doctest: +SKIP
    """
    root_path = _check_root(Path(root).expanduser())
    class_dirs = _class_dirs(root_path, classes)
    class_names = list(class_dirs)

    jobs: list[tuple[int, Path]] = []
    bad: dict[Path, str] = {}
    for label, folder in enumerate(class_dirs.values()):
        for path in _walk_files(folder):
            if path.suffix.lower() in SUPPORTED_EXTENSIONS:
                jobs.append((label, path))
            else:
                suffix = path.suffix
                bad[path] = f"unsupported extension '{suffix}'" if suffix else "no file extension"

    results = _inspect_all([path for _, path in jobs], max_pixels, progress)
    samples: list[Sample] = []
    for (label, path), result in zip(jobs, results, strict=True):
        if isinstance(result, str):
            bad[path] = result
        else:
            sha, (width, height) = result
            samples.append(Sample(path, label, class_names[label], sha, width, height))

    bad_files = [BadFile(p, bad[p]) for p in sorted(bad, key=lambda p: p.relative_to(root_path))]
    report = ScanReport(root=root_path, classes=class_names, samples=samples, bad_files=bad_files)
    _check_counts(report, min_images_per_class)
    _warn_label_conflicts(report)
    logger.info(
        "scanned %s: %d classes, %d good images, %d bad files, %d duplicate groups",
        root_path,
        len(class_names),
        len(samples),
        len(bad_files),
        len(report.duplicate_groups()),
    )
    return report


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; check the path ({_LAYOUT_HINT})")
    if not root.is_dir():
        raise DataError(
            f"data path {root} is a file, not a folder; pass the folder that holds one "
            f"sub-folder per class ({_LAYOUT_HINT})"
        )
    return root.resolve()


def _class_dirs(root: Path, wanted: Sequence[str] | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    loose: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found[entry.name] = entry
        else:
            loose.append(entry.name)
    # Images at the top level are probably misplaced (they would silently miss training);
    # other files there (README, SHA256SUMS, ...) are normal, so they only get an info line.
    images = [name for name in loose if Path(name).suffix.lower() in SUPPORTED_EXTENSIONS]
    for level, names in (
        (logging.WARNING, images),
        (logging.INFO, sorted(set(loose) - set(images))),
    ):
        if names:
            logger.log(
                level,
                "ignoring %d file(s) directly in %s (only class sub-folders are read): %s",
                len(names),
                root,
                ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""),
            )
    if not found:
        raise DataError(f"no class folders in {root}; {_LAYOUT_HINT}")
    if wanted is None:
        return found
    wanted = list(wanted)
    if not wanted:
        raise DataError("the class filter is empty; pass at least one class name or none")
    repeated = sorted({c for c in wanted if wanted.count(c) > 1})
    if repeated:
        raise DataError(f"class filter names {repeated} more than once; list each class once")
    unknown = [c for c in wanted if c not in found]
    if unknown:
        raise DataError(
            f"unknown class(es) {unknown} in the class filter; available in {root}: {sorted(found)}"
        )
    return {name: found[name] for name in wanted}


def _walk_files(folder: Path) -> list[Path]:
    """Non-hidden files under ``folder`` at any depth, in a stable order."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(files)


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


def _check_counts(report: ScanReport, min_images: int) -> None:
    bad_per_class: dict[str, int] = dict.fromkeys(report.classes, 0)
    for b in report.bad_files:
        bad_per_class[b.path.relative_to(report.root).parts[0]] += 1
    problems = []
    for name, count in report.counts().items():
        if count == 0:
            problems.append(
                f"class folder '{name}' has no usable images ({bad_per_class[name]} bad files)"
            )
        elif count < min_images:
            problems.append(
                f"class '{name}' has {count} good image(s), fewer than the minimum of "
                f"{min_images} ({bad_per_class[name]} bad files)"
            )
    if problems:
        raise DataError(
            "; ".join(problems) + ". Add images, fix the bad files (see the scan report), "
            "or leave the class out with a class filter"
        )


def _warn_label_conflicts(report: ScanReport) -> None:
    for group in report.duplicate_groups():
        folders = {report.relative(p).split("/")[0] for p in group}
        if len(folders) > 1:
            logger.warning(
                "label conflict: identical image in classes %s: %s",
                sorted(folders),
                ", ".join(report.relative(p) for p in group),
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
