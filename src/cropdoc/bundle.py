"""The model artifact: ``weights.safetensors`` + ``model.json``.

A bundle describes itself: ``model.json`` holds the architecture, class names in index
order, input size, resize/crop, normalization, calibration temperature, the recipe, the
best epoch and metrics, and package versions, so ``predict``, ``export`` and ``serve``
build their preprocessing from it and never from re-typed constants. Loading never
unpickles: weights are safetensors, metadata is JSON.

Writes are crash-safe. A bundle is written complete into ``model.tmp-*/`` and swapped in
with two renames (``model`` → ``model.old``, new → ``model``); a crash between them leaves
``model.old``, which :func:`load_bundle` falls back to. So a kill -9 or a full disk during
a write never loses the previous bundle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import BundleError, CropdocError
from .io import atomic_write_json, file_sha256
from .preprocessing import Preprocessing
from .version import __version__

__all__ = [
    "Bundle",
    "BundleMeta",
    "OodInfo",
    "TrainingInfo",
    "load_bundle",
    "read_meta",
    "resolve_bundle_dir",
    "save_bundle",
    "update_meta",
]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"


def _problems(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or META_FILE}: {err['msg']}" for err in e.errors()
    )


class TrainingInfo(BaseModel):
    """How the bundle's weights were trained (shown in reports, reproduced by ``--config``)."""

    model_config = ConfigDict(extra="allow")

    weights: str = "none"
    balance: str = "none"
    seed: int | None = None
    #: The precision plan's description: ``bf16-mixed``, or per stage when they differ.
    precision: str = ""
    #: The stochastic-depth rate trained with (``None``: not recorded, an older bundle).
    drop_path: float | None = None
    #: The decay of the moving average of the weights (0: none; ``None``: not recorded).
    ema: float | None = None


class OodInfo(BaseModel):
    """The out-of-distribution score a bundle abstains with (fitted on the val split).

    Attributes:
        kind: which score (e.g. ``msp``, ``energy``, ``mahalanobis``); higher = stranger.
        threshold: a score above it abstains ("not recognised").
        target_false_abstain: the in-distribution abstain rate the threshold was set for.
        params: what the score needs besides the logits or features (e.g. class means),
            as JSON numbers.
        metrics: what the fit measured (e.g. the val abstain rate).
    """

    model_config = ConfigDict(extra="allow")

    kind: str
    threshold: float
    target_false_abstain: float = 0.05
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


class BundleMeta(BaseModel):
    """What ``model.json`` holds, validated on read and write.

    Unknown keys (a newer cropdoc's) are kept and written back unchanged. Format 1 files
    (flat ``image_size``/``resize_size``/``mean``/``std``, training details at the top
    level) are read as format 2.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    arch: str
    classes: list[str] = Field(min_length=1)
    preprocessing: Preprocessing
    temperature: float = Field(1.0, gt=0)
    calibration: dict[str, Any] | None = None
    ood: OodInfo | None = None
    training: TrainingInfo = TrainingInfo()
    recipe: list[dict[str, Any]] = Field(default_factory=list)
    best: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    exports: dict[str, dict[str, Any]] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = ""
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        d = dict(data)
        n = d.pop("num_classes", None)
        if n is not None and isinstance(d.get("classes"), list) and n != len(d["classes"]):
            raise ValueError(f"num_classes={n} but {len(d['classes'])} class names are listed")
        if "preprocessing" not in d and "image_size" in d:  # format 1
            d["preprocessing"] = {
                k: d.pop(k) for k in ("image_size", "resize_size", "mean", "std") if k in d
            }
            d["training"] = {
                k: d.pop(k) for k in ("weights", "balance", "seed", "precision") if k in d
            }
            d["format_version"] = FORMAT_VERSION
        return d

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["num_classes"] = self.num_classes
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BundleMeta:
        """Validate a ``model.json`` mapping.

        Raises:
            BundleError: a missing or invalid field, named.
        """
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise BundleError(f"{META_FILE} is invalid: {_problems(e)}") from e


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode and its metadata."""

    model: nn.Module
    meta: BundleMeta
    path: Path


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "cropdoc": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def resolve_bundle_dir(path: str | os.PathLike[str]) -> Path:
    """The bundle folder for ``path``: the folder itself, its ``model.json``, a run
    directory's ``model/``, or the ``.old`` copy an interrupted write left behind."""
    p = Path(path)
    if p.is_file() and p.name in (META_FILE, WEIGHTS_FILE):
        p = p.parent
    if (p / META_FILE).is_file():
        return p
    if (p / "model" / META_FILE).is_file():  # a run directory was given
        return p / "model"
    old = p.with_name(p.name + ".old")
    if (old / META_FILE).is_file():
        _logger.warning("%s is missing; using %s left by an interrupted write", p, old)
        return old
    if (p / "model.old" / META_FILE).is_file():
        return p / "model.old"
    raise BundleError(
        f"no model bundle at {p}: expected {p / META_FILE} and {p / WEIGHTS_FILE} "
        f"(a run directory's model/ folder, written by `cropdoc train`)"
    )


