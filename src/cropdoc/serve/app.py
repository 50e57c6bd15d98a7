"""The FastAPI app: a JSON API over a :class:`~cropdoc.inference.Predictor` and a web page.

Input is hostile by default: uploads are limited in bytes (per file, and per request
before the body is parsed), in pixels (before decoding) and in number; every kind of bad
upload gets a 4xx JSON error naming the file and what to do, never a 500, and the server
keeps serving. Decoding runs in a worker thread per request, so one slow request does not
block the event loop (health checks stay responsive while a batch is predicted); the
forward passes of concurrent requests are then merged by a
:class:`~cropdoc.inference.MicroBatcher` (dynamic micro-batching: up to ``batch_max``
images, waiting at most ``batch_wait_ms`` for company), which is what lets a server under
load approach offline batch throughput. How many server processes run, and how they
start, is :mod:`cropdoc.serve.workers`'s business.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..advice import NOT_RECOGNISED, advice_for
from ..classnames import class_label
from ..diseases import DiseaseTable, disease_info, disease_table
from ..errors import ConfigError
from ..inference import DEFAULT_BATCH_SIZE, MicroBatcher, Prediction, Predictor
from ..resources.page import leaf_page
from ..version import __version__

__all__ = [
    "DEFAULT_LOW_CONFIDENCE",
    "NOT_RECOGNISED",
    "ServeSettings",
    "create_app",
]

_logger = logging.getLogger(__name__)

DEFAULT_LOW_CONFIDENCE = 0.7
_MB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """Limits and thresholds of a server.

    Attributes:
        max_upload_mb: largest accepted file, in MiB (413 above it).
        max_files: most images in one request.
        max_pixels: images declaring more pixels are refused before decoding (413).
        low_confidence: below this top-1 probability a result is flagged as unsure.
        top_k: classes returned per image.
        batch_max: most images merged into one forward pass across concurrent requests.
        batch_wait_ms: how long a request waits for others to share its forward pass
            (0: merge only requests already waiting).
        diseases: a disease table file (``--diseases``) replacing the packaged one; None:
            the packaged table.
    """

    max_upload_mb: float = 10.0
    max_files: int = 8
    max_pixels: int = 40_000_000
    low_confidence: float = DEFAULT_LOW_CONFIDENCE
    top_k: int = 3
    batch_max: int = DEFAULT_BATCH_SIZE
    batch_wait_ms: float = 5.0
    diseases: str | None = None

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.max_files < 1 or self.top_k < 1 or self.max_pixels < 1:
            raise ConfigError("max_files, top_k and max_pixels must be at least 1")
        if self.batch_max < 1 or self.batch_wait_ms < 0:
            raise ConfigError("batch_max must be at least 1 and batch_wait_ms non-negative")
        if not 0.0 <= self.low_confidence <= 1.0:
            raise ConfigError(f"low_confidence must be in [0, 1], got {self.low_confidence}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * _MB)

    @property
    def max_request_bytes(self) -> int:
        # All files at their limit plus room for multipart headers.
        return self.max_upload_bytes * self.max_files + _MB


# --------------------------------------------------------------------------- schemas


class ExplanationOut(BaseModel):
    """A Grad-CAM overlay: where the model looked for the predicted class."""

    png_base64: str
    class_: str = Field(alias="class", serialization_alias="class")
    label: str
    layer: str
    method: str


class TopClass(BaseModel):
    class_: str = Field(alias="class", serialization_alias="class")
    label: str
    probability: float


class ImageResult(BaseModel):
    filename: str
    ok: bool
    prediction: TopClass | None = None
    top_k: list[TopClass] = []
    crop: str | None = None
    disease: str | None = None
    healthy: bool | None = None
    pathogen: str | None = None
    severity: str | None = None
    symptoms: str | None = None
    treatment: list[str] = []
    low_confidence: bool = False
    ood_score: float | None = None
    abstain: bool = False
    advice: str | None = None
    explanation: ExplanationOut | None = None
    error: str | None = None
    status: int = 200


class PredictResponse(BaseModel):
    results: list[ImageResult]
    model: dict[str, Any]


class ErrorResponse(BaseModel):
    detail: str
    code: str
    results: list[ImageResult] = []


# --------------------------------------------------------------------------- errors


def _error_status(reason: str) -> tuple[int, str]:
    """HTTP status and code for a :class:`BadImageError` reason (stable short strings)."""
    if reason == "empty file":
        return 400, "empty_file"
    if reason == "not an image":
        return 415, "not_an_image"
    if reason.startswith("too many pixels"):
        return 413, "too_many_pixels"
    if reason.startswith("file too large"):
        return 413, "file_too_large"
    if reason.startswith("truncated or corrupt"):
        return 422, "corrupt_image"
    return 422, "unusable_image"


def _error(status: int, code: str, detail: str, results: list[ImageResult] | None = None):
    body = ErrorResponse(detail=detail, code=code, results=results or [])
    return JSONResponse(body.model_dump(by_alias=True), status_code=status)


class _TooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises
    HTTP exceptions from body parsing instead of turning them into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request is larger than {limit / _MB:.0f} MiB; send fewer or smaller images"
        )


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before they are parsed.

    A declared ``Content-Length`` is checked up front; a chunked body is counted as it
    streams. The rest of an over-long body is read and dropped (up to a cap) before
    answering, so the client gets the 413 instead of a connection reset mid-upload.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._drain(receive)
            exc = _TooLarge(self.limit)
            await _error(413, "request_too_large", exc.detail)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    raise _TooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the body, up to 4x the limit (past that the connection closes)."""
        read = 0
        while read <= 4 * self.limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


