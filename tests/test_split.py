"""cropdoc.data.split: stratified, grouped, deterministic, persisted."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import pytest

from cropdoc.data.scan import Sample, ScanReport
from cropdoc.data.split import (
    DEFAULT_GROUP_PATTERN,
    SPLITS,
    SplitManifest,
    group_keys,
    leaf_keys,
    make_split,
)
from cropdoc.errors import DataError

ROOT = Path("/data/pv")
RATIOS = (0.7, 0.15, 0.15)


def report_from(files: dict[str, list[str]], shas: dict[str, str] | None = None) -> ScanReport:
    """A ScanReport without images: {class: [file names]}; sha from ``shas`` or the name."""
    shas = shas or {}
    classes = sorted(files)
    samples = []
    for label, name in enumerate(classes):
        for fname in sorted(files[name]):
            rel = f"{name}/{fname}"
            sha = shas.get(rel, hashlib.sha256(rel.encode()).hexdigest())
            samples.append(Sample(ROOT / rel, label, name, sha, 256, 256))
    return ScanReport(root=ROOT, classes=classes, samples=samples, bad_files=[])


def singletons(n: int, tag: str) -> list[str]:
    return [f"{i:08x}-0000-0000-0000-000000000000___{tag} {i}.JPG" for i in range(n)]


def split_of(manifest: SplitManifest) -> dict[str, str]:
    return {rel: split for split, items in manifest.splits.items() for rel, _ in items}


def test_default_pattern_on_plantvillage_names() -> None:
    regex = re.compile(DEFAULT_GROUP_PATTERN)
    uuid = "018e494e-d2eb-468b-9d02-40219d9f4921"
    cases = {
        f"{uuid}___JR_B.Spot 9045": "JR_B.Spot 9045",
        f"{uuid}___GCREC_Bact.Sp 3110": "GCREC_Bact.Sp 3110",
        f"{uuid}___GHLB_PS Leaf 2.2 Day 3": "GHLB_PS Leaf 2.2",
        f"{uuid}___GHLB_PS Leaf 2.2 Day 18": "GHLB_PS Leaf 2.2",
        f"{uuid}___GHLB Leaf 8.3 Day 13": "GHLB Leaf 8.3",
        f"{uuid}___GH_HL Leaf 340": "GH_HL Leaf 340",
        f"{uuid}___GH_HL Leaf 340.1": "GH_HL Leaf 340",  # re-shot of the same leaf
        f"{uuid}___GHLB2ES Leaf 119.2": "GHLB2ES Leaf 119",
        f"{uuid}___UF.GRC_BS_Lab Leaf 0222": "UF.GRC_BS_Lab Leaf 0222",
        f"{uuid}___CG1": "CG1",
        f"{uuid}___RS_HL 1864_final_masked": "RS_HL 1864",
        f"{uuid}___RS_HL 1864 (1)": "RS_HL 1864",
        f"{uuid}___RS_HL 1864 copy": "RS_HL 1864",
        f"{uuid}___RS_HL 1864 - Copy (2)": "RS_HL 1864",
        f"{uuid}___RS_HL 1864_new30degFlipLR": "RS_HL 1864",
        f"{uuid}___RS_HL 1864_180deg": "RS_HL 1864",
        f"{uuid}___RS_HL 1864_flipTB": "RS_HL 1864",
    }
    for stem, expected in cases.items():
        match = regex.search(stem)
        assert match and match.group("group") == expected, stem
    assert regex.search("IMG_0001") is None


def test_every_class_in_every_split_within_one_image() -> None:
    report = report_from(
        {
            "a": singletons(50, "A"),
            "b": singletons(23, "B"),
            "c": singletons(7, "C"),
            "d": singletons(3, "D"),
        }
    )
    manifest = make_split(report, ratios=RATIOS, seed=1)
    counts = manifest.stats["per_split_class_counts"]
    for name, n in report.counts().items():
        assert sum(counts[s][name] for s in SPLITS) == n
        for split, ratio in zip(SPLITS, RATIOS, strict=True):
            assert counts[split][name] >= 1, (name, split)
            if n >= 7:
                assert abs(counts[split][name] - ratio * n) <= 1, (name, split)
    assert sum(len(v) for v in manifest.splits.values()) == len(report.samples)
    assert manifest.stats["warnings"] == []


def test_zero_ratio_split_is_empty() -> None:
    manifest = make_split(report_from({"a": singletons(10, "A")}), ratios=(0.8, 0.2, 0.0))
    assert manifest.splits["test"] == []
    assert len(manifest.splits["train"]) == 8 and len(manifest.splits["val"]) == 2


def grouped_report() -> ScanReport:
    """Leaves photographed on several days, plus byte-identical copies across leaf ids."""
    files: dict[str, list[str]] = defaultdict(list)
    shas: dict[str, str] = {}
    for cls in ("Tomato___Late_blight", "Tomato___healthy"):
        for leaf in range(12):
            for day in range(1 + leaf % 4):
                files[cls].append(f"{leaf:04d}{day:04d}-aaaa___GHLB Leaf {leaf}.1 Day {day}.jpg")
        files[cls] += singletons(20, "RS_HL")
        # "RS_HL 0" and "RS_HL 1" are different names but the same bytes: one group.
        dup = hashlib.sha256(f"{cls}-dup".encode()).hexdigest()
        for name in singletons(2, "RS_HL"):
            shas[f"{cls}/{name}"] = dup
    return report_from(dict(files), shas)


def test_leaf_keys_from_names_alone() -> None:
    """What evaluation resamples: one key per leaf, by name, without the bytes."""
    keys = leaf_keys(
        [
            ("Tomato___healthy", "t/0001-aa___GHLB Leaf 3.1 Day 1.jpg"),
            ("Tomato___healthy", "t/0002-bb___GHLB Leaf 3.1 Day 4.jpg"),
            ("Tomato___healthy", "t/0003-cc___GHLB Leaf 4.1 Day 1.jpg"),
            ("Corn___healthy", "c/0004-dd___GHLB Leaf 3.1 Day 1.jpg"),
            ("Corn___healthy", "c/IMG_0001.jpg"),
        ]
    )
    assert keys[0] == keys[1] == "Tomato___healthy/GHLB Leaf 3.1"
    assert len(set(keys)) == 4 and keys[4] == "Corn___healthy/c/IMG_0001.jpg"
    with pytest.raises(DataError):
        leaf_keys([("A", "x.jpg")], group_pattern="(")


def test_groups_never_straddle_splits() -> None:
    report = grouped_report()
    keys = group_keys(report)
    assert len(set(keys)) == 2 * (12 + 20 - 1)
    where = split_of(make_split(report, seed=7))
    split_of_group: dict[str, set[str]] = defaultdict(set)
    for sample, key in zip(report.samples, keys, strict=True):
        split_of_group[key].add(where[report.relative(sample.path)])
    assert all(len(s) == 1 for s in split_of_group.values())
    # Day suffix dropped: the 4 photos of leaf 3 form one group.
    leaf3 = [
        k
        for s, k in zip(report.samples, keys, strict=True)
        if "Leaf 3.1 Day" in s.path.name and s.class_name == "Tomato___healthy"
    ]
    assert len(leaf3) == 4 and len(set(leaf3)) == 1
    stats = make_split(report, seed=7).stats
    assert stats["n_groups"] == 2 * (12 + 20 - 1) and stats["n_duplicate_groups"] == 2
    assert stats["n_multi_image_groups"] == 2 * 9 + 2


def test_duplicates_across_classes_stay_together(caplog: pytest.LogCaptureFixture) -> None:
    files = {"a": singletons(10, "A"), "b": singletons(10, "B")}
    same = "f" * 64
    report = report_from(files, {f"a/{files['a'][0]}": same, f"b/{files['b'][0]}": same})
    for seed in range(5):
        where = split_of(make_split(report, seed=seed))
        assert where[f"a/{files['a'][0]}"] == where[f"b/{files['b'][0]}"]


def test_same_seed_same_split_other_seed_differs() -> None:
    report = grouped_report()
    first = make_split(report, seed=3)
    assert make_split(report, seed=3).splits == first.splits
    assert make_split(report, seed=4).splits != first.splits
    # Order of classes/samples in the report does not matter for a class's split.
    shuffled = ScanReport(report.root, report.classes, list(reversed(report.samples)), [])
    assert split_of(make_split(shuffled, seed=3)) == split_of(first)


def test_too_few_groups_warns(caplog: pytest.LogCaptureFixture) -> None:
    files = {
        "a": singletons(10, "A"),
        "b": [f"{i}-x___Leaf 1 Day {i}.jpg" for i in range(3)] + ["9-x___Leaf 2 Day 1.jpg"],
    }
    with caplog.at_level(logging.WARNING, logger="cropdoc.data.split"):
        manifest = make_split(report_from(files))
    assert len(manifest.stats["warnings"]) == 1
    assert "class 'b' has only 2 leaf group(s)" in manifest.stats["warnings"][0]
    assert any("class 'b'" in r.message for r in caplog.records)


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = make_split(grouped_report(), seed=11)
    path = tmp_path / "run" / "split.json"
    manifest.save(path)
    raw = json.loads(path.read_text())
    assert raw["splits"]["train"][0][0].startswith("Tomato___")
    loaded = SplitManifest.load(path)
    assert loaded == manifest
    train = loaded.samples("train")
    assert train[0][0] == ROOT / raw["splits"]["train"][0][0]
    moved = loaded.samples("val", root=tmp_path / "moved")
    assert all(p.is_relative_to(tmp_path / "moved") for p, _ in moved)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        loaded.samples("dev")


def test_manifest_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        SplitManifest.load(tmp_path / "split.json")
    (tmp_path / "garbage.json").write_text("][")
    with pytest.raises(DataError, match="cannot be read"):
        SplitManifest.load(tmp_path / "garbage.json")
    good = make_split(report_from({"a": singletons(5, "A")})).to_dict()
    for broken in (
        {k: v for k, v in good.items() if k != "splits"},
        {**good, "splits": {"train": [["a/x.jpg", 3]]}},
        {**good, "ratios": [1.0]},
    ):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(DataError, match="malformed"):
            SplitManifest.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ((0.7, 0.3), "3 non-negative numbers"),
        ((0.7, -0.1, 0.4), "3 non-negative numbers"),
        ((0.7, 0.2, 0.2), "must sum to 1"),
        ((0.0, 0.5, 0.5), "train ratio must be > 0"),
        (("a", 0.5, 0.5), "must be 3 numbers"),
        ((float("nan"), 0.5, 0.5), "3 non-negative numbers"),
    ],
)
def test_bad_ratios(ratios: tuple, message: str) -> None:
    with pytest.raises(DataError, match=message):
        make_split(report_from({"a": singletons(5, "A")}), ratios=ratios)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("___(?P<group>.+", "invalid group pattern"), (r"___(.+)", "no named group 'group'")],
)
def test_bad_group_pattern(pattern: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        make_split(report_from({"a": singletons(5, "A")}), group_pattern=pattern)


def test_custom_pattern_and_unmatched_names() -> None:
    files = {"a": [f"plant{p}_shot{s}.png" for p in range(4) for s in range(2)] + ["odd.png"]}
    report = report_from(files)
    keys = group_keys(report, group_pattern=r"^(?P<group>plant\d+)_")
    assert len(set(keys)) == 5
    # The default pattern matches none of these names: one group per file.
    assert len(set(group_keys(report))) == 9
