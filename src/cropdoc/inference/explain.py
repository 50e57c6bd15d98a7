"""Where the model looks: Grad-CAM heatmaps over the photo, for any cropdoc model.

The map is computed by torchcam's Grad-CAM (a maintained implementation; the method of
Selvaraju et al., 2017) on the layer :func:`cropdoc.models.cam_target` finds from the
model itself, for the class the model predicts (or one asked for). It is drawn over the
same crop the model saw (the bundle's resize and centre crop), re-cut from the original
photo at display resolution so a 64 px model still gets a sharp overlay.

Gradients need the PyTorch weights, so an explainer always runs on torch, whichever
backend predicts; it serialises its own calls (hooks are per model, not per thread).
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..bundle import BundleMeta, load_bundle
from ..classnames import class_label
from ..data.images import DEFAULT_MAX_PIXELS, open_rgb
from ..data.transforms import build_eval_transform
from ..models import CamTarget, cam_target, get_arch
from .errors import InferenceError
from .sources import ImageSource

__all__ = ["CAM_METHODS", "Explainer", "Explanation", "load_explainer", "overlay"]

#: torchcam methods by the name ``Explainer(method=...)`` takes.
CAM_METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "layercam": "LayerCAM"}
#: Side of the overlay image (at least the model's input side).
DISPLAY_SIZE = 320


@dataclass
class Explanation:
    """A heatmap for one image and class.

    Attributes:
        heatmap: ``(S, S)`` float32 in [0, 1] on the model's input crop.
        overlay: the heatmap over the photo's crop, RGB.
        class_index: the class explained.
        label: its readable name.
        layer: the module the map was read from.
    """

    heatmap: np.ndarray
    overlay: Image.Image
    class_index: int
    label: str
    layer: str

    def png(self) -> bytes:
        """The overlay as PNG bytes (for a file or a base64 JSON field)."""
        buf = io.BytesIO()
        self.overlay.save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.png())
        return target


def _display_crop(image: Image.Image, meta: BundleMeta, side: int) -> Image.Image:
    """The model's crop of ``image`` (resize shorter side, centre crop) at ``side`` px."""
    p = meta.preprocessing
    shorter = side * p.resize_size / p.image_size
    w, h = image.size
    scale = shorter / min(w, h)
    resized = image.resize(
        (max(side, round(w * scale)), max(side, round(h * scale))), Image.BICUBIC
    )
    left, top = (resized.width - side) // 2, (resized.height - side) // 2
    return resized.crop((left, top, left + side, top + side))


def overlay(photo: Image.Image, heatmap: np.ndarray, *, alpha: float = 0.45) -> Image.Image:
    """``heatmap`` (values in [0, 1]) coloured with ``turbo`` and blended over ``photo``."""
    from matplotlib import colormaps

    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255)).resize(
        photo.size, Image.BILINEAR
    )
    coloured = colormaps["turbo"](np.asarray(heat, np.float32) / 255.0)[..., :3]
    base = np.asarray(photo.convert("RGB"), np.float32) / 255.0
    # Weak evidence stays mostly photo: the colour's weight grows with the heat.
    weight = alpha * (0.35 + 0.65 * np.asarray(heat, np.float32)[..., None] / 255.0)
    return Image.fromarray(np.uint8(np.clip((1 - weight) * base + weight * coloured, 0, 1) * 255))


class Explainer:
    """Grad-CAM heatmaps of a bundle's model.

    Args:
        model: the bundle's model (its weights are not changed).
        meta: the bundle's metadata (classes, preprocessing, architecture).
        method: one of :data:`CAM_METHODS`.
        max_pixels: images declaring more pixels are refused before decoding.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: BundleMeta,
        *,
        method: str = "gradcam",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if method not in CAM_METHODS:
            raise InferenceError(
                f"unknown CAM method {method!r}; choose one of {list(CAM_METHODS)}"
            )
        self.model = model.eval()
        self.meta = meta
        self.method = method
        self.max_pixels = max_pixels
        self.target: CamTarget = cam_target(self.model, get_arch(meta.arch))
        self._transform = build_eval_transform(meta.preprocessing)
        self._lock = threading.Lock()

    @property
    def layer(self) -> str:
        return self.target.name

    def _image(self, source: ImageSource) -> Image.Image:
        if isinstance(source, Image.Image):
            return source.convert("RGB")
        return open_rgb(source, max_pixels=self.max_pixels)  # type: ignore[arg-type]

    def heatmap(
        self, batch: torch.Tensor, class_index: int | None = None
    ) -> tuple[np.ndarray, int]:
        """``(heatmap (S, S) in [0, 1], class)`` for one preprocessed image ``(1, 3, S, S)``."""
        from torchcam import methods

        extractor_cls: Any = getattr(methods, CAM_METHODS[self.method])
        x = batch.clone().requires_grad_(True)  # gradients reach the layer even if frozen
        with self._lock, torch.enable_grad():
            with extractor_cls(
                self.model,
                target_layer=self.target.name,
                reshape_transform=self.target.reshape(),
            ) as extractor:
                scores = self.model(x)
                index = int(scores[0].argmax()) if class_index is None else int(class_index)
                cam = extractor(class_idx=index, scores=scores)[0]
        cam = torch.nan_to_num(cam.detach().float())[:, None]  # (1, 1, h, w)
        size = self.meta.preprocessing.image_size
        up = torch.nn.functional.interpolate(cam, size=(size, size), mode="bilinear")[0, 0]
        up = up - up.min()
        peak = float(up.max())
        return (up / peak if peak > 0 else up).numpy().astype(np.float32), index

    def explain(self, source: ImageSource, *, class_index: int | None = None) -> Explanation:
        """The heatmap of ``source`` for ``class_index`` (default: the predicted class).

        Raises:
            BadImageError: the image cannot be read.
            InferenceError: ``class_index`` is not a class of the model.
        """
        if class_index is not None and not 0 <= class_index < self.meta.num_classes:
            raise InferenceError(f"class_index {class_index} is not one of the model's classes")
        image = self._image(source)
        batch = self._transform(image)[None]
        heat, index = self.heatmap(batch, class_index)
        side = max(DISPLAY_SIZE, self.meta.preprocessing.image_size)
        return Explanation(
            heatmap=heat,
            overlay=overlay(_display_crop(image, self.meta, side), heat),
            class_index=index,
            label=class_label(self.meta.classes[index]),
            layer=self.target.name,
        )


def load_explainer(
    bundle: str | os.PathLike[str], *, method: str = "gradcam", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Explainer:
    """An :class:`Explainer` for a bundle (loads its PyTorch weights on the CPU)."""
    loaded = load_bundle(bundle)
    return Explainer(loaded.model, loaded.meta, method=method, max_pixels=max_pixels)
