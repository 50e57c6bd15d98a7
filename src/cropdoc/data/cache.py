"""A decoded-image cache: JPEG decoding is paid once per run, not once per epoch.

Each image is decoded once (``images.load_tensor``) and, when its shorter side is longer
than ``short_side``, resized to it exactly as the eval transform's first step does
(``v2.Resize(short_side, antialias=True)`` on the uint8 tensor). The uint8 pixels go into
one flat tensor in shared memory, so DataLoader workers (forked, or spawned and handed the
tensor's handle) read them without copying. Why this layout:

* eval: the cached image *is* ``Resize(short_side)(decode(file))``, and resizing an image
  that already has the target size is the identity, so eval pixels are bit-identical;
* train: RandomResizedCrop samples from the ~1.14 x S image instead of the full photo; for
  photos larger than that this is the same framing at a resolution the crop would discard
  anyway, and it makes the crop cheap (a 12 MP photo is ~100 ms to decode, once);
* bounded: images are cached in order until ``max_bytes``; the rest are decoded per access;
* invalidated by file changes: the (size, mtime) of every file is recorded and checked on
  each access (one ``stat``), and a changed file is decoded afresh, never served stale.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from .images import DEFAULT_MAX_PIXELS, load_tensor

__all__ = ["DEFAULT_CACHE_BYTES", "DecodedCache", "decode_resized"]

_logger = logging.getLogger(__name__)

#: Default bound on the cache: 2 GiB, or a quarter of the RAM if that is less.
DEFAULT_CACHE_BYTES = 2 << 30


def _ram_quarter() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return DEFAULT_CACHE_BYTES


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def decode_resized(
    path: Path | str, short_side: int | None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Decode ``path`` to uint8 CHW and shrink its shorter side to ``short_side`` (never enlarge).

    This is what the cache stores; a cache miss computes the same thing.
    """
    image = load_tensor(path, max_pixels=max_pixels)
    if short_side is not None and min(image.shape[-2:]) > short_side:
        image = F.resize(image, short_side, antialias=True)
    return image


class DecodedCache:
    """Decoded, pre-shrunk uint8 images of ``paths`` in one shared-memory tensor.

    Args:
        paths: the image files, in dataset order.
        short_side: shrink images whose shorter side is longer than this (eval's resize
            size, ``round(1.14 * S)``); None keeps full resolution.
        max_bytes: cache at most this many bytes of pixels (default: 2 GiB or a quarter
            of the RAM, whichever is less); later images are decoded on every access.
        max_pixels: refuse images larger than this before decoding (as the loaders do).

    Decoding errors are not raised here: an unreadable image is simply not cached, and
    the dataset's normal path reports it (with the file name) when it is read.
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        short_side: int | None,
        *,
        max_bytes: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.short_side = short_side
        self.max_pixels = max_pixels
        limit = max_bytes if max_bytes is not None else min(DEFAULT_CACHE_BYTES, _ram_quarter())
        images: list[torch.Tensor | None] = []
        stamps: list[tuple[int, int]] = []
        used = 0
        for path in self.paths:
            image: torch.Tensor | None = None
            stamp = (-1, -1)
            if used < limit:
                try:
                    stamp = _stamp(path)
                    image = decode_resized(path, short_side, max_pixels=max_pixels)
                except Exception as e:  # noqa: BLE001 - reported by the dataset on access
                    _logger.debug("not caching %s: %s", path, e)
                    image = None
                if image is not None and used + image.numel() > limit:
                    image = None
            if image is not None:
                used += image.numel()
            images.append(image)
            stamps.append(stamp)
        self.nbytes = used
        self._data = torch.empty(used, dtype=torch.uint8)
        self._offsets = torch.full((len(images),), -1, dtype=torch.int64)
        self._shapes = torch.zeros((len(images), 3), dtype=torch.int64)
        self._stamps = stamps
        offset = 0
        for i, image in enumerate(images):
            if image is None:
                continue
            n = image.numel()
            self._data[offset : offset + n] = image.reshape(-1)
            self._offsets[i] = offset
            self._shapes[i] = torch.tensor(image.shape)
            offset += n
        self._data.share_memory_()
        self.cached = int((self._offsets >= 0).sum())
        _logger.info(
            "decoded-image cache: %d of %d images, %.0f MiB (limit %.0f MiB)",
            self.cached,
            len(images),
            used / 2**20,
            limit / 2**20,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> torch.Tensor | None:
        """The cached image (a uint8 CHW view), or None when not cached or the file changed."""
        offset = int(self._offsets[index])
        if offset < 0:
            return None
        try:
            if _stamp(self.paths[index]) != self._stamps[index]:
                _logger.debug(
                    "%s changed since it was cached; decoding it again", self.paths[index]
                )
                return None
        except OSError:
            return None  # gone: the normal path raises the clear error
        c, h, w = (int(v) for v in self._shapes[index])
        return self._data[offset : offset + c * h * w].view(c, h, w)

    def load(self, index: int) -> torch.Tensor:
        """The image at ``index``: from the cache, else decoded (and shrunk) now."""
        image = self.get(index)
        if image is None:
            image = decode_resized(self.paths[index], self.short_side, max_pixels=self.max_pixels)
        return image
