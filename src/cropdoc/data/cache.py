"""A decoded-image cache: JPEG decoding is paid once per run, not once per epoch.

Each image is decoded once (``images.load_tensor``) and, when its shorter side is longer
than ``short_side``, resized to it exactly as the eval transform's first step does
(``v2.Resize(short_side, antialias=True)`` on the uint8 tensor). The uint8 pixels go into
one flat buffer that DataLoader workers read without copying. Why this layout:

* eval: the cached image *is* ``Resize(short_side)(decode(file))``, and resizing an image
  that already has the target size is the identity, so eval pixels are bit-identical;
* train: RandomResizedCrop samples from the ~1.14 x S image instead of the full photo; for
  photos larger than that this is the same framing at a resolution the crop would discard
  anyway, and it makes the crop cheap (a 12 MP photo is ~100 ms to decode, once);
* bounded: images are cached in order until the bound; decoding stops at the first image
  that does not fit, and the rest are decoded per access (``complete`` says which case);
* RAM or disk: in RAM (a shared-memory tensor) when the estimated size fits ``max_bytes``;
  otherwise, given a ``disk_dir`` (the run directory's ``cache/``), in one memory-mapped
  uint8 file there with a JSON index. The OS page cache then holds what RAM allows, the
  process's own memory stays small whatever the dataset size, every process on the
  machine (DDP ranks, loader workers) shares one copy, and a later run over the same
  files (``--resume``) maps it again instead of decoding;
* invalidated by file changes: the (size, mtime) of every file is recorded and checked on
  each access (one ``stat``), and a changed file is decoded afresh, never served stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ..cpu import usable_cpus
from ..io import atomic_write_json
from .images import DEFAULT_MAX_PIXELS, load_tensor

__all__ = ["DEFAULT_CACHE_BYTES", "CacheStorage", "DecodedCache", "decode_resized"]

_logger = logging.getLogger(__name__)

#: Default bound on a RAM cache: 2 GiB, or a quarter of the RAM if that is less.
DEFAULT_CACHE_BYTES = 2 << 30
#: ``auto``: RAM when the estimate fits the bound, else disk (given a folder); ``ram``,
#: ``disk``: that one; ``none``: no cache (decode on every access).
CacheStorage = Literal["auto", "ram", "disk", "none"]
_INDEX_VERSION = 1
_HEADER_SAMPLE = 64  # images whose headers estimate the cache size


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


def _resized_bytes(width: int, height: int, short_side: int | None) -> int:
    short, long_ = min(width, height), max(width, height)
    if short_side is not None and short > short_side:
        long_, short = int(short_side * long_ / short), short_side
    return 3 * short * long_


def estimate_bytes(paths: Sequence[Path], short_side: int | None) -> int:
    """The cache's size from the headers of up to 64 evenly spaced images (no decoding)."""
    if not paths:
        return 0
    step = max(1, len(paths) // _HEADER_SAMPLE)
    sizes = []
    for path in paths[::step][:_HEADER_SAMPLE]:
        try:
            with Image.open(path) as im:
                sizes.append(_resized_bytes(*im.size, short_side))
        except Exception:  # noqa: BLE001 - an unreadable file only skews the estimate
            continue
    return int(np.mean(sizes) * len(paths)) if sizes else 0


def _decoded(
    paths: Sequence[Path], decode: Callable[[Path], Any], threads: int
) -> Iterator[tuple[int, Any]]:
    """``(index, decode(path))`` in order, decoded by ``threads`` threads (PIL releases
    the GIL), at most a few images ahead: stopping the iteration stops the decoding."""
    ahead = 4 * max(1, threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cropdoc-cache") as pool:
        todo = iter(paths)
        window: deque[Future[Any]] = deque(
            pool.submit(decode, p) for _, p in zip(range(ahead), todo, strict=False)
        )
        done = 0
        try:
            while window:
                result = window.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append(pool.submit(decode, nxt))
                yield done, result
                done += 1
        finally:
            for future in window:
                future.cancel()


class DecodedCache:
    """Decoded, pre-shrunk uint8 images of ``paths`` in one buffer (RAM or a mapped file).

    Args:
        paths: the image files, in dataset order.
        short_side: shrink images whose shorter side is longer than this (eval's resize
            size, ``round(1.14 * S)``); None keeps full resolution.
        max_bytes: bound of a RAM cache (default: 2 GiB or a quarter of the RAM,
            whichever is less); later images are decoded on every access.
        max_pixels: refuse images larger than this before decoding (as the loaders do).
        disk_dir: where a disk cache lives (a run's ``cache/`` folder); None: RAM only.
        storage: see :data:`CacheStorage` (``none`` is the caller's business).
        max_disk_bytes: bound of a disk cache (default: half the free space of
            ``disk_dir``).

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
        disk_dir: str | os.PathLike[str] | None = None,
        storage: CacheStorage = "auto",
        max_disk_bytes: int | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.short_side = short_side
        self.max_pixels = max_pixels
        self.file: Path | None = None
        self.reused = False
        limit = max_bytes if max_bytes is not None else min(DEFAULT_CACHE_BYTES, _ram_quarter())
        disk = disk_dir is not None and storage in ("auto", "disk")
        if disk:
            folder = Path(disk_dir)  # type: ignore[arg-type]
            self.file = folder / f"decoded-{self._key()}.u8"
            if self._reuse():
                self._log("reused")
                return
            disk = storage == "disk" or estimate_bytes(self.paths, short_side) > limit
        if disk:
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
            self._build(max_disk_bytes if max_disk_bytes is not None else free // 2, on_disk=True)
        else:
            self.file = None
            self._build(limit, on_disk=False)
        self._log("built")

    @classmethod
    def existing(
        cls,
        paths: Sequence[Path | str],
        short_side: int | None,
        disk_dir: str | os.PathLike[str],
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> DecodedCache | None:
        """The disk cache a run wrote in ``disk_dir`` for exactly these files, mapped; or
        None (nothing is decoded or written here: evaluation reuses, it never builds).

        Files changed since the cache was written are decoded afresh on access, as in
        training, so a reused cache never serves stale pixels.
        """
        cache = cls.__new__(cls)
        cache.paths = [Path(p) for p in paths]
        cache.short_side = short_side
        cache.max_pixels = max_pixels
        cache.reused = False
        cache.file = Path(disk_dir) / f"decoded-{cache._key()}.u8"
        if not cache.paths or not cache._reuse():
            return None
        cache._log("reused")
        return cache

    # ------------------------------------------------------------------ building
    def _key(self) -> str:
        h = hashlib.sha256(f"{_INDEX_VERSION}:{self.short_side}:{self.max_pixels}".encode())
        for p in self.paths:
            h.update(b"\0" + str(p.resolve()).encode())
        return h.hexdigest()[:20]

    def _decode(self, path: Path) -> tuple[torch.Tensor | None, tuple[int, int]]:
        try:
            stamp = _stamp(path)
            return decode_resized(path, self.short_side, max_pixels=self.max_pixels), stamp
        except Exception as e:  # noqa: BLE001 - reported by the dataset on access
            _logger.debug("not caching %s: %s", path, e)
            return None, (-1, -1)

    def _build(self, limit: int, *, on_disk: bool) -> None:
        n = len(self.paths)
        self.limit = limit
        offsets = np.full(n, -1, dtype=np.int64)
        shapes = np.zeros((n, 3), dtype=np.int64)
        stamps = [(-1, -1)] * n
        chunks: list[torch.Tensor] = []
        used = 0
        tmp = self.file.with_suffix(".u8.tmp") if on_disk and self.file else None
        sink = tmp.open("wb") if tmp is not None else None
        try:
            for i, (image, stamp) in _decoded(self.paths, self._decode, usable_cpus()):
                if image is None:
                    continue
                size = image.numel()
                if used + size > limit:
                    break  # full: the rest stream from disk, never decoded here
                offsets[i], shapes[i], stamps[i] = used, image.shape, stamp
                if sink is not None:
                    sink.write(image.contiguous().numpy().tobytes())
                else:
                    chunks.append(image.reshape(-1))
                used += size
        finally:
            if sink is not None:
                sink.close()
        self.nbytes = used
        self._offsets = torch.from_numpy(offsets)
        self._shapes = torch.from_numpy(shapes)
        self._stamps = stamps
        if tmp is not None and self.file is not None:
            os.replace(tmp, self.file)
            atomic_write_json(self._index_path(), self._index())
            self._data = self._map()
        else:
            self._data = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
            self._data.share_memory_()
        self.cached = int((self._offsets >= 0).sum())

    def _index_path(self) -> Path:
        assert self.file is not None
        return self.file.with_suffix(".json")

    def _index(self) -> dict[str, Any]:
        return {
            "version": _INDEX_VERSION,
            "short_side": self.short_side,
            "n": len(self.paths),
            "nbytes": self.nbytes,
            "limit": self.limit,
            "offsets": self._offsets.tolist(),
            "shapes": self._shapes.tolist(),
            "stamps": [list(s) for s in self._stamps],
        }

    def _reuse(self) -> bool:
        """Map the disk cache an earlier run wrote for exactly these files, if any."""
        assert self.file is not None
        try:
            index = json.loads(self._index_path().read_text(encoding="utf-8"))
            ok = (
                index["version"] == _INDEX_VERSION
                and index["n"] == len(self.paths)
                and index["short_side"] == self.short_side
                and self.file.stat().st_size == index["nbytes"]
            )
            if not ok:
                return False
            self.nbytes, self.limit = int(index["nbytes"]), int(index["limit"])
            self._offsets = torch.tensor(index["offsets"], dtype=torch.int64)
            self._shapes = torch.tensor(index["shapes"], dtype=torch.int64).reshape(-1, 3)
            self._stamps = [(int(a), int(b)) for a, b in index["stamps"]]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self._data = self._map()
        self.cached = int((self._offsets >= 0).sum())
        self.reused = True
        return True

    def _map(self) -> torch.Tensor:
        """The disk cache, memory-mapped copy-on-write (pages load on first read)."""
        assert self.file is not None
        if self.nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)
        return torch.from_numpy(np.memmap(self.file, dtype=np.uint8, mode="c"))

    def _log(self, how: str) -> None:
        where = f"on disk ({self.file})" if self.file is not None else "in RAM"
        _logger.info(
            "decoded-image cache %s %s: %d of %d images, %.0f MiB (limit %.0f MiB)",
            how,
            where,
            self.cached,
            len(self.paths),
            self.nbytes / 2**20,
            self.limit / 2**20,
        )

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # A mapped file travels by name (a spawned worker maps it again), never by value.
        state = dict(self.__dict__)
        if self.file is not None:
            state["_data"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.file is not None:
            self._data = self._map()

    # ------------------------------------------------------------------ reading
    @property
    def complete(self) -> bool:
        """Every image is cached: loader workers only copy pixels, never decode."""
        return self.cached == len(self.paths)

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
