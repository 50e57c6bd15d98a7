"""``cropdoc predict``, ``cropdoc export`` and ``cropdoc serve``.

Choices are enums, so ``--help`` lists them and the shell completes them. ``predict`` and
``serve`` share their defaults: backend ``auto``, 32 images per forward pass, device
``auto`` (as ``evaluate``'s). ``--workers`` means loader workers everywhere in cropdoc;
server processes are ``--processes``. Options the library has a default for default to
None here, so that default is written once, in the library.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import CropdocError
from .app import app, console, out
from .options import Device

__all__ = ["Backend", "ExportFormat", "export", "predict", "serve"]


class Backend(StrEnum):
    """Who computes the logits (:data:`cropdoc.inference.BACKENDS`)."""

    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"
    tflite = "tflite"
    tflite_int8 = "tflite-int8"


class ExportFormat(StrEnum):
    """What ``cropdoc export`` writes (:data:`cropdoc.api.EXPORT_FORMATS`)."""

    onnx = "onnx"
    tflite = "tflite"
    web = "web"


# --------------------------------------------------------------------------- options
Bundle = Annotated[
    Path, typer.Argument(help="Model bundle (a run's model/ folder).", metavar="BUNDLE")
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        help="auto: onnx when the bundle has an up-to-date export (cropdoc export) and "
        "the device is the CPU, else torch. onnx (and tflite) export the bundle first when "
        "needed; tflite runs the LiteRT file a phone app runs (pip install "
        "'cropdoc[tflite]')."
    ),
]
DeviceOpt = Annotated[
    Device, typer.Option(help="Where the torch backend computes (auto: CUDA, MPS, CPU).")
]
TopK = Annotated[int, typer.Option("--top-k", help="Classes per image.", metavar="K")]
DiseasesOpt = Annotated[
    Path | None,
    typer.Option(
        "--diseases",
        metavar="FILE",
        help="Disease table (JSON/YAML, the format of cropdoc's resources/diseases.json) "
        "to use instead of the packaged one, e.g. an extension service's own advice.",
    ),
]

# Exporter and quantizer internals log at INFO; users need our summary, not theirs.
_NOISY = (
    "onnx_ir",
    "onnxscript",
    "onnxruntime",
    "torch.onnx",
    "torch.export",
    "torch._dynamo",
    "litert_torch",
    "ai_edge_quantizer",
    "jax",
    "absl",
)


def _quiet_exporters() -> None:
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (None: leave the library's default)."""
    return {k: v for k, v in options.items() if v is not None}


def _load(bundle: Path, backend: Backend, device: Device, threads: int | None = None):
    """Export when the chosen ONNX backend needs it (logged), then load the predictor."""
    from ..api import load

    _quiet_exporters()
    return load(bundle, backend=backend.value, device=device.value, threads=threads).predictor


MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        help="Refuse images declaring more pixels than this, before decoding (default: "
        "40000000; raise it for large phone photos, e.g. 50000000 for 48 MP).",
        metavar="N",
    ),
]


# --------------------------------------------------------------------------- predict
def _write_explanations(bundle: Path, results, folder: Path, max_pixels: int) -> int:
    """A Grad-CAM overlay per predicted image, named after it (unique within ``folder``)."""
    from ..inference import load_explainer

    explainer = load_explainer(bundle, max_pixels=max_pixels)
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    written = 0
    for i, r in enumerate(results):
        if r.best is None:
            continue
        stem = Path(r.source).stem
        name = f"{stem}.gradcam.png" if stem not in used else f"{stem}-{i}.gradcam.png"
        used.add(stem)
        explainer.explain(r.source, class_index=r.best.index).save(folder / name)
        written += 1
    return written


def _progress(total: int):
    """A rich progress callback for many images; None for a handful."""
    if total < 8:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("predict", total=total)
    return bar, lambda done, _total: bar.update(task, completed=done)


def _disease(r, table) -> Any:
    """The disease information of a result's best class (None: an error, or abstained)."""
    if r.best is None or getattr(r, "abstain", False):
        return None
    return table.info(r.best.name)


