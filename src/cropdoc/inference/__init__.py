"""Inference: the :class:`Predictor` (PyTorch and onnxruntime backends) and verified export."""

from __future__ import annotations

from .export import ExportError as ExportError
from .export import ExportReport as ExportReport
from .export import Verification as Verification
from .export import collect_images as collect_images
from .export import default_images as default_images
from .export import export_int8 as export_int8
from .export import export_onnx as export_onnx
from .predictor import BACKENDS as BACKENDS
from .predictor import ClassScore as ClassScore
from .predictor import InferenceError as InferenceError
from .predictor import Prediction as Prediction
from .predictor import Predictor as Predictor
from .predictor import load_predictor as load_predictor

__all__ = [
    "BACKENDS",
    "ClassScore",
    "ExportError",
    "ExportReport",
    "InferenceError",
    "Prediction",
    "Predictor",
    "Verification",
    "collect_images",
    "default_images",
    "export_int8",
    "export_onnx",
    "load_predictor",
]
