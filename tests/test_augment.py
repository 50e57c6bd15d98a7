"""FastTrainAugment is the seed's nine steps: its parameters, its draws, and its outputs.

Training runs :class:`~cropdoc.data.augment.FastTrainAugment`, not the literal pipeline of
:func:`~cropdoc.data.transforms.build_train_transform`, so these tests hold it to the
seed's table three ways: the attributes, the frequencies and ranges of what it draws
(fixed seeds, binomial tolerances), and statistics of its outputs on real leaves compared
with the literal nine steps.

Tolerances. A frequency is checked against ``n * p`` within ``Z`` binomial standard
deviations (``Z = 4``: a false alarm once in ~16,000 seeds, while a probability off by 0.1
is more than 7 SD away at the draw counts used). Output statistics of the two pipelines
are compared image by image (paired, so the spread between leaves cancels) and may differ
by a negligible effect, ``EFFECT`` (0.2, Cohen's "small") times the reference's own
draw-to-draw SD of that statistic, plus ``Z`` standard errors of the paired mean; the
draw-to-draw SDs themselves (the jitter's strength) may differ by a factor exp(+-EFFECT),
plus ``Z`` standard errors. Each check failed when the parameter it guards was changed
(a flip or blur probability by 0.1, erasing by 0.05, the rotation to 15 or 25 degrees, the
crop scale to 0.6, blur sigma to 3, any jitter range by half) and when the rotation
sampled the photo beyond the crop instead of black (+5.6 levels mean, -4.5 levels SD).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cropdoc.data.augment import CropFlipRotate, FastTrainAugment
from cropdoc.data.cache import DecodedCache
from cropdoc.data.images import load_tensor
from cropdoc.data.transforms import build_train_transform
from cropdoc.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

# The seed's table (seed/Model-Training.md), written out once more on purpose.
SEED = {
    "crop_scale": (0.8, 1.0),
    "crop_ratio": (3.0 / 4.0, 4.0 / 3.0),  # RandomResizedCrop's default, the seed keeps it
    "hflip_p": 0.5,
    "vflip_p": 0.2,
    "degrees": 20.0,
    "jitter": (0.2, 0.2, 0.2, 0.05),  # brightness, contrast, saturation, hue
    "blur_kernel": 3,
    "blur_sigma": (0.1, 2.0),
    "blur_p": 0.2,
    "erase_p": 0.1,
    "erase_scale": (0.02, 0.1),
}
Z = 4.0
EFFECT = 0.2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small images: intra-op threads only add overhead, and contend on a shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_binomial(hits: int, n: int, p: float, what: str) -> None:
    sd = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) <= Z * sd, f"{what}: {hits}/{n} = {hits / n:.3f}, expected {p}"


# --------------------------------------------------------------------------- attributes


def test_parameters_are_the_seeds() -> None:
    aug = FastTrainAugment(64)
    geometry = aug.geometry
    assert isinstance(geometry, CropFlipRotate) and geometry.size == 64
    assert tuple(geometry.scale) == SEED["crop_scale"]
    assert tuple(geometry.ratio) == pytest.approx(SEED["crop_ratio"])
    assert geometry.hflip_p == SEED["hflip_p"] and geometry.vflip_p == SEED["vflip_p"]
    assert geometry.degrees == SEED["degrees"]
    assert aug.ranges == SEED["jitter"]
    assert aug.blur_p == SEED["blur_p"] and tuple(aug.blur_sigma) == SEED["blur_sigma"]
    assert isinstance(aug.erase, v2.RandomErasing)
    assert aug.erase.p == SEED["erase_p"] and tuple(aug.erase.scale) == SEED["erase_scale"]
    # Normalize is folded into out = x * scale - shift on 0..255 values.
    std = 1.0 / (255.0 * aug.scale.flatten())
    mean = aug.shift.flatten() * std
    assert mean.tolist() == pytest.approx(IMAGENET_MEAN) and std.tolist() == pytest.approx(
        IMAGENET_STD
    )


def test_erasing_is_configured_as_the_reference_step_nine() -> None:
    reference = build_train_transform(64).transforms[8]
    fast = FastTrainAugment(64).erase
    for attr in ("p", "scale", "ratio", "value", "inplace"):
        assert getattr(fast, attr) == getattr(reference, attr), attr


# --------------------------------------------------------------------------- draws


def _quadrant_image(side: int = 48) -> torch.Tensor:
    """White top-left quadrant on black: where the white lands tells which flips happened."""
    img = torch.zeros(3, side, side, dtype=torch.uint8)
    img[:, : side // 2, : side // 2] = 255
    return img


def _flips_seen(transform, n: int) -> tuple[int, int]:
    img = _quadrant_image()
    h_hits = v_hits = 0
    for _ in range(n):
        out = transform(img).float().mean(dim=0)
        half = out.shape[-1] // 2
        h_hits += int(out[:, half:].sum() > out[:, :half].sum())  # white moved right
        v_hits += int(out[half:, :].sum() > out[:half, :].sum())  # white moved down
    return h_hits, v_hits


@pytest.mark.parametrize(
    "make",
    [lambda: FastTrainAugment(32), lambda: build_train_transform(32)],
    ids=["fast", "reference"],
)
def test_flip_frequencies_seen_in_the_output(make) -> None:
    # The reference passing shows the detector itself is sound.
    torch.manual_seed(0)
    n = 1500
    h_hits, v_hits = _flips_seen(make(), n)
    assert_binomial(h_hits, n, SEED["hflip_p"], "horizontal flips")
    assert_binomial(v_hits, n, SEED["vflip_p"], "vertical flips")


def test_geometry_draws_stay_in_the_seeds_ranges() -> None:
    aug = FastTrainAugment(32)
    draws: list[tuple[tuple[int, int, int, int], bool, bool, float]] = []
    warp = aug.geometry.warp

    def recording_warp(image, box, *, hflip, vflip, angle):
        draws.append((box, hflip, vflip, angle))
        return warp(image, box, hflip=hflip, vflip=vflip, angle=angle)

    aug.geometry.warp = recording_warp
    torch.manual_seed(1)
    side, n = 73, 3000
    img = torch.randint(0, 256, (3, side, side), dtype=torch.uint8)
    for _ in range(n):
        aug.geometry(img)
    angles = torch.tensor([a for *_, a in draws])
    assert float(angles.abs().max()) <= SEED["degrees"]
    # Uniform on +-20: the extremes are reached and half the draws lie within +-10.
    assert float(angles.abs().max()) > 0.99 * SEED["degrees"]
    assert_binomial(int((angles.abs() < SEED["degrees"] / 2).sum()), n, 0.5, "|angle| < 10")
    assert_binomial(int((angles > 0).sum()), n, 0.5, "angle > 0")
    assert_binomial(sum(h for _, h, _, _ in draws), n, SEED["hflip_p"], "hflip draws")
    assert_binomial(sum(v for _, _, v, _ in draws), n, SEED["vflip_p"], "vflip draws")
    # Crop boxes: area fraction and aspect ratio within the seed's ranges (up to the
    # rounding of the box to whole pixels).
    pixel = 1.0 / (side - 1)
    for (_, _, h, w), *_ in draws:
        assert SEED["crop_scale"][0] - 2 * pixel <= h * w / side**2 <= SEED["crop_scale"][1]
        assert SEED["crop_ratio"][0] - pixel <= w / h <= SEED["crop_ratio"][1] + pixel


def test_rotation_fills_black_outside_the_crop_as_the_seed_does() -> None:
    # The seed crops, then rotates the crop: the corners are black even where the photo
    # goes on beyond the crop box.
    geometry = CropFlipRotate(48)
    img = torch.full((3, 96, 96), 200, dtype=torch.uint8)
    box = (20, 24, 48, 48)
    for angle in (-20.0, 7.5, 20.0):
        ours = geometry.warp(img, box, angle=angle)
        seed = F.rotate(F.crop(img, *box), angle, interpolation=v2.InterpolationMode.BILINEAR)
        black_ours, black_seed = ours.mean(0) < 100, seed.float().mean(0) < 100
        assert black_seed.any()
        # Sampling may tip a pixel on the edge of the black corners either way, no other.
        mask = black_seed.float()[None, None]
        near = torch.nn.functional.max_pool2d(mask, 3, 1, 1) - -torch.nn.functional.max_pool2d(
            -mask, 3, 1, 1
        )
        edge = near[0, 0] > 0
        assert not ((black_ours ^ black_seed) & ~edge).any(), angle


def _jitter_factors(aug: FastTrainAugment, grey: float = 100.0) -> tuple[float, ...]:
    """The (brightness, contrast, saturation, |hue|) factors behind one colour-matrix draw.

    Read from invariants that do not depend on the random order of the four operations:
    on grey (saturation and hue leave it alone, contrast keeps the mean) the mean moves by
    brightness and a grey step by brightness x contrast; det(A) is (b c)^3 (1 + s)^2 (hue
    is a rotation); and trace(A) / (b c) = (1 + s)(1 + 2 cos theta) - s (g . 1).
    """
    gray = torch.tensor(FastTrainAugment._GRAY, dtype=torch.float64)
    a, off = aug.color_matrix(torch.full((3,), grey))
    a, off = a.double(), off.double()
    b = float((a @ torch.full((3,), grey, dtype=torch.float64) + off).mean()) / grey
    bc = float((a @ torch.ones(3, dtype=torch.float64)).mean())
    s = math.sqrt(float(torch.linalg.det(a)) / bc**3) - 1.0
    cos_theta = ((float(torch.trace(a)) / bc + s * float(gray.sum())) / (1.0 + s) - 1.0) / 2.0
    hue = math.acos(max(-1.0, min(1.0, cos_theta))) / (2.0 * math.pi)
    return b - 1.0, bc / b - 1.0, s, hue


def test_color_jitter_draws_are_the_seeds() -> None:
    aug = FastTrainAugment(32)
    torch.manual_seed(2)
    n = 3000
    draws = torch.tensor([_jitter_factors(aug) for _ in range(n)])
    names = ("brightness", "contrast", "saturation", "hue")
    for name, factors, limit in zip(names, draws.T, SEED["jitter"], strict=True):
        # Uniform on +-limit: never beyond, the extremes reached, half within +-limit/2.
        assert float(factors.abs().max()) <= limit * 1.01, name
        assert float(factors.abs().max()) > 0.98 * limit, name
        assert_binomial(int((factors.abs() < limit / 2).sum()), n, 0.5, f"{name} in half range")


def test_blur_frequency_kernel_and_sigma_are_the_seeds() -> None:
    aug = FastTrainAugment(32)
    side = 9
    delta = torch.zeros(3, side, side)
    delta[:, side // 2, side // 2] = 1.0
    torch.manual_seed(3)
    n, sigmas = 3000, []
    for _ in range(n):
        out = aug._blur(delta.clone())
        if torch.equal(out, delta):
            continue
        r, c = side // 2, SEED["blur_kernel"] // 2
        outside = out.clone()
        outside[:, r - c : r + c + 1, r - c : r + c + 1] = 0.0
        assert not outside.any()  # a 3x3 kernel: nothing leaks further
        # Neighbour / centre weight is exp(-1 / (2 sigma^2)): invert it for sigma.
        edge = float(out[0, r, r + 1] / out[0, r, r])
        sigma = math.sqrt(-0.5 / math.log(edge))
        sigmas.append(sigma)
        if len(sigmas) <= 3:  # the kernel is torchvision's for that sigma
            want = F.gaussian_blur(delta, [3, 3], [sigma, sigma])
            assert torch.allclose(out, want, atol=1e-5)
    assert_binomial(len(sigmas), n, SEED["blur_p"], "blurred images")
    low, high = SEED["blur_sigma"]
    assert low - 1e-3 <= min(sigmas) and max(sigmas) <= high + 1e-3
    assert min(sigmas) < low + 0.1 and max(sigmas) > high - 0.1


# --------------------------------------------------------------------------- real leaves

SIZE = 64
PER_CLASS = 4
DRAWS = 40


@pytest.fixture(scope="module")
def leaves(plantvillage_mini: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(full photos for the reference, the trainer's cached copies for FastTrainAugment)."""
    paths = []
    for folder in sorted(p for p in plantvillage_mini.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.[jJ][pP][gG]"))
        step = max(1, len(files) // PER_CLASS)
        paths += files[::step][:PER_CLASS]
    cache = DecodedCache(paths, Preprocessing.for_size(SIZE).resize_size)
    return [load_tensor(p) for p in paths], [cache.load(i) for i in range(len(paths))]


def _draw_stats(transform, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and draw: channel means and SDs in 0..255 levels (un-normalised), and
    whether a RandomErasing patch (exact zeros after Normalize) is present."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1)
    stats = torch.empty(len(images), DRAWS, 6, dtype=torch.float64)
    erased = torch.empty(len(images), DRAWS, dtype=torch.bool)
    for i, image in enumerate(images):
        for k in range(DRAWS):
            out = transform(image).reshape(3, -1)
            levels = (out * std + mean) * 255.0
            stats[i, k, :3], stats[i, k, 3:] = levels.mean(1), levels.std(1)
            # Half the smallest patch; outside a patch no pixel is exactly 0 in all channels.
            erased[i, k] = int((out == 0).all(0).sum()) >= 0.01 * SIZE * SIZE
    return stats, erased


@pytest.fixture(scope="module")
def compared(leaves):
    full, cached = leaves
    torch.manual_seed(4)
    return _draw_stats(FastTrainAugment(SIZE), cached), _draw_stats(
        build_train_transform(SIZE), full
    )


STATS = ["mean R", "mean G", "mean B", "sd R", "sd G", "sd B"]


@pytest.mark.parametrize("j", range(len(STATS)), ids=STATS)
def test_output_statistics_match_the_literal_nine_steps(compared, j: int) -> None:
    (fast, _), (ref, _) = compared
    per_image = fast[:, :, j].mean(1) - ref[:, :, j].mean(1)
    diff = float(per_image.mean())
    se = float(per_image.std()) / math.sqrt(len(per_image))
    noise = float(ref[:, :, j].std(1).pow(2).mean().sqrt())  # draw-to-draw SD, reference
    allowed = EFFECT * noise + Z * se
    assert abs(diff) <= allowed, (
        f"{STATS[j]}: fast - reference = {diff:+.2f} levels, allowed {allowed:.2f} "
        f"(draw-to-draw SD {noise:.2f}, se {se:.2f})"
    )


@pytest.mark.parametrize("j", range(3), ids=STATS[:3])
def test_jitter_strength_matches_the_literal_nine_steps(compared, j: int) -> None:
    # How much a leaf's colour moves from draw to draw: the strength of ColorJitter.
    (fast, _), (ref, _) = compared
    log_ratio = (fast[:, :, j].std(1) / ref[:, :, j].std(1)).log()
    se = float(log_ratio.std()) / math.sqrt(len(log_ratio))
    assert abs(float(log_ratio.mean())) <= EFFECT + Z * se, STATS[j]


def test_erasing_frequency_on_real_leaves(compared) -> None:
    (_, fast), (_, ref) = compared
    for name, erased in (("fast", fast), ("reference", ref)):
        assert_binomial(int(erased.sum()), erased.numel(), SEED["erase_p"], f"{name} erased")
