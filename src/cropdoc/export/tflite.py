"""Export a bundle to TFLite (LiteRT) for Android and iOS apps, verified like ONNX.

Route: PyTorch → ``litert_torch.convert`` (LiteRT's own PyTorch converter, formerly
AI Edge Torch; 0.10 is the release that supports torch 2.14) → ``model.tflite``; INT8 is
AI Edge Quantizer's static recipe (int8 weights and activations, calibrated on real
images) applied to that file → ``model.int8.tflite``. Both are run with the LiteRT
interpreter (``ai-edge-litert``) and compared with PyTorch on real images: fp32 must
reproduce the logits within ``tolerance`` (else not written unless ``force``), INT8 must
agree on the top-1 class for ``min_agreement`` of the images (else not written unless
``force``; the figures go to ``exports["tflite_int8_refused"]``). The input is one image,
``(1, S, S, 3)`` channels-last, normalised as the bundle says (phones classify a photo at
a time; the batch axis cannot be made dynamic for every architecture).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bundle import resolve_bundle_dir
from ..inference import EXPORT_KEYS, FEATURES_OUTPUT, LiteRtRunner, recorded_export
from ..models import LogitsAndFeatures, get_arch
from .common import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_TOLERANCE,
    OUTPUT_NAME,
    ExportError,
    ExportReport,
    Verification,
    compare_logits,
    install_file,
    preprocess_batches,
    record_export,
    record_refusal,
    reference_predictor,
    resolve_images,
    sample_images,
    verification_batches,
)

__all__ = ["TFLITE_FILE", "TFLITE_INT8_FILE", "export_tflite"]

_logger = logging.getLogger(__name__)

TFLITE_FILE, TFLITE_INT8_FILE = "model.tflite", "model.int8.tflite"
_INSTALL = "pip install 'cropdoc[tflite]'"


class _ChannelsLast(nn.Module):
    """``(logits, features)`` of a ``(N, S, S, 3)`` batch, the layout of phone image
    buffers (the model itself takes NCHW)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image.permute(0, 3, 1, 2))


def _versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for package in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def _convert(model: nn.Module, arch: str, size: int, target: Path) -> None:
    """PyTorch → ``.tflite`` with litert-torch: batch 1, channels-last input, outputs the
    logits and the penultimate features (as the ONNX export: feature-space OOD scores)."""
    # TensorFlow Lite's C++ start-up notes (oneDNN, XNNPACK) are not for our users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import litert_torch
    except ImportError as e:
        raise ExportError(f"TFLite export needs litert-torch: {_INSTALL}") from e
    both = LogitsAndFeatures(model, get_arch(arch))
    example = (torch.zeros(1, size, size, 3),)
    shown = litert_torch.config.show_progress
    litert_torch.config.show_progress = False  # a library does not print; restored below
    root = logging.getLogger()
    level = root.level
    # The converter logs every lowered op on the root logger at INFO; hide that while it runs.
    root.setLevel(max(level, logging.WARNING))
    try:
        edge = litert_torch.convert(_ChannelsLast(both).eval(), example)
        edge.export(str(target))
    except Exception as e:  # the converter raises many unrelated types
        raise ExportError(f"litert-torch could not convert the model: {e}") from e
    finally:
        litert_torch.config.show_progress = shown
        root.setLevel(level)


