"""Quality of the recipe on real leaves: test macro-F1, accuracy, ECE, time, side by side.

    python -m benchmarks.quality                       # every row (about 3.5 hours on 2 cores)
    python -m benchmarks.quality --rows seed-224,ours-160
    python -m benchmarks.quality --rows ours-224 --seeds 42,1,2   # run-to-run spread

Each row trains through the public API (``cropdoc.train``: the three stages, temperature
on the val split, evaluation on the test split) on ``plantvillage-mini`` with its grouped
split (the same split for every row and every training seed: same files, ratios and split
seed 42), and reports the test split's macro-F1, accuracy, errors and log-loss, ECE after
temperature scaling, the epoch of the best validation macro-F1, wall-clock and CPU
minutes. With ``--seeds`` each row is trained once per training seed (initialisation of
the head, data order, augmentation, dropout) and summarised by the mean, lowest and
highest: 213 test images make one image 0.47 points of macro-F1, and the spread between
seeds is of that order. The pretrained rows use the shared ImageNet EfficientNet-Lite0
(``timm/tf_efficientnet_lite0``); the from-scratch row is the default ``--weights none``
run of MobileNetV3-Small, for contrast.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cropdoc.training.recipe import PRETRAINED_STAGES

from .common import DATA, cpu_seconds, emit, machine

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


#: The benchmark's split: every row and every training seed is scored on the same images.
SPLIT_SEED = 42


def run_row(name: str, options: dict[str, Any], out: Path, seed: int = 42) -> dict[str, Any]:
    """Train one row with training seed ``seed`` into ``out/name`` (``out/name-seedN`` for
    other seeds than 42) and read back what it scored."""
    import cropdoc
    from cropdoc.config import load_config

    options = dict(options)
    nested = {k: options.pop(k) for k in ("stages", "optim") if k in options}
    config = load_config(overrides=nested)
    run_dir = out / (name if seed == SPLIT_SEED else f"{name}-seed{seed}")
    started, cpu = time.perf_counter(), cpu_seconds()
    run = cropdoc.train(
        DATA, out=run_dir, config=config, seed=seed, split_seed=SPLIT_SEED, **options
    )
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    metrics = json.loads((run.run_dir / "eval" / "metrics.json").read_text())
    meta = cropdoc.load(run.bundle_dir).meta
    return {
        "row": name,
        "seed": seed,
        "options": options,
        "stages": [
            {k: s[k] for k in ("name", "epochs", "trainable", "lr", "backbone_lr")}
            for s in meta.recipe
        ],
        "test_macro_f1": metrics["macro_f1"],
        "test_macro_f1_interval": metrics["intervals"]["macro_f1"],  # 95 % bootstrap
        "test_accuracy": metrics["accuracy"],
        "test_ece_calibrated": metrics["ece"],
        "test_nll_calibrated": metrics["nll"],
        "test_errors": round((1.0 - metrics["accuracy"]) * metrics["n_images"]),
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
    p.add_argument(
        "--seeds",
        default=str(SPLIT_SEED),
        help="comma-separated training seeds, each row trained once per seed on the same "
        f"split (split seed {SPLIT_SEED})",
    )
    args = p.parse_args(argv)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
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
            for seed in seeds:
                row = run_row(name, ROWS[name], out, seed)
                result["rows"].append(row)
                print(json.dumps(row, default=str), flush=True)  # progress, one line per run
    if len(seeds) > 1:
        result["summary"] = [summarise(name, result["rows"]) for name in names]
    emit(result)
    return result


def summarise(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, lowest and highest of a row's runs over its training seeds."""
    runs = [r for r in rows if r["row"] == name]
    out: dict[str, Any] = {"row": name, "seeds": [r["seed"] for r in runs]}
    for key in ("test_macro_f1", "test_errors", "test_nll_calibrated", "minutes", "cpu_minutes"):
        values = [float(r[key]) for r in runs]
        out[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    return out


if __name__ == "__main__":
    main()
