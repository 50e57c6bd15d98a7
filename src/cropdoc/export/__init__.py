"""Export: ONNX and TFLite, fp32 and INT8, each verified against PyTorch before it is
written, and the offline web app.

Exports build on :mod:`cropdoc.inference` (its runners do the comparing); inference never
imports this package, so loading a model never exports one behind the caller's back.

>>> from cropdoc.export import ensure_export, export_onnx
"""

from __future__ import annotations

# Re-exported for convenience: exports take image files and folders like predictions do.
from ..inference import collect_images as collect_images
from .common import ExportError as ExportError
from .common import ExportReport as ExportReport
from .common import Verification as Verification
from .common import default_images as default_images
from .ensure import ensure_export as ensure_export
from .int8 import export_int8 as export_int8
from .onnx import export_onnx as export_onnx
from .ort_web import ORT_WEB_VERSION as ORT_WEB_VERSION
from .tflite import export_tflite as export_tflite
from .web import WebExport as WebExport
from .web import export_web as export_web

__all__ = [
    "ORT_WEB_VERSION",
    "ExportError",
    "ExportReport",
    "Verification",
    "WebExport",
    "collect_images",
    "default_images",
    "ensure_export",
    "export_int8",
    "export_onnx",
    "export_tflite",
    "export_web",
]
