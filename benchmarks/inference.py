"""Inference latency and throughput: onnx / onnx-int8 backends vs torch eager fp32 NCHW.

Target 4 of issue 6. For each architecture a bundle is made (the real trained
``runs/mini`` MobileNetV3-S bundle when present, for its INT8 agreement; random-init
bundles at 224 px otherwise, since only speed is measured on them), exported with
``cropdoc export`` (fp32, and INT8 calibrated on the benchmark photos), and the three
runners are timed interleaved on the same preprocessed batch: batch-1 latency p50 over
``reps`` calls, and batch-32 images/s.

    python -m benchmarks.inference --quick
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cropdoc.bundle import BundleMeta, load_bundle, save_bundle
from cropdoc.export import export_int8, export_onnx
from cropdoc.inference import OnnxRunner, Predictor, TorchRunner
from cropdoc.models import build, get_arch
from cropdoc.preprocessing import Preprocessing

from .common import DATA, emit, machine, median, ratio, samples

REAL_BUNDLE = Path(__file__).resolve().parents[1] / "runs" / "mini" / "model"


def make_bundle(arch: str, folder: Path, size: int) -> Path:
    """A random-init bundle of ``arch`` at ``size`` px with the benchmark data's 12 classes."""
    spec = get_arch(arch)
    torch.manual_seed(0)
    model = build(arch, classes=12, weights="none").eval()
    classes = sorted(d.name for d in DATA.iterdir() if d.is_dir())
    pre = Preprocessing.for_size(size, mean=spec.mean, std=spec.std)
    meta = BundleMeta(arch=spec.name, classes=classes, preprocessing=pre)
    save_bundle(folder, model, meta)
    return folder


def time_calls(fn, batch: np.ndarray, reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn(batch)``, after one warm-up call."""
    fn(batch)  # warm-up
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(batch)
        out.append(time.perf_counter() - t)
    return out


def bench_bundle(folder: Path, label: str, reps: int, calib: list[Path]) -> dict[str, Any]:
    loaded = load_bundle(folder)
    torch_runner = TorchRunner(loaded.model)  # eager fp32, NCHW: the reference
    predictor = Predictor(loaded.meta, torch_runner)
    # onnxruntime's calibrators print progress on stdout; keep stdout for our JSON.
    with contextlib.redirect_stdout(sys.stderr):
        t = time.perf_counter()
        fp32 = export_onnx(folder, data=calib[:64])
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        int8 = export_int8(folder, calibration=calib, force=True)
        int8_s = time.perf_counter() - t
    runners = {
        "torch": torch_runner,
        "onnx": OnnxRunner.from_file(fp32.path, name="onnx"),
        "onnx-int8": OnnxRunner.from_file(int8.path, name="onnx-int8"),
    }
    x32 = torch.stack([predictor.preprocess(p) for p in calib[:32]]).numpy()
    x1 = np.ascontiguousarray(x32[:1])
    lat: dict[str, list[float]] = {k: [] for k in runners}
    thr: dict[str, list[float]] = {k: [] for k in runners}
    rounds = 3
    for _ in range(rounds):  # interleaved rounds: load changes hit every backend alike
        for name, run in runners.items():
            lat[name] += time_calls(run, x1, max(1, reps // rounds))
            thr[name] += [32 / s for s in time_calls(run, x32, 1)]
    p50 = {k: median(v) * 1000 for k, v in lat.items()}
    ips = {k: median(v) for k, v in thr.items()}
    return {
        "bundle": label,
        "arch": loaded.meta.arch,
        "image_size": loaded.meta.preprocessing.image_size,
        "batch1_p50_ms": p50,
        "batch32_images_per_s": ips,
        "onnx_latency_ratio": ratio(p50["onnx"], p50["torch"]),
        "int8_latency_ratio": ratio(p50["onnx-int8"], p50["torch"]),
        "int8_top1_agreement": int8.verification.top1_agreement,
        "int8_agreement_images": int8.verification.images,
        "int8_passed_99": int8.verification.passed,
        "onnx_max_abs_logit_diff": fp32.verification.max_abs_logit_diff,
        "export_s": export_s,
        "int8_export_s": int8_s,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", default="mobilenet_v3_small,efficientnet_b0,resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args(argv)
    reps = args.reps or (9 if args.quick else 30)
    photos = [path for path, _ in samples()]
    # Random-init bundles only measure speed: a small calibration set is enough for them.
    calib = photos[:: max(1, len(photos) // (16 if args.quick else 256))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cropdoc-bench-inf-") as tmp:
        if REAL_BUNDLE.is_dir():
            import shutil

            real = Path(tmp) / "mini"
            shutil.copytree(REAL_BUNDLE, real)
            rows.append(bench_bundle(real, "runs/mini (trained, 128 px)", reps, photos))
        for arch in args.archs.split(","):
            folder = make_bundle(arch, Path(tmp) / arch, args.image_size)
            rows.append(bench_bundle(folder, f"{arch} random init", reps, calib))
    result = {"benchmark": "inference", "rows": rows, "machine": machine()}
    emit(result)
    return result


if __name__ == "__main__":
    main()
