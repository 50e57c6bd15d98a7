"""Which exported file an ONNX or TFLite backend loads: the recorded one, if it is current.

Loading and exporting both need this answer, and inference must not import the export
package, so the lookup lives here and ``cropdoc.export`` imports it. A recorded file is
used only when it is inside the bundle, exists, was made from the bundle's current
weights and has the outputs its OOD score reads; anything else counts as missing, so a
stale file is never served.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..bundle import read_meta, resolve_bundle_dir
from ..ood import needs_features
from .errors import InferenceError
from .runners import FEATURES_OUTPUT

__all__ = ["EXPORT_KEYS", "export_command", "recorded_export"]

_logger = logging.getLogger(__name__)

#: The ``model.json`` ``exports`` key of each exported backend.
EXPORT_KEYS = {
    "onnx": "onnx",
    "onnx-int8": "onnx_int8",
    "tflite": "tflite",
    "tflite-int8": "tflite_int8",
}


def export_command(bundle: str | os.PathLike[str], backend: str) -> str:
    """The ``cropdoc export`` command that makes the file ``backend`` loads."""
    if backend not in EXPORT_KEYS:
        raise InferenceError(f"backend {backend!r} loads no exported file")
    fmt, _, int8 = backend.partition("-")
    return f"cropdoc export {bundle} --format {fmt}{' --int8' if int8 else ''}"


def recorded_export(bundle: str | os.PathLike[str], key: str = "onnx") -> Path | None:
    """The file recorded under ``exports[key]``, if it exists and fits the current weights.

    Args:
        bundle: a bundle folder or its run directory.
        key: ``"onnx"``, ``"onnx_int8"``, ``"tflite"``, ... (see :data:`EXPORT_KEYS`).

    Returns:
        The file's path, or None (with a warning when a record exists but is unusable).
    """
    folder = resolve_bundle_dir(bundle)
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
    if meta.ood is not None and needs_features(meta.ood.kind):
        if FEATURES_OUTPUT not in record.get("outputs", []):
            _logger.warning(
                "%s export %s has no %r output for the %s OOD score; ignoring it",
                key,
                path,
                FEATURES_OUTPUT,
                meta.ood.kind,
            )
            return None
    return path
