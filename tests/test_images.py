"""cropdoc.data.images: strict decoding, EXIF, and correct conversion of every mode."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cropdoc.data.images import (
    SUPPORTED_EXTENSIONS,
    BadImageError,
    check_image,
    is_supported,
    load_tensor,
    open_rgb,
    to_rgb,
)
from cropdoc.errors import DataError

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)


def photo(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB array (gradients plus mild noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header then claims ``width`` x ``height``."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    start = data.index(b"IHDR")
    ihdr = bytearray(data[start : start + 17])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[start : start + 17] = ihdr
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def bad_crc_png() -> bytes:
    data = bytearray(png_bytes(Image.fromarray(photo(32, 32))))
    data[data.index(b"IDAT") + 20] ^= 0xFF
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """40x20 white image, red block at the stored top-left, EXIF Orientation=6."""
    arr = np.full((20, 40, 3), 255, np.uint8)
    arr[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(arr, exif=exif.tobytes())


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"just some notes, not a photo\n", "not an image"),
        ("page.png", b"<!DOCTYPE html><html><body>404</body></html>", "not an image"),
    ],
)
def test_bad_content_reasons(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(BadImageError) as info:
        open_rgb(path)
    assert info.value.reason == reason
    assert isinstance(info.value, DataError)
    assert str(path) in str(info.value)


def test_truncated_jpeg_fails(tmp_path: Path) -> None:
    data = jpeg_bytes(photo(128, 128))
    path = write(tmp_path, "cut.jpg", data[: len(data) * 2 // 3])
    with pytest.raises(BadImageError) as info:
        open_rgb(path)
    assert info.value.reason.startswith("truncated or corrupt image: ")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        load_tensor(path)  # the torchvision path must not accept it either


def test_png_with_bad_crc_fails(tmp_path: Path) -> None:
    with pytest.raises(BadImageError) as info:
        open_rgb(write(tmp_path, "crc.png", bad_crc_png()))
    assert info.value.reason.startswith("truncated or corrupt image: ")


def test_declared_size_is_checked_before_decoding(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.png", bomb_png(20000, 20000))
    with pytest.raises(BadImageError) as info:
        open_rgb(path)
    assert info.value.reason.startswith("too many pixels: ")
    with pytest.raises(BadImageError, match="too many pixels"):
        load_tensor(path)


def test_pil_bomb_warning_does_not_leak() -> None:
    # 10000x10000 is over PIL's warning threshold but under its hard error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadImageError) as info:
            open_rgb(bomb_png(10000, 10000))
    assert info.value.reason == (
        "too many pixels: 10000x10000 > 40000000 (possible decompression bomb)"
    )


def test_small_max_pixels(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.jpg", jpeg_bytes(photo(64, 48)))
    assert check_image(path, max_pixels=64 * 48) == (64, 48)
    with pytest.raises(BadImageError, match=r"too many pixels: 64x48 > 3071"):
        check_image(path, max_pixels=64 * 48 - 1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        open_rgb(tmp_path / "nope.jpg")


def test_supported_extensions_case_insensitive() -> None:
    assert ".jpg" in SUPPORTED_EXTENSIONS
    assert is_supported("a/B.JPG") and is_supported("x.TiFF") and is_supported("y.webp")
    assert not is_supported("notes.txt") and not is_supported("anim.gif")


# ---------------------------------------------------------------- modes


def test_grayscale_l(tmp_path: Path) -> None:
    arr = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    img = open_rgb(write(tmp_path, "g.png", png_bytes(Image.fromarray(arr, "L"))))
    assert img.mode == "RGB"
    out = np.asarray(img)
    assert (out[..., 0] == arr).all() and (out[..., 1] == arr).all() and (out[..., 2] == arr).all()


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[0, 0, 3] = 255  # opaque
    rgba[0, 1, 3] = 0  # transparent -> white
    rgba[0, 2, 3] = 128  # half -> pink
    out = np.asarray(open_rgb(png_bytes(Image.fromarray(rgba, "RGBA")))).astype(int)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert abs(out[0, 2, 1] - 127) <= 2 and out[0, 2, 0] == 255


def test_la_composited_on_white() -> None:
    la = Image.merge("LA", (Image.new("L", (2, 2), 0), Image.new("L", (2, 2), 0)))
    assert tuple(np.asarray(open_rgb(png_bytes(la)))[0, 0]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0: red (transparent), 1: blue
    img.putpixel((1, 1), 1)
    path = write(tmp_path, "p.png", png_bytes(img, transparency=0))
    out = np.asarray(open_rgb(path))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (0, 0, 255)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    arr = photo(64, 48)
    path = write(tmp_path, "cmyk.jpg", b"")
    Image.fromarray(arr).convert("CMYK").save(path, "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (64, 48)
    assert np.abs(np.asarray(out).astype(int) - arr).mean() < 6
    tensor = load_tensor(path)
    assert torch.equal(tensor, torch.from_numpy(np.array(out)).permute(2, 0, 1))


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 0x0100, 0x1234, 0x8000, 0xFFFF, 200]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    out = np.asarray(open_rgb(path))[..., 0]
    assert out.tolist() == [[0, 1, 0x12, 128, 255, 0]]
    # PIL's naive conversion would have made everything above 255 white.
    assert np.asarray(Image.open(path).convert("RGB"))[0, 3, 0] == 255


@pytest.mark.parametrize("dtype", [">u2", "<u2"])
def test_to_rgb_16bit_byte_orders(dtype: str) -> None:
    values = np.array([[0x0100, 0xABCD, 0xFFFF]], dtype=dtype)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    assert np.asarray(to_rgb(img))[..., 2].tolist() == [[1, 0xAB, 255]]


def test_to_rgb_int32_and_float() -> None:
    as16 = Image.fromarray(np.array([[-5, 0x8000, 0xFFFF]], dtype=np.int32))
    assert as16.mode == "I"
    assert np.asarray(to_rgb(as16))[..., 0].tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[0, 2**30, 2**31 - 1]], dtype=np.int32))
    assert np.asarray(to_rgb(wide))[..., 0].tolist() == [[0, 128, 255]]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert np.asarray(to_rgb(unit))[..., 0].tolist() == [[0, 128, 255]]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    path = write(tmp_path, "rot.jpg", exif_rotated_jpeg())
    img = open_rgb(path)
    # Orientation 6 = rotate 90 degrees clockwise for display: the stored top-left
    # corner lands at the top-right, width and height swap.
    assert img.size == (20, 40)
    assert check_image(path) == (20, 40)
    out = np.asarray(img).astype(int)
    assert out[3, 16, 0] > 200 and out[3, 16, 1] < 60  # red marker, top-right
    assert out[3, 3].min() > 200  # top-left is white
    tensor = load_tensor(path)
    assert tuple(tensor.shape) == (3, 40, 20)
    assert tensor[0, 3, 16] > 200 and tensor[1, 3, 16] < 60


# ---------------------------------------------------------------- tensors


def test_load_tensor_matches_open_rgb_on_jpeg(tmp_path: Path) -> None:
    path = write(tmp_path, "photo.JPG", jpeg_bytes(photo(96, 64, seed=3)))
    tensor = load_tensor(path)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 64, 96)
    reference = torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1)
    diff = (tensor.int() - reference.int()).abs()
    assert diff.float().mean() <= 2 and diff.max() <= 16


def test_load_tensor_non_jpeg_and_grayscale_jpeg(tmp_path: Path) -> None:
    png = write(tmp_path, "x.png", png_bytes(Image.fromarray(photo(16, 8))))
    assert torch.equal(load_tensor(png), torch.from_numpy(photo(16, 8)).permute(2, 0, 1))
    gray = tmp_path / "g.jpg"
    Image.fromarray(photo(16, 8)[..., 0]).save(gray, quality=95)
    tensor = load_tensor(gray)
    assert tuple(tensor.shape) == (3, 8, 16)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])


def test_open_rgb_accepts_bytes() -> None:
    img = open_rgb(jpeg_bytes(photo(10, 6)))
    assert img.mode == "RGB" and img.size == (10, 6)
    with pytest.raises(BadImageError, match="empty file"):
        open_rgb(b"")