def _print_results(results, *, top_k: int, as_json: bool, as_csv: bool, table) -> None:
    if as_json:
        for r in results:
            info = _disease(r, table)
            typer.echo(json.dumps({**r.to_dict(), "disease": info and info.to_dict()}))
        return
    if as_csv:
        writer = csv.writer(sys.stdout)
        header = ["path", "class", "probability"]
        for i in range(2, top_k + 1):
            header += [f"class_{i}", f"probability_{i}"]
        writer.writerow([*header, "ood_score", "abstain", "error"])
        for r in results:
            row: list[object] = [r.source]
            for i in range(top_k):
                s = r.top[i] if i < len(r.top) else None
                row += [s.name, f"{s.probability:.6f}"] if s else ["", ""]
            score = f"{r.ood_score:.6g}" if r.ood_score is not None else ""
            writer.writerow([*row, score, str(r.abstain).lower(), r.error or ""])
        return
    for r in results:
        if r.best is None:
            out.print(f"{r.source}  [red]error:[/] {r.error}", highlight=False, soft_wrap=True)
            continue
        if r.abstain:
            line = f"{r.source}  [yellow]not recognised[/] (OOD score {r.ood_score:.3g})"
            out.print(line, highlight=False, soft_wrap=True)
            continue
        others = ", ".join(f"{s.label} {s.probability:.1%}" for s in r.top[1:])
        line = f"{r.source}  [bold]{r.best.label}[/] {r.best.probability:.1%}"
        out.print(line + (f"  ({others})" if others else ""), highlight=False, soft_wrap=True)
        info = _disease(r, table)
        if info is not None and info.known and not info.healthy and info.management:
            out.print(
                f"    {info.severity} risk; {info.management[0]}", highlight=False, soft_wrap=True
            )


@app.command()
def predict(
    bundle: Bundle,
    paths: Annotated[
        list[Path],
        typer.Argument(help="Image files and/or folders (recursive).", metavar="IMAGE|DIR..."),
    ],
    top_k: TopK = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header row.")] = False,
    backend: BackendOpt = Backend.auto,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per forward pass (default: 32).", metavar="N")
    ] = None,
    device: DeviceOpt = Device.auto,
    explain: Annotated[
        Path | None,
        typer.Option(
            "--explain",
            metavar="DIR",
            help="Write a Grad-CAM heatmap overlay per image into DIR (<name>.gradcam.png): "
            "where the model looked for the class it predicted.",
        ),
    ] = None,
    max_pixels: MaxPixelsOpt = None,
    diseases: DiseasesOpt = None,
) -> None:
    """Predict the disease in leaf photos; a bad file gets an error entry, the rest continue.

    Every result carries ood_score (higher = less like the training photos) and abstain
    (true: not one of the model's crops/diseases, or not a clear leaf photo; a bundle
    without a fitted OOD score never abstains). --json adds each image's disease
    information (crop, pathogen, symptoms, management, severity) from the packaged table
    or --diseases FILE. Exits with 1 only when no image could be predicted.
    """
    from ..diseases import disease_table
    from ..inference import collect_images

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    table = disease_table(diseases)  # a bad file fails before the model loads
    images = collect_images(paths)
    if not images:
        raise typer.BadParameter("no images found in the given paths")
    predictor = _load(bundle, backend, device)
    if max_pixels is not None:
        predictor.max_pixels = max_pixels
    bar, callback = _progress(len(images))
    if bar is not None:
        bar.start()
    try:
        results = predictor.predict(
            images, top_k=top_k, progress=callback, **_given(batch_size=batch_size)
        )
    finally:
        if bar is not None:
            bar.stop()
    _print_results(results, top_k=top_k, as_json=as_json, as_csv=as_csv, table=table)
    if explain is not None:
        written = _write_explanations(bundle, results, explain, predictor.max_pixels)
        console.print(f"wrote {written} heatmap(s) to {explain}", highlight=False)
    failed = sum(not r.ok for r in results)
    if failed:
        console.print(f"{failed} of {len(results)} image(s) could not be read", highlight=False)
    if failed == len(results):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- export
