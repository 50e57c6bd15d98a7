"""Scan and split the real PlantVillage sample (skipped when it is absent)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cropdoc.data.images import load_tensor, open_rgb
from cropdoc.data.scan import ScanReport, scan_folder
from cropdoc.data.split import DEFAULT_GROUP_PATTERN, SPLITS, group_keys, make_split

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)


@pytest.fixture(scope="module")
def report(plantvillage_mini: Path) -> ScanReport:
    return scan_folder(plantvillage_mini)


def expected_hashes(root: Path) -> dict[str, str]:
    """SHA256SUMS shipped with the sample: {relative path: sha256}."""
    out = {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        sha, rel = line.split(maxsplit=1)
        out[rel.removeprefix("./")] = sha
    return out


def on_disk(root: Path) -> dict[str, int]:
    """Files per class folder, counted straight from the file system."""
    return {
        d.name: sum(f.is_file() for f in d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()
    }


def test_scan_finds_everything(report: ScanReport, plantvillage_mini: Path) -> None:
    counts = on_disk(plantvillage_mini)
    assert sorted(report.classes) == sorted(counts)
    assert len(report.samples) == sum(counts.values())
    assert report.bad_files == []
    assert report.counts() == counts
    assert {(s.width, s.height) for s in report.samples} == {(256, 256)}
    hashes = expected_hashes(plantvillage_mini)
    assert {report.relative(s.path): s.sha256 for s in report.samples} == hashes
    # Duplicates as counted independently from SHA256SUMS (the sample was de-duplicated).
    independent = [n for n in Counter(hashes.values()).values() if n > 1]
    assert len(report.duplicate_groups()) == len(independent)


def test_grouped_split_keeps_leaves_together(report: ScanReport) -> None:
    manifest = make_split(report, seed=42)
    where = {rel: split for split, items in manifest.splits.items() for rel, _ in items}
    assert len(where) == len(report.samples)

    # Independent of group_keys: leaf id straight from the file name, per class.
    regex = re.compile(DEFAULT_GROUP_PATTERN)
    leaf_splits: dict[str, set[str]] = defaultdict(set)
    leaf_sizes: Counter[str] = Counter()
    for s in report.samples:
        match = regex.search(s.path.stem)
        assert match, s.path.name  # every real name yields a leaf id
        leaf_splits[f"{s.class_name}/{match.group('group')}"].add(where[report.relative(s.path)])
        leaf_sizes[f"{s.class_name}/{match.group('group')}"] += 1
    assert all(len(splits) == 1 for splits in leaf_splits.values())
    # Re-shots of one leaf share a group: "GH_HL Leaf 340" / "340.1", "GHLB2ES Leaf 119.1" / ".2".
    keys = {
        report.relative(s.path): k for s, k in zip(report.samples, group_keys(report), strict=True)
    }
    for photo_ids in (
        ("GH_HL Leaf 340", "GH_HL Leaf 340.1"),
        ("GHLB2ES Leaf 119.1", "GHLB2ES Leaf 119.2"),
    ):
        pair = [k for rel, k in keys.items() if Path(rel).stem.split("___")[1] in photo_ids]
        assert len(pair) == 2 and pair[0] == pair[1], photo_ids
    assert manifest.stats["n_groups"] == len(set(keys.values())) == len(leaf_sizes)
    assert manifest.stats["n_multi_image_groups"] == sum(n > 1 for n in leaf_sizes.values())

    counts = manifest.stats["per_split_class_counts"]
    for name, n in report.counts().items():
        for split, ratio in zip(SPLITS, manifest.ratios, strict=True):
            assert counts[split][name] >= 1
            assert abs(counts[split][name] - ratio * n) <= 3, (name, split)


def test_load_tensor_matches_pil_on_real_jpeg(report: ScanReport) -> None:
    for sample in report.samples[::400]:
        tensor = load_tensor(sample.path)
        reference = torch.from_numpy(np.array(open_rgb(sample.path))).permute(2, 0, 1)
        diff = (tensor.int() - reference.int()).abs().float()
        assert tensor.shape == reference.shape == (3, 256, 256)
        assert diff.mean() <= 2.0
