"""Resume a training run on two CPU processes (DDP, gloo) and record each rank's random streams.

``python -m tests.ddp_probe RUN_DIR`` resumes the interrupted run in ``RUN_DIR`` with
``--devices 2 --device cpu``; Fabric's launcher runs this same command again for rank 1.
Every call of :func:`cropdoc.training.trainer.seed_epoch` is wrapped so each rank appends
what its random generators draw first after the reseed (:func:`draws`, which puts their
state back, so training draws exactly what it would have) to
``RUN_DIR/streams-rank<R>.jsonl``. Run from the repository root (``tests`` is imported).
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def draws() -> dict[str, Any]:
    """The first values of the torch, numpy and ``random`` streams, leaving them untouched."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    out = {
        "torch": torch.rand(3).tolist(),
        "numpy": np.random.rand(3).tolist(),
        "random": [random.random()],
    }
    torch.set_rng_state(saved[0])
    np.random.set_state(saved[1])
    random.setstate(saved[2])
    return out


def main(argv: list[str]) -> None:
    from cropdoc.config import load_config
    from cropdoc.training import run as run_module
    from cropdoc.training import trainer as trainer_module

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = Path(argv[0])
    real = trainer_module.seed_epoch

    def probing(seed: int, global_epoch: int, rank: int = 0) -> None:
        real(seed, global_epoch, rank)
        with (run / f"streams-rank{rank}.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": global_epoch, **draws()}) + "\n")

    trainer_module.seed_epoch = probing
    overrides = {"runtime": {"devices": 2, "accelerator": "cpu"}}
    config = load_config(run / "config.yaml", overrides)
    run_module.train(None, run, config, resume=True, show_progress=False)


if __name__ == "__main__":
    main(sys.argv[1:])
