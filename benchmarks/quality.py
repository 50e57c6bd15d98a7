"""Quality of the recipe on real leaves: test macro-F1, accuracy, ECE, time, side by side.

    python -m benchmarks.quality                       # every row (about 3.5 hours on 2 cores)
    python -m benchmarks.quality --rows seed-224,ours-160

Each row trains through the public API (``cropdoc.train``: the three stages, temperature
on the val split, evaluation on the test split) on ``plantvillage-mini`` with its grouped
split (the same split for every row: same files, ratios and seed), and reports the test
split's macro-F1 and accuracy, ECE after temperature scaling, the epoch of the best
validation macro-F1, wall-clock and CPU minutes. The pretrained rows use the shared
ImageNet EfficientNet-Lite0 (``timm/tf_efficientnet_lite0``); the from-scratch row is the
default ``--weights none`` run of MobileNetV3-Small, for contrast.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from cropdoc.training.recipe import PRETRAINED_STAGES

from .common import DATA, emit, machine

WEIGHTS = DATA.parent / "weights" / "tf_efficientnet_lite0.imagenet.safetensors"
LITE0 = {"arch": "timm/tf_efficientnet_lite0", "weights": str(WEIGHTS)}

# The ablation rows: the seed's three stages at ten times its rates, 3/6/6 epochs, with
# every BatchNorm layer's statistics fixed or with the trainable layers' following the data.
_FAST = [
    {"name": "feature_extraction", "epochs": 3, "trainable": "head", "lr": 3e-3},
    {"name": "adaptation", "epochs": 6, "trainable": "partial", "lr": 1e-3, "warmup_epochs": 0.5},
    {
        "name": "refinement",
        "epochs": 6,
        "trainable": "all",
        "lr": 3e-4,
        "backbone_lr": 1e-4,
        "warmup_epochs": 0.5,
    },
]

# The default's stages with fewer epochs (2/3/7 instead of 2/4/12).
_SHORT = [
    {**s.model_dump(exclude_none=True), "epochs": epochs}
    for s, epochs in zip(PRETRAINED_STAGES, (2, 3, 7), strict=True)
]

#: Row name -> training options (``cropdoc.train`` keywords; ``stages``/``optim`` go into
#: the config).
ROWS: dict[str, dict[str, Any]] = {
    "seed-224": {**LITE0, "recipe": "seed", "image_size": 224},
    "seed-160": {**LITE0, "recipe": "seed", "image_size": 160},
    "ours-224": {**LITE0, "recipe": "auto", "image_size": 224},
    "ours-160": {**LITE0, "recipe": "auto", "image_size": 160},
    "fast-fixed-bn-160": {**LITE0, "stages": _FAST, "optim": {"bn_stats": "fixed"}},
    "fast-frozen-bn-160": {**LITE0, "stages": _FAST, "optim": {"bn_stats": "frozen"}},
    "scratch-mnv3": {"arch": "mobilenet_v3_small", "weights": "none", "image_size": 224},
    # Ablations of the default at 224 px: without stochastic depth (the default before
    # 2026-12-02), and with AdamW weight decay 0.05 instead of the seed's 1e-4.
    "ours-224-no-drop-path": {**LITE0, "image_size": 224, "optim": {"drop_path": 0.0}},
    "ours-224-wd-0.05": {**LITE0, "image_size": 224, "optim": {"weight_decay": 0.05}},
    # The moving average of the weights (--ema), on the default and on a schedule cut to
    # fit 20 minutes on an AVX2-only 2-core CPU (2/3/7 epochs instead of 2/4/12).
    "ours-224-ema": {**LITE0, "image_size": 224, "optim": {"ema": 0.998}},
    "short-224-ema": {**LITE0, "image_size": 224, "stages": _SHORT, "optim": {"ema": 0.998}},
}
for _row in ("fast-fixed-bn-160", "fast-frozen-bn-160"):
    ROWS[_row]["image_size"] = 160


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_row(name: str, options: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train one row into ``out/name`` and read back what it scored."""
    import cropdoc
    from cropdoc.config import load_config

    options = dict(options)
    nested = {k: options.pop(k) for k in ("stages", "optim") if k in options}
    config = load_config(overrides=nested)
    started, cpu = time.perf_counter(), _cpu_s()
    run = cropdoc.train(DATA, out=out / name, config=config, seed=42, **options)
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
    metrics = json.loads((run.run_dir / "eval" / "metrics.json").read_text())
    meta = cropdoc.load(run.bundle_dir).meta
    return {
        "row": name,
        "options": options,
        "stages": [
            {k: s[k] for k in ("name", "epochs", "trainable", "lr", "backbone_lr")}
            for s in meta.recipe
        ],
        "test_macro_f1": metrics["macro_f1"],
        "test_accuracy": metrics["accuracy"],
        "test_ece_calibrated": metrics["ece"],
        "test_images": metrics["n_images"],
        "temperature": meta.temperature,
        "best": meta.best,
        "epochs_run": run.result.epochs_run,
        "epochs_to_best": meta.best.get("global_epoch"),
        "precision": meta.training.precision,
        "minutes": wall / 60,
        "cpu_minutes": cpu / 60,
        "load_avg_1m_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated of {list(ROWS)}")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: temp)")
    args = p.parse_args(argv)
    if not WEIGHTS.is_file():
        raise SystemExit(f"the pretrained Lite0 weights are not at {WEIGHTS}")
    names = [n for n in args.rows.split(",") if n]
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    result: dict[str, Any] = {"machine": machine(), "data": str(DATA), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in names:
            row = run_row(name, ROWS[name], out)
            result["rows"].append(row)
            print(json.dumps(row, default=str), flush=True)  # progress, one line per row
    emit(result)
    return result


if __name__ == "__main__":
    main()
