"""Dataset layouts: which folders are classes, which are splits, what to leave out.

Downloads of leaf datasets come in several shapes, and a wrong guess is silent: a pre-split
copy (``train/ valid/ test/``) would train on the classes "train" and "valid", and
PlantVillage's ``raw/`` folder (``color/ grayscale/ segmented/``) on three classes of one
crop-less mixture. This module reads folder names only (no image is opened) and says what
DATA is:

- ``classes``: one sub-folder per class (the PlantVillage layout);
- ``pre-split``: ``train/`` with ``val/`` (``valid/``, ``validation/``) and/or ``test/``,
  any case, each holding class folders;
- variants (``color/ grayscale/ segmented/``): an error naming them unless one is chosen;
- one lone folder (``DATA/PlantVillage/<classes>``, as many zips unpack) is stepped into.

Below a class folder it leaves out nested copies (a folder named like another class: a
second copy of the dataset filed inside one class would mislabel every image in it),
follows symbolic links once (a link back up is cut), and skips hidden and system files
(``.DS_Store``, ``Thumbs.db``, ``__MACOSX/``) without a word. Class names are kept in
Unicode NFC, so the folder macOS wrote decomposed (NFD) and the same name written composed
are one class.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..classnames import class_key
from ..errors import DataError
from .images import SUPPORTED_EXTENSIONS

__all__ = [
    "SPLIT_FOLDER_NAMES",
    "VARIANT_NAMES",
    "ClassFolder",
    "Layout",
    "Walk",
    "dataset_root",
    "detect_layout",
    "is_ignored",
    "select_classes",
    "walk_class",
]

_logger = logging.getLogger(__name__)

LAYOUT_HINT = "expected one sub-folder per class, e.g. DATA/Tomato___healthy/leaf1.jpg"

#: Folder names (case-insensitive) of the splits a pre-split copy ships.
SPLIT_FOLDER_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
#: Folder names (case-insensitive) of image variants of one dataset (PlantVillage ``raw/``).
VARIANT_NAMES = frozenset(
    {"color", "colour", "grayscale", "greyscale", "gray", "grey", "segmented"}
)
# Written by operating systems and archivers, never data: skipped without a report.
_SYSTEM_NAMES = frozenset(
    {
        "thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
        "icon\r",
        "__macosx",
        "$recycle.bin",
        "system volume information",
        "@eadir",
        "lost+found",
    }
)


def is_ignored(name: str) -> bool:
    """Hidden (``.DS_Store``, ``._leaf.jpg``) or system (``Thumbs.db``, ``__MACOSX``) entries."""
    return name.startswith(".") or name.casefold() in _SYSTEM_NAMES


@dataclass(frozen=True)
class ClassFolder:
    """One folder holding a class's images (a pre-split copy has one per split)."""

    name: str  # the class name, NFC
    path: Path
    split: str | None = None  # the shipped split it belongs to


