"""What every export shares: its error and report types, images to verify on, records.

An export is only trusted after it was measured against PyTorch on real images; the
figures are returned as a :class:`Verification` and stored in ``model.json`` under
``exports``, next to the file they describe, so whoever deploys the file later can see
how it was checked. Verification images default to the run's validation split
(``split.json`` next to the bundle) when its images are still where they were.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import load_bundle, read_meta, resolve_bundle_dir, update_meta
from ..data.images import BadImageError
from ..data.split import SplitManifest
from ..errors import CropdocError
from ..inference import EXPORT_KEYS, Predictor, TorchRunner, collect_images
from ..io import atomic_path, file_sha256
from ..models import get_arch

__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_TOLERANCE",
    "INPUT_NAME",
    "INT8_FILE",
    "ONNX_FILE",
    "OPSET",
    "OUTPUT_NAME",
    "ExportError",
    "ExportReport",
    "Verification",
    "bundle_relative",
    "compare_logits",
    "default_images",
    "install_file",
    "onnx_fields",
    "onnx_outputs",
    "preprocess_batches",
    "record_export",
    "record_refusal",
    "reference_predictor",
    "resolve_images",
    "sample_images",
    "verification_batches",
]

_logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-3
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_IMAGES = 512
DEFAULT_CALIBRATION_IMAGES = 256
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"


class ExportError(CropdocError):
    """An export failed, or failed its verification."""


@dataclass
class Verification:
    """How an exported file compares with PyTorch on real images."""

    images: int
    source: str
    max_abs_logit_diff: float
    top1_agreement: float
    threshold: float
    metric: str
    passed: bool
    calibration_images: int | None = None


@dataclass
class ExportReport:
    """What an export did: where the file is, whether it was written, how it measured."""

    format: str
    path: Path
    written: bool
    verification: Verification
    forced: bool = False
    exporter: str = ""
    size_bytes: int = 0
    record: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- images


def default_images(bundle: str | os.PathLike[str]) -> tuple[list[Path], str]:
    """The run's validation images (from ``split.json`` beside the bundle), if still present.

    Returns:
        ``(images, description)``; no images when the split or its files are not found.
    """
    folder = resolve_bundle_dir(bundle)
    split = folder.parent / "split.json"
    if not split.is_file():
        return [], f"no {split}"
    manifest = SplitManifest.load(split)
    images = [p for p, _ in manifest.samples("val") if p.is_file()]
    return images, f"{len(images)} val images of {split}"


def sample_images(images: list[Path], n: int, seed: int = 0) -> list[Path]:
    """At most ``n`` images, spread over the (class-sorted) list reproducibly."""
    if len(images) <= n:
        return list(images)
    picked = random.Random(seed).sample(range(len(images)), n)
    return [images[i] for i in sorted(picked)]


def resolve_images(
    bundle_dir: Path, data: Sequence[str | os.PathLike[str]] | None, what: str
) -> tuple[list[Path], str]:
    """The images given in ``data``, else the run's val split; ``what`` names the purpose.

    Raises:
        ExportError: no images at all, saying how to pass some.
    """
    if data:
        images = collect_images(data)
        source = ", ".join(str(d) for d in data)
    else:
        images, source = default_images(bundle_dir)
    if not images:
        raise ExportError(
            f"no images to {what} with ({source}); pass a folder of real images with "
            f"--calibration DATA (a few hundred from the training distribution)"
        )
    return images, source


def reference_predictor(bundle_dir: Path) -> tuple[Predictor, torch.nn.Module]:
    """The PyTorch predictor (CPU, fp32) every export is compared with, and its model."""
    loaded = load_bundle(bundle_dir)
    runner = TorchRunner(loaded.model, spec=get_arch(loaded.meta.arch))
    predictor = Predictor(loaded.meta, runner, bundle_dir=bundle_dir)
    return predictor, loaded.model


def preprocess_batches(
    predictor: Predictor, images: list[Path], batch_size: int = 32
) -> list[np.ndarray]:
    """Preprocess images into batches the way prediction does; bad files are skipped.

    Raises:
        ExportError: none of the images could be read.
    """
    out: list[np.ndarray] = []
    current: list[torch.Tensor] = []
    for path in images:
        try:
            current.append(predictor.preprocess(path))
        except BadImageError as e:
            _logger.warning("skipping %s: %s", path, e.reason)
            continue
        if len(current) == batch_size:
            out.append(torch.stack(current).numpy())
            current = []
    if current:
        out.append(torch.stack(current).numpy())
    if not out:
        raise ExportError("none of the verification images could be read")
    return out


def compare_logits(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    batches: list[np.ndarray],
) -> tuple[int, float, float]:
    """``(images, max |logit difference|, top-1 agreement)`` of two runners on ``batches``."""
    n, max_diff, agree = 0, 0.0, 0
    for batch in batches:
        ref, got = reference(batch), candidate(batch)
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        n += len(batch)
    return n, max_diff, agree / n


# --------------------------------------------------------------------------- records


def bundle_relative(path: Path, folder: Path) -> str:
    """``path`` relative to the bundle when inside it (the bundle stays movable)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def record_export(
    report: ExportReport,
    folder: Path,
    fields: dict[str, Any],
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Store what ``report`` describes in ``model.json`` ``exports``; return the record.

    ``fields`` are the format's own (ONNX: :func:`onnx_fields`); ``versions`` the
    packages that made and checked the file (default: torch and onnxruntime).
    """
    meta = read_meta(folder)
    if versions is None:
        import onnxruntime

        versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    record = {
        "path": bundle_relative(report.path, folder),
        "format": report.format,
        **fields,
        "exporter": report.exporter,
        "size_bytes": report.size_bytes,
        "sha256": file_sha256(report.path),
        "weights_sha256": meta.weights_sha256,
        "forced": report.forced,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "verification": asdict(report.verification),
    }
    exports = dict(meta.exports)
    exports[EXPORT_KEYS[report.format]] = record
    update_meta(folder, exports=exports)
    return record


def record_refusal(folder: Path, key: str, verification: Verification) -> None:
    """Keep the figures of a refused INT8 file under ``exports[key]``, so the bundle shows
    why it has none."""
    meta = read_meta(folder)
    exports = dict(meta.exports)
    exports[key] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights_sha256": meta.weights_sha256,
        "verification": asdict(verification),
    }
    update_meta(folder, exports=exports)


def onnx_fields() -> dict[str, Any]:
    """The ONNX-specific part of an export's record (opset, names, dynamic batch)."""
    return {"opset": OPSET, "input": INPUT_NAME, "output": OUTPUT_NAME, "dynamic_batch": True}


def verification_batches(
    reference: Predictor,
    folder: Path,
    data: Sequence[str | os.PathLike[str]] | None,
    max_images: int,
    what: str,
) -> tuple[list[np.ndarray], str]:
    """Real images when any are known; random tensors (with a warning) when none are.

    ``what`` names the export in the warning (``ONNX``, ``TFLite``).
    """
    try:
        images, source = resolve_images(folder, data, "verify the export")
        return preprocess_batches(reference, sample_images(images, max_images)), source
    except ExportError:
        if data:
            raise
    _logger.warning(
        "no real images known for %s; verifying the %s export on random tensors only "
        "(pass --calibration DATA to verify on photos)",
        folder,
        what,
    )
    gen = torch.Generator().manual_seed(0)
    size = reference.meta.preprocessing.image_size
    return [torch.randn(8, 3, size, size, generator=gen).numpy()], "random tensors (no images)"


def onnx_outputs(path: Path) -> list[str]:
    """The output names of an ONNX file, in order (recorded: loaders check for features)."""
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def install_file(staged: Path, target: Path, folder: Path) -> None:
    """Move a verified file to ``target`` atomically, checking it can be recorded too.

    Raises:
        ExportError: ``target`` or the bundle's ``model.json`` is not writable.
    """
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(staged.read_bytes())
        # Recording needs a writable model.json too: fail now rather than leave it unrecorded.
        if not os.access(folder / "model.json", os.W_OK):
            raise PermissionError(f"{folder / 'model.json'} is not writable")
    except OSError as e:
        raise ExportError(
            f"cannot write the export to {target} or record it in {folder}: {e}. Export "
            f"where the bundle is writable (`cropdoc export`), or serve with --backend torch"
        ) from e