def save_bundle(path: str | os.PathLike[str], model: nn.Module, meta: BundleMeta) -> Path:
    """Write ``model`` and ``meta`` as a bundle at ``path`` atomically; return ``path``.

    Raises:
        BundleError: when writing fails (e.g. disk full); the previous bundle is kept.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A kill -9 during an earlier write skips the cleanup below and leaves a torn
    # ``model.tmp-*``; one writer per bundle (rank zero), so any such folder is dead.
    for stale in target.parent.glob(f"{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    old = target.with_name(target.name + ".old")
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights = tmp / WEIGHTS_FILE
        save_file(state, str(weights), metadata={"format": "pt", "arch": meta.arch})
        _fsync_file(weights)
        meta.weights_sha256 = file_sha256(weights)
        meta.versions = meta.versions or _versions()
        meta.created = datetime.now(UTC).isoformat(timespec="seconds")
        (tmp / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n", encoding="utf-8")
        _fsync_file(tmp / META_FILE)
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"could not write the model bundle to {target}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Read and validate a bundle's ``model.json`` (no weights loaded)."""
    folder = resolve_bundle_dir(path)
    try:
        data = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{folder / META_FILE} is unreadable or not JSON: {e}") from e
    if not isinstance(data, dict):
        raise BundleError(f"{folder / META_FILE} must hold a JSON object")
    return BundleMeta.from_dict(data)


def update_meta(path: str | os.PathLike[str], **changes: Any) -> BundleMeta:
    """Update fields of ``model.json`` atomically (metrics, temperature, exports).

    Raises:
        BundleError: an unknown field, an invalid value, or a failed write (the previous
            file is kept).
    """
    folder = resolve_bundle_dir(path)
    meta = read_meta(folder)
    unknown = sorted(set(changes) - set(BundleMeta.model_fields))
    if unknown:
        raise BundleError(f"{META_FILE} has no field(s) {', '.join(unknown)}")
    try:
        meta = BundleMeta.model_validate({**meta.to_dict(), **changes})
    except ValidationError as e:
        raise BundleError(f"invalid {META_FILE} update: {_problems(e)}") from e
    try:
        atomic_write_json(folder / META_FILE, meta.to_dict())
    except OSError as e:
        raise BundleError(
            f"could not update {folder / META_FILE}: {e}; the previous one is kept"
        ) from e
    return meta


def load_bundle(path: str | os.PathLike[str], *, map_location: str = "cpu") -> Bundle:
    """Load a bundle (a ``model/`` folder or its run directory) into an eval-mode model.

    Raises:
        BundleError: missing files, checksum mismatch, or weights that disagree with
            ``model.json`` (architecture or class count).

    Example:
        >>> bundle = load_bundle("runs/effb0/model")  # doctest: +SKIP
        >>> bundle.meta.classes[:2]  # doctest: +SKIP
    """
    from .models import build

    folder = resolve_bundle_dir(path)
    meta = read_meta(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{weights} is missing")
    if meta.weights_sha256 and file_sha256(weights) != meta.weights_sha256:
        raise BundleError(
            f"{weights} does not match the checksum in {META_FILE}: the file is corrupt or "
            f"was replaced; re-export or retrain the bundle"
        )
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{weights} is not a valid safetensors file: {e}") from e
    try:
        model = build(meta.arch, classes=meta.num_classes, weights="none")
    except CropdocError as e:
        raise BundleError(f"{folder / META_FILE}: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise BundleError(
            f"weights in {weights} do not fit arch={meta.arch!r} with {meta.num_classes} "
            f"classes as {META_FILE} says: {' '.join(first)}"
        ) from e
    model.eval()
    return Bundle(model=model, meta=meta, path=folder)
