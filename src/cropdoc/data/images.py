"""Opening images: the one place in cropdoc that decodes an image file.

Every image a user hands us goes through :func:`open_rgb` (or :func:`load_tensor`, its fast
twin for JPEG), so every caller gets the same answers to the awkward questions: a file
that declares a gigantic size is refused *before* decoding; a truncated file is an error,
never a half-grey picture; EXIF orientation is applied; and every PIL mode becomes 8-bit
RGB with alpha composited onto white and 16/32-bit data scaled, not clipped. HEIC/HEIF,
the default format of phone cameras, is read through ``pillow-heif`` (registered with PIL
on the first open, so importing this module stays cheap).
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "BadImageError",
    "check_image",
    "is_supported",
    "load_tensor",
    "open_rgb",
    "to_rgb",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
SUPPORTED_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif"}
)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_UINT16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# What PIL raises for broken image data; anything else is a bug and must propagate.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)
# PIL's bomb warning goes through the process-global ``warnings`` filters; changing them is
# not thread-safe, so the (cheap, header-only) open is serialised while they are changed.
_OPEN_LOCK = threading.Lock()
_FIX_HINT = "fix, re-export or remove the file, then try again"


class BadImageError(DataError):
    """One image is unusable.

    ``reason`` is short and stable (``"empty file"``, ``"not an image"``,
    ``"truncated or corrupt image: ..."``, ``"too many pixels: ..."``) so scan reports can
    group by it; the message adds which file and what to do.
    """

    def __init__(self, reason: str, source: str, hint: str = _FIX_HINT) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}; {hint}")


def is_supported(path: Path | str) -> bool:
    """Whether ``path`` has an extension cropdoc reads (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def open_rgb(source: Path | str | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and normalise an image to 8-bit RGB.

    Args:
        source: a file path, or the raw bytes of an image file (e.g. an upload).
        max_pixels: refuse images whose declared width x height exceeds this, before
            decoding, so a tiny file cannot make us allocate gigabytes.

    Returns:
        A loaded RGB image, EXIF orientation applied.

    Raises:
        BadImageError: (a :class:`DataError`) with a short ``reason``.
    """
    data, label = _read_source(source)
    return _decode(data, label, max_pixels)


def check_image(
    source: Path | str | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Validate an image exactly as training will read it; return its (width, height).

    The size is after EXIF orientation, i.e. what the model sees.
    """
    return open_rgb(source, max_pixels=max_pixels).size


def load_tensor(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image file to a uint8 CHW RGB tensor.

    JPEGs (grayscale or RGB) are decoded by torchvision (libjpeg-turbo, no PIL round trip),
    which is what the data loaders spend most of their time on; everything else, and any
    JPEG torchvision rejects, goes through :func:`open_rgb`, so errors are the same.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data, label = _read_source(path)
    with _open_header(data, label) as img:
        _check_pixels(img.size, max_pixels, label)
        fast = img.format == "JPEG" and img.mode in ("L", "RGB")
    if fast:
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError as e:
            logger.debug("torchvision could not decode %s (%s); falling back to PIL", label, e)
    rgb = np.array(_decode(data, label, max_pixels), dtype=np.uint8)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit RGB.

    PIL's own ``convert("RGB")`` clips 16/32-bit values at 255 (a 16-bit photo turns
    white) and drops alpha onto black; here integer data is scaled to 8 bits and anything
    transparent is composited onto white, the background of most leaf photos.

    - ``I;16*``: value >> 8.
    - ``I`` (int32): negatives clip to 0; if the maximum fits in 16 bits the data is treated
      as 16-bit (PIL reads many 16-bit files as ``I``), else as 31-bit (value >> 23).
    - ``F``: data within [0, 1] is scaled by 255; otherwise it is taken as 0-255 and clipped.

    Raises:
        BadImageError: the mode cannot be converted (e.g. ``LAB`` without a colour profile).
    """
    if img.mode in _UINT16_MODES:
        arr = np.asarray(img).astype(np.uint16)
        img = Image.fromarray((arr >> 8).astype(np.uint8), mode="L")
    elif img.mode == "I":
        arr = np.clip(np.asarray(img).astype(np.int64), 0, None)
        shift = 8 if arr.size == 0 or arr.max() <= 0xFFFF else 23
        img = Image.fromarray((arr >> shift).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img).astype(np.float64))
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")

    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise BadImageError(f"unsupported image mode '{img.mode}'", "image") from e


def _read_source(source: Path | str | bytes) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        data, label = bytes(source), "image data"
    else:
        path = Path(source)
        label = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise BadImageError("file not found", label, "check the path") from e
        except OSError as e:
            reason = f"cannot read file: {e.strerror or e}"
            raise BadImageError(reason, label, "check the path and permissions") from e
    if not data:
        raise BadImageError("empty file", label)
    return data, label


@functools.cache
def _register_heif() -> bool:
    """Teach PIL to open HEIC/HEIF (once per process); False when pillow-heif is missing."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        logger.debug("pillow-heif is not installed; HEIC/HEIF photos cannot be read")
        return False
    register_heif_opener()
    return True


def _open_header(data: bytes, label: str) -> Image.Image:
    """Identify the format and read the header only (no pixel decoding yet)."""
    _register_heif()
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Our own max_pixels check (below) is the one that decides; PIL's warning would
            # only leak to users as noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        hint = f"the file starts with {data[:16]!r}, not a known image format; {_FIX_HINT}"
        raise BadImageError("not an image", label, hint) from e
    except Image.DecompressionBombError as e:
        reason = f"too many pixels: {e} (possible decompression bomb)"
        raise BadImageError(reason, label) from e
    except _DECODE_ERRORS as e:
        raise BadImageError(f"truncated or corrupt image: {e}", label) from e


def _check_pixels(size: tuple[int, int], max_pixels: int, label: str) -> None:
    width, height = size
    if width * height > max_pixels:
        reason = f"too many pixels: {width}x{height} > {max_pixels} (possible decompression bomb)"
        raise BadImageError(reason, label, "raise max_pixels if the image is genuine")


def _decode(data: bytes, label: str, max_pixels: int) -> Image.Image:
    with _open_header(data, label) as img:
        _check_pixels(img.size, max_pixels, label)
        try:
            if img.format == "PNG":
                # load() can miss a flipped byte that still inflates; verify() checks CRCs.
                with _open_header(data, label) as fresh:
                    fresh.verify()
            img.load()
            oriented = ImageOps.exif_transpose(img)
        except Image.DecompressionBombError as e:
            raise BadImageError(f"too many pixels: {e}", label) from e
        except _DECODE_ERRORS as e:
            raise BadImageError(f"truncated or corrupt image: {e}", label) from e
        try:
            rgb = to_rgb(oriented)
        except BadImageError as e:
            raise BadImageError(e.reason, label) from e
        # Never hand out the object the ``with`` is about to close.
        return rgb.copy() if rgb is img else rgb
