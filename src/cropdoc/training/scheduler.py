"""Cosine annealing per stage, stepped per batch, with optional linear warm-up.

Stepping per batch rather than per epoch gives the same cosine shape for long stages and a
real decay for one- or two-epoch stages (the demo and the tests), where a per-epoch
schedule would never move. The last step of a stage lands exactly on ``eta_min``.

A resumed stage starts the schedule at ``start_step`` = epochs done x *this* run's steps
per epoch, not at the interrupted run's step count: steps per epoch change with the number
of DDP processes, and the stage must go on at the same fraction of its length.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["create_scheduler"]


def create_scheduler(
    optimizer: Optimizer,
    *,
    total_steps: int,
    eta_min: float = 1e-7,
    warmup_steps: int = 0,
    start_step: int = 0,
) -> LambdaLR:
    """Cosine decay from each group's initial lr to ``eta_min`` over ``total_steps``.

    Args:
        optimizer: its param groups' ``lr`` are the peak rates (differential lrs keep their ratio).
        total_steps: optimizer steps in the stage (epochs × batches per epoch).
        eta_min: the floor reached at the last step, for every group.
        warmup_steps: linear warm-up from ~0 to the peak before the decay starts.
        start_step: the step to start at (a resumed stage); the groups' ``initial_lr``
            (kept in the optimizer's state) are the peak rates.

    Returns:
        A scheduler to ``step()`` after every optimizer step.
    """
    total_steps = max(1, int(total_steps))
    warmup_steps = min(max(0, int(warmup_steps)), total_steps - 1)
    base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]

    def make_lambda(base_lr: float):
        floor = min(eta_min / base_lr, 1.0) if base_lr > 0 else 0.0

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / (warmup_steps + 1)
            decay_steps = total_steps - warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, decay_steps))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return factor

    start = min(max(0, int(start_step)), total_steps)
    return LambdaLR(optimizer, [make_lambda(lr) for lr in base_lrs], last_epoch=start - 1)
