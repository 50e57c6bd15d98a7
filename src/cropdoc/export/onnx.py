"""Export a bundle to fp32 ONNX, verified against PyTorch before it is written.

The file must reproduce the PyTorch logits within ``tolerance`` (max absolute difference,
default 1e-3) on real images, else it is not written (unless ``force``). The exporter is
``torch.onnx.export(..., dynamo=True)`` (PyTorch's default since 2.9) with a dynamic batch
axis and the weights inside the one ``.onnx`` file; if it fails on some model, the legacy
TorchScript exporter is tried once, and which one produced the file is recorded.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..bundle import resolve_bundle_dir
from ..inference import FEATURES_OUTPUT, OnnxRunner
from ..models import LogitsAndFeatures, get_arch
from .common import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_TOLERANCE,
    INPUT_NAME,
    ONNX_FILE,
    OPSET,
    OUTPUT_NAME,
    ExportError,
    ExportReport,
    Verification,
    compare_logits,
    install_file,
    onnx_fields,
    onnx_outputs,
    record_export,
    reference_predictor,
    verification_batches,
)

__all__ = ["export_onnx"]

_logger = logging.getLogger(__name__)


def _torch_export(model: torch.nn.Module, size: int, target: Path) -> str:
    """Export with the dynamo exporter, else the legacy one; return which one worked.

    ``model`` returns ``(logits, features)``: the file's outputs are :data:`OUTPUT_NAME`
    and :data:`FEATURES_OUTPUT` (the penultimate features feature-space OOD scores read).
    """
    example = (torch.randn(2, 3, size, size),)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(target),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME, FEATURES_OUTPUT],
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
            output_names=[OUTPUT_NAME, FEATURES_OUTPUT],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                OUTPUT_NAME: {0: "batch"},
                FEATURES_OUTPUT: {0: "batch"},
            },
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
        The report of the written file.

    Raises:
        ExportError: the model could not be exported, or failed verification.

    Example:
        >>> export_onnx("runs/effb0/model").verification.passed  # doctest: +SKIP
        True
    """
    folder = resolve_bundle_dir(bundle)
    reference, model = reference_predictor(folder)
    meta = reference.meta
    target = Path(out) if out is not None else folder / ONNX_FILE
    batches, source = verification_batches(reference, folder, data, max_images, "ONNX")
    with tempfile.TemporaryDirectory(prefix="cropdoc-export-") as tmp:
        staged = Path(tmp) / ONNX_FILE
        both = LogitsAndFeatures(model, get_arch(meta.arch)).eval()
        try:
            exporter = _torch_export(both, meta.preprocessing.image_size, staged)
        except Exception as e:  # see _torch_export
            raise ExportError(
                f"could not export {meta.arch} to ONNX: {e}; please report this"
            ) from e
        candidate = OnnxRunner.from_file(staged, name="onnx")
        n, max_diff, agreement = compare_logits(reference.logits, candidate, batches)
        verification = Verification(
            images=n,
            source=source,
            max_abs_logit_diff=max_diff,
            top1_agreement=agreement,
            threshold=tolerance,
            metric="max_abs_logit_diff",
            passed=max_diff <= tolerance,
        )
        _logger.info(
            "ONNX fp32: max |logit diff| %.3g (limit %g), top-1 agreement %.2f%% on %d images",
            max_diff,
            tolerance,
            100 * agreement,
            n,
        )
        if not verification.passed and not force:
            raise ExportError(
                f"the ONNX export differs from PyTorch by up to {max_diff:.3g} in the logits "
                f"(limit {tolerance:g}); not written. Use --force to keep it anyway"
            )
        install_file(staged, target, folder)
    report = ExportReport("onnx", target, True, verification, force, exporter)
    report.size_bytes = target.stat().st_size
    fields = {**onnx_fields(), "outputs": onnx_outputs(target)}
    report.record = record_export(report, folder, fields)
    return report
