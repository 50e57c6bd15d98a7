"""Shared helpers: machine description, medians, real images, JSON output."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cropdoc.cpu import usable_cpus

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "plantvillage-mini"
#: Real leaf photos (PlantVillage layout); override with CROPDOC_BENCH_DATA.
DATA = Path(os.environ.get("CROPDOC_BENCH_DATA", _DEFAULT_DATA))


def machine() -> dict[str, Any]:
    """What the numbers were measured on (lscpu model, cores, load, versions, date)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": usable_cpus(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system), in seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(ours: float, ref: float) -> float:
    return float(ours / ref) if ref else float("nan")


def samples(limit: int | None = None) -> list[tuple[Path, int]]:
    """(path, label) of the benchmark photos, class-interleaved so any prefix has every class."""
    if not DATA.is_dir():
        raise SystemExit(f"benchmark data not found at {DATA}; set CROPDOC_BENCH_DATA")
    classes = sorted(d.name for d in DATA.iterdir() if d.is_dir())
    per_class = [
        sorted(p for p in (DATA / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for c in classes
    ]
    out: list[tuple[Path, int]] = []
    for i in range(max(len(f) for f in per_class)):
        out.extend((files[i], label) for label, files in enumerate(per_class) if i < len(files))
    return out[:limit] if limit else out


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON document (the scripts' whole stdout)."""
    print(json.dumps(result, indent=2, default=str), flush=True)
