"""The offline web app: a static folder that diagnoses leaf photos in the browser.

Farmers are often out of reach of a server, so the page runs the model itself with
onnxruntime-web and keeps working with no network after the first visit (a service
worker caches every file; a web app manifest lets a phone install it). Everything is in
the folder, nothing comes from a CDN: ``index.html`` (``cropdoc serve``'s page and result
card, from :mod:`cropdoc.resources.page`), the ONNX model (INT8 when it passed its
agreement check, else fp32), ``config.json`` (classes, preprocessing, temperature, OOD
score and threshold, disease table, serve's advice texts), the JavaScript that
preprocesses exactly as Python does, and onnxruntime-web's files
(:mod:`cropdoc.export.ort_web`: fetched with npm, hash-checked, cached).

A service worker needs a secure origin: host the folder over https, or open it on
``localhost``; a plain ``http://`` LAN address loads the page but cannot cache it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..advice import advice_table
from ..bundle import BundleMeta, read_meta, resolve_bundle_dir, update_meta
from ..classnames import class_label
from ..data.images import DEFAULT_MAX_PIXELS
from ..diseases import DiseaseInfo, disease_info
from ..inference import EXPORT_KEYS, FEATURES_OUTPUT, recorded_export
from ..ood import needs_features
from ..resources.page import leaf_page
from ..version import __version__
from .common import INPUT_NAME, OUTPUT_NAME, ExportError, bundle_relative
from .int8 import export_int8
from .onnx import export_onnx
from .ort_web import ORT_WEB_VERSION, ort_web_files

__all__ = ["DEFAULT_LOW_CONFIDENCE", "WEB_OOD_KINDS", "WebExport", "export_web"]

_logger = logging.getLogger(__name__)

#: Below this top-1 probability the card asks for a better photo (``cropdoc serve``'s).
DEFAULT_LOW_CONFIDENCE = 0.7
#: OOD scores the page computes from the model's outputs (``app.js``: ``oodScore``).
WEB_OOD_KINDS = ("msp", "energy", "mahalanobis")
_ASSETS = ("app.js", "preprocess.js", "scores.js")
_HEAD = """<meta name="theme-color" content="#1b5e20">
<link rel="manifest" href="manifest.webmanifest">
<link rel="icon" type="image/png" sizes="192x192" href="icon-192.png">
<link rel="apple-touch-icon" href="icon-192.png">"""
_FOOTER = """<span id="model-info">Loading the model…</span>
<span id="offline-status"></span><br>
Runs on this device: photos never leave it. Advice is general guidance. Check with a local
agricultural extension service and follow product labels before treating."""
_SCRIPTS = "\n".join(
    f'<script src="{name}"></script>'
    for name in ("ort/ort.wasm.min.js", "preprocess.js", "scores.js", "app.js")
)
_CONFIG = "config.json"
_GENERATOR = "cropdoc web export"


@dataclass
class WebExport:
    """What the web export wrote.

    Attributes:
        path: the folder to host.
        model: which export the page runs (``onnx_int8`` or ``onnx``).
        model_path: the bundle's file that was copied.
        files: the folder's files (relative), all cached by the service worker.
        size_bytes: the folder's total size.
        ort_web_version: the onnxruntime-web version inside.
        record: what was stored in ``model.json`` under ``exports["web"]``.
    """

    path: Path
    model: str
    model_path: Path
    files: list[str]
    size_bytes: int
    ort_web_version: str
    record: dict[str, Any]


def _passed(meta: BundleMeta, key: str) -> bool:
    verification = meta.exports.get(key, {}).get("verification", {})
    return bool(verification.get("passed"))


def _choose_model(
    folder: Path, int8: bool, calibration: Sequence[str | os.PathLike[str]] | None
) -> tuple[str, Path]:
    """INT8 when it exists (or ``int8`` makes it) and passed its check, else fp32."""
    if int8 and recorded_export(folder, EXPORT_KEYS["onnx-int8"]) is None:
        report = export_int8(folder, calibration=calibration)
        if not report.written:
            _logger.warning(
                "INT8 agreement %.2f%% is below %.2f%%; the page runs the fp32 model",
                100 * report.verification.top1_agreement,
                100 * report.verification.threshold,
            )
    meta = read_meta(folder)
    path = recorded_export(folder, EXPORT_KEYS["onnx-int8"])
    if path is not None and _passed(meta, EXPORT_KEYS["onnx-int8"]):
        return EXPORT_KEYS["onnx-int8"], path
    path = recorded_export(folder, EXPORT_KEYS["onnx"])
    if path is None:
        path = export_onnx(folder, data=calibration).path
    return EXPORT_KEYS["onnx"], path


def _ood(meta: BundleMeta, features: bool) -> dict[str, Any] | None:
    """The OOD score the page abstains with, if it can compute it."""
    if meta.ood is None:
        return None
    if meta.ood.kind not in WEB_OOD_KINDS or (needs_features(meta.ood.kind) and not features):
        _logger.warning(
            "the web page cannot compute the %r OOD score (it computes %s, feature scores "
            "from a model with a %r output); it will not abstain",
            meta.ood.kind,
            ", ".join(WEB_OOD_KINDS),
            FEATURES_OUTPUT,
        )
        return None
    return {"kind": meta.ood.kind, "threshold": meta.ood.threshold, "params": meta.ood.params}


def _page_config(
    meta: BundleMeta,
    kind: str,
    model_file: str,
    features: bool,
    low_confidence: float,
    top_k: int,
    info: Callable[[str], DiseaseInfo],
) -> dict[str, Any]:
    verification = meta.exports.get(kind, {}).get("verification", {})
    return {
        "generator": _GENERATOR,
        "cropdoc": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "arch": meta.arch,
        "classes": list(meta.classes),
        "labels": [class_label(c) for c in meta.classes],
        "preprocessing": meta.preprocessing.model_dump(mode="json"),
        "temperature": meta.temperature,
        "ood": _ood(meta, features),
        "low_confidence": low_confidence,
        "top_k": top_k,
        "diseases": {c: info(c).to_dict() for c in meta.classes},
        "advice": advice_table(),
        "max_pixels": DEFAULT_MAX_PIXELS,
        "metrics": {"test": meta.metrics.get("test", {})},
        "model": {
            "file": model_file,
            "kind": "INT8" if kind == EXPORT_KEYS["onnx-int8"] else "fp32",
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "features": FEATURES_OUTPUT if features else None,
            "verification": verification,
        },
        "onnxruntime_web": ORT_WEB_VERSION,
    }


def _leaf_icon(size: int, path: Path) -> None:
    """The app icon: a pale leaf on dark green, inside the maskable safe zone."""
    scale = 4  # drawn large, then downsampled: smooth edges without an SVG renderer
    s = size * scale
    img = Image.new("RGB", (s, s), (27, 94, 32))
    draw = ImageDraw.Draw(img)
    # A lens (two circle arcs) along the diagonal, within the central 60 %.
    lo, hi = 0.22 * s, 0.78 * s
    points = []
    for i in range(41):
        t = i / 40
        x, y = lo + t * (hi - lo), hi - t * (hi - lo)
        bulge = 0.17 * s * (1 - (2 * t - 1) ** 2)
        points.append((x + bulge / 1.414, y + bulge / 1.414))
    for i in range(40, -1, -1):
        t = i / 40
        x, y = lo + t * (hi - lo), hi - t * (hi - lo)
        bulge = 0.17 * s * (1 - (2 * t - 1) ** 2)
        points.append((x - bulge / 1.414, y - bulge / 1.414))
    draw.polygon(points, fill=(165, 214, 167))
    draw.line([(lo, hi), (hi, lo)], fill=(46, 125, 50), width=max(1, s // 60))
    img.resize((size, size), Image.Resampling.LANCZOS).save(path, optimize=True)


def _manifest() -> dict[str, Any]:
    icons = [
        {"src": f"icon-{n}.png", "sizes": f"{n}x{n}", "type": "image/png", "purpose": purpose}
        for n in (192, 512)
        for purpose in ("any", "maskable")
    ]
    return {
        "name": "cropdoc leaf check",
        "short_name": "cropdoc",
        "description": "Diagnose crop diseases from a leaf photo, offline, on this device.",
        "start_url": "./",
        "scope": "./",
        "display": "standalone",
        "background_color": "#f4f7f2",
        "theme_color": "#1b5e20",
        "icons": icons,
    }


def _write_folder(
    staged: Path, model: Path, model_file: str, config: dict[str, Any], ort: dict[str, Path]
) -> list[str]:
    """Every file of the page into ``staged``, the service worker last (it lists them)."""
    assets = resources.files(__package__).joinpath("web_assets")
    for name in _ASSETS:
        (staged / name).write_bytes(assets.joinpath(name).read_bytes())
    page = leaf_page(
        subtitle="Photograph a leaf to identify the disease and what to do about it. "
        "Works offline.",
        footer=_FOOTER,
        scripts=_SCRIPTS,
        head=_HEAD,
    )
    (staged / "index.html").write_text(page, encoding="utf-8")
    (staged / "ort").mkdir()
    for name, path in ort.items():
        shutil.copyfile(path, staged / "ort" / Path(name).name)
    shutil.copyfile(model, staged / model_file)
    (staged / _CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    (staged / "manifest.webmanifest").write_text(json.dumps(_manifest(), indent=1) + "\n")
    for n in (192, 512):
        _leaf_icon(n, staged / f"icon-{n}.png")
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (staged / name).read_bytes())
    worker = assets.joinpath("sw.js").read_text(encoding="utf-8")
    worker = worker.replace("__VERSION__", digest.hexdigest()[:16])
    worker = worker.replace("__FILES__", json.dumps(["./", *files]))
    (staged / "sw.js").write_text(worker, encoding="utf-8")
    return sorted([*files, "sw.js"])


def _install(staged: Path, out: Path) -> None:
    """Replace ``out`` with ``staged``; only an earlier web export may be replaced."""
    if out.exists():
        marker = out / _CONFIG
        try:
            ours = json.loads(marker.read_text(encoding="utf-8")).get("generator") == _GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours and (out.is_file() or any(out.iterdir())):
            raise ExportError(
                f"{out} exists and is not a cropdoc web export; choose a new or empty --out DIR"
            )
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)


def _record(folder: Path, out: Path, kind: str, model: Path, size: int) -> dict[str, Any]:
    meta = read_meta(folder)
    record = {
        "path": bundle_relative(out, folder),
        "format": "web",
        "model": kind,
        "model_sha256": meta.exports.get(kind, {}).get("sha256", ""),
        "model_source": bundle_relative(model, folder),
        "onnxruntime_web": ORT_WEB_VERSION,
        "size_bytes": size,
        "weights_sha256": meta.weights_sha256,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    update_meta(folder, exports={**meta.exports, "web": record})
    return record


def export_web(
    bundle: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    ort_web: str | os.PathLike[str] | None = None,
    int8: bool = False,
    calibration: Sequence[str | os.PathLike[str]] | None = None,
    low_confidence: float = DEFAULT_LOW_CONFIDENCE,
    top_k: int = 3,
    diseases: Callable[[str], DiseaseInfo] | None = None,
) -> WebExport:
    """Write the offline web app for ``bundle`` into ``out``.

    Args:
        bundle: a bundle folder or its run directory.
        out: the folder to write (default: ``web/`` next to the bundle); an earlier web
            export there is replaced, anything else is refused.
        ort_web: a local onnxruntime-web tarball or unpacked folder (default: the cache,
            else ``npm pack``); see :mod:`cropdoc.export.ort_web`.
        int8: make the INT8 export first when the bundle has none (it is used only if it
            passes its agreement check).
        calibration: images to verify (and calibrate INT8) on; default: the val split.
        low_confidence: below this top-1 probability the card asks for a better photo.
        top_k: classes on the card.
        diseases: the disease information per class (default: the packaged table).

    Raises:
        ExportError: onnxruntime-web unavailable, an export failed, or ``out`` holds
            something else.
    """
    if not 0.0 <= low_confidence <= 1.0 or top_k < 1:
        raise ExportError("low_confidence must be in [0, 1] and top_k at least 1")
    folder = resolve_bundle_dir(bundle)
    target = Path(out) if out is not None else folder.parent / "web"
    ort = ort_web_files(ort_web)  # first: without it nothing else is worth doing
    kind, model = _choose_model(folder, int8, calibration)
    model_file = "model.int8.onnx" if kind == EXPORT_KEYS["onnx-int8"] else "model.onnx"
    meta = read_meta(folder)
    features = FEATURES_OUTPUT in meta.exports.get(kind, {}).get("outputs", [])
    info = diseases or disease_info
    config = _page_config(meta, kind, model_file, features, low_confidence, top_k, info)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        files = _write_folder(staged, model, model_file, config, ort)
        size = sum((staged / f).stat().st_size for f in files)
        _install(staged, target)
    except OSError as e:
        raise ExportError(f"could not write the web export to {target}: {e}") from e
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    record = _record(folder, target, kind, model, size)
    _logger.info("web export: %s (%s model, %.1f MB)", target, config["model"]["kind"], size / 1e6)
    return WebExport(target, kind, model, files, size, ORT_WEB_VERSION, record)
