"""Run every benchmark and print one JSON document: ``python -m benchmarks.run_all --quick``.

``--quick`` (about 10 minutes on a 2-core CPU) uses fewer steps, repetitions and a 10 s
load test; without it the load test runs the issue's full 30 s.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from . import inference, serve_load, train_step
from .common import emit, machine


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip", default="", help="comma-separated: train,inference,serve")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    flags = ["--quick"] if args.quick else []
    out: dict[str, Any] = {"machine": machine()}
    started = time.perf_counter()
    # Each module prints its own JSON as it finishes (useful when a later one is slow).
    if "train" not in skip:
        out["train_step"] = train_step.main(flags)
    if "inference" not in skip:
        out["inference"] = inference.main(flags)
    if "serve" not in skip:
        out["serve_load"] = serve_load.main(flags)
    out["total_s"] = time.perf_counter() - started
    emit(out)
    return out


if __name__ == "__main__":
    main()