_FORMAT_NAMES = {
    "onnx": "ONNX fp32",
    "onnx-int8": "ONNX INT8",
    "tflite": "TFLite fp32",
    "tflite-int8": "TFLite INT8",
}


def _print_report(report) -> None:
    v = report.verification
    name = _FORMAT_NAMES.get(report.format, report.format)
    status = "written" if report.written else "NOT written"
    out.print(f"[bold]{name}[/]: {status} → {report.path}", highlight=False)
    out.print(f"  verified on {v.images} images ({v.source})", highlight=False)
    if v.calibration_images is not None:
        out.print(f"  calibrated on {v.calibration_images} images", highlight=False)
    out.print(f"  max |logit diff| vs torch: {v.max_abs_logit_diff:.3g}", highlight=False)
    out.print(f"  top-1 agreement vs torch: {v.top1_agreement:.2%}", highlight=False)
    if v.metric == "top1_agreement":
        out.print(f"  required agreement: ≥ {v.threshold:.2%}", highlight=False)
    else:
        out.print(f"  required max |logit diff|: ≤ {v.threshold:g}", highlight=False)
    if report.written:
        out.print(f"  size: {report.size_bytes / 1e6:.2f} MB", highlight=False)
        if report.forced and not v.passed:
            out.print("  [yellow]kept with --force although verification failed[/]")


def _print_web(result) -> None:
    config = json.loads((result.path / "config.json").read_text(encoding="utf-8"))
    model = config["model"]
    v = model.get("verification", {})
    out.print(f"[bold]Web app[/]: written → {result.path}", highlight=False)
    if model["kind"] == "INT8":
        figure = f"top-1 agreement vs torch {v.get('top1_agreement', float('nan')):.2%}"
    else:
        figure = f"max |logit diff| vs torch {v.get('max_abs_logit_diff', float('nan')):.3g}"
    out.print(f"  model: {model['kind']} ONNX ({figure})", highlight=False)
    ood = config.get("ood")
    abstains = f"{ood['kind']} score > {ood['threshold']:.4g}" if ood else "never"
    out.print(f"  abstains: {abstains}", highlight=False)
    out.print(f"  onnxruntime-web {result.ort_web_version} (hash-checked)", highlight=False)
    out.print(f"  {len(result.files)} files, {result.size_bytes / 1e6:.1f} MB", highlight=False)
    out.print(
        "  host the folder over https, or try it here: "
        f"python -m http.server -d {result.path} 8000, then open http://localhost:8000/",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def export(
    bundle: Bundle,
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="onnx (dynamic batch), tflite (LiteRT, batch 1, for Android/iOS apps; "
            "pip install 'cropdoc[tflite]') or web (a static folder that diagnoses in the "
            "browser, offline after the first visit).",
        ),
    ] = ExportFormat.onnx,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Also quantize to INT8 (web: the page runs it if it passes)."),
    ] = False,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(
            help="Images (files or folders; repeatable) to verify on and calibrate INT8 with "
            "(default: the run's val split).",
            metavar="IMAGE|DIR",
        ),
    ] = None,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output file (default: model.onnx / model.tflite, or model.int8.*, in the "
            "bundle); web: the folder (default: web/ next to the bundle).",
            metavar="PATH",
        ),
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option(help="Minimum INT8 top-1 agreement with torch (default: 0.99).", metavar="P"),
    ] = None,
    force: Annotated[bool, typer.Option(help="Write files that fail verification.")] = False,
    ort_web: Annotated[
        Path | None,
        typer.Option(
            "--ort-web",
            help="web: a local onnxruntime-web tarball or unpacked folder, for machines "
            "without npm (default: fetched once with npm, hash-checked, cached).",
            metavar="PATH",
        ),
    ] = None,
    diseases: DiseasesOpt = None,
) -> None:
    """Export to ONNX or TFLite (and INT8), verified against PyTorch on real images, or to
    an offline web app."""
    from ..api import load

    _quiet_exporters()
    model = load(bundle)
    if format is ExportFormat.web:
        result = model.export(
            "web", int8=int8, images=calibration, out=out_path, ort_web=ort_web, diseases=diseases
        )
        _print_web(result)
        return
    fp32_out = None if int8 else out_path
    report = model.export(format.value, out=fp32_out, images=calibration, force=force)
    _print_report(report)
    if not int8:
        return
    q = model.export(
        format.value,
        int8=True,
        images=calibration,
        out=out_path,
        force=force,
        min_agreement=min_agreement,
    )
    _print_report(q)
    if not q.written:
        console.print(
            f"[bold red]error:[/] INT8 top-1 agreement {q.verification.top1_agreement:.2%} "
            f"is below {q.verification.threshold:.2%}; not written. Calibrate on more "
            "representative images (--calibration DATA) or pass --force to keep it anyway",
            highlight=False,
        )
        raise typer.Exit(1)


