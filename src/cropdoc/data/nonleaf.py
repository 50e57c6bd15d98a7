"""Generated photos of things that are not a leaf: the far out-of-distribution test set.

A field model gets photos of soil, sky, hands, walls, labels, grass and blur; it should
say "not recognised" instead of diagnosing them. No such set ships with the data, so this
module draws one: textures, scenes, objects, skin, text and noise, each kind with its own
random layout and colours. Output is a pure function of ``(kind, index, size, seed)``
(``numpy.random.default_rng``, PIL drawing, fixed JPEG settings), so a seed gives the same
files every time.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["NONLEAF_KINDS", "generate_nonleaf", "nonleaf_image"]

_JPEG_QUALITY = 90
Painter = Callable[[np.random.Generator, int], Image.Image]


def _fractal(rng: np.random.Generator, size: int, octaves: int = 5, base: int = 4) -> np.ndarray:
    """Smooth multi-scale noise in [0, 1], ``(size, size)``."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = base * 2**o
        layer = Image.fromarray((rng.random((n, n)) * 255).astype(np.uint8))
        out += amp * np.asarray(layer.resize((size, size), Image.BICUBIC), np.float32) / 255
        total += amp
        amp *= 0.55
    out /= total
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def _tint(gray: np.ndarray, low: np.ndarray, high: np.ndarray) -> Image.Image:
    rgb = low[None, None, :] + gray[..., None] * (high - low)[None, None, :]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _noise(rng: np.random.Generator, size: int) -> Image.Image:
    if rng.random() < 0.5:
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    g = rng.normal(128, rng.uniform(20, 70), (size, size, 1)) + rng.normal(0, 30, (1, 1, 3))
    return Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))


def _sky(rng: np.random.Generator, size: int) -> Image.Image:
    y = np.linspace(0, 1, size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    top = np.array([rng.uniform(30, 90), rng.uniform(90, 150), rng.uniform(170, 240)])
    bottom = np.array([rng.uniform(150, 210), rng.uniform(190, 230), rng.uniform(220, 255)])
    sky = top[None, None, :] + y[..., None] * (bottom - top)[None, None, :]
    clouds = np.clip(_fractal(rng, size, base=3) * 1.6 - rng.uniform(0.5, 0.9), 0, 1)
    rgb = sky * (1 - clouds[..., None]) + 245 * clouds[..., None]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _soil(rng: np.random.Generator, size: int) -> Image.Image:
    g = 0.6 * _fractal(rng, size, base=8) + 0.4 * rng.random((size, size)).astype(np.float32)
    low = np.array([rng.uniform(40, 80), rng.uniform(25, 50), rng.uniform(10, 30)])
    high = np.array([rng.uniform(140, 190), rng.uniform(100, 140), rng.uniform(60, 100)])
    img = _tint(g, low, high)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 30))):  # pebbles
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, size / 20)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_colour(rng, 90, 200))
    return img


def _skin(rng: np.random.Generator, size: int) -> Image.Image:
    base = np.array([rng.uniform(120, 240), rng.uniform(80, 190), rng.uniform(60, 160)])
    g = _fractal(rng, size, base=2, octaves=3)
    img = _tint(g, base * 0.75, np.minimum(base * 1.1, 255))
    if rng.random() < 0.6:  # a hand or face on a background
        bg = Image.new("RGB", (size, size), _colour(rng, 20, 230))
        mask = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(mask)
        cx, cy = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size
        d.ellipse((cx - size * 0.3, cy - size * 0.38, cx + size * 0.3, cy + size * 0.38), 255)
        for i in range(int(rng.integers(0, 5))):  # fingers
            x = cx - size * 0.25 + i * size * 0.12
            d.rounded_rectangle((x, cy - size * 0.7, x + size * 0.09, cy), size // 20, 255)
        img = Image.composite(img, bg, mask.filter(ImageFilter.GaussianBlur(size / 60)))
    return img


def _text(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng, 200, 256))
    draw = ImageDraw.Draw(img)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789"
    ink = _colour(rng, 0, 90)
    y = rng.uniform(2, size / 8)
    while y < size - 8:
        line = "".join(rng.choice(list(letters), int(rng.integers(8, 40))))
        draw.text((rng.uniform(2, size / 6), y), line, fill=ink)
        y += rng.uniform(10, 18)
    return img


def _shapes(rng: np.random.Generator, size: int) -> Image.Image:
    img = _tint(
        _fractal(rng, size, base=2, octaves=2),
        np.array(_colour(rng, 60, 200)),
        np.array(_colour(rng, 100, 256)),
    )
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 9))):
        x, y = rng.uniform(0, size, 2)
        w, h = rng.uniform(size / 10, size / 2.5, 2)
        box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        fill = _colour(rng)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.rectangle(box, fill=fill, outline=_colour(rng, 0, 80))
        elif kind == 1:
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([tuple(rng.uniform(0, size, 2)) for _ in range(3)], fill=fill)
    return img