# --------------------------------------------------------------------------- results


@cache
def _diseases(path: str | None) -> DiseaseTable:
    """The server's disease table, read and validated once per process."""
    return disease_table(path)


def _result(pred: Prediction, settings: ServeSettings) -> ImageResult:
    if not pred.ok or pred.best is None:
        status, _ = _error_status(pred.error or "")
        return ImageResult(filename=pred.source, ok=False, error=pred.error, status=status)
    best = pred.best
    info = disease_info(best.name, _diseases(settings.diseases))
    low = best.probability < settings.low_confidence
    top = [
        TopClass(**{"class": s.name, "label": s.label, "probability": s.probability})
        for s in pred.top
    ]
    if pred.abstain:  # no crop, disease or treatment: they would be a guess
        return ImageResult(
            filename=pred.source,
            ok=True,
            prediction=top[0],
            top_k=top,
            low_confidence=low,
            ood_score=pred.ood_score,
            abstain=True,
            advice=NOT_RECOGNISED,
        )
    advice = advice_for(
        healthy=info.healthy, severity=info.severity, low_confidence=low, abstain=False
    )
    return ImageResult(
        filename=pred.source,
        ok=True,
        prediction=top[0],
        top_k=top,
        crop=info.crop,
        disease=info.disease,
        healthy=info.healthy,
        pathogen=info.pathogen or None,
        severity=info.severity,
        symptoms=info.symptoms or None,
        treatment=info.management,
        low_confidence=low,
        ood_score=pred.ood_score,
        abstain=False,
        advice=advice,
    )


