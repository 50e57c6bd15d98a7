"""The decoded cache at scale: it stops at its bound, moves to a memory-mapped file when RAM
would not hold it, is mapped again by a later run, and the CPU split follows what the
loader workers really do (fast tests on a few real leaves, no timing)."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from cropdoc.data import cache as cache_module
from cropdoc.data.cache import DecodedCache, decode_resized, estimate_bytes
from cropdoc.data.loaders import ImageDataset
from cropdoc.data.transforms import build_eval_transform
from cropdoc.preprocessing import Preprocessing
from cropdoc.training.trainer import cpu_threads

SIDE = 146  # short side of the cached images (eval resize of 128 px)


@pytest.fixture
def leaves(plantvillage_mini: Path) -> list[Path]:
    """24 real 256x256 leaves (each caches to 3 x 146 x 146 bytes)."""
    return sorted((plantvillage_mini / "Tomato___healthy").iterdir())[:24]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every decode the cache makes (one thread, so its read-ahead is 4 images)."""
    calls: list[Path] = []

    def counting(path, short_side, *, max_pixels):
        calls.append(Path(path))
        return decode_resized(path, short_side, max_pixels=max_pixels)

    monkeypatch.setattr(cache_module, "decode_resized", counting)
    monkeypatch.setattr(cache_module, "usable_cpus", lambda: 1)
    return calls


def test_a_full_cache_stops_decoding(leaves: list[Path], counted: list[Path]):
    one = 3 * SIDE * SIDE
    cache = DecodedCache(leaves, SIDE, max_bytes=5 * one)
    assert cache.cached == 5 and cache.nbytes == 5 * one and not cache.complete
    # The five cached, the one that did not fit, and at most the 4 read ahead: not all 24.
    assert len(counted) <= 5 + 1 + 4 < len(leaves)
    assert torch.equal(cache.load(20), decode_resized(leaves[20], SIDE))  # misses stream


def test_disk_cache_when_ram_would_not_hold_it(leaves, tmp_path: Path, counted):
    one = 3 * SIDE * SIDE
    assert estimate_bytes(leaves, SIDE) == len(leaves) * one  # headers only, exact here
    ram = DecodedCache(leaves, SIDE)
    counted.clear()
    disk = DecodedCache(leaves, SIDE, max_bytes=2 * one, disk_dir=tmp_path / "cache")
    assert disk.file is not None and disk.file.parent == tmp_path / "cache"
    assert disk.complete and disk.file.stat().st_size == len(leaves) * one
    assert disk._data.data_ptr() != 0 and not disk._data.is_shared()  # mapped, not copied
    for i in range(len(leaves)):
        assert torch.equal(disk.get(i), ram.get(i))
    # A later run over the same files maps it again without decoding anything.
    counted.clear()
    again = DecodedCache(leaves, SIDE, max_bytes=2 * one, disk_dir=tmp_path / "cache")
    assert again.reused and counted == [] and torch.equal(again.get(3), ram.get(3))
    # Other files, or another size: a cache of their own.
    other = DecodedCache(leaves[:10], SIDE, storage="disk", disk_dir=tmp_path / "cache")
    assert not other.reused and other.file != disk.file
    # Workers get the file's name, not its bytes.
    assert len(pickle.dumps(disk)) < disk.nbytes // 10
    assert torch.equal(pickle.loads(pickle.dumps(disk)).get(5), ram.get(5))


def test_disk_cache_respects_its_bound_and_file_changes(leaves, tmp_path: Path):
    one = 3 * SIDE * SIDE
    cache = DecodedCache(leaves, SIDE, storage="disk", disk_dir=tmp_path, max_disk_bytes=7 * one)
    assert cache.cached == 7 and cache.file is not None
    assert cache.file.stat().st_size == 7 * one
    changed = tmp_path / "changed.jpg"
    changed.write_bytes(leaves[0].read_bytes())
    cache = DecodedCache([changed, *leaves[1:4]], SIDE, storage="disk", disk_dir=tmp_path)
    changed.write_bytes(leaves[1].read_bytes())
    assert cache.get(0) is None  # changed since cached: decoded afresh, never stale
    assert torch.equal(cache.load(0), decode_resized(leaves[1], SIDE))


def test_loader_workers_read_the_mapped_file(leaves: list[Path], tmp_path: Path):
    pre = Preprocessing.for_size(128)
    samples = [(p, i % 2) for i, p in enumerate(leaves[:8])]
    plain = ImageDataset(samples, build_eval_transform(pre))
    mapped = ImageDataset(
        samples,
        build_eval_transform(pre),
        cache_short_side=pre.resize_size,
        cache_dir=tmp_path,
        cache_storage="disk",
    )
    assert mapped.cache is not None and mapped.cache.file is not None
    got = torch.cat([x for x, _ in DataLoader(mapped, batch_size=4, num_workers=1)])
    assert torch.equal(got, torch.stack([plain[i][0] for i in range(8)]))
    assert ImageDataset(samples, cache_short_side=146, cache_storage="none").cache is None


def test_the_cpu_split_counts_workers_that_still_decode(leaves, monkeypatch):
    monkeypatch.setattr("cropdoc.cpu.usable_cpus", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fabric = SimpleNamespace(device=torch.device("cpu"), strategy=SimpleNamespace())
    one = 3 * SIDE * SIDE
    samples = [(p, 0) for p in leaves[:6]]

    def threads(**cache: int) -> int:
        ds = ImageDataset(samples, cache_short_side=SIDE, **cache)
        loader = DataLoader(ds, batch_size=32, num_workers=1)
        return cpu_threads(fabric, loader, gflop_per_image=1.0)

    assert threads() == 4  # every image cached: the worker only copies, compute gets all
    assert threads(cache_max_bytes=2 * one) == 3  # a part-full cache: the worker decodes


def test_evaluation_reuses_the_runs_disk_cache(tmp_path_factory, tiny_data: Path, monkeypatch):
    """A run's disk cache (what training writes when RAM would not hold the images) is read
    by calibration and evaluation instead of decoding again, with the same logits bit for
    bit; it is only reused, never built, and a different image list finds none."""
    import numpy as np

    from cropdoc.bundle import load_bundle
    from cropdoc.data.split import SplitManifest
    from cropdoc.evaluation import logits as logits_module
    from cropdoc.evaluation.calibration import calibrate_run
    from test_evaluation import copy_run, trained_tiny_run

    run = copy_run(
        trained_tiny_run(tmp_path_factory, tiny_data), tmp_path_factory.mktemp("c") / "r"
    )
    bundle = load_bundle(run / "model")
    val = SplitManifest.load(run / "split.json").samples("val")
    paths, side = [p for p, _ in val], bundle.meta.preprocessing.resize_size
    assert DecodedCache.existing(paths, side, run / "cache") is None  # nothing built here
    assert not (run / "cache").exists()
    plain = logits_module.collect_logits(bundle.model, val, bundle.meta)
    DecodedCache(paths, side, storage="disk", disk_dir=run / "cache")  # as training writes it

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image the run's cache holds")

    monkeypatch.setattr(logits_module, "load_tensor", no_decoding)
    cached = logits_module.collect_logits(bundle.model, val, bundle.meta, cache_dir=run / "cache")
    assert np.array_equal(cached.logits, plain.logits) and cached.paths == plain.paths
    assert calibrate_run(run).n == len(val)  # calibration reads the cache too
    assert DecodedCache.existing(paths[:-1], side, run / "cache") is None