def _stripes(rng: np.random.Generator, size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, size / 4)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    if rng.random() < 0.5:  # checkerboard
        wave = wave * np.sin((xx * -np.sin(angle) + yy * np.cos(angle)) * 2 * np.pi / period)
    g = (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2
    return _tint(g, np.array(_colour(rng)), np.array(_colour(rng)))


def _bricks(rng: np.random.Generator, size: int) -> Image.Image:
    mortar = _colour(rng, 150, 220)
    img = Image.new("RGB", (size, size), mortar)
    draw = ImageDraw.Draw(img)
    h = rng.uniform(size / 14, size / 6)
    w = h * rng.uniform(1.8, 3.0)
    brick = np.array([rng.uniform(120, 200), rng.uniform(40, 90), rng.uniform(30, 70)])
    for row in range(int(size / h) + 1):
        off = (row % 2) * w / 2
        for col in range(-1, int(size / w) + 2):
            c = tuple(int(v) for v in np.clip(brick + rng.normal(0, 15, 3), 0, 255))
            x0, y0 = col * w - off, row * h
            draw.rectangle((x0 + 2, y0 + 2, x0 + w - 2, y0 + h - 2), fill=c)
    return img


def _wood(rng: np.random.Generator, size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    warp = _fractal(rng, size, base=3, octaves=3) * rng.uniform(2, 6)
    rings = (np.sin((xx * rng.uniform(10, 40) + warp) * np.pi) + 1) / 2
    low = np.array([rng.uniform(80, 130), rng.uniform(50, 80), rng.uniform(20, 40)])
    return _tint(rings * 0.7 + 0.3 * yy, low, low * 1.7)


def _water(rng: np.random.Generator, size: int) -> Image.Image:
    g = _fractal(rng, size, base=6, octaves=4) ** 2
    low = np.array([rng.uniform(0, 40), rng.uniform(40, 100), rng.uniform(80, 150)])
    return _tint(g, low, np.array([200.0, 230.0, 250.0]))


def _room(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng, 150, 240))
    draw = ImageDraw.Draw(img)
    floor = rng.uniform(0.55, 0.8) * size
    draw.rectangle((0, floor, size, size), fill=_colour(rng, 60, 160))
    for _ in range(int(rng.integers(1, 4))):  # windows, doors, furniture
        x, w = rng.uniform(0, size * 0.8), rng.uniform(size * 0.1, size * 0.35)
        top, bottom = rng.uniform(size * 0.1, floor * 0.8), rng.uniform(floor * 0.85, size)
        draw.rectangle((x, top, x + w, bottom), fill=_colour(rng), outline=_colour(rng, 0, 60))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def _blur(rng: np.random.Generator, size: int) -> Image.Image:
    """Out-of-focus blobs, a dark lens-cap frame or an overexposed one."""
    kind = rng.random()
    if kind < 0.25:
        return Image.fromarray(np.clip(rng.normal(12, 6, (size, size, 3)), 0, 255).astype(np.uint8))
    if kind < 0.5:
        return Image.fromarray(
            np.clip(rng.normal(245, 6, (size, size, 3)), 0, 255).astype(np.uint8)
        )
    img = _shapes(rng, size)
    return img.filter(ImageFilter.GaussianBlur(size / rng.uniform(8, 20)))


def _grass(rng: np.random.Generator, size: int) -> Image.Image:
    """A lawn: many thin blades, green but no leaf shape (the hardest kind here)."""
    img = _tint(_fractal(rng, size), np.array([20.0, 50, 10]), np.array([70.0, 120, 40]))
    draw = ImageDraw.Draw(img)
    for _ in range(int(size * rng.uniform(3, 6))):
        x, y = rng.uniform(0, size), rng.uniform(0, size * 1.2)
        length, lean = rng.uniform(size / 12, size / 4), rng.uniform(-0.4, 0.4)
        green = (int(rng.integers(30, 120)), int(rng.integers(90, 200)), int(rng.integers(10, 70)))
        draw.line((x, y, x + lean * length, y - length), fill=green, width=int(rng.integers(1, 3)))
    return img


_PAINTERS: dict[str, Painter] = {
    "noise": _noise,
    "sky": _sky,
    "soil": _soil,
    "skin": _skin,
    "text": _text,
    "objects": _shapes,
    "stripes": _stripes,
    "bricks": _bricks,
    "wood": _wood,
    "water": _water,
    "room": _room,
    "blur": _blur,
    "grass": _grass,
}
#: The kinds of non-leaf photo :func:`nonleaf_image` draws.
NONLEAF_KINDS: tuple[str, ...] = tuple(_PAINTERS)


def nonleaf_image(kind: str, index: int, *, size: int = 256, seed: int = 0) -> Image.Image:
    """Photo number ``index`` of ``kind`` (one of :data:`NONLEAF_KINDS`), RGB ``size``².

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in _PAINTERS:
        raise ValueError(f"unknown non-leaf kind {kind!r}; known: {', '.join(NONLEAF_KINDS)}")
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode()), index])
    return _PAINTERS[kind](rng, size).convert("RGB")


def generate_nonleaf(
    root: str | Path,
    *,
    per_kind: int = 10,
    size: int = 256,
    seed: int = 0,
    kinds: tuple[str, ...] = NONLEAF_KINDS,
) -> Path:
    """Write ``per_kind`` JPEGs of each kind into ``root/<kind>/<kind>_<i>.jpg``.

    Returns:
        ``root``.
    """
    root = Path(root)
    for kind in kinds:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_kind):
            image = nonleaf_image(kind, i, size=size, seed=seed)
            image.save(folder / f"{kind}_{i:03d}.jpg", quality=_JPEG_QUALITY)
    return root
