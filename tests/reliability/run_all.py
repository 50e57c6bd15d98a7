"""Run the whole fault suite and print every figure plus a pass/fail line per bar.

    python -m tests.reliability.run_all --full [--out figures.json] [--only kill,uploads]

Without ``--full`` each item runs at the reduced size CI uses. Exit code 1 when a bar
fails. Everything is bounded (request counts, deadlines, subprocess timeouts) and the
server binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import emit, tiny_bundle, tiny_dataset

from . import bad_images, cli_input, disk_full, hostile_files, kill_resume, numerics, uploads


def _bars(item: str, fig: dict[str, Any]) -> dict[str, bool]:
    """The issue's bars for one item's figures."""
    if item == "bad_images":
        return {
            "crashes = 0": fig["crashes"] == 0,
            "all kinds handled as specified": fig["kinds_handled_as_specified"]
            == fig["kinds_tried"],
            "EXIF photo predicted upright": fig["exif_rotated_predicted_as_upright"],
        }
    if item == "kill":
        return {
            "all killed and resumed": fig["runs_resumed"] == fig["points_tried"],
            "epochs lost <= the interrupted one": fig["max_epochs_lost"] <= 1,
            "corrupt files = 0": fig["corrupt_files"] == 0,
            "metrics equal within tolerance": fig["metrics_equal"],
        }
    if item == "disk_full":
        return {
            "clear error, previous files loadable, no temp left": fig[
                "clear_error_and_previous_loadable"
            ]
            == fig["sites_tried"]
        }
    if item == "hostile":
        return {
            "payloads executed = 0": fig["payloads_executed"] == 0,
            "all refused with a clear error": fig["refused_with_clear_error"] == fig["cases_tried"],
        }
    if item == "uploads":
        fz, ld = fig["fuzz"], fig["load"]
        return {
            "fuzz: 5xx = 0": fz["5xx"] == 0,
            "fuzz: server alive and predicting after": fz["server_alive_after"]
            and fz["valid_prediction_after"],
            "fuzz: no traceback in server log": fz["tracebacks_in_log"] == 0,
            "load: errors = 0": ld["errors"] == 0 and ld["skipped_by_deadline"] == 0,
            "load: RSS growth after warm-up < 50 MB": ld["rss_mb"]["growth_after_warmup"]
            < uploads.RSS_BAR_MB,
        }
    if item == "numerics":
        bars = {
            "NaN/inf: clear stop, best bundle kept": fig["nan"]["stopped_clearly_with_best_bundle"]
            == len(fig["nan"]["cases"])
        }
        if "ddp" in fig:
            bars["DDP within tolerance"] = fig["ddp"]["within_tolerance"]
        return bars
    if item == "cli":
        return {
            "one line, exit 2, no traceback": fig["one_line_exit_2_no_traceback"]
            == fig["cases_tried"]
        }
    raise KeyError(item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--only", default="", help="comma-separated subset of the items")
    args = parser.parse_args()
    full = args.full
    work = args.work or Path(tempfile.mkdtemp(prefix="cropdoc-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    data = tiny_dataset(work)
    bundle = tiny_bundle(work, data) / "model"

    items: dict[str, Callable[[], dict[str, Any]]] = {
        "bad_images": lambda: bad_images.run(
            bundle, work, huge_side=(7000, 5600) if full else (4000, 3000)
        ),
        "kill": lambda: kill_resume.run(
            kill_resume.FULL_POINTS if full else kill_resume.CI_POINTS, work / "kill"
        ),
        "disk_full": lambda: disk_full.run(work / "enospc", data=data, full=full),
        "hostile": lambda: hostile_files.run(work / "hostile"),
        "uploads": lambda: uploads.run(
            bundle,
            work,
            data,
            **({"fuzz_n": 600, "load_n": 1000, "clients": 32} if full else {}),
        ),
        "numerics": lambda: {
            "nan": numerics.nan_stop(data, work / "nan"),
            **({"ddp": numerics.ddp_parity(work / "ddp")} if full else {}),
        },
        "cli": lambda: cli_input.run(work / "cli"),
    }
    only = [s for s in args.only.split(",") if s]
    report: dict[str, Any] = {
        "size": "full" if full else "ci",
        "machine": f"{platform.node()} {platform.machine()}, shared and loaded",
        "items": {},
    }
    failed = []
    for name, fn in items.items():
        if only and name not in only:
            continue
        (work / name).mkdir(exist_ok=True)
        started = time.perf_counter()
        fig = fn()
        bars = _bars(name, fig)
        failed += [f"{name}: {b}" for b, ok in bars.items() if not ok]
        report["items"][name] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "bars": bars,
            "figures": fig,
        }
        print(f"[{name}] {'PASS' if all(bars.values()) else 'FAIL'} {bars}", file=sys.stderr)
    report["bars_failed"] = failed
    emit(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
