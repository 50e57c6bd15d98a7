"""Item 2: kill -9 a tiny training run at chosen points, resume it, compare with a clean run.

For each point: run ``cropdoc train`` under :mod:`kill_child` (which SIGKILLs itself at the
point), check every file the dead process left, resume with ``cropdoc train --resume
--out RUN``, check every file again, and compare ``history.csv`` and the test metrics with
an uninterrupted run of the same config.

    python -m tests.reliability.kill_resume            # CI size: checkpoint write only
    python -m tests.reliability.kill_resume --full     # all five points
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers import REPO, emit, python_module, tiny_dataset, write_config

FULL_POINTS = ("mid_batch", "validation", "checkpoint_write", "between_stages", "bundle_write")
CI_POINTS = ("checkpoint_write",)
#: Relative / absolute tolerance on every compared metric (float sums may reorder).
RTOL, ATOL = 1e-4, 1e-5
_COMPARED = ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1")
_TIMEOUT_S = 600


def _child(point: str, marker: Path, args: list[str], scripted: bool, log: Path) -> int:
    cmd = python_module("tests.reliability.kill_child", point, str(marker))
    if scripted:
        cmd.append("--scripted-f1")
    with open(log, "ab") as sink:
        proc = subprocess.run(
            [*cmd, "--", *args],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=_TIMEOUT_S,
            check=False,
        )
    return proc.returncode


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def check_run_dir(run: Path) -> dict[str, Any]:
    """Load every file in a run directory the way cropdoc would; list what fails.

    Temporary files left by an interrupted write (``.*.tmp``, ``model.tmp-*``) are listed
    as ``leftovers`` and also count as corrupt: nothing may be left that a user could
    mistake for a result.
    """
    import yaml
    from PIL import Image

    from cropdoc.bundle import load_bundle
    from cropdoc.training.checkpoint import load_checkpoint
    from cropdoc.training.trainer import HISTORY_COLUMNS

    checked, corrupt, leftovers = 0, [], []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = str(path.relative_to(run))
        top = path.relative_to(run).parts[0]
        checked += 1
        try:
            if path.name.endswith(".tmp") or ".tmp-" in top:
                leftovers.append(rel)
                raise ValueError("temporary file left by an interrupted write")
            if path.suffix == ".ckpt":
                load_checkpoint(path)
            elif top in ("model", "model.old") and path.name == "weights.safetensors":
                load_bundle(path.parent)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_text(encoding="utf-8"))
            elif path.suffix == ".csv":
                with open(path, newline="") as fh:
                    rows = list(csv.reader(fh))
                if path.name == "history.csv" and rows[0] != HISTORY_COLUMNS:
                    raise ValueError("unexpected header")
                if len({len(r) for r in rows}) != 1:
                    raise ValueError("ragged rows (torn write?)")
            elif path.suffix == ".png":
                with Image.open(path) as img:
                    img.verify()
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            corrupt.append(f"{rel}: {type(e).__name__}: {str(e)[:120]}")
    return {"files": checked, "corrupt": corrupt, "leftovers": leftovers}


def _compare(ref: Path, run: Path) -> dict[str, Any]:
    ref_rows, rows = _rows(ref), _rows(run)
    worst = 0.0
    mismatches = []
    if len(ref_rows) != len(rows):
        mismatches.append(f"{len(rows)} epochs vs {len(ref_rows)}")
    for a, b in zip(ref_rows, rows, strict=False):
        for key in _COMPARED:
            x, y = float(a[key]), float(b[key])
            worst = max(worst, abs(x - y))
            if not math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL):
                mismatches.append(f"stage {a['stage']} epoch {a['epoch']} {key}: {x} vs {y}")
    ref_test = json.loads((ref / "summary.json").read_text())["test"]
    test = json.loads((run / "summary.json").read_text())["test"]
    for key in ("accuracy", "macro_f1", "loss"):
        worst = max(worst, abs(ref_test[key] - test[key]))
        if not math.isclose(ref_test[key], test[key], rel_tol=RTOL, abs_tol=ATOL):
            mismatches.append(f"test {key}: {ref_test[key]} vs {test[key]}")
    return {"max_abs_diff": worst, "mismatches": mismatches, "test": test}


def reference_run(data: Path, work: Path, config: Path, scripted: bool) -> Path:
    """The uninterrupted run every resumed one is compared with."""
    ref = work / "reference"
    log = work / "reference.log"
    rc = _child("none", work / "ref.marker", _train_args(data, ref, config), scripted, log)
    if rc != 0:
        raise RuntimeError(f"reference run failed ({rc}):\n{log.read_text()[-3000:]}")
    return ref


def _train_args(data: Path, run: Path, config: Path) -> list[str]:
    return ["train", str(data), "--out", str(run), "--config", str(config)]


def kill_and_resume(
    point: str, data: Path, work: Path, config: Path, reference: Path, *, scripted: bool
) -> dict[str, Any]:
    """One point: kill, inspect, resume, inspect, compare. Returns its figures."""
    run = work / point
    shutil.rmtree(run, ignore_errors=True)
    marker, log = work / f"{point}.marker", work / f"{point}.log"
    started = time.perf_counter()
    rc = _child(point, marker, _train_args(data, run, config), scripted, log)
    killed = rc == -signal.SIGKILL
    epochs_started = json.loads(marker.read_text())["epochs_started"] if marker.exists() else None
    after_kill = check_run_dir(run)
    from cropdoc.training.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "last.ckpt")["global_epoch"] if killed else None
    resume_args = ["train", "--resume", "--out", str(run)]
    rc_resume = _child("none", work / f"{point}.resume.marker", resume_args, scripted, log)
    after_resume = check_run_dir(run) if rc_resume == 0 else {"corrupt": ["resume failed"]}
    compare = _compare(reference, run) if rc_resume == 0 else {"mismatches": ["no result"]}
    lost = (epochs_started - saved) if killed and epochs_started is not None else None
    return {
        "point": point,
        "killed_by_sigkill": killed,
        "epochs_started_before_kill": epochs_started,
        "epochs_in_checkpoint": saved,
        "epochs_lost": lost,
        "leftovers_after_kill": after_kill["leftovers"],
        "corrupt_after_kill_excluding_leftovers": [
            c for c in after_kill["corrupt"] if c.split(":")[0] not in after_kill["leftovers"]
        ],
        "resumed_ok": rc_resume == 0,
        "files_checked_after_resume": after_resume.get("files"),
        "corrupt_after_resume": after_resume["corrupt"],
        "max_abs_metric_diff": compare.get("max_abs_diff"),
        "metric_mismatches": compare["mismatches"],
        "wall_s": round(time.perf_counter() - started, 1),
        "log": str(log),
    }


def run(
    points: tuple[str, ...],
    work: Path,
    *,
    data: Path | None = None,
    reference: Path | None = None,
    config: Path | None = None,
    scripted: bool = True,
) -> dict[str, Any]:
    """Run ``points``; a given ``reference`` run must come from the same data and config."""
    work.mkdir(parents=True, exist_ok=True)
    data = data or tiny_dataset(work)
    config = config or write_config(work / "config.yaml")
    reference = reference or reference_run(data, work, config, scripted)
    results = [kill_and_resume(p, data, work, config, reference, scripted=scripted) for p in points]
    return {
        "item": "kill -9 and resume",
        "config": "tiny: mobilenet_v3_small, weights none, 32 px, 1+1+1 epochs, 4x12 images",
        "scripted_val_f1": scripted,
        "tolerance": {"rel": RTOL, "abs": ATOL},
        "points_tried": len(results),
        "runs_resumed": sum(r["resumed_ok"] for r in results),
        "killed_by_sigkill": sum(r["killed_by_sigkill"] for r in results),
        "max_epochs_lost": max((r["epochs_lost"] or 0) for r in results),
        "corrupt_files": sum(
            len(r["corrupt_after_resume"]) + len(r["corrupt_after_kill_excluding_leftovers"])
            for r in results
        ),
        "metrics_equal": all(not r["metric_mismatches"] for r in results),
        "points": results,
    }


def bars_met(fig: dict[str, Any]) -> list[str]:
    """The bars of item 2; an empty list means every one is met."""
    failed = []
    for r in fig["points"]:
        p = r["point"]
        if not (r["killed_by_sigkill"] and r["resumed_ok"]):
            failed.append(f"{p}: not killed and resumed")
        if r["epochs_lost"] is None or r["epochs_lost"] > 1:
            failed.append(f"{p}: epochs lost {r['epochs_lost']} > the interrupted one")
        if r["corrupt_after_resume"] or r["corrupt_after_kill_excluding_leftovers"]:
            failed.append(f"{p}: corrupt files")
        if r["metric_mismatches"]:
            failed.append(f"{p}: {r['metric_mismatches'][:3]}")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="all five kill points")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cropdoc-kill-"))
    fig = run(FULL_POINTS if args.full else CI_POINTS, work)
    fig["bars_failed"] = bars_met(fig)
    emit(fig)


if __name__ == "__main__":
    main()
