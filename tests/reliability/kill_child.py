"""Run ``cropdoc`` with a fault patched in: SIGKILL our own process at a chosen point.

Usage (from the repository root)::

    python -m tests.reliability.kill_child POINT MARKER [--scripted-f1] [--epoch N] \
        -- train DATA --out RUN --config CFG

``POINT`` is one of :data:`POINTS` (``none`` runs the CLI unpatched apart from
``--scripted-f1``). Just before the kill, ``MARKER`` receives ``{"point", "epochs_started"}``
so the harness can count lost epochs. Nothing here touches product code on disk: the
faults are monkeypatches in this process only, which is why kill -9 is real (no cleanup
handler, ``finally`` or ``atexit`` of cropdoc runs).

``--scripted-f1`` makes validation macro-F1 rise by 0.1 every epoch (the losses and the
test metrics stay real). The tiny model's F1 is flat, so without it the best bundle is
written only once, before any checkpoint exists, and a kill during a bundle write could
not be resumed; the reference run uses the same flag, so comparisons stay like for like.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

POINTS = (
    "none",
    "mid_batch",
    "validation",
    "checkpoint_write",
    "between_stages",
    "bundle_write",
)


class _State:
    """Where the patched process is: epochs started (1-based) and batches in the epoch."""

    def __init__(self, point: str, marker: Path, epoch: int) -> None:
        self.point = point
        self.marker = marker
        self.target_epoch = epoch
        self.epoch = 0
        self.batch = 0
        self.stage_setups = 0

    def die(self) -> None:
        """Record where we are, then SIGKILL ourselves: no cleanup code gets to run."""
        self.marker.write_text(json.dumps({"point": self.point, "epochs_started": self.epoch}))
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _write_half(data: bytes, path: Any) -> None:
    """Leave a torn file behind, as a kill in the middle of ``write`` would."""
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())


def install(point: str, marker: Path, *, epoch: int = 2, scripted_f1: bool = False) -> None:
    """Monkeypatch cropdoc in this process so it dies at ``point`` in global epoch ``epoch``."""
    import inspect

    import safetensors.torch
    import torch

    from cropdoc import bundle as bundle_mod
    from cropdoc.training import trainer as trainer_mod

    state = _State(point, marker, epoch)
    Trainer = trainer_mod.Trainer

    real_epoch = Trainer.train_one_epoch

    def train_one_epoch(self: Any, loader: Any, desc: str) -> dict[str, float]:
        state.epoch += 1
        state.batch = 0
        return real_epoch(self, loader, desc)

    Trainer.train_one_epoch = train_one_epoch  # type: ignore[method-assign]

    if scripted_f1:
        real_evaluate = trainer_mod.evaluate

        def evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
            out = real_evaluate(*args, **kwargs)
            caller = inspect.currentframe().f_back  # type: ignore[union-attr]
            trainer = caller.f_locals.get("self") if caller is not None else None
            if isinstance(trainer, Trainer):
                out = {**out, "f1": round(0.1 * (trainer.global_epoch + 1), 6)}
            return out

        trainer_mod.evaluate = evaluate

    in_target = lambda: state.epoch == state.target_epoch  # noqa: E731
    if point in ("mid_batch", "validation"):
        real_forward = torch.nn.CrossEntropyLoss.forward

        def forward(self: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if in_target():
                if point == "validation" and torch.is_inference_mode_enabled():
                    state.die()
                if point == "mid_batch" and not torch.is_inference_mode_enabled():
                    state.batch += 1
                    if state.batch == 2:  # after a forward, before its backward and step
                        state.die()
            return real_forward(self, logits, target)

        torch.nn.CrossEntropyLoss.forward = forward  # type: ignore[method-assign]
    elif point == "checkpoint_write":
        real_save = torch.save

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if in_target() and isinstance(obj, dict) and "optimizer" in obj:
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                _write_half(buf.getvalue(), f)
                state.die()
            real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif point == "between_stages":
        real_setup = Trainer.setup_stage

        def setup_stage(self: Any, stage: Any, steps_per_epoch: int) -> None:
            state.stage_setups += 1
            if state.stage_setups == 2:  # stage 1 finished and checkpointed; stage 2 not set up
                state.die()
            real_setup(self, stage, steps_per_epoch)

        Trainer.setup_stage = setup_stage  # type: ignore[method-assign]
    elif point == "bundle_write":
        real_save_file = bundle_mod.save_file

        def save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
            if in_target():
                _write_half(safetensors.torch.save(tensors, metadata=metadata), filename)
                state.die()
            real_save_file(tensors, filename, metadata=metadata)

        bundle_mod.save_file = save_file
    elif point != "none":
        raise SystemExit(f"unknown point {point!r}; choose from {', '.join(POINTS)}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: kill_child POINT MARKER [--scripted-f1] [--epoch N] -- ARGS")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="kill_child")
    parser.add_argument("point", choices=POINTS)
    parser.add_argument("marker", type=Path)
    parser.add_argument("--epoch", type=int, default=2, help="global epoch (1-based) to die in")
    parser.add_argument("--scripted-f1", action="store_true")
    args = parser.parse_args(argv[:cut])
    install(args.point, args.marker, epoch=args.epoch, scripted_f1=args.scripted_f1)

    from cropdoc.cli import main as cropdoc_main

    sys.argv = ["cropdoc", *argv[cut + 1 :]]
    cropdoc_main()


if __name__ == "__main__":
    main()
