"""Out-of-distribution scores on real leaves: AUROC, FPR95 and abstain rates, side by side.

    python -m benchmarks.ood --bundle RUN/model [--bundle RUN2/model]   # finished runs
    python -m benchmarks.ood --out runs/ood        # trains the two rows first (long, 2 cores)

Each row is a run on ``plantvillage-mini`` (12 classes): ``lite0-224``, the pretrained
EfficientNet-Lite0 (``timm/tf_efficientnet_lite0`` from the shared ImageNet weights) with
the default recipe at 224 px (``benchmarks.quality``'s ``ours-224`` row), and
``scratch-mnv3-128``, a MobileNetV3-Small from random weights (128 px, one 12-epoch
stage); ``--bundle`` uses finished runs instead (a run directory with ``split.json``). For
every score kind cropdoc can store (``cropdoc.ood``), fitted exactly as training's
finalize step fits it (``cropdoc.evaluation.fit_ood``: Gaussian on the train split,
threshold for 5 % false abstains on the val split), the figures on the run's test split
(in distribution) against:

* ``unseen``: ``plantvillage-unseen``, 180 photos of three tomato diseases the model never saw
  (near OOD);
* ``nonleaf``: generated photos of 13 kinds of things that are not leaves
  (``cropdoc.data.nonleaf``, 20 per kind; far OOD), with the abstain rate per kind.

References from ``pytorch-ood`` where installed (k-NN on normalised features, ViM, and its
full-rank Mahalanobis) and a rank sweep of cropdoc's low-rank Mahalanobis show what the
stored form costs. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .common import DATA, emit, machine

UNSEEN = DATA.parent / "plantvillage-unseen"
WEIGHTS = DATA.parent / "weights" / "tf_efficientnet_lite0.imagenet.safetensors"
ROWS: dict[str, dict[str, Any]] = {
    "lite0-224": {
        "arch": "timm/tf_efficientnet_lite0",
        "weights": str(WEIGHTS),
        "image_size": 224,
    },
    "scratch-mnv3-128": {
        "arch": "mobilenet_v3_small",
        "weights": "none",
        "image_size": 128,
        "stage_epochs": [12],
    },
}
TARGET = 0.05
RANKS = (16, 32, 64, 128, 512)


def _outputs(run_dir: Path, nonleaf: Path) -> dict[str, Any]:
    """Logits and features of every set, through the product's ``collect_logits``."""
    from cropdoc.bundle import load_bundle
    from cropdoc.data.split import SplitManifest
    from cropdoc.evaluation.logits import collect_logits
    from cropdoc.evaluation.ood import collect_fit_outputs
    from cropdoc.inference import collect_images

    bundle = load_bundle(run_dir / "model")
    fit = collect_fit_outputs(
        run_dir, bundle.meta, bundle.model, data=None, workers=1, device="cpu"
    )
    manifest = SplitManifest.load(run_dir / "split.json")

    def run(samples: list) -> Any:
        return collect_logits(
            bundle.model, samples, bundle.meta, workers=1, device="cpu", features=True
        )

    return {
        "meta": bundle.meta,
        "model": bundle.model,
        "fit": fit,
        "test": run(manifest.samples("test")),
        "unseen": run([(p, 0) for p in collect_images([UNSEEN])]),
        "nonleaf": run([(p, 0) for p in collect_images([nonleaf])]),
    }


def _figures(test: np.ndarray, ood: np.ndarray, threshold: float) -> dict[str, float]:
    from cropdoc.evaluation import ood_report

    r = ood_report(test, ood, threshold)
    return {
        k: round(float(r[k]), 4) for k in ("auroc", "fpr95", "abstain_rate_id", "abstain_rate_ood")
    }


def _per_kind(paths: list[Path], abstain: np.ndarray) -> dict[str, float]:
    kinds: dict[str, list[bool]] = {}
    for p, a in zip(paths, abstain, strict=True):
        kinds.setdefault(p.parent.name, []).append(bool(a))
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(kinds.items())}


def _product_scores(o: dict[str, Any]) -> dict[str, Any]:
    """Every kind cropdoc stores, fitted as finalize fits it."""
    from cropdoc.evaluation.ood import fit_ood, scores_for
    from cropdoc.ood import OOD_KINDS

    meta, out = o["meta"], {}
    for kind in OOD_KINDS:
        info = fit_ood(kind, o["fit"], n_classes=meta.num_classes, target=TARGET)
        s = {
            k: scores_for(kind, o[k], meta.temperature, info.params)
            for k in ("test", "unseen", "nonleaf")
        }
        out[kind] = {
            "threshold": info.threshold,
            "val_abstain_rate": info.metrics["val_abstain_rate"],
            "unseen": _figures(s["test"], s["unseen"], info.threshold),
            "nonleaf": _figures(s["test"], s["nonleaf"], info.threshold),
            "nonleaf_abstain_by_kind": _per_kind(o["nonleaf"].paths, s["nonleaf"] > info.threshold),
        }
    return out


