"""Deployment formats: size and batch-1 latency of ONNX / TFLite, fp32 / INT8, and the page.

Issue 15. For each bundle (trained bundles given with ``--bundle``, for meaningful INT8
agreement, and random-init bundles of ``--archs``, which only measure size and speed) the four
files are exported the way ``cropdoc export`` makes them (INT8 calibrated on the benchmark
photos, ``force`` so a random-init model still gets a file to time), then torch eager and
the four runners are timed interleaved on the same preprocessed image: batch-1 p50 over
``reps`` calls. With ``--browser`` the offline web page is exported too and its in-browser
inference time (onnxruntime-web, WebAssembly, one thread as on a plain static server) is
measured in Chromium on real photos, for the fp32 and INT8 ONNX files.

    python -m benchmarks.deploy_formats --quick [--browser] [--bundle RUN/model]

TFLite needs ``pip install 'cropdoc[tflite]'``; the page needs Chromium, Playwright and
onnxruntime-web (npm or the cache). A missing piece is reported in the row, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.helpers import static_server

from cropdoc.bundle import load_bundle, read_meta, update_meta
from cropdoc.errors import CropdocError
from cropdoc.export import export_int8, export_onnx, export_tflite, export_web
from cropdoc.inference import LiteRtRunner, OnnxRunner, Predictor, TorchRunner
from cropdoc.models import get_arch

from .common import emit, machine, median, samples
from .inference import make_bundle, time_calls

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def _exports(folder: Path, calib: list[Path] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every format's report (or why it is missing), and the runners to time.

    ``calib`` None: a trained bundle, verified and calibrated on its run's own split, as
    ``cropdoc export`` does it.
    """
    reports: dict[str, Any] = {}
    verify = calib[:64] if calib else None
    # Exporters and quantizers print progress on stdout; keep stdout for our JSON.
    with contextlib.redirect_stdout(sys.stderr):
        reports["onnx"] = export_onnx(folder, data=verify)
        reports["onnx-int8"] = export_int8(folder, calibration=calib, force=True)
        try:
            reports["tflite"] = export_tflite(folder, data=verify)
            reports["tflite-int8"] = export_tflite(folder, int8=True, data=calib, force=True)
        except CropdocError as e:
            reports["tflite"] = reports["tflite-int8"] = str(e)
    runners: dict[str, Any] = {}
    for name, report in reports.items():
        if isinstance(report, str):
            continue
        kind = LiteRtRunner if name.startswith("tflite") else OnnxRunner
        runners[name] = kind.from_file(report.path, name=name)
    return reports, runners


def _figures(report: Any) -> dict[str, Any]:
    if isinstance(report, str):
        return {"error": report}
    v = report.verification
    return {
        "size_mb": report.size_bytes / 1e6,
        "max_abs_logit_diff": v.max_abs_logit_diff,
        "top1_agreement": v.top1_agreement,
        "images": v.images,
        "passed": v.passed,
    }


def bench_bundle(
    folder: Path, label: str, reps: int, calib: list[Path] | None, photo: Path
) -> dict[str, Any]:
    loaded = load_bundle(folder)
    # eager fp32, NCHW: the reference (with the features the OOD score may read)
    torch_runner = TorchRunner(loaded.model, spec=get_arch(loaded.meta.arch))
    predictor = Predictor(loaded.meta, torch_runner)
    reports, runners = _exports(folder, calib)
    runners = {"torch": torch_runner, **runners}
    x1 = predictor.preprocess(photo)[None].numpy()
    lat: dict[str, list[float]] = {k: [] for k in runners}
    rounds = 3
    for _ in range(rounds):  # interleaved rounds: load changes hit every backend alike
        for name, run in runners.items():
            lat[name] += time_calls(run, x1, max(1, reps // rounds))
    return {
        "bundle": label,
        "arch": loaded.meta.arch,
        "image_size": loaded.meta.preprocessing.image_size,
        "batch1_p50_ms": {k: median(v) * 1000 for k, v in lat.items()},
        "formats": {k: _figures(r) for k, r in reports.items()},
    }


def _page_times(folder: Path, photos: list[Path]) -> dict[str, float]:
    """Median decode / preprocess / inference ms of the exported page in Chromium."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("Chromium not installed")
    timings: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": []}
    with static_server(folder) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("window.cropdoc.session !== null", timeout=120_000)
        for i, photo in enumerate(photos):
            page.evaluate("window.cropdoc.last = null")
            page.set_input_files("#file-input", str(photo))
            page.wait_for_function("window.cropdoc.last !== null", timeout=120_000)
            if i:  # the first run warms the WebAssembly kernels up
                for key, ms in page.evaluate("window.cropdoc.last.timing_ms").items():
                    timings[key].append(ms)
        browser.close()
    return {f"{k}_ms_p50": median(v) for k, v in timings.items()}


def bench_page(folder: Path, photos: list[Path], work: Path) -> dict[str, Any]:
    """In-browser time of the page with the fp32 model and, if it passed, the INT8 one."""
    out: dict[str, Any] = {}
    int8 = read_meta(folder).exports.get("onnx_int8", {})
    for kind in ("fp32", "int8"):
        if kind == "int8" and not int8.get("verification", {}).get("passed"):
            out[kind] = "INT8 did not pass its agreement check; the page ships fp32"
            continue
        try:
            if kind == "fp32":  # hide the INT8 record so the page runs the fp32 file
                copy = Path(shutil.copytree(folder, work / "fp32-bundle"))
                exports = dict(read_meta(copy).exports)
                exports.pop("onnx_int8", None)
                update_meta(copy, exports=exports)
                site = export_web(copy, out=work / "site-fp32").path
            else:
                site = export_web(folder, out=work / "site-int8").path
            out[kind] = {"size_mb": sum(p.stat().st_size for p in site.rglob("*")) / 1e6}
            out[kind].update(_page_times(site, photos))
        except (CropdocError, RuntimeError, ImportError) as e:
            out[kind] = f"not measured: {e}"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", default="mobilenet_v3_small,efficientnet_b0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--browser", action="store_true", help="also time the web page in Chromium")
    p.add_argument(
        "--bundle",
        action="append",
        default=[],
        type=Path,
        help="a trained bundle to measure too (repeatable; it is copied, never changed)",
    )
    args = p.parse_args(argv)
    reps = args.reps or (9 if args.quick else 30)
    photos = [path for path, _ in samples()]
    calib = photos[:: max(1, len(photos) // (32 if args.quick else 256))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cropdoc-bench-deploy-") as tmp:
        bundles = []
        for i, given in enumerate(args.bundle):
            # The run folder is copied with the bundle: its val split verifies the exports.
            run = Path(shutil.copytree(given.resolve().parent, Path(tmp) / f"run{i}"))
            bundles.append((run / given.name, f"{given} (trained)", None))
        for arch in filter(None, args.archs.split(",")):
            folder = make_bundle(arch, Path(tmp) / arch, args.image_size)
            bundles.append((folder, f"{arch} random init", calib))
        for folder, label, images in bundles:
            row = bench_bundle(folder, label, reps, images, photos[0])
            if args.browser:
                page_photos = photos[:: max(1, len(photos) // (8 if args.quick else 32))]
                row["page"] = bench_page(folder, page_photos, Path(tmp) / f"web-{folder.name}")
            rows.append(row)
    result = {"benchmark": "deploy_formats", "rows": rows, "machine": machine()}
    emit(result)
    return result


if __name__ == "__main__":
    main()
