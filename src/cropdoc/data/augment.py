"""The training augmentation the trainer uses: the seed's nine steps, fast.

:func:`~cropdoc.data.transforms.build_train_transform` is the seed's pipeline, literally,
and stays the reference; :class:`FastTrainAugment` draws the same parameters in the same
order but fuses the work, because on a 2-core CPU the loader shares the cores with the
model and every millisecond of augmentation is a millisecond of training lost. Crop, flips
and rotation are one warp; ColorJitter, to-float and Normalize one 3x3 colour matrix
(12.6 -> ~3.5 ms per 224 px image; torchvision's tensor hue shift alone is 6.7 ms).
``tests/test_augment.py`` holds both to the seed's table and compares their outputs on
real leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import RandomResizedCrop, v2

from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CropFlipRotate", "FastTrainAugment", "build_fast_train_transform"]


class CropFlipRotate:
    """Seed steps 1-4 (RandomResizedCrop, horizontal and vertical flip, rotation) as one warp.

    The parameters are drawn as the torchvision transforms draw them (crop box from
    ``RandomResizedCrop.get_params``, flip probabilities, angle uniform in ±degrees), then
    composed into one affine map from output to crop pixels and sampled once, bilinearly.
    Where the rotation reaches outside the crop box the output is black, as the seed's
    rotation of the already cropped image fills it, even where the photo goes on beyond the
    box. One resampling instead of a resize and a rotation (0.64 ms per 224 px image instead
    of 1.66 ms in BENCHMARKS.md; the hand-built grid with the black mask measured ~20%
    cheaper again side by side), and the rotation is bilinear rather than nearest. The
    output is float (0..255).
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
        # Output pixel centres in normalised coordinates (affine_grid, align_corners=False).
        self._centres = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1

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

        In normalised coordinates of the crop (as ``affine_grid``): output point (x, y) →
        rotated about the centre → flipped. The grid is two outer sums, several times cheaper
        than ``affine_grid``'s matrix product. Edge pixels are replicated for sampling (as a
        resize does) and points outside the crop set to black (as the rotation fills them).
        """
        top, left, h, w = box
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        fx, fy = (-1.0 if hflip else 1.0), (-1.0 if vflip else 1.0)
        x, y = self._centres.view(1, -1), self._centres.view(-1, 1)
        grid = torch.empty(1, self.size, self.size, 2)
        torch.add(x * (fx * c), y * (-fx * s), out=grid[0, ..., 0])
        torch.add(x * (fy * s), y * (fy * c), out=grid[0, ..., 1])
        crop = image[..., top : top + h, left : left + w].unsqueeze(0).float()
        warped = torch.nn.functional.grid_sample(
            crop, grid, mode="bilinear", padding_mode="border", align_corners=False
        ).squeeze(0)
        return warped.masked_fill_(grid[0].abs().amax(dim=-1) > 1.0, 0.0)


class FastTrainAugment:
    """The seed's nine training steps at a fraction of the CPU cost (picklable for workers).

    Same steps, parameters and order as :func:`~cropdoc.data.transforms.build_train_transform`.
    Steps 1-4 (crop, flips, rotation) are one warp, :class:`CropFlipRotate`; blur 6 is a
    separable 3x3 Gaussian (torchvision's kernel), erasing 9 is torchvision's. Step 5,
    ColorJitter, is fused with steps 7-8 (to float, Normalize): brightness, contrast,
    saturation and hue are each an affine map of RGB, so they are drawn with the same ranges
    and in a random order as ColorJitter does, composed into one 3x3 matrix and offset, and
    applied in a single pass with one clamp, then normalised. Deliberate differences, all
    invisible to training: one bilinear resampling
    for steps 1-4 (no antialiasing for the <= 1.14x shrink of the cached image, bilinear
    instead of nearest rotation); no uint8 truncation/clamping between the four colour ops
    (the seed's output is ~1.5 levels darker for it, ``tests/test_augment.py`` measures);
    and hue is a rotation about the grey axis of RGB (the CSS/YIQ hue rotation) instead of
    a shift on the HSV hexagon; for |hue| <= 0.05 of a turn they differ by a few levels.
    """

    # ITU-R 601 luma, as torchvision's rgb_to_grayscale.
    _GRAY = (0.2989, 0.587, 0.114)

    def __init__(
        self,
        image_size: int = 224,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
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
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> FastTrainAugment:
    """The training augmentation the trainer uses by default (see :class:`FastTrainAugment`)."""
    return FastTrainAugment(image_size, mean=mean, std=std)
