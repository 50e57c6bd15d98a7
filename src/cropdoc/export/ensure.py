"""Make sure the file a backend loads exists and is current, exporting only when it is not.

This is the explicit step ``cropdoc predict --backend onnx`` and ``cropdoc serve`` take
before loading (loading itself never exports), so a fresh bundle still works with the
ONNX backend, and the log says when an export was made and why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..bundle import resolve_bundle_dir
from ..inference import BACKENDS, EXPORT_KEYS, export_command, recorded_export
from .common import ExportError
from .onnx import export_onnx
from .tflite import export_tflite

__all__ = ["ensure_export"]

_logger = logging.getLogger(__name__)


def ensure_export(bundle: str | os.PathLike[str], backend: str = "onnx") -> Path | None:
    """Export fp32 ONNX (or TFLite) for ``backend`` when the bundle has no up-to-date one.

    Backends that load no exported file (``torch``, ``auto``) need nothing; ``auto`` uses
    an export only when one is already there. INT8 is never made here, because it needs
    calibration images and an agreement check (``cropdoc export --int8``).

    Args:
        bundle: a bundle folder or its run directory.
        backend: the backend about to be loaded.

    Returns:
        The file the backend will load, or None when it loads none.

    Raises:
        ExportError: unknown backend, INT8 missing, or the export failed.

    Example:
        >>> ensure_export("runs/effb0/model", "onnx")  # doctest: +SKIP
        PosixPath('runs/effb0/model/model.onnx')
    """
    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in EXPORT_KEYS:
        return None
    folder = resolve_bundle_dir(bundle)
    path = recorded_export(folder, EXPORT_KEYS[backend])
    if path is not None:
        return path
    if backend.endswith("-int8"):
        raise ExportError(
            f"{folder} has no up-to-date INT8 export: run `{export_command(folder, backend)}` "
            f"first (it needs calibration images), or use --backend "
            f"{backend.removesuffix('-int8')}"
        )
    _logger.info("no up-to-date %s export in %s; exporting one now", backend, folder)
    report = export_onnx(folder) if backend == "onnx" else export_tflite(folder)
    _logger.info(
        "exported %s (max |logit diff| vs torch %.3g)",
        report.path,
        report.verification.max_abs_logit_diff,
    )
    return report.path