def _quantize(fp32: Path, target: Path, calibration: list[np.ndarray]) -> None:
    """AI Edge Quantizer's static int8 recipe, calibrated one image at a time."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as e:
        raise ExportError(f"TFLite INT8 needs ai-edge-quantizer: {_INSTALL}") from e
    runner = LiteRtRunner.from_file(fp32)
    signatures = runner.interpreter.get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    samples = [
        {name: np.ascontiguousarray(image[None].transpose(0, 2, 3, 1))}
        for batch in calibration
        for image in batch
    ]
    try:
        # The calibrator draws a progress bar on stderr that cannot be turned off, and keeps
        # every intermediate tensor on purpose, saying so: neither is for our users.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", "Warning: Enabling `experimental_preserve_all")
            warnings.filterwarnings("ignore", "invalid value encountered in cast")
            qt = quantizer.Quantizer(str(fp32), recipe.static_wi8_ai8())
            result = qt.calibrate({key: samples})
            quantized = qt.quantize(result, enable_progress_bar=False, enable_progress_report=False)
        quantized.export_model(str(target), overwrite=True)
    except Exception as e:  # the quantizer raises assorted types
        raise ExportError(f"TFLite INT8 quantization failed: {e}") from e


def _record(report: ExportReport, folder: Path) -> dict[str, Any]:
    """Store ``report`` in ``model.json`` ``exports`` (as ONNX exports are)."""
    fields = {
        "input": "(1, S, S, 3) float32 channels-last, normalised"
        if report.format == "tflite"
        else "(1, S, S, 3) int8 channels-last (scale and zero point in the file)",
        "outputs": [OUTPUT_NAME, FEATURES_OUTPUT],
    }
    return record_export(report, folder, fields, _versions())


def _export_fp32(
    folder: Path,
    target: Path,
    data: Sequence[str | os.PathLike[str]] | None,
    tolerance: float,
    max_images: int,
    force: bool,
) -> ExportReport:
    reference, model = reference_predictor(folder)
    batches, source = verification_batches(reference, folder, data, max_images, "TFLite")
    with tempfile.TemporaryDirectory(prefix="cropdoc-tflite-") as tmp:
        staged = Path(tmp) / TFLITE_FILE
        _convert(model, reference.meta.arch, reference.meta.preprocessing.image_size, staged)
        n, max_diff, agreement = compare_logits(
            reference.logits, LiteRtRunner.from_file(staged), batches
        )
        v = Verification(
            n, source, max_diff, agreement, tolerance, "max_abs_logit_diff", max_diff <= tolerance
        )
        _logger.info(
            "TFLite fp32: max |logit diff| %.3g (limit %g), top-1 agreement %.2f%% on %d images",
            max_diff,
            tolerance,
            100 * agreement,
            n,
        )
        if not v.passed and not force:
            raise ExportError(
                f"the TFLite export differs from PyTorch by up to {max_diff:.3g} in the logits "
                f"(limit {tolerance:g}); not written. Use --force to keep it anyway"
            )
        install_file(staged, target, folder)
    report = ExportReport("tflite", target, True, v, force, "litert-torch")
    report.size_bytes = target.stat().st_size
    report.record = _record(report, folder)
    return report


def _export_int8(
    folder: Path,
    target: Path,
    data: Sequence[str | os.PathLike[str]] | None,
    min_agreement: float,
    max_images: int,
    calibration_images: int,
    force: bool,
) -> ExportReport:
    images, source = resolve_images(folder, data, "calibrate INT8")
    fp32 = recorded_export(folder, EXPORT_KEYS["tflite"])
    if fp32 is None:
        fp32 = _export_fp32(
            folder, folder / TFLITE_FILE, data, DEFAULT_TOLERANCE, max_images, False
        ).path
    reference, _ = reference_predictor(folder)
    calib = preprocess_batches(reference, sample_images(images, calibration_images, seed=1))
    verify = preprocess_batches(reference, sample_images(images, max_images))
    with tempfile.TemporaryDirectory(prefix="cropdoc-tflite-int8-") as tmp:
        staged = Path(tmp) / TFLITE_INT8_FILE
        _quantize(fp32, staged, calib)
        candidate = LiteRtRunner.from_file(staged, name="tflite-int8")
        n, max_diff, agreement = compare_logits(reference.logits, candidate, verify)
        v = Verification(
            n,
            source,
            max_diff,
            agreement,
            min_agreement,
            "top1_agreement",
            agreement >= min_agreement,
            sum(len(b) for b in calib),
        )
        _logger.info(
            "TFLite INT8: top-1 agreement %.2f%% (minimum %.2f%%), max |logit diff| "
            "%.3g, %d images",
            100 * agreement,
            100 * min_agreement,
            max_diff,
            n,
        )
        report = ExportReport("tflite-int8", target, False, v, force, "ai-edge-quantizer")
        if not v.passed and not force:
            record_refusal(folder, "tflite_int8_refused", v)
            return report
        install_file(staged, target, folder)
    report.written, report.size_bytes = True, target.stat().st_size
    report.record = _record(report, folder)
    return report


def export_tflite(
    bundle: str | os.PathLike[str],
    *,
    int8: bool = False,
    out: str | os.PathLike[str] | None = None,
    data: Sequence[str | os.PathLike[str]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_images: int = DEFAULT_MAX_IMAGES,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    force: bool = False,
) -> ExportReport:
    """Export the bundle to ``.tflite`` (fp32, or INT8), verified with the LiteRT interpreter.

    Args:
        bundle: a bundle folder or its run directory.
        int8: quantize to INT8 (the fp32 file is made first when missing).
        out: the file to write (default: ``model.tflite`` / ``model.int8.tflite`` in the
            bundle folder).
        data: image files or folders to verify on and calibrate with (default: the run's
            val split; INT8 needs images).
        tolerance: fp32: the largest acceptable max |logit difference| vs PyTorch.
        min_agreement: INT8: the smallest acceptable top-1 agreement, in (0, 1].
        max_images: verify on at most this many images.
        calibration_images: calibrate INT8 on at most this many images.
        force: write a file that failed its check.

    Returns:
        The report; an INT8 file below ``min_agreement`` is not written (``written`` False).

    Raises:
        ExportError: litert-torch missing, conversion failed, fp32 failed its check, or
            no images for INT8.
    """
    if not 0.0 < min_agreement <= 1.0:
        raise ExportError(f"min_agreement must be in (0, 1], got {min_agreement}")
    folder = resolve_bundle_dir(bundle)
    if not int8:
        target = Path(out) if out is not None else folder / TFLITE_FILE
        return _export_fp32(folder, target, data, tolerance, max_images, force)
    target = Path(out) if out is not None else folder / TFLITE_INT8_FILE
    return _export_int8(folder, target, data, min_agreement, max_images, calibration_images, force)