class _LazyExplainer:
    """The bundle's Grad-CAM explainer, loaded on the first ``?explain=true`` (it needs the
    PyTorch weights, which an ONNX server otherwise never loads)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._explainer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        from ..inference import load_explainer

        with self._lock:
            if self._explainer is None:
                if self.predictor.bundle_dir is None:
                    raise ConfigError("explanations need the bundle folder of the served model")
                self._explainer = load_explainer(
                    self.predictor.bundle_dir, max_pixels=self.predictor.max_pixels
                )
        return self._explainer

    def add(self, results: list[ImageResult], payloads: dict[int, bytes]) -> None:
        """Attach an overlay to each good result (the class it predicted)."""
        explainer = self._get()
        for i, payload in payloads.items():
            r = results[i]
            if not r.ok or r.prediction is None:
                continue
            index = explainer.meta.classes.index(r.prediction.class_)
            e = explainer.explain(payload, class_index=index)
            r.explanation = ExplanationOut(
                png_base64=base64.b64encode(e.png()).decode("ascii"),
                **{"class": r.prediction.class_},
                label=e.label,
                layer=e.layer,
                method=explainer.method,
            )


# The leaf of the page's header, as the tab's icon (inline: the page is one request).
_ICON = (
    '<link rel="icon" href="data:image/svg+xml,%3Csvg xmlns=\'http://www.w3.org/2000/svg\' '
    "viewBox='0 0 24 24'%3E%3Cpath fill='%232e7d32' d='M17 8C8 10 5.9 16.2 3.8 21.3l1.9.7 "
    "1-2.3c.5.2 1 .3 1.3.3C19 20 22 3 22 3c-1 2-8 2.3-13 3.3S2 11.5 2 13.5s1.8 3.8 1.8 3.8C7 "
    "8 17 8 17 8z'/%3E%3C/svg%3E\">"
)
_FOOTER = (
    '<span id="model-info">Loading model information…</span><br>\n'
    "Advice is general guidance. Check with a local agricultural extension service and "
    "follow product labels before treating."
)


@cache
def _page() -> str:
    """The page at ``/``: the shared leaf page with this server's upload script."""
    script = resources.files(__package__).joinpath("page.js").read_text(encoding="utf-8")
    return leaf_page(
        subtitle="Photograph a leaf to identify the disease and what to do about it.",
        footer=_FOOTER,
        scripts=f"<script>\n{script}</script>",
        head=_ICON,
    )


# --------------------------------------------------------------------------- app


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """Build the app serving ``predictor``.

    Args:
        predictor: a loaded predictor (its bundle's metadata is shown at ``/model``).
        settings: limits and thresholds (defaults: 10 MiB per file, 8 files, 0.7).

    Returns:
        A FastAPI app; run it with uvicorn (``cropdoc serve`` does).

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> from cropdoc.inference import load_predictor  # doctest: +SKIP
        >>> app = create_app(load_predictor("runs/effb0/model", backend="onnx"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    uncovered = _diseases(settings.diseases).missing(predictor.meta.classes)
    if uncovered and settings.diseases is not None:
        _logger.warning(
            "%s has no entry for %d of the model's classes (they get generic advice): %s",
            settings.diseases,
            len(uncovered),
            ", ".join(uncovered[:3]) + (", ..." if len(uncovered) > 3 else ""),
        )
    predictor.max_pixels = settings.max_pixels
    meta = predictor.meta
    # FastAPIOffline serves Swagger UI and ReDoc from the package, not a CDN, so /docs
    # works on an offline field laptop like the rest of the app.
    app = FastAPIOffline(
        title="cropdoc",
        version=__version__,
        description="Crop-disease diagnosis from a leaf photo. POST images to /predict.",
    )
    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes)
    batcher = MicroBatcher(
        predictor, max_batch=settings.batch_max, max_wait_ms=settings.batch_wait_ms
    )
    app.state.batcher = batcher
    app.router.on_shutdown.append(batcher.close)
    model_summary = {"arch": meta.arch, "backend": predictor.backend, "classes": meta.num_classes}

    _add_error_handlers(app)
    _add_info_routes(app, predictor, settings, model_summary)
    _add_predict_route(app, batcher, settings, model_summary, _LazyExplainer(predictor))
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is a JSON body with a code and a message; never a bare 500."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(p) for p in e.get("loc", [])[1:]) for e in exc.errors()})
        return _error(
            422,
            "invalid_request",
            f"invalid request ({', '.join(fields) or 'body'}): send the photos as "
            "multipart/form-data in a field named 'files'",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "request_too_large" if isinstance(exc, _TooLarge) else "http_error"
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        _logger.exception("internal error on %s", request.url.path)
        return _error(500, "internal_error", "internal server error; see the server log")


def _add_info_routes(
    app: FastAPI, predictor: Predictor, settings: ServeSettings, model_summary: dict[str, Any]
) -> None:
    """``/`` (the page), ``/health`` and ``/model``."""
    meta = predictor.meta

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_page())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded and the server answers."""
        return {"status": "ok", **model_summary, "version": __version__}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """What is being served: architecture, classes, preprocessing, metrics, versions."""
        return {
            "arch": meta.arch,
            "backend": predictor.backend,
            "classes": meta.classes,
            "labels": [class_label(c) for c in meta.classes],
            "num_classes": meta.num_classes,
            "preprocessing": meta.preprocessing.model_dump(mode="json"),
            "temperature": meta.temperature,
            "metrics": meta.metrics,
            "best": meta.best,
            "exports": {
                k: v.get("verification") for k, v in meta.exports.items() if isinstance(v, dict)
            },
            "versions": {**meta.versions, "cropdoc_server": __version__},
            "created": meta.created,
            "low_confidence_threshold": settings.low_confidence,
            "ood": (
                {k: v for k, v in meta.ood.model_dump().items() if k != "params"}
                if meta.ood is not None
                else None
            ),
            "max_upload_mb": settings.max_upload_mb,
            "max_files": settings.max_files,
        }


