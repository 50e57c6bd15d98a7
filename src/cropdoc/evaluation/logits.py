"""Run a bundle's model over a list of images and keep every logit.

Evaluation and calibration both need the raw logits of a whole split (temperature
scaling fits on them; metrics read them after scaling), so this is the one place that
feeds images through a model outside training. An image that fails to decode is
reported back, not raised: evaluating 10,000 photos should not die on photo 9,999.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..bundle import BundleMeta
from ..data.cache import DecodedCache
from ..data.images import DEFAULT_MAX_PIXELS, load_tensor
from ..data.transforms import build_eval_transform
from ..errors import DataError
from ..models import LogitsAndFeatures, get_arch

__all__ = ["Logits", "collect_logits", "resolve_device"]

_logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else Apple MPS, else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


@dataclass
class Logits:
    """Outputs for the images that decoded; ``bad`` lists (path, reason) of those that did not."""

    logits: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,) int64
    paths: list[Path]
    bad: list[tuple[Path, str]] = field(default_factory=list)
    #: (N, D) penultimate head features, when asked for (feature-space OOD scores).
    features: np.ndarray | None = None


class _TolerantDataset(Dataset):
    """(image, label, ok): a file that fails to decode yields a blank image and ok=False."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        image_size: int,
        max_pixels: int,
        pre: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        cache: DecodedCache | None = None,
    ) -> None:
        self.samples = list(samples)
        self.cache = cache
        self.transform = transform
        self.pre = pre
        self.blank = torch.zeros(3, image_size, image_size)
        self.max_pixels = max_pixels
        self.errors: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, str]:
        path, label = self.samples[index]
        try:
            if self.cache is not None:  # Resize(short side)(decode): eval's own first step
                decoded = self.cache.load(index)
            else:
                decoded = load_tensor(path, max_pixels=self.max_pixels)
            if self.pre is not None:
                decoded = self.pre(decoded, index)
            image = self.transform(decoded)
        except DataError as e:
            reason = getattr(e, "reason", str(e))
            return self.blank, label, index, reason
        return image, label, index, ""


@torch.inference_mode()
def collect_logits(
    model: nn.Module,
    samples: Sequence[tuple[Path, int]],
    meta: BundleMeta,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
    features: bool = False,
    pre: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Logits:
    """Logits of ``model`` for every (path, label) in ``samples``, in order.

    Args:
        model: the bundle's model (any mode; it is put in eval mode).
        samples: image paths and their labels in the model's class indices.
        meta: the bundle's metadata, which fixes the preprocessing.
        batch_size: images per forward pass.
        workers: DataLoader worker processes (0 decodes in this process).
        device: ``"auto"``/None, ``"cpu"``, ``"cuda"``, ...
        max_pixels: images declaring more pixels are reported as bad.
        progress: called as ``progress(done, total)`` after each batch.
        features: also keep the penultimate head features (``Logits.features``).
        pre: applied to each decoded ``uint8 (3, H, W)`` photo (and its index in
            ``samples``) before the eval transform, e.g. a corruption.
        cache_dir: a run's ``cache/`` folder: when training left a disk cache of exactly
            these images there, they are read from it instead of decoded (the logits are
            the same bit for bit: the cache holds eval's own first resize). Not used with
            ``pre``, which needs the full photo.

    Returns:
        The logits of the images that decoded, and the (path, reason) of those that did not.
    """
    dev = resolve_device(device)
    model = model.eval().to(dev)
    net = LogitsAndFeatures(model, get_arch(meta.arch)) if features else model
    cache = None
    if cache_dir is not None and pre is None:
        paths = [path for path, _ in samples]
        short_side = meta.preprocessing.resize_size
        cache = DecodedCache.existing(paths, short_side, cache_dir, max_pixels=max_pixels)
    dataset = _TolerantDataset(
        samples,
        build_eval_transform(meta.preprocessing),
        meta.preprocessing.image_size,
        max_pixels,
        pre,
        cache,
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    outs: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    kept: list[int] = []
    bad: list[tuple[Path, str]] = []
    done = 0
    for x, y, index, reason in loader:
        ok = torch.tensor([not r for r in reason], dtype=torch.bool)
        for i, r in zip(index.tolist(), reason, strict=True):
            if r:
                bad.append((dataset.samples[i][0], r))
        if ok.any():
            out = net(x[ok].to(dev, non_blocking=True))
            logits = out[0] if features else out
            outs.append(logits.float().cpu().numpy())
            if features:
                feats.append(out[1].float().cpu().numpy())
            labels.append(y[ok].numpy())
            kept.extend(index[ok].tolist())
        done += len(y)
        if progress is not None:
            progress(done, len(dataset))
    if len(kept) + len(bad) != len(dataset):  # the torchvision `evaluate` check
        _logger.warning("evaluated %d of %d images", len(kept) + len(bad), len(dataset))
    for path, reason in bad:
        _logger.warning("skipped %s: %s", path, reason)
    n_classes = meta.num_classes
    return Logits(
        logits=np.concatenate(outs) if outs else np.zeros((0, n_classes), np.float32),
        labels=np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
        paths=[dataset.samples[i][0] for i in kept],
        bad=bad,
        features=(np.concatenate(feats) if feats else np.zeros((0, 0), np.float32))
        if features
        else None,
    )
