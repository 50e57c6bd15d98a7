"""Export a bundle to ONNX (fp32) and INT8, each verified against PyTorch on real images.

An export is only trusted after it was measured: the fp32 file must reproduce the PyTorch
logits within ``tolerance`` (max absolute difference, default 1e-3) and the INT8 file must
agree with PyTorch's top-1 class on at least ``min_agreement`` of the images (default
99 %), else it is not written (unless ``force``). The figures are returned, logged and
stored in ``model.json`` under ``exports``, next to the file they describe, so whoever
deploys the file later can see how it was checked.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based one,
PyTorch's default since 2.9) with a dynamic batch axis and the weights inside the one
``.onnx`` file. If it fails on some model, the legacy TorchScript exporter is tried once,
and which one produced the file is recorded.

Verification images default to the run's validation split (``split.json`` next to the
bundle) when its images are still where they were; otherwise pass a folder.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import load_bundle, read_meta, resolve_bundle_dir, update_meta
from ..data.images import BadImageError, is_supported
from ..data.split import SplitManifest
from ..errors import CropdocError, DataError
from ..io import atomic_path, file_sha256
from ..models import get_arch
from .predictor import Predictor, _onnx_session, _OnnxRunner, _TorchRunner

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_TOLERANCE",
    "ExportError",
    "ExportReport",
    "Verification",
    "bundle_dir_of",
    "collect_images",
    "default_images",
    "export_int8",
    "export_onnx",
    "recorded_export",
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


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively) into image files, in a stable order.

    Files named explicitly are kept whatever their extension, so a bad one can be
    reported; inside folders only supported image extensions are taken.

    Raises:
        DataError: a path does not exist.
    """
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_supported(f)))
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p} does not exist; give image files or folders of images")
    return found


def bundle_dir_of(bundle: str | os.PathLike[str]) -> Path:
    """The bundle folder for a bundle path or its run directory."""
    return resolve_bundle_dir(bundle)


def default_images(bundle: str | os.PathLike[str]) -> tuple[list[Path], str]:
    """The run's validation images (from ``split.json`` beside the bundle), if still present.

    Returns:
        ``(images, description)``; no images when the split or its files are not found.
    """
    folder = bundle_dir_of(bundle)
    split = folder.parent / "split.json"
    if not split.is_file():
        return [], f"no {split}"
    manifest = SplitManifest.load(split)
    images = [p for p, _ in manifest.samples("val") if p.is_file()]
    return images, f"{len(images)} val images of {split}"


def _sample(images: list[Path], n: int, seed: int = 0) -> list[Path]:
    """At most ``n`` images, spread over the (class-sorted) list reproducibly."""
    if len(images) <= n:
        return list(images)
    picked = random.Random(seed).sample(range(len(images)), n)
    return [images[i] for i in sorted(picked)]


def _resolve_images(
    bundle_dir: Path, data: Sequence[str | os.PathLike[str]] | None, what: str
) -> tuple[list[Path], str]:
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


def _batches(predictor: Predictor, images: list[Path], batch_size: int = 32) -> list[np.ndarray]:
    """Preprocess images into batches the way prediction does; bad files are skipped."""
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


def _compare(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    batches: list[np.ndarray],
) -> tuple[int, float, float]:
    n, max_diff, agree = 0, 0.0, 0
    for batch in batches:
        ref, got = reference(batch), candidate(batch)
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        n += len(batch)
    return n, max_diff, agree / n


# --------------------------------------------------------------------------- records


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def recorded_export(bundle: str | os.PathLike[str], key: str = "onnx") -> Path | None:
    """The ONNX file recorded under ``exports[key]``, if it exists and fits the weights.

    An export made from other weights (the bundle was retrained in place) is ignored with
    a warning, so a stale file is never served.
    """
    folder = bundle_dir_of(bundle)
    meta = read_meta(folder)
    record = meta.exports.get(key)
    if not isinstance(record, dict) or not record.get("path"):
        return None
    path = Path(record["path"])
    path = path if path.is_absolute() else folder / path
    if not path.resolve().is_relative_to(folder.resolve()):
        # model.json comes with the bundle and may be hostile: never open a file it names
        # outside the bundle (``../`` or an absolute path); pass ``onnx_path`` to use one.
        _logger.warning("%s export %s is outside the bundle %s; ignoring it", key, path, folder)
        return None
    if not path.is_file():
        _logger.warning("%s export %s is recorded but missing", key, path)
        return None
    if record.get("weights_sha256") != meta.weights_sha256:
        _logger.warning("%s export %s was made from other weights; ignoring it", key, path)
        return None
    return path


