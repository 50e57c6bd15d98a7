"""Datasets and DataLoaders.

Images are decoded to uint8 tensors (libjpeg-turbo through torchvision for JPEGs, PIL for
the rest, see ``images.load_tensor``) and augmented as tensors, which is cheaper than PIL
round trips. A file that fails to decode here (changed since the scan) raises a
``DataError`` naming it: we never substitute a blank image.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from ..errors import DataError
from .images import DEFAULT_MAX_PIXELS, load_tensor

__all__ = ["ImageDataset", "class_weights", "default_workers", "make_loader"]

_logger = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """(path, label) pairs → (transformed image tensor, label)."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = load_tensor(path, max_pixels=self.max_pixels)
        except DataError as e:
            raise DataError(f"{path}: {e} (re-run `cropdoc data inspect` to list bad files)") from e
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def default_workers() -> int:
    """Loader worker processes sized for the machine: leave compute to the model on few cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus - 1)) if cpus > 2 else 1


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    counts = Counter(labels)
    w = torch.tensor([1.0 / counts[c] if counts.get(c) else 0.0 for c in range(num_classes)])
    present = w > 0
    w[present] = w[present] * present.sum() / w[present].sum()
    return w


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    train: bool,
    workers: int | None = None,
    balance_sampler: bool = False,
    num_classes: int | None = None,
) -> DataLoader:
    """A DataLoader: train is shuffled (or class-balanced) with drop_last; eval is ordered.

    Shuffling draws from torch's global RNG, which the trainer reseeds every epoch, so an
    epoch's order is the same whether the run was interrupted and resumed or not.
    """
    workers = default_workers() if workers is None else workers
    sampler = None
    if train and balance_sampler:
        n = num_classes if num_classes is not None else max(dataset.labels) + 1
        per_class = class_weights(dataset.labels, n)
        weights = per_class[torch.tensor(dataset.labels)].double()
        sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
    drop_last = train and len(dataset) > batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        # Not persistent: workers are re-forked each epoch so their augmentation RNG is
        # reseeded from the per-epoch seed, which keeps resumed runs identical.
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