@dataclass
class Layout:
    """What a dataset folder is, from its folder names.

    ``root`` is where the dataset really starts (after stepping into a lone folder or a
    chosen variant); ``notes`` lists what was left out, by kind, as paths relative to it.
    """

    root: Path
    kind: str  # "classes" | "pre-split"
    folders: list[ClassFolder]
    classes: list[str]
    split_folders: dict[str, str] = field(default_factory=dict)  # split -> folder name
    variant: str | None = None
    wrapper: str | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs and ``data inspect``."""
        where = []
        if self.wrapper:
            where.append(f"inside {self.wrapper}/")
        if self.variant:
            where.append(f"variant {self.variant}/")
        prefix = f" ({', '.join(where)})" if where else ""
        if self.kind == "pre-split":
            folders = ", ".join(f"{s} = {name}/" for s, name in self.split_folders.items())
            return f"pre-split{prefix}: {folders}"
        return f"one folder per class{prefix}"


def _entries(folder: Path) -> list[tuple[Path, bool]]:
    """(path, is a folder) of the visible entries of ``folder``, sorted (one scandir)."""
    try:
        with os.scandir(folder) as it:
            entries = [(Path(e.path), e.is_dir()) for e in it if not is_ignored(e.name)]
    except OSError as e:
        raise DataError(f"cannot list {folder}: {e.strerror or e}; check its permissions") from e
    return sorted(entries)


def _subdirs(folder: Path) -> list[Path]:
    return [p for p, is_dir in _entries(folder) if is_dir]


def _images_in(folder: Path) -> list[Path]:
    return [
        p
        for p, is_dir in _entries(folder)
        if not is_dir and p.suffix.lower() in SUPPORTED_EXTENSIONS
    ]


def _split_of(name: str) -> str | None:
    folded = name.casefold()
    return next((s for s, names in SPLIT_FOLDER_NAMES.items() if folded in names), None)


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; check the path ({LAYOUT_HINT})")
    if not root.is_dir():
        raise DataError(
            f"data path {root} is a file, not a folder; pass the folder that holds one "
            f"sub-folder per class ({LAYOUT_HINT})"
        )
    return root.resolve()


def _choose_variant(root: Path, dirs: list[Path], variant: str) -> Path:
    variants = [d for d in dirs if d.name.casefold() in VARIANT_NAMES]
    hit = [d for d in variants if d.name.casefold() == variant.casefold()]
    if not hit:
        have = ", ".join(d.name for d in variants) or "none"
        raise DataError(
            f"--variant {variant}: {root} has no folder of that name (variant folders: "
            f"{have}); pass one of them, or leave --variant out"
        )
    return hit[0]


def _presplit_dirs(root: Path, dirs: list[Path]) -> dict[str, Path]:
    found: dict[str, list[Path]] = defaultdict(list)
    for d in dirs:
        split = _split_of(d.name)
        if split is not None:
            found[split].append(d)
    for split, paths in found.items():
        if len(paths) > 1:
            names = " and ".join(f"{p.name}/" for p in paths)
            raise DataError(
                f"{root} has {names}, both a {split} split; keep one of them (move the other "
                "out of DATA)"
            )
    if "train" in found and ("val" in found or "test" in found):
        return {s: found[s][0] for s in SPLIT_FOLDER_NAMES if s in found}
    return {}


def _refuse_inner_layouts(root: Path, dirs: list[Path]) -> None:
    """A class folder that is really a whole dataset: say which folder to pass instead."""
    for d in dirs:
        inner = _subdirs(d)
        if _presplit_dirs(d, inner):
            names = ", ".join(f"{p.name}/" for p in inner if _split_of(p.name))
            raise DataError(
                f"{d} holds a pre-split dataset ({names}), not images of a class '{d.name}'; "
                f"pass {d} as DATA"
            )


def _class_folders(
    base: Path, rel: str, split: str | None, notes: dict[str, list[str]]
) -> list[ClassFolder]:
    """The class folders directly in ``base``; images lying beside them are noted."""
    loose = [f"{rel}{p.name}" for p in _images_in(base)]
    if loose:
        notes.setdefault("loose_images", []).extend(loose)
    return [ClassFolder(unicodedata.normalize("NFC", d.name), d, split) for d in _subdirs(base)]


def _note_merged(folders: list[ClassFolder], root: Path, notes: dict[str, list[str]]) -> None:
    by_name: dict[tuple[str | None, str], list[ClassFolder]] = defaultdict(list)
    for f in folders:
        by_name[(f.split, f.name)].append(f)
    for group in by_name.values():
        if len(group) > 1:
            notes.setdefault("merged_folders", []).append(
                " + ".join(repr(f.path.relative_to(root).as_posix()) for f in group)
            )


def _presplit_layout(root: Path, dirs: list[Path], splits: dict[str, Path]) -> Layout:
    notes: dict[str, list[str]] = {}
    folders: list[ClassFolder] = []
    for split, path in splits.items():
        folders += _class_folders(path, f"{path.name}/", split, notes)
    classes = sorted({f.name for f in folders if f.split == "train"})
    unknown = [f for f in folders if f.name not in classes]
    if unknown:
        notes["unknown_split_classes"] = [f.path.relative_to(root).as_posix() for f in unknown]
    beside = [d.name for d in dirs if d not in splits.values()]
    if beside:
        notes["ignored_folders"] = beside
    folders = [f for f in folders if f.name in classes]
    _note_merged(folders, root, notes)
    return Layout(
        root=root,
        kind="pre-split",
        folders=folders,
        classes=classes,
        split_folders={s: p.name for s, p in splits.items()},
        notes=notes,
    )


def detect_layout(root: str | os.PathLike[str], *, variant: str | None = None) -> Layout:
    """Read the layout of a dataset folder from its folder names (cheap: no image is read).

    Args:
        root: the folder the user gave as DATA.
        variant: the variant folder to use when DATA holds several (``color``,
            ``grayscale``, ``segmented``); None: DATA must not hold several.

    Raises:
        DataError: the folder is missing, holds variants and none was chosen, holds two
            folders of one split (``val/`` and ``valid/``), or has no class folders.
    """
    path = _check_root(Path(root).expanduser())
    dirs = _subdirs(path)
    if variant is not None:
        if path.name.casefold() == variant.casefold() and not any(
            d.name.casefold() == variant.casefold() for d in dirs
        ):  # DATA is the variant folder already (a resumed run's root)
            return detect_layout(path)
        layout = detect_layout(_choose_variant(path, dirs, variant))
        layout.variant = layout.root.name
        return layout
    variants = [d.name for d in dirs if d.name.casefold() in VARIANT_NAMES and _subdirs(d)]
    if len(variants) >= 2:
        raise DataError(
            f"{path} holds image variants of one dataset ({', '.join(f'{v}/' for v in variants)}"
            f", as PlantVillage's raw/ folder does), not classes; choose one with --variant "
            f"{variants[0]} (or pass {path / variants[0]} as DATA)"
        )
    if len(dirs) == 1 and not _images_in(path) and _subdirs(dirs[0]):
        # A lone folder holding folders is the dataset packed one level down (a zip).
        layout = detect_layout(dirs[0])
        inner = f"/{layout.wrapper}" if layout.wrapper else ""
        layout.wrapper = f"{dirs[0].name}{inner}"
        _logger.info("%s holds one folder, %s: reading the dataset inside it", path, dirs[0].name)
        return layout
    splits = _presplit_dirs(path, dirs)
    if splits:
        return _presplit_layout(path, dirs, splits)
    _refuse_inner_layouts(path, dirs)
    notes: dict[str, list[str]] = {}
    folders = _class_folders(path, "", None, notes)
    if not folders:
        raise DataError(f"no class folders in {path}; {LAYOUT_HINT}")
    _note_merged(folders, path, notes)
    return Layout(
        root=path,
        kind="classes",
        folders=folders,
        classes=sorted({f.name for f in folders}),
        notes=notes,
    )


def dataset_root(root: str | os.PathLike[str], *, variant: str | None = None) -> Path:
    """Where the dataset in DATA starts (a lone folder stepped into, a variant chosen)."""
    return detect_layout(root, variant=variant).root


def select_classes(layout: Layout, wanted: Sequence[str] | None) -> list[str]:
    """The classes to read: all (sorted), or ``wanted`` in its order (labels line up).

    Raises:
        DataError: an empty or repeated filter, or a class DATA does not have.
    """
    if wanted is None:
        return list(layout.classes)
    wanted = [unicodedata.normalize("NFC", c) for c in wanted]
    if not wanted:
        raise DataError("the class filter is empty; pass at least one class name or none")
    repeated = sorted({c for c in wanted if wanted.count(c) > 1})
    if repeated:
        raise DataError(f"class filter names {repeated} more than once; list each class once")
    unknown = [c for c in wanted if c not in layout.classes]
    if unknown:
        raise DataError(
            f"unknown class(es) {unknown} in the class filter; available in {layout.root}: "
            f"{layout.classes}"
        )
    return wanted


@dataclass
class Walk:
    """What one class folder holds: files to check, nested copies and broken links left out."""

    files: list[Path] = field(default_factory=list)
    nested: list[Path] = field(default_factory=list)
    broken: list[Path] = field(default_factory=list)


def walk_class(folder: Path, other_classes: frozenset[str]) -> Walk:
    """Files below ``folder`` at any depth, in a stable order, following links once.

    Args:
        folder: a class folder.
        other_classes: :func:`~cropdoc.classnames.class_key` of every other class; a
            folder below ``folder`` with one of these names is a nested copy, left out.
    """
    walk, seen = Walk(), set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a link back up, or a second link to one folder
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        kept = []
        for d in sorted(dirnames):
            if is_ignored(d):
                continue
            if class_key(d) in other_classes:
                walk.nested.append(Path(dirpath, d))
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            if is_ignored(name):
                continue
            path = Path(dirpath, name)
            (walk.broken if path.is_symlink() and not path.exists() else walk.files).append(path)
    walk.files.sort()
    walk.broken.sort()
    return walk