def _record(report: ExportReport, folder: Path, extra: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime

    meta = read_meta(folder)
    record = {
        "path": _relative(report.path, folder),
        "format": report.format,
        "opset": OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dynamic_batch": True,
        "exporter": report.exporter,
        "size_bytes": report.size_bytes,
        "sha256": file_sha256(report.path),
        "weights_sha256": meta.weights_sha256,
        "forced": report.forced,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "verification": asdict(report.verification),
        **extra,
    }
    exports = dict(meta.exports)
    exports["onnx_int8" if report.format == "onnx-int8" else "onnx"] = record
    update_meta(folder, exports=exports)
    return record


# --------------------------------------------------------------------------- fp32


def _torch_export(model: torch.nn.Module, size: int, target: Path) -> str:
    """Export with the dynamo exporter, else the legacy one; return which one worked."""
    example = (torch.randn(2, 3, size, size),)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(target),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        return "dynamo"
    except Exception as e:  # the exporter raises many unrelated types; we retry, not hide
        _logger.warning("dynamo ONNX export failed (%s); retrying with the legacy exporter", e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            example,
            str(target),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return "torchscript"


def export_onnx(
    bundle: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    data: Sequence[str | os.PathLike[str]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_images: int = DEFAULT_MAX_IMAGES,
    force: bool = False,
) -> ExportReport:
    """Export the bundle to fp32 ONNX, verify it against PyTorch, record it in model.json.

    Args:
        bundle: a bundle folder or its run directory.
        out: the ``.onnx`` path (default: ``model.onnx`` inside the bundle folder).
        data: image files or folders to verify on (default: the run's val split; when
            that is unknown too, random tensors, with a warning).
        tolerance: the largest acceptable max |logit difference| vs PyTorch.
        max_images: verify on at most this many images (a reproducible sample).
        force: keep the file even if it fails verification.

    Returns:
        The report; ``written`` is False when verification failed without ``force``.

    Raises:
        ExportError: the model could not be exported, or failed verification.
    """
    folder = bundle_dir_of(bundle)
    loaded = load_bundle(folder)
    reference = Predictor(loaded.meta, _TorchRunner(loaded.model), bundle_dir=folder)
    target = Path(out) if out is not None else folder / ONNX_FILE
    try:
        images, source = _resolve_images(folder, data, "verify the export")
        batches = _batches(reference, _sample(images, max_images))
    except ExportError:
        if data:
            raise
        _logger.warning(
            "no real images known for %s; verifying the ONNX export on random tensors only "
            "(pass --calibration DATA to verify on photos)",
            folder,
        )
        gen = torch.Generator().manual_seed(0)
        size = loaded.meta.image_size
        batches = [torch.randn(8, 3, size, size, generator=gen).numpy()]
        source = "random tensors (no images known)"

    with tempfile.TemporaryDirectory(prefix="cropdoc-export-") as tmp:
        staged = Path(tmp) / ONNX_FILE
        try:
            exporter = _torch_export(loaded.model, loaded.meta.image_size, staged)
        except Exception as e:  # see _torch_export
            raise ExportError(
                f"could not export {loaded.meta.arch} to ONNX: {e}; please report this"
            ) from e
        candidate = _OnnxRunner(_onnx_session(staged), "onnx")
        n, max_diff, agreement = _compare(reference.logits, candidate, batches)
        passed = max_diff <= tolerance
        verification = Verification(
            images=n,
            source=source,
            max_abs_logit_diff=max_diff,
            top1_agreement=agreement,
            threshold=tolerance,
            metric="max_abs_logit_diff",
            passed=passed,
        )
        report = ExportReport("onnx", target, False, verification, force, exporter)
        _logger.info(
            "ONNX fp32: max |logit diff| %.3g (limit %g), top-1 agreement %.2f%% on %d images",
            max_diff,
            tolerance,
            100 * agreement,
            n,
        )
        if not passed and not force:
            raise ExportError(
                f"the ONNX export differs from PyTorch by up to {max_diff:.3g} in the logits "
                f"(limit {tolerance:g}); not written. Use --force to keep it anyway"
            )
        _install(staged, target, folder)
    report.written, report.size_bytes = True, target.stat().st_size
    report.record = _record(report, folder, {})
    return report


def _install(staged: Path, target: Path, folder: Path) -> None:
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


# --------------------------------------------------------------------------- int8


def _quantize(
    fp32: Path,
    target: Path,
    calibration: list[np.ndarray],
    workdir: Path,
    op_types: Sequence[str] = ("Conv",),
) -> None:
    """Static QDQ quantization of ``op_types``, calibrated on real images.

    Convolutions are quantized (weights per channel), except the first one, whose input
    is the raw normalised photo; the classifier stays fp32, and so do element-wise ops
    (hardswish, squeeze-excitation) unless ``op_types`` lists them. Activation ranges use
    the 99.999th percentile rather than min/max so one outlier pixel does not waste the
    8-bit range (min/max where a tensor has too little spread for a percentile). Measured on a
    MobileNetV3-Small trained from scratch on PlantVillage-mini (213 val images): all ops
    with min/max agreed with PyTorch on 96.7 %, this recipe on 98.1-99.1 % depending on
    the calibration sample; keeping the squeeze-excitation convs fp32 did not help (97.2 %).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """Feeds the preprocessed calibration batches to onnxruntime's calibrator."""

        def __init__(self) -> None:
            # One image at a time: the histogram calibrators need equal-shaped outputs.
            self._it = (batch[i : i + 1] for batch in calibration for i in range(len(batch)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared = workdir / "prepared.onnx"
    # Shape inference and graph folding first, as onnxruntime recommends for static quant.
    quant_pre_process(str(fp32), str(prepared))
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]

    def run(method: CalibrationMethod, extra: dict[str, Any]) -> None:
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=convs[:1],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options=extra,
        )

    try:
        run(CalibrationMethod.Percentile, {"CalibPercentile": 99.999})
    except ValueError as e:
        # A tensor with almost no spread (a saturated sigmoid, say) has no percentile
        # histogram ("Too many bins for data range"); min/max ranges still work.
        _logger.info("percentile calibration failed (%s); using min/max ranges", e)
        run(CalibrationMethod.MinMax, {})


def export_int8(
    bundle: str | os.PathLike[str],
    *,
    calibration: Sequence[str | os.PathLike[str]] | None = None,
    out: str | os.PathLike[str] | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_images: int = DEFAULT_MAX_IMAGES,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    force: bool = False,
) -> ExportReport:
    """Quantize the bundle to INT8 (static, calibrated on real images) if it agrees enough.

    The fp32 ONNX export is made first when it is missing. Calibration uses a reproducible
    sample of at most ``calibration_images`` of the images; agreement is measured on up to
    ``max_images`` of them (the two samples may overlap). The architecture's own recipe
    (the registry's ``int8_op_types``) is tried first and, when it agrees too rarely,
    convolutions only; the first that passes is written (``quantized_ops`` in its record).

    Args:
        bundle: a bundle folder or its run directory.
        calibration: image files or folders (default: the run's val split).
        out: the INT8 ``.onnx`` path (default: ``model.int8.onnx`` in the bundle folder).
        min_agreement: the smallest acceptable top-1 agreement with PyTorch, in (0, 1].
        max_images: verify on at most this many images.
        calibration_images: calibrate on at most this many images.
        force: write the file even when agreement is below ``min_agreement``.

    Returns:
        The report; when agreement is too low and not forced, ``written`` is False, no file
        is written and the figures are stored under ``exports["onnx_int8_refused"]``.

    Raises:
        ExportError: no images, or quantization failed.
    """
    if not 0.0 < min_agreement <= 1.0:
        raise ExportError(f"min_agreement must be in (0, 1], got {min_agreement}")
    folder = bundle_dir_of(bundle)
    images, source = _resolve_images(folder, calibration, "calibrate INT8")
    fp32 = recorded_export(folder, "onnx")
    if fp32 is None:
        fp32 = export_onnx(folder, data=calibration).path
    loaded = load_bundle(folder)
    reference = Predictor(loaded.meta, _TorchRunner(loaded.model), bundle_dir=folder)
    calib = _batches(reference, _sample(images, calibration_images, seed=1))
    verify = _batches(reference, _sample(images, max_images))
    target = Path(out) if out is not None else folder / INT8_FILE

    # The architecture's fastest recipe first; convolutions only if it disagrees too often.
    recipes = list(dict.fromkeys([get_arch(loaded.meta.arch).int8_op_types, ("Conv",)]))
    with tempfile.TemporaryDirectory(prefix="cropdoc-int8-") as tmp:
        tried: list[tuple[float, float, int, Path, tuple[str, ...]]] = []
        for i, op_types in enumerate(recipes):
            staged = Path(tmp) / f"{i}-{INT8_FILE}"
            try:
                _quantize(fp32, staged, calib, Path(tmp), op_types)
            except Exception as e:  # onnxruntime.quantization raises assorted types
                raise ExportError(f"INT8 quantization failed: {e}") from e
            candidate = _OnnxRunner(_onnx_session(staged), "onnx-int8")
            n, max_diff, agreement = _compare(reference.logits, candidate, verify)
            _logger.info(
                "ONNX INT8 of %s: top-1 agreement %.2f%%", "+".join(op_types), 100 * agreement
            )
            tried.append((agreement, max_diff, n, staged, op_types))
            if agreement >= min_agreement:
                break
        agreement, max_diff, n, staged, op_types = (
            tried[-1] if tried[-1][0] >= min_agreement else max(tried, key=lambda t: t[0])
        )
        passed = agreement >= min_agreement
        verification = Verification(
            images=n,
            source=source,
            max_abs_logit_diff=max_diff,
            top1_agreement=agreement,
            threshold=min_agreement,
            metric="top1_agreement",
            passed=passed,
            calibration_images=sum(len(b) for b in calib),
        )
        report = ExportReport("onnx-int8", target, False, verification, force, "onnxruntime")
        _logger.info(
            "ONNX INT8: top-1 agreement %.2f%% (minimum %.2f%%), max |logit diff| %.3g, %d images",
            100 * agreement,
            100 * min_agreement,
            max_diff,
            n,
        )
        if not passed and not force:
            meta = read_meta(folder)
            exports = dict(meta.exports)
            exports["onnx_int8_refused"] = {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "weights_sha256": meta.weights_sha256,
                "verification": asdict(verification),
            }
            update_meta(folder, exports=exports)
            return report
        _install(staged, target, folder)
    report.written, report.size_bytes = True, target.stat().st_size
    extra = {"fp32_source": _relative(fp32, folder), "quantized_ops": list(op_types)}
    report.record = _record(report, folder, extra)
    return report
