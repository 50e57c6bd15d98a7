"""The speed paths give the same answers as the plain ones (fast tests, no timing)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from cropdoc.bundle import BundleMeta
from cropdoc.cpu import compute_threads
from cropdoc.data.augment import CropFlipRotate, FastTrainAugment
from cropdoc.data.cache import DecodedCache
from cropdoc.data.images import load_tensor
from cropdoc.data.loaders import ImageDataset
from cropdoc.data.transforms import build_eval_transform
from cropdoc.inference import MicroBatcher, Predictor, TorchRunner
from cropdoc.models import apply_policy, build, get_arch
from cropdoc.preprocessing import Preprocessing


def _photos(root: Path, n: int = 6) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        size = (300 + 17 * i, 260) if i % 2 else (120, 90)  # some larger, some smaller
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        p = root / f"leaf{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def test_cached_pixels_equal_fresh_decode_then_resize(tmp_path: Path) -> None:
    paths = _photos(tmp_path)
    cache = DecodedCache(paths, 146)
    assert cache.cached == len(paths)
    for i, p in enumerate(paths):
        fresh = load_tensor(p)
        if min(fresh.shape[-2:]) > 146:
            fresh = F.resize(fresh, 146, antialias=True)
        assert torch.equal(cache.get(i), fresh)


def test_eval_pixels_identical_with_and_without_cache(tmp_path: Path) -> None:
    paths = _photos(tmp_path)
    pre = Preprocessing.for_size(128)
    tf = build_eval_transform(pre)
    samples = [(p, 0) for p in paths]
    plain = ImageDataset(samples, tf)
    cached = ImageDataset(samples, tf, cache_short_side=pre.resize_size)
    for i in range(len(paths)):
        assert torch.equal(plain[i][0], cached[i][0])


def test_cache_notices_changed_files_and_respects_its_bound(tmp_path: Path) -> None:
    paths = _photos(tmp_path, 4)
    cache = DecodedCache(paths, 146, max_bytes=3 * 146 * 200)  # not room for all
    assert cache.cached < 4 and cache.nbytes <= 3 * 146 * 200
    assert all(cache.load(i).dtype == torch.uint8 for i in range(4))  # misses still decode
    full = DecodedCache(paths, 146)
    Image.new("RGB", (200, 150), (255, 0, 0)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))  # a different mtime, whatever the clock resolution
    assert full.get(0) is None
    assert torch.equal(full.load(0), F.resize(load_tensor(paths[0]), 146, antialias=True))


def test_cache_is_shared_with_loader_workers(tmp_path: Path) -> None:
    paths = _photos(tmp_path, 4)
    pre = Preprocessing.for_size(64)
    ds = ImageDataset(
        [(p, i) for i, p in enumerate(paths)],
        build_eval_transform(pre),
        cache_short_side=pre.resize_size,
    )
    assert ds.cache is not None and ds.cache._data.is_shared()
    loader = DataLoader(ds, batch_size=2, num_workers=1)
    got = torch.cat([x for x, _ in loader])
    want = torch.stack([ds[i][0] for i in range(4)])
    assert torch.equal(got, want)


def test_fast_augment_shapes_stats_and_reproducibility() -> None:
    aug = FastTrainAugment(64)
    img = torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8)
    torch.manual_seed(0)
    a = aug(img)
    torch.manual_seed(0)
    b = aug(img)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)  # draws only from torch's RNG: per-epoch reseeding holds


def test_crop_flip_rotate_warp_is_exact_on_the_pixel_grid() -> None:
    geometry = CropFlipRotate(48)
    img = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    square = img[:, :, 8:56]
    box = (0, 8, 48, 48)  # top, left, height, width: the centre square, same size
    assert torch.allclose(geometry.warp(img, box), square.float(), atol=1e-3)
    flipped = geometry.warp(img, box, hflip=True, vflip=True)
    assert torch.allclose(flipped, square.flip(-1, -2).float(), atol=1e-3)
    quarter = geometry.warp(img, box, angle=90.0)
    turns = [torch.rot90(square, k, dims=(-2, -1)).float() for k in (1, 3)]
    assert any(torch.allclose(quarter, t, atol=1e-3) for t in turns)
    # Half size: each output pixel is the mean of a 2x2 block (bilinear at pixel centres).
    half = CropFlipRotate(24).warp(img, box)
    pooled = torch.nn.functional.avg_pool2d(square.float().unsqueeze(0), 2).squeeze(0)
    assert torch.allclose(half, pooled, atol=1e-3)
    # Rotating leaves black corners (the seed's fill), and the draw uses torch's RNG only.
    assert geometry.warp(torch.full_like(img, 200), box, angle=20.0)[:, 0, 0].eq(0).all()
    torch.manual_seed(1)
    a = geometry(img)
    torch.manual_seed(1)
    assert torch.equal(a, geometry(img)) and a.shape == (3, 48, 48)


def test_fast_color_matrix_identity_and_grey_axis() -> None:
    aug = FastTrainAugment(32, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    a, off = aug.color_matrix(torch.tensor([100.0, 120.0, 140.0]))
    assert torch.allclose(a, torch.eye(3), atol=1e-6) and torch.allclose(off, torch.zeros(3))
    hue_only = FastTrainAugment(32, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.05)
    a, off = hue_only.color_matrix(torch.zeros(3))
    grey = torch.full((3,), 77.0)
    assert torch.allclose(a @ grey + off, grey, atol=1e-4)  # hue never tints grey


def test_fast_augment_without_jitter_matches_plain_normalise() -> None:
    aug = FastTrainAugment(48, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    aug.geometry = lambda image: image.float()
    aug.blur_p = 0.0
    aug.erase = torch.nn.Identity()
    img = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    want = (img.float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.allclose(aug(img), want, atol=1e-5)


def test_compute_threads_leaves_cores_to_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert compute_threads(0) == cpus
    assert compute_threads(cpus + 3) == 1
    assert compute_threads(0, processes=cpus) == 1  # DDP on CPU: one core per process
    # Cached (cheap) loading: the workers sleep most of the time, compute gets every core.
    assert compute_threads(cpus + 3, light_workers=True) == cpus
    assert compute_threads(1, processes=cpus, light_workers=True) == 1
    # ... when a batch is big enough to share between threads (not at 64 px MobileNetV3).
    assert compute_threads(1, light_workers=True, batch_gflop=0.3) == max(1, cpus - 1)
    assert compute_threads(1, light_workers=True, batch_gflop=1000.0) == cpus


def test_frozen_backbone_records_no_backbone_graph_and_same_head_grads() -> None:
    spec = get_arch("mobilenet_v3_small")
    torch.manual_seed(0)
    model = build("mobilenet_v3_small", classes=3, weights="none").eval()
    apply_policy(model, spec, "head")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    frozen_grads = [p.grad for n, p in model.named_parameters() if not n.startswith("classifier")]
    assert all(g is None for g in frozen_grads)
    head = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("classifier")}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        feats = torch.flatten(model.avgpool(model.features(x)), 1)
    torch.nn.functional.cross_entropy(model.classifier(feats), y).backward()
    for n, p in model.named_parameters():
        if n in head:
            assert torch.allclose(p.grad, head[n], atol=1e-6)


def _tiny_predictor() -> Predictor:
    torch.manual_seed(0)
    model = build("mobilenet_v3_small", classes=4, weights="none").eval()
    meta = BundleMeta(
        arch="mobilenet_v3_small",
        classes=["a", "b", "c", "d"],
        preprocessing=Preprocessing(image_size=32, resize_size=37),
    )
    return Predictor(meta, TorchRunner(model))


def test_micro_batching_returns_the_unbatched_results(tmp_path: Path) -> None:
    predictor = _tiny_predictor()
    paths = _photos(tmp_path, 6)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    sources = [*paths, bad]
    want = predictor.predict(sources, batch_size=1)
    batcher = MicroBatcher(predictor, max_batch=8, max_wait_ms=50)
    got: dict[int, list] = {}

    def call(i: int) -> None:
        got[i] = batcher.predict([sources[i]])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i, w in enumerate(want):
        g = got[i][0]
        assert g.error == w.error
        assert [s.index for s in g.top] == [s.index for s in w.top]
        for gs, ws in zip(g.top, w.top, strict=True):
            assert gs.probability == pytest.approx(ws.probability, abs=1e-5)