def _rank_sweep(o: dict[str, Any]) -> dict[str, Any]:
    """cropdoc's Mahalanobis at other ranks (512 = exact shrunk covariance)."""
    from cropdoc.evaluation.ood import fit_mahalanobis
    from cropdoc.ood import mahalanobis_distance, threshold_for

    fit, meta, out = o["fit"], o["meta"], {}
    for rank in RANKS:
        params = fit_mahalanobis(fit.fit.features, fit.fit.labels, meta.num_classes, rank=rank)
        val = mahalanobis_distance(fit.val.features, params)
        t = threshold_for(val, TARGET)
        s = {k: mahalanobis_distance(o[k].features, params) for k in ("test", "unseen", "nonleaf")}
        out[str(rank)] = {k: _figures(s["test"], s[k], t) for k in ("unseen", "nonleaf")}
    return out


def _pytorch_ood(o: dict[str, Any]) -> dict[str, Any]:
    """pytorch-ood's detectors on the same features (thresholds set on val the same way)."""
    try:
        import torch
        from pytorch_ood.detector import KNN, Mahalanobis, ViM
    except ImportError:
        return {"skipped": "pytorch-ood is not installed (pip install pytorch-ood)"}
    from cropdoc.models import get_arch, split_head
    from cropdoc.ood import threshold_for

    fit = o["fit"]
    _, last = split_head(o["model"], get_arch(o["meta"].arch))
    z = {
        k: torch.from_numpy(v.features).float()
        for k, v in (
            ("fit", fit.fit),
            ("val", fit.val),
            ("test", o["test"]),
            ("unseen", o["unseen"]),
            ("nonleaf", o["nonleaf"]),
        )
    }
    y = torch.from_numpy(fit.fit.labels)
    norm = {k: torch.nn.functional.normalize(v, dim=1) for k, v in z.items()}
    detectors = {
        "knn_k50_cosine": (KNN(None, k=50).fit_features(norm["fit"], y), norm),
        "vim_d64": (
            ViM(None, d=64, w=last.weight.detach(), b=last.bias.detach()).fit_features(z["fit"], y),
            z,
        ),
        "mahalanobis_full_rank": (Mahalanobis(None).fit_features(z["fit"], y), z),
    }
    out = {}
    for name, (det, feats) in detectors.items():
        s = {k: det.predict_features(v).numpy().astype(np.float64) for k, v in feats.items()}
        t = threshold_for(s["val"], TARGET)
        out[name] = {k: _figures(s["test"], s[k], t) for k in ("unseen", "nonleaf")}
    return out


def run_row(name: str, run_dir: Path, nonleaf: Path) -> dict[str, Any]:
    meta_path = run_dir / "eval" / "metrics.json"
    o = _outputs(run_dir, nonleaf)
    test_f1 = json.loads(meta_path.read_text())["macro_f1"] if meta_path.is_file() else None
    return {
        "row": name,
        "run": str(run_dir),
        "arch": o["meta"].arch,
        "image_size": o["meta"].preprocessing.image_size,
        "temperature": o["meta"].temperature,
        "test_macro_f1": test_f1,
        "n": {k: len(o[k].labels) for k in ("test", "unseen", "nonleaf")}
        | {"fit": len(o["fit"].fit.labels), "val": len(o["fit"].val.labels)},
        "scores": _product_scores(o),
        "mahalanobis_rank_sweep": _rank_sweep(o),
        "pytorch_ood": _pytorch_ood(o),
    }


def _train(name: str, out: Path) -> Path:
    import cropdoc

    run_dir = out / name
    if (run_dir / "model" / "model.json").is_file():
        return run_dir
    return cropdoc.train(DATA, out=run_dir, seed=42, **ROWS[name]).run_dir


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from cropdoc.bundle import resolve_bundle_dir
    from cropdoc.data.nonleaf import generate_nonleaf

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--bundle",
        action="append",
        type=Path,
        default=[],
        help="a finished run's bundle (repeatable); default: train the rows",
    )
    p.add_argument("--out", type=Path, default=None, help="keep trained runs here (default: temp)")
    args = p.parse_args(argv)
    if not UNSEEN.is_dir():
        raise SystemExit(f"plantvillage-unseen not found at {UNSEEN}")
    result: dict[str, Any] = {
        "machine": machine(),
        "data": str(DATA),
        "unseen": str(UNSEEN),
        "target_false_abstain": TARGET,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        nonleaf = generate_nonleaf(Path(tmp) / "nonleaf", per_kind=20, size=256, seed=0)
        if args.bundle:
            runs = [(str(b), resolve_bundle_dir(b).parent) for b in args.bundle]
        else:
            base = args.out or Path(tmp)
            runs = [(n, _train(n, base)) for n in ROWS]
        for name, run_dir in runs:
            row = run_row(name, run_dir, nonleaf)
            result["rows"].append(row)
            print(json.dumps(row, default=str), flush=True)  # progress, one line per row
    emit(result)
    return result


if __name__ == "__main__":
    main()
