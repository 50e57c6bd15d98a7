"""How predictions hold up on phone photos: test images through field-like corruptions.

Lab photos (plain background, centred, in focus) flatter a model; users send blurred,
noisy, recompressed, badly lit, tilted, off-centre photos on busy backgrounds. Each
corruption is applied to the decoded photo, before the bundle's own preprocessing, at three
severities, and the figures are those the user would get: macro-F1 and accuracy of the
calibrated predictions, and how often the model abstains (its OOD score over threshold),
which is the wanted answer when a photo is too damaged to read.

The pixel operations are torchvision's (``transforms.v2.functional``: JPEG, Gaussian noise,
brightness, contrast, rotation, resizing; maintained with the rest of the stack). Defocus
(disk) and motion (line) blur kernels and the background paste are here: ``imagecorruptions``
has them but would add OpenCV and scikit-image for three small kernels. Random choices
(noise, blur direction, crop side) are seeded per image, so runs repeat exactly.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf
from sklearn.metrics import f1_score
from torchvision.transforms.v2 import functional as tvf

from ..bundle import Bundle
from ..data.nonleaf import nonleaf_image
from ..io import atomic_write_json
from ..ood import bundle_scores
from ..probabilities import softmax
from .logits import collect_logits

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "evaluate_robustness", "plot_robustness"]

_logger = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3)
Corruption = Callable[[torch.Tensor, int, np.random.Generator], torch.Tensor]


def _border_colour(x: torch.Tensor) -> list[float]:
    """Median colour of the outermost pixels: the photo's background, to fill with."""
    edge = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1).float()
    return edge.median(dim=1).values.tolist()


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = (kernel / kernel.sum()).to(torch.float32)[None, None].repeat(3, 1, 1, 1)
    pad = kernel.shape[-1] // 2
    padded = tnf.pad(x.float()[None], (pad, pad, pad, pad), mode="reflect")
    out = tnf.conv2d(padded, k, groups=3)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def _defocus(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    r = max(1, round(min(x.shape[1:]) * (0.012, 0.025, 0.045)[s - 1]))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    return _filter(x, ((yy**2 + xx**2) <= r * r).float())


def _motion(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    n = max(3, round(min(x.shape[1:]) * (0.03, 0.06, 0.1)[s - 1])) | 1
    angle = rng.uniform(0, math.pi)
    kernel = torch.zeros(n, n)
    c = n // 2
    for t in np.linspace(-c, c, 4 * n):
        kernel[round(c + t * math.sin(angle)), round(c + t * math.cos(angle))] = 1.0
    return _filter(x, kernel)


def _noise(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    sigma = (8.0, 18.0, 32.0)[s - 1]
    noise = torch.from_numpy(rng.normal(0.0, sigma, x.shape).astype(np.float32))
    return (x.float() + noise).round().clamp(0, 255).to(torch.uint8)


def _jpeg(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    return tvf.jpeg(x, quality=(30, 15, 7)[s - 1])


def _dark(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    return tvf.adjust_brightness(x, (0.65, 0.45, 0.3)[s - 1])


def _bright(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    return tvf.adjust_brightness(x, (1.35, 1.7, 2.1)[s - 1])


def _contrast(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    return tvf.adjust_contrast(x, (0.6, 0.4, 0.25)[s - 1])


def _white_balance(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    """A warm (tungsten) or cool (shade) cast: red and blue gains moved apart."""
    k = (0.12, 0.25, 0.4)[s - 1] * (1 if rng.random() < 0.5 else -1)
    gains = torch.tensor([1 + k, 1.0, 1 - k])[:, None, None]
    return (x.float() * gains).round().clamp(0, 255).to(torch.uint8)


def _rotate(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    angle = (15.0, 30.0, 45.0)[s - 1] * (1 if rng.random() < 0.5 else -1)
    return tvf.rotate(x, angle, fill=_border_colour(x))


def _scale(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    """The leaf photographed from further away: smaller, in a larger background."""
    factor = (0.75, 0.55, 0.4)[s - 1]
    h, w = x.shape[1:]
    small = tvf.resize(x, [max(8, round(h * factor)), max(8, round(w * factor))], antialias=True)
    fill = torch.tensor(_border_colour(x)).round().to(torch.uint8)[:, None, None]
    out = fill.expand(3, h, w).clone()
    top, left = (h - small.shape[1]) // 2, (w - small.shape[2]) // 2
    out[:, top : top + small.shape[1], left : left + small.shape[2]] = small
    return out


def _offcentre(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    """A crop whose centre is off the leaf's (part of the leaf cut off), resized back."""
    h, w = x.shape[1:]
    side = round(min(h, w) * 0.7)
    shift = (0.1, 0.2, 0.3)[s - 1] * min(h, w)
    angle = rng.uniform(0, 2 * math.pi)
    cy = int(np.clip(h / 2 + shift * math.sin(angle) - side / 2, 0, h - side))
    cx = int(np.clip(w / 2 + shift * math.cos(angle) - side / 2, 0, w - side))
    return tvf.resized_crop(x, cy, cx, side, side, [h, w], antialias=True)


def leaf_mask(x: torch.Tensor) -> torch.Tensor:
    """Where the leaf is, on a plain background: pixels far from the border colour or
    strongly coloured, smoothed (a bool ``(H, W)``)."""
    f = x.float()
    bg = torch.tensor(_border_colour(x))[:, None, None]
    far = (f - bg).abs().amax(0) > 40
    saturated = (f.amax(0) - f.amin(0)) > 60
    m = (far | saturated).float()[None, None]
    k = max(3, min(x.shape[1:]) // 40) | 1
    smooth = tnf.avg_pool2d(m, k, stride=1, padding=k // 2)[0, 0]
    return smooth > 0.5


def _clutter(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    """The leaf pasted on a busy background: soil, objects, then other foliage (hardest)."""
    kind = ("soil", "objects", "grass")[s - 1]
    h, w = x.shape[1:]
    scene = nonleaf_image(kind, int(rng.integers(0, 1000)), size=max(h, w))
    back = torch.from_numpy(np.array(scene)).permute(2, 0, 1)[:, :h, :w]
    return torch.where(leaf_mask(x)[None], x, back)


#: Corruption name -> function ``(uint8 CHW photo, severity 1-3, rng) -> photo``.
CORRUPTIONS: dict[str, Corruption] = {
    "defocus_blur": _defocus,
    "motion_blur": _motion,
    "noise": _noise,
    "jpeg": _jpeg,
    "dark": _dark,
    "bright": _bright,
    "contrast": _contrast,
    "white_balance": _white_balance,
    "rotation": _rotate,
    "scale": _scale,
    "offcentre_crop": _offcentre,
    "clutter_background": _clutter,
}


def corrupt(x: torch.Tensor, name: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """``x`` (``uint8 (3, H, W)``) through corruption ``name`` at ``severity`` (1-3)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), severity])
    return CORRUPTIONS[name](x, severity, rng)


def _figures(bundle: Bundle, out: Any, labels: np.ndarray) -> dict[str, float]:
    meta = bundle.meta
    pred = softmax(out.logits, meta.temperature).argmax(axis=1)
    _, abstain = bundle_scores(
        meta.ood, out.logits, temperature=meta.temperature, features=out.features
    )
    classes = list(range(meta.num_classes))
    return {
        "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
        "accuracy": float((pred == labels).mean()),
        "abstain_rate": float(abstain.mean()),
        "n": len(labels),
    }


def evaluate_robustness(
    bundle: Bundle,
    samples: list[tuple[Path, int]],
    out_dir: str | os.PathLike[str],
    *,
    max_images: int = 300,
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS),
    batch_size: int = 64,
    workers: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Score ``samples`` clean and under every corruption and severity; write
    ``robustness.json`` and ``robustness.png`` into ``out_dir``; return the figures.

    ``max_images``: a class-spread subset keeps the 37 passes affordable on a CPU.
    """
    if len(samples) > max_images:
        step = len(samples) / max_images
        samples = [samples[int(i * step)] for i in range(max_images)]
    kwargs = {"batch_size": batch_size, "workers": workers, "device": device, "features": True}

    def run(pre: Any) -> dict[str, float]:
        out = collect_logits(bundle.model, samples, bundle.meta, pre=pre, **kwargs)
        kept = {str(p) for p in out.paths}
        labels = np.array([y for p, y in samples if str(p) in kept])
        return _figures(bundle, out, labels)

    result: dict[str, Any] = {"n_images": len(samples), "clean": run(None), "corruptions": {}}
    for name in corruptions:
        result["corruptions"][name] = {
            str(s): run(lambda x, i, name=name, s=s: corrupt(x, name, s, seed=i))
            for s in SEVERITIES
        }
        _logger.info("robustness %s: %s", name, result["corruptions"][name])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "robustness.json", result)
    plot_robustness(result, out / "robustness.png")
    return result


def plot_robustness(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Macro-F1 and abstain rate per corruption (rows) and severity (columns), as heat tables."""
    from matplotlib.figure import Figure

    from ..plotting import save_figure

    names = list(result["corruptions"])
    cols = ["clean", *map(str, SEVERITIES)]
    fig = Figure(figsize=(10, 0.45 * len(names) + 1.8))
    for k, (metric, cmap, title) in enumerate(
        [("macro_f1", "RdYlGn", "macro-F1"), ("abstain_rate", "Purples", "abstain rate")]
    ):
        table = np.array(
            [
                [result["clean"][metric]]
                + [result["corruptions"][n][str(s)][metric] for s in SEVERITIES]
                for n in names
            ]
        )
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(table, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(table):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(cols)), ["clean", "sev 1", "sev 2", "sev 3"])
        ax.set_yticks(range(len(names)), names if k == 0 else [""] * len(names))
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"Robustness on {result['n_images']} test images", fontsize=11)
    return save_figure(fig, path)
