"""``cropdoc predict``, ``cropdoc export`` and ``cropdoc serve``."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import CropdocError
from .app import app, console, out

__all__ = ["export", "predict", "serve"]

# Exporter and quantizer internals log at INFO; users need our summary, not theirs.
_NOISY = ("onnx_ir", "onnxscript", "onnxruntime", "torch.onnx", "torch.export", "torch._dynamo")


def _quiet_exporters() -> None:
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


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


# --------------------------------------------------------------------------- predict
@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (a run's model/ folder).")],
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (recursive).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header row.")] = False,
    backend: Annotated[str, typer.Option(help="torch | onnx | onnx-int8")] = "torch",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
) -> None:
    """Predict the disease in leaf photos; a bad file gets an error entry, the rest continue.

    Exits with 1 only when no image could be predicted.
    """
    from ..inference import collect_images, load_predictor

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    _quiet_exporters()
    images = collect_images(paths)
    if not images:
        raise typer.BadParameter("no images found in the given paths")
    predictor = load_predictor(bundle, backend=backend)
    bar, callback = _progress(len(images))
    if bar is not None:
        bar.start()
    try:
        results = predictor.predict(images, top_k=top_k, batch_size=batch_size, progress=callback)
    finally:
        if bar is not None:
            bar.stop()

    if as_json:
        for r in results:
            typer.echo(json.dumps(r.to_dict()))
    elif as_csv:
        writer = csv.writer(sys.stdout)
        header = ["path", "class", "probability"]
        for i in range(2, top_k + 1):
            header += [f"class_{i}", f"probability_{i}"]
        writer.writerow([*header, "error"])
        for r in results:
            row: list[object] = [r.source]
            for i in range(top_k):
                s = r.top[i] if i < len(r.top) else None
                row += [s.name, f"{s.probability:.6f}"] if s else ["", ""]
            writer.writerow([*row, r.error or ""])
    else:
        for r in results:
            if r.best is None:
                out.print(f"{r.source}  [red]error:[/] {r.error}", highlight=False, soft_wrap=True)
                continue
            others = ", ".join(f"{s.label} {s.probability:.1%}" for s in r.top[1:])
            line = f"{r.source}  [bold]{r.best.label}[/] {r.best.probability:.1%}"
            out.print(line + (f"  ({others})" if others else ""), highlight=False, soft_wrap=True)
    failed = sum(not r.ok for r in results)
    if failed:
        console.print(f"{failed} of {len(results)} image(s) could not be read", highlight=False)
    if failed == len(results):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- export
def _print_report(report) -> None:
    v = report.verification
    name = "INT8" if report.format == "onnx-int8" else "ONNX fp32"
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


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (a run's model/ folder).")],
    format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Also quantize to INT8.")] = False,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(
            help="Images (files/folders) to verify on and calibrate INT8 with "
            " (default: the run's val split)"
        ),
    ] = None,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", help="Output .onnx path (default: model.onnx in the bundle)."),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(help="Minimum INT8 top-1 agreement with torch.")
    ] = 0.99,
    force: Annotated[bool, typer.Option(help="Write files that fail verification.")] = False,
) -> None:
    """Export to ONNX with a dynamic batch axis (and INT8), verified against PyTorch."""
    from ..inference import export_int8, export_onnx

    if format.lower() != "onnx":
        raise typer.BadParameter(f"unknown format {format!r}; the supported format is onnx")
    _quiet_exporters()
    fp32_out = None if int8 else out_path
    report = export_onnx(bundle, out=fp32_out, data=calibration, force=force)
    _print_report(report)
    if int8:
        q = export_int8(
            bundle, calibration=calibration, out=out_path, min_agreement=min_agreement, force=force
        )
        _print_report(q)
        if not q.written:
            console.print(
                f"[bold red]error:[/] INT8 top-1 agreement {q.verification.top1_agreement:.2%} "
                f"is below {min_agreement:.2%}; not written. Calibrate on more representative "
                "images (--calibration DATA) or pass --force to keep it anyway",
                highlight=False,
            )
            raise typer.Exit(1)


# --------------------------------------------------------------------------- serve
@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (a run's model/ folder).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: Annotated[str, typer.Option(help="onnx | onnx-int8 | torch")] = "onnx",
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted image, MiB.")] = 10.0,
    max_files: Annotated[int, typer.Option(help="Most images per request.")] = 8,
    low_confidence: Annotated[
        float, typer.Option(help="Flag results below this top-1 probability.")
    ] = 0.7,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes per image.")] = 3,
    batch_max: Annotated[
        int, typer.Option(help="Most images merged into one forward pass across requests.")
    ] = 32,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long a request waits for others to share its pass.")
    ] = 5.0,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes sharing the port (0: one per core, at most 4). Each "
            "loads the model (~0.5 GB private memory with torch) and gets cores/workers "
            "inference threads."
        ),
    ] = 0,
) -> None:
    """Serve a JSON API (/predict, /model, /health, /docs) and a web page at /."""
    try:
        import uvicorn

        from ..serve.app import ServeSettings, create_app
    except ImportError as e:
        raise CropdocError(
            f"serving needs the optional packages ({e.name} is missing): "
            f"pip install 'cropdoc[serve]'"
        ) from e
    from ..inference import load_predictor

    _quiet_exporters()
    settings = ServeSettings(
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        low_confidence=low_confidence,
        top_k=top_k,
        batch_max=batch_max,
        batch_wait_ms=batch_wait_ms,
    )
    if workers < 0:
        raise CropdocError(f"--workers must be 0 (auto) or more, got {workers}")
    from ..data.loaders import usable_cpus

    cores = usable_cpus()
    workers = workers or min(cores, 4)
    # Loaded here even with several workers: a bad bundle fails once, clearly, and a
    # missing ONNX export is made once, before the workers start.
    predictor = load_predictor(bundle, backend=backend)
    console.print(
        f"serving {predictor.meta.arch} ({predictor.backend}) on http://{host}:{port}/ "
        f"with {workers} worker process(es) — API docs at /docs",
        highlight=False,
    )
    if workers == 1:
        application = create_app(predictor, settings)
        uvicorn.run(application, host=host, port=port, log_level="info", access_log=True)
        return
    from ..serve.app import WORKER_ENV, worker_env

    threads = max(1, cores // workers)
    os.environ[WORKER_ENV] = worker_env(str(bundle.resolve()), backend, settings, threads)
    uvicorn.run(
        "cropdoc.serve.app:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="info",
        access_log=True,
    )