def _add_predict_route(
    app: FastAPI,
    batcher: MicroBatcher,
    settings: ServeSettings,
    model_summary: dict[str, Any],
    explainer: _LazyExplainer,
) -> None:
    """``POST /predict``: photos in, diagnoses out, through the micro-batcher."""

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            415: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
    )
    async def predict(
        files: list[UploadFile] = File(..., description="One or more leaf photos (JPEG, PNG…)."),
        explain: bool = Query(
            False, description="Add a Grad-CAM overlay (PNG, base64) of where the model looked."
        ),
    ) -> JSONResponse:
        """Diagnose one or more leaf photos: top-k classes, disease information, advice.

        Each result has ``ood_score`` and ``abstain``: when abstaining, the photo is not one
        of the crops/diseases the model knows (or not a clear leaf photo), and no disease
        or treatment is given. A request where every image is bad is answered with the
        first image's 4xx; when some images are good, bad ones appear as results with
        ``ok: false``.
        """
        if len(files) > settings.max_files:
            return _error(
                413,
                "too_many_files",
                f"{len(files)} files sent; at most {settings.max_files} per request",
            )
        names, payloads, early = [], [], {}
        for i, upload in enumerate(files):
            name = upload.filename or f"image {i + 1}"
            names.append(name)
            if upload.size is not None and upload.size > settings.max_upload_bytes:
                early[i] = f"file too large: over {settings.max_upload_mb:g} MiB"
                payloads.append(b"")
                continue
            payloads.append(await upload.read())
        todo = [i for i in range(len(files)) if i not in early]
        preds = await run_in_threadpool(
            batcher.predict,
            [payloads[i] for i in todo],
            top_k=settings.top_k,
            names=[names[i] for i in todo],
        )
        by_index = dict(zip(todo, preds, strict=True))
        results = [
            _result(by_index.get(i) or Prediction(source=names[i], error=early[i]), settings)
            for i in range(len(files))
        ]
        if not any(r.ok for r in results):
            first = results[0]
            status, code = _error_status(first.error or "")
            return _error(status, code, f"{first.filename}: {first.error}", results)
        if explain:
            await run_in_threadpool(explainer.add, results, {i: payloads[i] for i in todo})
        body = PredictResponse(results=results, model=model_summary)
        return JSONResponse(body.model_dump(by_alias=True))
