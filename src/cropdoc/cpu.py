"""CPU planning: how many cores this process may use, and how to share them.

Used by training (compute threads beside loader workers), evaluation and serving (worker
processes). Thread counts are only changed inside :func:`torch_threads`, which restores
the previous setting, so a notebook's process is left as it was found.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = [
    "MIN_BATCH_GFLOP_TO_SHARE",
    "compute_threads",
    "default_workers",
    "torch_threads",
    "usable_cpus",
]


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """Loader worker processes sized for the machine: leave compute to the model on few cores."""
    cpus = usable_cpus()
    return max(1, min(8, cpus - 1)) if cpus > 2 else 1


#: Below this much forward work per batch (GFLOP) more OpenMP threads do not pay:
#: measured on 2 cores, MobileNetV3-S stage 3 at 64 px (0.3 GFLOP per batch of 32) ran at
#: 180-204 img/s with 2 threads vs 219-234 with 1; at 128 px (1.3) 125 vs 118-127; at 224 px
#: (3.8) 73 vs 53-55.
MIN_BATCH_GFLOP_TO_SHARE = 1.5


def compute_threads(
    workers: int,
    processes: int = 1,
    *,
    light_workers: bool = False,
    batch_gflop: float | None = None,
) -> int:
    """Intra-op threads for a training process when it runs ``workers`` loader processes.

    The process's share of the cores (``processes`` training processes on this machine,
    e.g. DDP on CPU), at least one. Busy workers (decoding JPEGs on every access) get their
    cores subtracted: measured on a 2-core CPU, MobileNetV3-S training with 2 OpenMP
    threads beside one busy process fell from 100 to ~6 img/s (every parallel region waits
    for the descheduled thread). ``light_workers`` workers (the decoded cache, where a batch
    costs ~2 ms per image against 10-400 ms of compute) leave every core to compute when
    the batch is big enough to share (``batch_gflop``, forward, at least
    :data:`MIN_BATCH_GFLOP_TO_SHARE`): measured at 224 px on 2 idle cores, 1 worker
    + 2 threads against 1 + 1 ran EfficientNet-B0 stage 1 at 67 vs 36 img/s and ResNet-50
    stage 3 at 12.3 vs 7.2 img/s. ``OMP_NUM_THREADS``, when set, is the user's choice.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cpus = usable_cpus()
    share = max(1, cpus // max(1, processes))
    split = max(1, share - max(0, workers))
    small = batch_gflop is not None and batch_gflop < MIN_BATCH_GFLOP_TO_SHARE
    return share if light_workers and not small else split


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the previous count.

    ``None`` leaves the setting alone.
    """
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
