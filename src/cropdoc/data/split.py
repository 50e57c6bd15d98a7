"""Stratified, leaf-grouped train/val/test split (or the one a dataset ships), as ``split.json``.

PlantVillage photographed many leaves more than once (``GHLB_PS Leaf 2.2 Day 3`` and
``... Day 8`` are one leaf) and holds byte-identical copies. A random per-image split puts
the same leaf in train and test and inflates test accuracy, so images are first grouped
(leaf id from the file name, plus identical bytes, joined with union-find) and whole groups
are assigned to splits, class by class, as close to the requested ratios as groups allow.

A pre-split copy (``train/ valid/ test/``) keeps the split it ships with, so results
compare with others' on it; a split it lacks is carved out of its train folder, grouped.
Leaves found in two shipped splits are counted and warned about (``--resplit`` pools the
folders and splits them grouped instead).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import atomic_write_json
from .scan import ScanReport

__all__ = [
    "DEFAULT_GROUP_PATTERN",
    "SPLITS",
    "SplitManifest",
    "group_keys",
    "leaf_keys",
    "make_split",
    "shipped_split",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_FORMAT_VERSION = 1

# PlantVillage stems are "<uuid>___<photo id>[ Day N | .K][copy/augmentation suffixes]".
# The leaf id is the photo id without:
# - " Day N": "GHLB_PS Leaf 2.2 Day 3" and "... Day 8" are one leaf on two days; in this
#   series "Leaf 2.2" is the leaf's own id and is kept whole;
# - otherwise a trailing ".K" re-shot counter: "GH_HL Leaf 340" and "GH_HL Leaf 340.1", or
#   "GHLB2ES Leaf 119.1" and "... 119.2", are the same leaf (checked by eye on the samples);
# - suffixes of copies and augmented variants: "_final_masked" (segmented release),
#   "_new30degFlipLR", "_90deg", "_flipTB", "_change_180", " copy", " - Copy (2)", " (1)".
# The lazy group makes the regex strip as much of that tail as it can; ".K" needs a digit
# before it, so ids such as "JR_B.Spot 9045" stay whole.
DEFAULT_GROUP_PATTERN = (
    r"^[^_]*___(?P<group>.+?)"
    r"(?:(?i:\s*\bday\s*\d+)|(?<=\d)\.\d+)?"
    r"(?i:[ _-]+(?:final_masked|masked|new\w*|\d+deg\w*|flip(?:lr|tb)\w*|change_\w+"
    r"|copy(?:\s*\d+)?)|\s*\(\d+\))*$"
)


@dataclass
class SplitManifest:
    """Which image goes to which split; everything needed to rebuild or audit it."""

    root: Path
    classes: list[str]
    seed: int
    ratios: tuple[float, float, float]
    group_pattern: str
    splits: dict[str, list[tuple[str, int]]]
    stats: dict[str, Any] = field(default_factory=dict)

    def samples(self, split: str, root: Path | None = None) -> list[tuple[Path, int]]:
        """(absolute path, label) pairs of ``split``; ``root`` overrides where the data is now."""
        if split not in self.splits:
            raise DataError(f"unknown split '{split}'; choose one of {list(self.splits)}")
        base = Path(root) if root is not None else self.root
        return [(base / rel, label) for rel, label in self.splits[split]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; paths relative to ``root``."""
        return {
            "version": _FORMAT_VERSION,
            "root": str(self.root),
            "classes": list(self.classes),
            "seed": self.seed,
            "ratios": list(self.ratios),
            "group_pattern": self.group_pattern,
            "stats": self.stats,
            "splits": {
                name: [[rel, label] for rel, label in items] for name, items in self.splits.items()
            },
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the manifest atomically as JSON (``split.json`` in a run dir)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitManifest:
        """Read a manifest written by :meth:`save`.

        Raises:
            DataError: the file is missing, not JSON, or not a valid manifest.
        """
        data = _read_manifest_json(Path(path))
        try:
            classes = [str(c) for c in data["classes"]]
            splits: dict[str, list[tuple[str, int]]] = {}
            for name, items in data["splits"].items():
                if name not in SPLITS:
                    raise ValueError(f"unknown split name '{name}'")
                splits[name] = [(str(rel), int(label)) for rel, label in items]
                if any(not 0 <= label < len(classes) for _, label in splits[name]):
                    raise ValueError(f"a label in split '{name}' is not a class index")
            ratios = tuple(float(r) for r in data["ratios"])
            if len(ratios) != 3:
                raise ValueError("ratios must hold 3 numbers")
            manifest = cls(
                root=Path(data["root"]),
                classes=classes,
                seed=int(data["seed"]),
                ratios=ratios,  # type: ignore[arg-type]
                group_pattern=str(data["group_pattern"]),
                splits=splits,
                stats=dict(data.get("stats", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(
                f"split manifest {path} is malformed ({type(e).__name__}: {e}); "
                "delete it and make the split again"
            ) from e
        return manifest


def leaf_keys(
    items: Iterable[tuple[str, str]], *, group_pattern: str = DEFAULT_GROUP_PATTERN
) -> list[str]:
    """The leaf of each ``(class name, file path)`` from its file name alone, as
    ``class/leaf id``; a name the pattern does not match is its own leaf (``class/path``).

    The name half of :func:`group_keys`, without reading any bytes: evaluation uses it to
    count several photos of one leaf once in its confidence intervals.

    Raises:
        DataError: a bad group pattern.
    """
    regex = _compile(group_pattern)
    return [_leaf_key(class_name, path, regex) for class_name, path in items]


def group_keys(report: ScanReport, *, group_pattern: str = DEFAULT_GROUP_PATTERN) -> list[str]:
    """The group of each sample in ``report.samples`` (same order).

    Samples share a group when their file names give the same leaf id within a class, or
    when their bytes are identical (even across classes); the key of a group is the
    smallest ``class/leaf id`` in it. Names the pattern does not match are their own group.
    """
    n = len(report.samples)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    names = leaf_keys(
        [(s.class_name, report.relative(s.path)) for s in report.samples],
        group_pattern=group_pattern,
    )
    first_by: dict[str, int] = {}
    for i, sample in enumerate(report.samples):
        for key in (f"name:{names[i]}", f"sha:{sample.sha256}"):
            if key in first_by:
                union(first_by[key], i)
            else:
                first_by[key] = i
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    key_of_root = {r: min(names[i] for i in idx) for r, idx in members.items()}
    return [key_of_root[find(i)] for i in range(n)]


def make_split(
    report: ScanReport,
    *,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    group_pattern: str = DEFAULT_GROUP_PATTERN,
    shipped: bool = True,
) -> SplitManifest:
    """Split a scanned dataset into train/val/test, stratified by class, grouped by leaf.

    A pre-split copy keeps its own split when ``shipped`` (see :func:`shipped_split`);
    ``shipped=False`` pools its folders and splits them as below.

    Per class, groups are shuffled with a seed derived from ``seed`` and the class name
    (so a class's split does not change when other classes are added), then placed
    largest first into the split furthest below its target (ratio x class size, rounded
    so the targets add up). With single-image groups every split is within one image of
    its target. Each split with a non-zero ratio gets at least one group of each class
    that has enough groups; when a class has too few, a warning is logged and recorded
    in ``stats["warnings"]``.

    Raises:
        DataError: bad ratios, or a bad group pattern.

    >>> manifest = make_split(scan_folder("data"), seed=42)  # doctest: +SKIP
    >>> manifest.save("runs/x/split.json")  # doctest: +SKIP
    """
    ratios = _check_ratios(ratios)
    if shipped and report.layout.kind == "pre-split":
        return shipped_split(report, ratios=ratios, seed=seed, group_pattern=group_pattern)
    keys = group_keys(report, group_pattern=group_pattern)

    # Each group lives in the class holding most of its images (ties: lowest label);
    # only label-conflict duplicates make a group span classes.
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    per_class_groups: dict[int, list[str]] = defaultdict(list)
    for key, idx in groups.items():
        labels = [report.samples[i].label for i in idx]
        home = min(set(labels), key=lambda lab: (-labels.count(lab), lab))
        per_class_groups[home].append(key)

    counts = [[0] * len(SPLITS) for _ in report.classes]
    assignment: dict[str, int] = {}
    warnings_: list[str] = []
    class_sizes = report.counts()
    for label, name in enumerate(report.classes):
        class_groups = sorted(per_class_groups.get(label, []))
        random.Random(f"{seed}:{name}").shuffle(class_groups)
        # Stable sort keeps the shuffled order among groups of equal size.
        class_groups.sort(key=lambda k: -len(groups[k]))
        targets = _targets(class_sizes[name], ratios, len(class_groups))
        placed = _assign(class_groups, groups, targets, report, label, counts)
        warning = _ensure_every_split(name, placed, groups, ratios, report, counts, label)
        if warning:
            logger.warning(warning)
            warnings_.append(warning)
        for split_idx, keys_in_split in enumerate(placed):
            for key in keys_in_split:
                assignment[key] = split_idx

    splits: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for i, sample in enumerate(report.samples):
        splits[SPLITS[assignment[keys[i]]]].append((report.relative(sample.path), sample.label))

    stats = {"source": "grouped", **_stats(report, groups, splits, warnings_)}
    logger.info(
        "split %d images in %d groups: %s",
        stats["n_images"],
        stats["n_groups"],
        {s: len(v) for s, v in splits.items()},
    )
    return SplitManifest(
        root=report.root,
        classes=list(report.classes),
        seed=seed,
        ratios=ratios,
        group_pattern=group_pattern,
        splits=splits,
        stats=stats,
    )


def shipped_split(
    report: ScanReport,
    *,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    group_pattern: str = DEFAULT_GROUP_PATTERN,
) -> SplitManifest:
    """The split a pre-split copy ships with (each sample's ``split``).

    A val or test folder the copy lacks (or one left empty) is carved out of its train
    folder, grouped by leaf, at ``ratios`` (train:val:test of what ``ratios`` names for
    the missing ones). Leaf groups found in more than one shipped split are counted in
    ``stats["groups_across_splits"]`` and logged once: the copy's own split leaks them.
    """
    ratios = _check_ratios(ratios)
    rows = {
        s: [(report.relative(x.path), x.label) for x in report.samples if x.split == s]
        for s in SPLITS
    }
    carved = _carve_missing(report, rows, ratios, seed, group_pattern)
    keys = group_keys(report, group_pattern=group_pattern)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    split_of = {rel: s for s, items in rows.items() for rel, _ in items}
    rel = [report.relative(x.path) for x in report.samples]
    across = sorted(k for k, idx in groups.items() if len({split_of[rel[i]] for i in idx}) > 1)
    n = max(1, len(report.samples))
    stats = {
        "source": "shipped",
        "shipped_folders": dict(report.layout.split_folders),
        "carved": carved,
        "groups_across_splits": len(across),
        "groups_across_splits_examples": across[:3],
        **_stats(report, groups, rows, []),
    }
    _log_shipped(report, rows, carved, across)
    return SplitManifest(
        root=report.root,
        classes=list(report.classes),
        seed=seed,
        ratios=tuple(len(rows[s]) / n for s in SPLITS),  # type: ignore[arg-type]
        group_pattern=group_pattern,
        splits=rows,
        stats=stats,
    )


def _carve_missing(
    report: ScanReport,
    rows: dict[str, list[tuple[str, int]]],
    ratios: tuple[float, float, float],
    seed: int,
    group_pattern: str,
) -> dict[str, str]:
    """Fill the val/test splits the copy lacks from its train folder (in place); say how."""
    missing = [s for s in SPLITS[1:] if not rows[s]]
    if not missing or not rows["train"]:
        return {}
    keep = [r if s == "train" or s in missing else 0.0 for s, r in zip(SPLITS, ratios, strict=True)]
    carve = tuple(r / sum(keep) for r in keep)
    train_only = replace(report, samples=[x for x in report.samples if x.split == "train"])
    inner = make_split(
        train_only,
        ratios=carve,  # type: ignore[arg-type]
        seed=seed,
        group_pattern=group_pattern,
        shipped=False,
    )
    rows["train"] = inner.splits["train"]
    carved = {}
    for s in missing:
        rows[s] = inner.splits[s]
        carved[s] = f"{carve[SPLITS.index(s)]:.0%} of the train folder, grouped by leaf"
    return carved


def _log_shipped(
    report: ScanReport,
    rows: dict[str, list[tuple[str, int]]],
    carved: dict[str, str],
    across: list[str],
) -> None:
    folders = report.layout.split_folders

    def source(split: str) -> str:
        if split in carved:
            return carved[split]
        return f"{folders[split]}/" if split in folders else "none"

    parts = [f"{s} {len(rows[s])} ({source(s)})" for s in SPLITS]
    logger.info("using the split the dataset ships with: %s", ", ".join(parts))
    if across:
        logger.warning(
            "%d leaf group(s) (one leaf id, or identical bytes) appear in more than one of "
            "the shipped splits, e.g. %s: scores on its test split may be optimistic; "
            "--resplit pools the folders and splits them grouped by leaf",
            len(across),
            ", ".join(across[:3]),
        )


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise DataError(
            f"invalid group pattern {pattern!r}: {e}; fix the regular expression"
        ) from e
    if "group" not in regex.groupindex:
        raise DataError(
            f"group pattern {pattern!r} has no named group 'group'; mark the leaf id "
            r"with (?P<group>...), e.g. r'___(?P<group>.+?)(?: Day \d+)?$'"
        )
    return regex


def _leaf_key(class_name: str, rel_path: str, regex: re.Pattern[str]) -> str:
    stem = Path(rel_path).stem
    match = regex.search(stem)
    leaf = match.group("group") if match else None
    if not leaf or not leaf.strip():
        return f"{class_name}/{rel_path}"  # its own group
    return f"{class_name}/{' '.join(leaf.split())}"


def _check_ratios(ratios: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError) as e:
        raise DataError(f"split ratios {ratios!r} must be 3 numbers (train, val, test)") from e
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise DataError(
            f"split ratios {ratios!r} must be 3 non-negative numbers (train, val, test), "
            "e.g. (0.7, 0.15, 0.15)"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise DataError(f"split ratios {ratios!r} sum to {sum(values):g}; they must sum to 1")
    if values[0] <= 0:
        raise DataError(f"split ratios {ratios!r} give train nothing; the train ratio must be > 0")
    return values  # type: ignore[return-value]


def _targets(n: int, ratios: tuple[float, ...], n_groups: int) -> list[int]:
    """Images per split: largest-remainder rounding, then at least 1 per non-zero ratio."""
    raw = [r * n for r in ratios]
    targets = [math.floor(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - targets[i]), i))
    for i in by_remainder[: n - sum(targets)]:
        targets[i] += 1
    nonzero = [i for i, r in enumerate(ratios) if r > 0]
    if n_groups >= len(nonzero):
        for i in nonzero:
            if targets[i] == 0:
                # Take from the split most over its exact share that can spare an image.
                donors = [j for j in range(len(targets)) if targets[j] > 1]
                donor = max(donors, key=lambda j: (targets[j] - raw[j], -j))
                targets[donor] -= 1
                targets[i] += 1
    return targets


def _assign(
    class_groups: list[str],
    groups: dict[str, list[int]],
    targets: list[int],
    report: ScanReport,
    label: int,
    counts: list[list[int]],
) -> list[list[str]]:
    """Greedy: each group goes to the split with the largest remaining deficit."""
    placed: list[list[str]] = [[] for _ in SPLITS]
    own = counts[label]
    for key in class_groups:
        split_idx = max(range(len(SPLITS)), key=lambda s: (targets[s] - own[s], -s))
        placed[split_idx].append(key)
        for i in groups[key]:
            counts[report.samples[i].label][split_idx] += 1
    return placed


def _ensure_every_split(
    name: str,
    placed: list[list[str]],
    groups: dict[str, list[int]],
    ratios: tuple[float, ...],
    report: ScanReport,
    counts: list[list[int]],
    label: int,
) -> str | None:
    """Move small groups into empty splits; return a warning if that is impossible."""
    for empty in (s for s, r in enumerate(ratios) if r > 0 and not placed[s]):
        donors = [s for s in range(len(SPLITS)) if len(placed[s]) > 1]
        if not donors:
            n_groups = sum(len(p) for p in placed)
            return (
                f"class '{name}' has only {n_groups} leaf group(s), too few to put one in "
                f"every split; '{SPLITS[empty]}' gets none of it"
            )
        donor = max(donors, key=lambda s: (len(placed[s]), -s))
        key = min(placed[donor], key=lambda k: (len(groups[k]), k))
        placed[donor].remove(key)
        placed[empty].append(key)
        for i in groups[key]:
            counts[report.samples[i].label][donor] -= 1
            counts[report.samples[i].label][empty] += 1
    return None


def _stats(
    report: ScanReport,
    groups: dict[str, list[int]],
    splits: dict[str, list[tuple[str, int]]],
    warnings_: list[str],
) -> dict[str, Any]:
    per_split = {
        split: {
            name: sum(1 for _, lab in items if lab == label)
            for label, name in enumerate(report.classes)
        }
        for split, items in splits.items()
    }
    return {
        "n_images": len(report.samples),
        "n_groups": len(groups),
        "n_multi_image_groups": sum(1 for idx in groups.values() if len(idx) > 1),
        "largest_group": max((len(idx) for idx in groups.values()), default=0),
        "n_duplicate_groups": len(report.duplicate_groups()),
        "split_sizes": {split: len(items) for split, items in splits.items()},
        "per_split_class_counts": per_split,
        "warnings": warnings_,
    }


def _read_manifest_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(
            f"split manifest {path} not found; check the path, or make a new split"
        ) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"split manifest {path} cannot be read ({e}); delete it and make the split again"
        ) from e
    if not isinstance(data, dict):
        raise DataError(f"split manifest {path} is not a JSON object; make the split again")
    return data
