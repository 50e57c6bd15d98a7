"""Datasets and DataLoaders.

Images are decoded to uint8 tensors (libjpeg-turbo through torchvision for JPEGs, PIL for
the rest, see ``images.load_tensor``) and augmented as tensors, which is cheaper than PIL
round trips. A file that fails to decode here (changed since the scan) raises a
``DataError`` naming it: we never substitute a blank image.

Speed on few cores (measured, see BENCHMARKS.md): on a 2-core CPU the loader shares the
cores with the model, so every millisecond of augmentation is a millisecond of training
lost. Two things make it cheap: the optional :class:`~cropdoc.data.cache.DecodedCache`
(decode once per run, shrunk to the eval resize size) and
:class:`~cropdoc.data.augment.FastTrainAugment`, the seed's nine steps at a fraction of
their cost.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from ..cpu import default_workers
from ..errors import DataError
from .cache import CacheStorage, DecodedCache
from .images import DEFAULT_MAX_PIXELS, load_tensor

__all__ = ["ImageDataset", "class_weights", "make_loader"]

_logger = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """(path, label) pairs → (transformed image tensor, label).

    Args:
        samples: (path, label) pairs.
        transform: applied to the uint8 CHW image.
        max_pixels: refuse larger images before decoding.
        cache_short_side: when set, decode every image once now into a shared-memory
            :class:`DecodedCache`, shrunk to this shorter side (pass the eval resize size,
            ``round(1.14 * S)``: eval pixels stay identical). None: decode on every access.
        cache_max_bytes: bound of a RAM cache (default: 2 GiB or a quarter of the RAM).
        cache_dir: where a disk-backed cache may live (a run's ``cache/``): used when the
            images would not fit ``cache_max_bytes`` (``cache_storage="auto"``), or always
            with ``"disk"``; reused by a later dataset over the same files.
        cache_storage: ``auto``, ``ram``, ``disk`` or ``none`` (no cache at all).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_short_side: int | None = None,
        cache_max_bytes: int | None = None,
        cache_dir: Path | None = None,
        cache_storage: CacheStorage = "auto",
    ) -> None:
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.transform = transform
        self.max_pixels = max_pixels
        self.cache: DecodedCache | None = None
        if cache_short_side is not None and self.samples and cache_storage != "none":
            self.cache = DecodedCache(
                [p for p, _ in self.samples],
                cache_short_side,
                max_bytes=cache_max_bytes,
                max_pixels=max_pixels,
                disk_dir=cache_dir,
                storage=cache_storage,
            )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            if self.cache is not None:
                image = self.cache.load(index)
            else:
                image = load_tensor(path, max_pixels=self.max_pixels)
        except DataError as e:
            raise DataError(f"{path}: {e} (re-run `cropdoc data inspect` to list bad files)") from e
        if self.transform is not None:
            image = self.transform(image)
        return image, label


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
    shard: tuple[int, int] | None = None,
    shuffle_seed: int = 0,
) -> DataLoader:
    """A DataLoader: train is shuffled (or class-balanced) with drop_last; eval is ordered.

    Shuffling draws from torch's global RNG, which the trainer reseeds every epoch, so an
    epoch's order is the same whether the run was interrupted and resumed or not. With
    ``shard=(rank, world_size)`` the train loader reads its rank's share through a
    ``DistributedSampler`` seeded with ``shuffle_seed`` (every rank must draw the same
    permutation, so it cannot use the per-rank global RNG).
    """
    workers = default_workers() if workers is None else workers
    sampler = None
    if train and balance_sampler:
        n = num_classes if num_classes is not None else max(dataset.labels) + 1
        per_class = class_weights(dataset.labels, n)
        weights = per_class[torch.tensor(dataset.labels)].double()
        sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
    elif train and shard is not None:
        rank, world = shard
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=shuffle_seed
        )
    drop_last = train and (len(sampler) if sampler is not None else len(dataset)) > batch_size
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