# --------------------------------------------------------------------------- serve
@app.command()
def serve(
    bundle: Bundle,
    host: Annotated[str, typer.Option(help="Interface to listen on.", metavar="HOST")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.", metavar="PORT")] = 8000,
    backend: BackendOpt = Backend.auto,
    device: DeviceOpt = Device.auto,
    processes: Annotated[
        int,
        typer.Option(
            help="Server processes sharing the port (0: one per core, at most 4). Each loads "
            "the model (~0.5 GB private memory with torch) and gets cores/processes "
            "inference threads.",
            metavar="N",
        ),
    ] = 0,
    batch_max: Annotated[
        int | None,
        typer.Option(
            help="Most images merged into one forward pass across requests (default: 32).",
            metavar="N",
        ),
    ] = None,
    batch_wait_ms: Annotated[
        float | None,
        typer.Option(
            help="How long a request waits for others to share its pass (default: 5).",
            metavar="MS",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float | None, typer.Option(help="Largest accepted image (default: 10).", metavar="MB")
    ] = None,
    max_files: Annotated[
        int | None, typer.Option(help="Most images per request (default: 8).", metavar="N")
    ] = None,
    low_confidence: Annotated[
        float | None,
        typer.Option(help="Flag results below this top-1 probability (default: 0.7).", metavar="P"),
    ] = None,
    top_k: TopK = 3,
    max_pixels: MaxPixelsOpt = None,
    diseases: DiseasesOpt = None,
) -> None:
    """Serve a JSON API (/predict, /model, /health, /docs) and a web page at /.

    Every result carries ood_score and abstain (not recognised: no disease, no treatment);
    POST /predict?explain=true adds a Grad-CAM overlay (PNG, base64). The page shrinks
    large photos before upload and shows the overlay beside the photo.
    """
    from ..diseases import disease_table

    disease_table(diseases)  # validated once here, before any model or worker starts
    try:
        from ..serve import ServeSettings, plan_processes, run_server
    except ImportError as e:
        raise CropdocError(
            f"serving needs the optional packages ({e.name} is missing): "
            f"pip install 'cropdoc[serve]'"
        ) from e

    settings = ServeSettings(
        top_k=top_k,
        diseases=str(diseases.resolve()) if diseases is not None else None,
        **_given(
            max_upload_mb=max_upload_mb,
            max_files=max_files,
            low_confidence=low_confidence,
            batch_max=batch_max,
            batch_wait_ms=batch_wait_ms,
            max_pixels=max_pixels,
        ),
    )
    plan = plan_processes(processes)
    # Loaded here even with several processes: a bad bundle fails once, clearly, and a
    # missing ONNX export is made once, before the workers start.
    predictor = _load(bundle, backend, device, plan.threads)
    console.print(
        f"serving {predictor.meta.arch} ({predictor.backend}) on http://{host}:{port}/ "
        f"with {plan.processes} process(es) — API docs at /docs",
        highlight=False,
    )
    run_server(predictor, settings, host=host, port=port, plan=plan, device=device.value)
