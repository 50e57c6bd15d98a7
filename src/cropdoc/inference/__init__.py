"""Inference: the :class:`Predictor` over torch, onnxruntime or LiteRT runners,
micro-batching, and explanations (Grad-CAM).

Loading only loads: exporting is :mod:`cropdoc.export`'s job, which imports this package
and never the other way round.

>>> from cropdoc.inference import load_predictor
"""

from __future__ import annotations

from .artifacts import EXPORT_KEYS as EXPORT_KEYS
from .artifacts import export_command as export_command
from .artifacts import recorded_export as recorded_export
from .errors import InferenceError as InferenceError
from .explain import Explainer as Explainer
from .explain import Explanation as Explanation
from .explain import load_explainer as load_explainer
from .litert import LiteRtRunner as LiteRtRunner
from .predictor import BACKENDS as BACKENDS
from .predictor import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from .predictor import ClassScore as ClassScore
from .predictor import MicroBatcher as MicroBatcher
from .predictor import Prediction as Prediction
from .predictor import Predictor as Predictor
from .predictor import load_predictor as load_predictor
from .runners import FEATURES_OUTPUT as FEATURES_OUTPUT
from .runners import OnnxRunner as OnnxRunner
from .runners import Runner as Runner
from .runners import TorchRunner as TorchRunner
from .runners import onnx_session as onnx_session
from .sources import ImageSource as ImageSource
from .sources import collect_images as collect_images

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "EXPORT_KEYS",
    "FEATURES_OUTPUT",
    "ClassScore",
    "Explainer",
    "Explanation",
    "ImageSource",
    "InferenceError",
    "LiteRtRunner",
    "MicroBatcher",
    "OnnxRunner",
    "Prediction",
    "Predictor",
    "Runner",
    "TorchRunner",
    "collect_images",
    "export_command",
    "load_explainer",
    "load_predictor",
    "onnx_session",
    "recorded_export",
]
