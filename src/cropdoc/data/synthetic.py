"""Generated leaf photos for ``cropdoc demo`` and tests: no network, no shipped images.

Each class is a crop (leaf shape) plus a disease (how lesions are drawn). The images are
meant to be *learnable but not trivial*: leaf hue, lighting, background and lesion
severity vary, some diseased leaves carry only a few small lesions, some healthy leaves
have blemishes, leaf-mould patches and early-blight halos are both yellowish, and
``Tomato___Early_blight`` and ``Potato___Early_blight`` differ only in leaf shape. So a
small CNN has to look at shapes and textures, not just the average colour.

Like PlantVillage, one physical leaf is sometimes photographed two or three times (another
rotation, position, scale and light). Files are named ``<uuid>___SYN_C<cc>L<lll> Day <n>.jpg``
(class index, leaf number, photo number), following PlantVillage's own
``<uuid>___GHLB_PS Leaf 2.2 Day 3`` convention for one leaf shot repeatedly: the leaf id is
the part between ``___`` and `` Day``, which the grouped split (``data/split.py``) reads so the
photos of one leaf never straddle train and test. A plain trailing `` <n>`` would not do:
in PlantVillage that number is a unique photo id, not a repeat counter.

Output is a pure function of the parameters: every random draw comes from
``numpy.random.default_rng`` seeded with ``(seed, crc32(class name))``, drawing is done with
PIL, and JPEGs are written with fixed settings and no metadata, so the same seed gives
byte-identical files (with the same Pillow/libjpeg build).
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import shutil
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError, DataError

__all__ = [
    "DEMO_CLASSES",
    "MARKER_NAME",
    "SUPPORTED_CROPS",
    "SUPPORTED_DISEASES",
    "generate_dataset",
]

_log = logging.getLogger(__name__)

DEMO_CLASSES: tuple[str, ...] = (
    "Tomato___healthy",
    "Tomato___Early_blight",
    "Tomato___Late_blight",
    "Tomato___Septoria_leaf_spot",
    "Tomato___Leaf_Mold",
    "Potato___Early_blight",
)
MARKER_NAME = ".complete"
_GENERATOR_VERSION = 2  # bump whenever the drawing changes, so old demo folders are redone
_JPEG_QUALITY = 90
_SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing of PIL's hard edges

ProgressFn = Callable[[int, int], None]
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class _LeafShape:
    """Ranges for the outline ``w(t) = W * sin(pi * t**peak) ** tip`` (t: base 0 to tip 1)."""

    width_ratio: tuple[float, float]  # max width / length
    peak: tuple[float, float]  # < 1 moves the widest point towards the base
    tip: tuple[float, float]  # < 1 gives a blunter, rounder tip
    serration: float  # relative depth of marginal teeth


_SHAPES: dict[str, _LeafShape] = {
    "Tomato": _LeafShape((0.40, 0.54), (0.62, 0.85), (0.80, 1.05), 0.045),
    "Potato": _LeafShape((0.50, 0.66), (0.80, 1.00), (0.55, 0.75), 0.0),
}
SUPPORTED_CROPS: tuple[str, ...] = tuple(_SHAPES)
SUPPORTED_DISEASES: tuple[str, ...] = (
    "healthy",
    "Early_blight",
    "Late_blight",
    "Septoria_leaf_spot",
    "Leaf_Mold",
)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Leaf:
    """A leaf outline on a square canvas, pointing up, centred."""

    canvas: int
    length: float
    t: np.ndarray  # samples along the midrib, 0 = base, 1 = tip
    half_width: np.ndarray  # w(t), pixels

    def point(self, t: float, s: float) -> tuple[float, float]:
        """Canvas point at fraction ``t`` along the midrib and ``s`` in [-1, 1] across it."""
        w = float(np.interp(t, self.t, self.half_width))
        c = self.canvas / 2
        return c + s * w, c + self.length / 2 - t * self.length

    def outline(self) -> list[tuple[float, float]]:
        right = [self.point(t, 1.0) for t in self.t]
        left = [self.point(t, -1.0) for t in self.t[::-1]]
        return right + left


def _make_leaf(rng: np.random.Generator, shape: _LeafShape, canvas: int) -> _Leaf:
    length = canvas * rng.uniform(0.70, 0.94)
    width = length * rng.uniform(*shape.width_ratio) / 2
    t = np.linspace(0.0, 1.0, 90)
    w = width * np.sin(np.pi * t ** rng.uniform(*shape.peak)) ** rng.uniform(*shape.tip)
    if shape.serration:
        teeth = rng.uniform(9, 14)
        w *= 1 + shape.serration * np.abs(np.sin(np.pi * teeth * t))
    # A slow wobble so two leaves of one class never share an outline.
    w *= 1 + 0.04 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 2 * np.pi))
    return _Leaf(canvas, length, t, np.maximum(w, 0.0))


def _blob(
    rng: np.random.Generator, cx: float, cy: float, r: float, rough: float, n: int = 28
) -> list[tuple[float, float]]:
    """An irregular closed outline around (cx, cy): a circle with random low harmonics."""
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 6):
        rad += rough / k * np.sin(k * ang + rng.uniform(0, 2 * np.pi))
    rad *= r
    return [(cx + a * math.cos(b), cy + a * math.sin(b)) for a, b in zip(rad, ang, strict=True)]


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    return cx - rx, cy - ry, cx + rx, cy + ry


# --------------------------------------------------------------------------- colour


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _jitter(rng: np.random.Generator, colour: Colour, amount: int) -> Colour:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _soft(
    img: Image.Image,
    colour: Colour,
    draw_fn: Callable[[ImageDraw.ImageDraw], None],
    blur: float,
    opacity: float,
) -> None:
    """Blend ``colour`` into ``img`` through a blurred mask drawn by ``draw_fn``."""
    mask = Image.new("L", img.size, 0)
    draw_fn(ImageDraw.Draw(mask))
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    if opacity < 1:
        mask = mask.point(lambda p: round(p * opacity))
    img.paste(colour, mask=mask)


# --------------------------------------------------------------------------- lesions


def _random_spot(
    rng: np.random.Generator, leaf: _Leaf, edge_bias: bool = False
) -> tuple[float, float]:
    """A point inside the leaf; ``edge_bias`` favours the margin, where late blight starts."""
    t = rng.uniform(0.08, 0.95)
    s = rng.uniform(0.35, 0.95) * rng.choice([-1, 1]) if edge_bias else rng.uniform(-0.9, 0.9)
    return leaf.point(t, s)


def _draw_healthy(img: Image.Image, leaf: _Leaf, rng: np.random.Generator, severity: float) -> None:
    # Healthy leaves are not spotless: the odd speck or faint pale patch keeps them from being
    # "the class without any marks", and overlaps with mild leaf mould.
    if rng.random() < 0.35:
        for _ in range(rng.integers(1, 4)):
            x, y = _random_spot(rng, leaf)
            r = leaf.length * rng.uniform(0.004, 0.010)
            colour = _jitter(rng, (150, 135, 95), 20)
            ImageDraw.Draw(img).ellipse(_ellipse(x, y, r, r), fill=colour)
    if rng.random() < 0.2:
        x, y = _random_spot(rng, leaf)
        r = leaf.length * rng.uniform(0.05, 0.10)
        _soft(
            img, (185, 190, 90), lambda d: d.ellipse(_ellipse(x, y, r, r), fill=255), r * 0.5, 0.3
        )


def _draw_early_blight(
    img: Image.Image, leaf: _Leaf, rng: np.random.Generator, severity: float
) -> None:
    # Brown spots with darker concentric rings ("target board"), each in a yellow halo.
    n = 1 + int(round(severity * rng.uniform(4, 10)))
    spots = []
    for _ in range(n):
        x, y = _random_spot(rng, leaf)
        r = leaf.length * rng.uniform(0.022, 0.06) * (0.6 + 0.7 * severity)
        spots.append((x, y, r, r * rng.uniform(0.75, 1.2)))
    halo = _jitter(rng, (200, 190, 70), 18)

    def halos(d: ImageDraw.ImageDraw) -> None:
        for x, y, rx, ry in spots:
            d.ellipse(_ellipse(x, y, rx * 1.6, ry * 1.6), fill=255)

    _soft(img, halo, halos, leaf.length * 0.012, rng.uniform(0.45, 0.8))
    draw = ImageDraw.Draw(img)
    width = max(1, round(leaf.canvas / 110))
    for x, y, rx, ry in spots:
        fill = _jitter(rng, (120, 82, 45), 18)
        ring = tuple(max(0, c - 45) for c in fill)
        draw.ellipse(_ellipse(x, y, rx, ry), fill=fill, outline=ring, width=width)
        for k in (0.68, 0.38):
            if rx * k > 1.5:
                draw.ellipse(_ellipse(x, y, rx * k, ry * k), outline=ring, width=width)


def _draw_late_blight(
    img: Image.Image, leaf: _Leaf, rng: np.random.Generator, severity: float
) -> None:
    # Large, dark, irregular water-soaked blotches, often from the margin, soft pale rim.
    n = 1 + int(round(severity * rng.uniform(1, 3)))
    for _ in range(n):
        x, y = _random_spot(rng, leaf, edge_bias=True)
        r = leaf.length * rng.uniform(0.07, 0.17) * (0.55 + 0.6 * severity)
        outline = _blob(rng, x, y, r, rough=0.45)
        rim = _blob(rng, x, y, r * 1.25, rough=0.4)
        _soft(
            img,
            _jitter(rng, (105, 115, 75), 15),
            lambda d, p=rim: d.polygon(p, fill=255),
            r * 0.25,
            0.75,
        )
        dark = _jitter(rng, (72, 68, 48), 16)
        _soft(
            img,
            dark,
            lambda d, p=outline: d.polygon(p, fill=255),
            r * 0.08,
            rng.uniform(0.75, 0.95),
        )


def _draw_septoria(
    img: Image.Image, leaf: _Leaf, rng: np.random.Generator, severity: float
) -> None:
    # Many small round spots: dark brown margin, grey-tan centre.
    n = 5 + int(round(severity * rng.uniform(15, 40)))
    draw = ImageDraw.Draw(img)
    for _ in range(n):
        x, y = _random_spot(rng, leaf)
        r = leaf.length * rng.uniform(0.008, 0.02)
        edge = _jitter(rng, (85, 55, 38), 15)
        centre = _jitter(rng, (170, 160, 140), 18)
        draw.ellipse(_ellipse(x, y, r, r), fill=edge)
        draw.ellipse(_ellipse(x, y, r * 0.55, r * 0.55), fill=centre)


def _draw_leaf_mold(
    img: Image.Image, leaf: _Leaf, rng: np.random.Generator, severity: float
) -> None:
    # Diffuse pale-yellow patches with no sharp edge; sometimes olive fuzz in the middle.
    n = 2 + int(round(severity * rng.uniform(2, 6)))
    for _ in range(n):
        x, y = _random_spot(rng, leaf)
        r = leaf.length * rng.uniform(0.05, 0.12)
        p = _blob(rng, x, y, r, rough=0.35)
        colour = _jitter(rng, (200, 195, 85), 20)
        _soft(img, colour, lambda d, p=p: d.polygon(p, fill=255), r * 0.45, rng.uniform(0.5, 0.9))
        if severity > 0.5 and rng.random() < 0.5:
            q = _blob(rng, x, y, r * 0.45, rough=0.3)
            _soft(
                img,
                _jitter(rng, (120, 115, 60), 12),
                lambda d, q=q: d.polygon(q, fill=255),
                r * 0.2,
                0.55,
            )


_DrawFn = Callable[[Image.Image, _Leaf, np.random.Generator, float], None]
_DISEASES: dict[str, _DrawFn] = {
    "healthy": _draw_healthy,
    "Early_blight": _draw_early_blight,
    "Late_blight": _draw_late_blight,
    "Septoria_leaf_spot": _draw_septoria,
    "Leaf_Mold": _draw_leaf_mold,
}


# --------------------------------------------------------------------------- rendering


def _render_leaf(
    rng: np.random.Generator, crop: str, disease: str, canvas: int
) -> tuple[Image.Image, Image.Image, Colour]:
    """Draw one physical leaf (RGB, mask, base colour); its photos reuse it."""
    leaf = _make_leaf(rng, _SHAPES[crop], canvas)
    base = _hsv(rng.uniform(0.20, 0.34), rng.uniform(0.42, 0.80), rng.uniform(0.36, 0.66))
    # Fill the whole canvas with the leaf colour so resampling at the border has no dark fringe.
    img = Image.new("RGB", (canvas, canvas), base)
    draw = ImageDraw.Draw(img)
    vein = tuple(min(255, int(c * 1.18 + 18)) for c in base)
    vw = max(1, round(canvas / 150))
    for t0 in np.linspace(0.12, 0.82, int(rng.integers(5, 9))):
        for side in (-1.0, 1.0):
            draw.line(
                [leaf.point(t0, 0.0), leaf.point(min(t0 + 0.13, 0.97), 0.82 * side)],
                fill=vein,
                width=vw,
            )
    draw.line([leaf.point(-0.08, 0.0), leaf.point(0.96, 0.0)], fill=vein, width=2 * vw)

    severity = float(rng.uniform(0.05, 1.0))
    _DISEASES[disease](img, leaf, rng, severity)

    # Low-frequency mottling so the leaf surface is not flat colour.
    coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    field = np.asarray(
        Image.fromarray(coarse, mode="F").resize((canvas, canvas), Image.Resampling.BICUBIC)
    )
    arr = np.asarray(img, dtype=np.float32) * (1.0 + 0.05 * field[..., None])
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    mask = Image.new("L", (canvas, canvas), 0)
    mdraw = ImageDraw.Draw(mask)
    mdraw.polygon(leaf.outline(), fill=255)
    mdraw.line([leaf.point(-0.12, 0.0), leaf.point(0.02, 0.0)], fill=255, width=2 * vw)  # petiole
    return img, mask, base


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    grey = rng.uniform(165, 220)
    warm = rng.uniform(0, 1)  # 0 = neutral grey, 1 = beige
    colour = np.array([grey + 12 * warm, grey + 4 * warm, grey - 18 * warm], dtype=np.float32)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    a = rng.uniform(0, 2 * np.pi)
    grad = np.cos(a) * ramp[None, :] + np.sin(a) * ramp[:, None]
    return colour[None, None, :] + rng.uniform(0, 18) * grad[..., None]


def _affine(size: int, angle: float, scale: float, shift: tuple[float, float]) -> tuple:
    """Inverse affine coefficients for PIL: rotate by ``angle`` deg, scale, then shift."""
    c0 = size / 2
    cos, sin = math.cos(math.radians(angle)) / scale, math.sin(math.radians(angle)) / scale
    ox, oy = c0 + shift[0], c0 + shift[1]
    return (cos, sin, c0 - cos * ox - sin * oy, -sin, cos, c0 + sin * ox - cos * oy)


def _photograph(
    rng: np.random.Generator,
    leaf: tuple[Image.Image, Image.Image, Colour],
    pose: tuple[float, float, tuple[float, float]],
    image_size: int,
) -> Image.Image:
    """One photo of a leaf: pose it on a background, shadow, lighting, downsample, noise."""
    img, mask, base = leaf
    size = img.size[0]
    data = _affine(size, *pose)
    rgb = img.transform(
        img.size, Image.Transform.AFFINE, data, Image.Resampling.BICUBIC, fillcolor=base
    )
    alpha = mask.transform(
        mask.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0
    )
    off = size * 0.02
    shadow = alpha.transform(alpha.size, Image.Transform.AFFINE, (1, 0, -off, 0, 1, -off))
    shadow = shadow.filter(ImageFilter.GaussianBlur(size * 0.02))

    a = np.asarray(alpha, dtype=np.float32)[..., None] / 255
    sh = np.asarray(shadow, dtype=np.float32)[..., None] / 255
    out = _background(rng, size) * (1 - 0.3 * sh)
    out = out * (1 - a) + np.asarray(rgb, dtype=np.float32) * a
    gains = rng.uniform(0.85, 1.12) * (1 + rng.uniform(-0.04, 0.04, 3).astype(np.float32))
    out = np.clip(out * gains, 0, 255).astype(np.uint8)

    small = Image.fromarray(out).resize((image_size, image_size), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:  # slightly out of focus
        small = small.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    noise = rng.normal(0.0, 1.0, (image_size, image_size, 3)) * rng.uniform(1.5, 4.5)
    noisy = np.asarray(small, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), mode="RGB")


# --------------------------------------------------------------------------- dataset


def _parse_class(name: str) -> tuple[str, str]:
    crop, sep, disease = name.partition("___")
    if not sep or crop not in _SHAPES or disease not in _DISEASES:
        raise ConfigError(
            f"Cannot generate synthetic images for class {name!r}: use '<crop>___<disease>' "
            f"with crop in {list(SUPPORTED_CROPS)} and disease in {list(SUPPORTED_DISEASES)}, "
            f"e.g. 'Tomato___Late_blight'."
        )
    return crop, disease


def _write_class(
    folder: Path,
    class_index: int,
    class_name: str,
    n_images: int,
    image_size: int,
    seed: int,
    tick: Callable[[], None],
) -> None:
    crop, disease = _parse_class(class_name)
    # Seeding per class name keeps a class's images stable when other classes are added.
    rng = np.random.default_rng([seed, zlib.crc32(class_name.encode("utf-8"))])
    canvas = image_size * _SUPERSAMPLE
    folder.mkdir(parents=True)
    written, leaf_no = 0, 0
    while written < n_images:
        leaf_no += 1
        leaf = _render_leaf(rng, crop, disease, canvas)
        n_photos = min(int(rng.choice([1, 2, 3], p=[0.5, 0.32, 0.18])), n_images - written)
        angle = rng.uniform(-180, 180)
        scale = rng.uniform(0.85, 1.05)
        shift = rng.uniform(-0.08, 0.08, 2) * canvas
        for photo in range(1, n_photos + 1):
            if photo > 1:  # the same leaf, picked up and put down again
                angle += rng.uniform(-40, 40)
                scale *= rng.uniform(0.92, 1.08)
                shift = shift + rng.uniform(-0.07, 0.07, 2) * canvas
            image = _photograph(rng, leaf, (angle, scale, tuple(shift)), image_size)
            file_id = uuid.UUID(bytes=rng.bytes(16), version=4)
            name = f"{file_id}___SYN_C{class_index:02d}L{leaf_no:03d} Day {photo}.jpg"
            image.save(folder / name, format="JPEG", quality=_JPEG_QUALITY, optimize=False)
            written += 1
            tick()


def _params(classes: Sequence[str], images_per_class: int, image_size: int, seed: int) -> dict:
    return {
        "generator": "cropdoc.data.synthetic",
        "version": _GENERATOR_VERSION,
        "classes": list(classes),
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
    }


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def generate_dataset(
    out_dir: str | Path,
    *,
    images_per_class: int = 60,
    image_size: int = 96,
    classes: Sequence[str] = DEMO_CLASSES,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Write a synthetic PlantVillage-style dataset, ``out_dir/<class>/<file>.jpg``.

    Idempotent: when ``out_dir`` already holds a complete dataset generated with the same
    parameters (its ``.complete`` marker says so) nothing is written. Otherwise the images are
    generated into a hidden sibling folder and renamed into place, so an interrupted run never
    leaves a half-written dataset that looks complete. A previous synthetic dataset with other
    parameters is replaced; any other non-empty folder is refused rather than deleted.

    Args:
        out_dir: Dataset root to create.
        images_per_class: Photos per class (some leaves are photographed 2-3 times).
        image_size: Side length of the square JPEGs, pixels.
        classes: ``<crop>___<disease>`` names, see ``SUPPORTED_CROPS`` / ``SUPPORTED_DISEASES``.
        seed: Same seed, same parameters -> byte-identical files.
        progress: Called as ``progress(done, total)`` after each image (e.g. a progress bar).

    Returns:
        The dataset root, ``Path(out_dir)``.

    Raises:
        ConfigError: On unknown class names or non-positive sizes/counts.
        DataError: If ``out_dir`` is a non-empty folder that is not a synthetic dataset.

    >>> root = generate_dataset("demo-data", images_per_class=10)  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir() if p.is_dir())[:2]  # doctest: +SKIP
    ['Potato___Early_blight', 'Tomato___Early_blight']
    """
    root = Path(out_dir)
    if images_per_class < 1:
        raise ConfigError(f"images_per_class must be >= 1, got {images_per_class}.")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}.")
    if image_size < 16:
        raise ConfigError(f"image_size must be >= 16 pixels, got {image_size}.")
    if not classes or len(set(classes)) != len(classes):
        raise ConfigError(f"classes must be a non-empty list of unique names, got {classes!r}.")
    for name in classes:
        _parse_class(name)

    params = _params(classes, images_per_class, image_size, seed)
    if root.exists():
        marker = _read_marker(root)
        if marker == params:
            _log.info("Synthetic dataset already complete at %s; not regenerating.", root)
            return root
        if marker is None and (not root.is_dir() or any(root.iterdir())):
            raise DataError(
                f"{root} exists and is not a cropdoc synthetic dataset (no {MARKER_NAME} "
                f"marker); refusing to overwrite it. Pass a new or empty folder."
            )

    started = time.perf_counter()
    total = images_per_class * len(classes)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    root.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden sibling: same filesystem (so the final rename is atomic), and two
    # concurrent runs never write into each other's folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        for index, name in enumerate(classes):
            _write_class(tmp / name, index, name, images_per_class, image_size, seed, tick)
        (tmp / MARKER_NAME).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log.info(
        "Generated %d synthetic images (%d classes, %d px) in %s in %.1f s.",
        total,
        len(classes),
        image_size,
        root,
        time.perf_counter() - started,
    )
    return root


def _swap_into_place(tmp: Path, root: Path) -> None:
    if not root.exists():
        tmp.rename(root)
        return
    if not any(root.iterdir()):
        root.rmdir()
        tmp.rename(root)
        return
    # An older synthetic dataset: move it aside first so ``root`` is never half old, half new.
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
    root.rename(old / root.name)
    tmp.rename(root)
    shutil.rmtree(old, ignore_errors=True)
