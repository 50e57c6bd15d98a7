"""Datasets and DataLoaders.

Images are decoded to uint8 tensors (libjpeg-turbo through torchvision for JPEGs, PIL for
the rest, see ``images.load_tensor``) and augmented as tensors, which is cheaper than PIL
round trips. A file that fails to decode here (changed since the scan) raises a
``DataError`` naming it: we never substitute a blank image.

Speed on few cores (measured, see BENCHMARKS.md): on a 2-core CPU the loader shares the
cores with the model, so every millisecond of augmentation is a millisecond of training
lost. Two things make it cheap: the optional :class:`~cropdoc.data.cache.DecodedCache`
(decode once per run, shrunk to the eval resize size) and :class:`FastTrainAugment`, the
seed's nine steps with ColorJitter, to-float and Normalize fused into one 3x3 colour
matrix (12.6 -> ~3.5 ms per 224 px image; torchvision's tensor hue shift alone is 6.7 ms).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import RandomResizedCrop, v2

from ..errors import DataError
from .cache import DecodedCache
from .images import DEFAULT_MAX_PIXELS, load_tensor

__all__ = [
    "CropFlipRotate",
    "FastTrainAugment",
    "ImageDataset",
    "build_fast_train_transform",
    "class_weights",
    "compute_threads",
    "default_workers",
    "make_loader",
    "usable_cpus",
]

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
        cache_max_bytes: bound of that cache (default: 2 GiB or a quarter of the RAM).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_short_side: int | None = None,
        cache_max_bytes: int | None = None,
    ) -> None:
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.transform = transform
        self.max_pixels = max_pixels
        self.cache: DecodedCache | None = None
        if cache_short_side is not None and self.samples:
            self.cache = DecodedCache(
                [p for p, _ in self.samples],
                cache_short_side,
                max_bytes=cache_max_bytes,
                max_pixels=max_pixels,
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


class CropFlipRotate:
    """Seed steps 1-4 (RandomResizedCrop, horizontal and vertical flip, rotation) as one warp.

    The parameters are drawn as the torchvision transforms draw them (crop box from
    ``RandomResizedCrop.get_params``, flip probabilities, angle uniform in ±degrees), then
    composed into one affine map from output to source pixels and sampled once, bilinearly,
    with black outside the image (the seed's rotation fill). One resampling instead of a
    resize and a rotation: 0.64 ms per 224 px image here instead of 1.66 ms, and the
    rotation is bilinear rather than nearest. The output is float (0..255).
    """

    def __init__(
        self,
        size: int,
        *,
        scale: tuple[float, float] = (0.8, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_p: float = 0.5,
        vflip_p: float = 0.2,
        degrees: float = 20.0,
    ) -> None:
        self.size, self.scale, self.ratio = size, list(scale), list(ratio)
        self.hflip_p, self.vflip_p, self.degrees = hflip_p, vflip_p, degrees

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        box = RandomResizedCrop.get_params(image, self.scale, self.ratio)
        hflip = float(torch.rand(1)) < self.hflip_p
        vflip = float(torch.rand(1)) < self.vflip_p
        angle = float(torch.empty(1).uniform_(-self.degrees, self.degrees))
        return self.warp(image, box, hflip=hflip, vflip=vflip, angle=angle)

    def warp(
        self,
        image: torch.Tensor,
        box: tuple[int, int, int, int],
        *,
        hflip: bool = False,
        vflip: bool = False,
        angle: float = 0.0,
    ) -> torch.Tensor:
        """Crop ``box`` (top, left, height, width), resize, flip, rotate by ``angle`` degrees.

        In normalised coordinates (``affine_grid``): output point → rotated about the centre
        → flipped → the crop box's place in the source image.
        """
        top, left, h, w = box
        height, width = image.shape[-2:]
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        fx, fy = (-1.0 if hflip else 1.0), (-1.0 if vflip else 1.0)
        ax, bx = w / width, (2 * left + w) / width - 1.0
        ay, by = h / height, (2 * top + h) / height - 1.0
        theta = torch.tensor(
            [[ax * fx * c, -ax * fx * s, bx], [ay * fy * s, ay * fy * c, by]],
            dtype=torch.float32,
        )
        out = (1, image.shape[0], self.size, self.size)
        grid = torch.nn.functional.affine_grid(theta.unsqueeze(0), list(out), align_corners=False)
        source = image.unsqueeze(0).float()
        return torch.nn.functional.grid_sample(
            source, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        ).squeeze(0)


class FastTrainAugment:
    """The seed's nine training steps at a fraction of the CPU cost (picklable for workers).

    Same steps, parameters and order as :func:`~cropdoc.data.transforms.build_train_transform`.
    Steps 1-4 (crop, flips, rotation) are one warp, :class:`CropFlipRotate`; blur 6 and
    erasing 9 are torchvision's. Step 5, ColorJitter, is fused with steps 7-8 (to float,
    Normalize): brightness, contrast, saturation and hue are each an affine map of RGB, so
    they are drawn with the same ranges and in a random order as ColorJitter does, composed
    into one 3x3 matrix and offset, and applied in a single pass with one clamp, then
    normalised. Deliberate differences, all invisible to training: one bilinear resampling
    for steps 1-4 (no antialiasing for the <= 1.14x shrink of the cached image, bilinear
    instead of nearest rotation); no uint8 rounding/clamping between the four colour ops;
    and hue is a rotation about the grey axis of RGB (the CSS/YIQ hue rotation) instead of
    a shift on the HSV hexagon; for |hue| <= 0.05 of a turn they differ by a few levels.
    """

    # ITU-R 601 luma, as torchvision's rgb_to_grayscale.
    _GRAY = (0.2989, 0.587, 0.114)

    def __init__(
        self,
        image_size: int = 224,
        *,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.05,
    ) -> None:
        self.geometry: Callable[[torch.Tensor], torch.Tensor] = CropFlipRotate(image_size)
        self.blur_p, self.blur_sigma = 0.2, (0.1, 2.0)
        self.erase = v2.RandomErasing(p=0.1, scale=(0.02, 0.1))
        self.ranges = (brightness, contrast, saturation, hue)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        # Normalize((x / 255 - mean) / std) as one multiply-add on 0..255 values.
        self.scale = (1.0 / (255.0 * std_t)).view(3, 1)
        self.shift = (mean_t / std_t).view(3, 1)
        self.gray = torch.tensor(self._GRAY, dtype=torch.float32)

    def color_matrix(self, channel_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a ColorJitter and return it as ``(A, b)``: ``out = A @ rgb + b`` (0..255).

        Args:
            channel_mean: per-channel mean of the image (0..255), for contrast's grey mean.
        """
        b_range, c_range, s_range, h_range = self.ranges
        eye = torch.eye(3)
        a, off = eye.clone(), torch.zeros(3)
        factors = torch.empty(4).uniform_(-1.0, 1.0) * torch.tensor(
            [b_range, c_range, s_range, h_range]
        )
        for op in torch.randperm(4).tolist():
            f = float(factors[op])
            if op == 0:  # brightness: scale
                m, t = (1.0 + f) * eye, torch.zeros(3)
            elif op == 1:  # contrast: blend with the mean grey of the current image
                grey_mean = float(self.gray @ (a @ channel_mean + off))
                m, t = (1.0 + f) * eye, torch.full((3,), -f * grey_mean)
            elif op == 2:  # saturation: blend with the per-pixel grey
                m, t = (1.0 + f) * eye - f * torch.ones(3, 1) * self.gray, torch.zeros(3)
            else:  # hue: rotate about the grey axis by f turns (Rodrigues)
                theta = 2.0 * math.pi * f
                k = torch.full((3,), 1.0 / math.sqrt(3.0))
                cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
                m = (
                    math.cos(theta) * eye
                    + math.sin(theta) * cross
                    + (1.0 - math.cos(theta)) * torch.outer(k, k)
                )
                t = torch.zeros(3)
            a, off = m @ a, m @ off + t
        return a, off

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """Step 6 on the float image: 3x3 Gaussian, reflect padding, as v2.GaussianBlur.

        Blur is linear and reflect padding commutes with the per-channel colour map and
        Normalize, so blurring after them equals blurring before (up to uint8 rounding).
        The 3x3 kernel is separable, so it runs as two 3-tap passes of slices and adds:
        0.45 ms per 224 px image here, against 2.9 ms for a grouped ``conv2d``.
        """
        if float(torch.rand(1)) >= self.blur_p:
            return x
        sigma = float(torch.empty(1).uniform_(*self.blur_sigma))
        edge = math.exp(-0.5 / sigma**2)
        side, centre = edge / (1.0 + 2.0 * edge), 1.0 / (1.0 + 2.0 * edge)
        pad = torch.nn.functional.pad
        p = pad(x.unsqueeze(0), (1, 1, 0, 0), mode="reflect").squeeze(0)
        x = (p[..., :-2] + p[..., 2:]).mul_(side).add_(p[..., 1:-1], alpha=centre)
        p = pad(x.unsqueeze(0), (0, 0, 1, 1), mode="reflect").squeeze(0)
        return (p[..., :-2, :] + p[..., 2:, :]).mul_(side).add_(p[..., 1:-1, :], alpha=centre)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = self.geometry(image)
        c, h, w = x.shape
        flat = x.reshape(3, -1)
        a, off = self.color_matrix(flat.mean(dim=1))
        out = torch.addmm(off.view(3, 1), a, flat).clamp_(0.0, 255.0)
        out = out.mul_(self.scale).sub_(self.shift).view(c, h, w)
        return self.erase(self._blur(out))


def build_fast_train_transform(
    image_size: int = 224,
    *,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> FastTrainAugment:
    """The training augmentation the trainer uses by default (see :class:`FastTrainAugment`)."""
    return FastTrainAugment(image_size, mean=mean, std=std)


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
