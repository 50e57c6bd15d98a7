"""Tests for the synthetic demo dataset generator."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from cropdoc.data.scan import scan_folder
from cropdoc.data.split import group_keys
from cropdoc.data.synthetic import DEMO_CLASSES, MARKER_NAME, generate_dataset
from cropdoc.errors import ConfigError, DataError

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"
NAME = re.compile(rf"^{UUID}___(SYN_C\d\dL\d{{3}}) Day (\d)\.jpg$")
SMALL = {"images_per_class": 8, "image_size": 40}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn") / "demo", **SMALL, seed=7)


def test_layout_counts_and_class_names(demo: Path) -> None:
    assert len(DEMO_CLASSES) == 6
    assert all("___" in c for c in DEMO_CLASSES)
    dirs = sorted(p.name for p in demo.iterdir() if p.is_dir())
    assert dirs == sorted(DEMO_CLASSES)
    for name in DEMO_CLASSES:
        files = list((demo / name).iterdir())
        assert len(files) == SMALL["images_per_class"]
        assert all(NAME.match(f.name) for f in files), [f.name for f in files]
    assert (demo / MARKER_NAME).is_file()
    assert not any(p.name.startswith(".") for p in demo.parent.iterdir() if p != demo)


def test_images_decode_as_rgb_of_the_requested_size(demo: Path) -> None:
    for path in demo.rglob("*.jpg"):
        with Image.open(path) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == (SMALL["image_size"], SMALL["image_size"])


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate_dataset(tmp_path / "a", **SMALL, seed=3))
    b = _files(generate_dataset(tmp_path / "b", **SMALL, seed=3))
    c = _files(generate_dataset(tmp_path / "c", **SMALL, seed=4))
    assert a == b
    assert set(a.values()).isdisjoint(c.values())


def test_a_class_does_not_depend_on_the_other_classes(tmp_path: Path) -> None:
    one = _files(generate_dataset(tmp_path / "one", **SMALL, classes=["Tomato___Leaf_Mold"]))
    two = _files(
        generate_dataset(
            tmp_path / "two", **SMALL, classes=["Tomato___Leaf_Mold", "Potato___healthy"]
        )
    )
    assert one.items() <= two.items()


def test_some_leaves_are_photographed_more_than_once(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "d", images_per_class=30, image_size=32, seed=0)
    for name in DEMO_CLASSES:
        photos: dict[str, list[Path]] = defaultdict(list)
        for f in (root / name).iterdir():
            leaf, n = NAME.match(f.name).groups()
            photos[leaf].append(f)
        multi = [files for files in photos.values() if len(files) > 1]
        assert multi, f"{name}: every leaf photographed once, grouping would not matter"
        assert all(len(files) <= 3 for files in photos.values())
        # Repeat photos of one leaf vary (rotation, position, light) rather than being copies.
        for files in multi:
            assert len({f.read_bytes() for f in files}) == len(files)
    # Leaf ids are unique across classes, so grouping never merges two classes' leaves.
    leaves_per_class = [
        {NAME.match(f.name).group(1) for f in (root / c).iterdir()} for c in DEMO_CLASSES
    ]
    assert sum(map(len, leaves_per_class)) == len(set().union(*leaves_per_class))


def test_rerun_with_same_parameters_is_a_no_op(demo: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*")}
    calls: list[tuple[int, int]] = []
    assert generate_dataset(demo, **SMALL, seed=7, progress=lambda *a: calls.append(a)) == demo
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*")} == before
    assert calls == []


def test_other_parameters_replace_a_previous_synthetic_dataset(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "d", **SMALL, seed=1)
    calls: list[tuple[int, int]] = []
    generate_dataset(
        root, images_per_class=3, image_size=32, seed=1, progress=lambda *a: calls.append(a)
    )
    assert len(list(root.rglob("*.jpg"))) == 3 * len(DEMO_CLASSES)
    assert json.loads((root / MARKER_NAME).read_text())["images_per_class"] == 3
    assert calls[-1] == (18, 18) and len(calls) == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp folders left


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.jpg").write_bytes(b"precious")
    with pytest.raises(DataError, match="refusing to overwrite"):
        generate_dataset(tmp_path / "photos", **SMALL)
    assert (tmp_path / "photos" / "mine.jpg").read_bytes() == b"precious"


def test_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    root = generate_dataset(tmp_path / "empty", images_per_class=2, image_size=32)
    assert len(list(root.rglob("*.jpg"))) == 2 * len(DEMO_CLASSES)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classes": ["Banana___Sigatoka"]}, "Banana___Sigatoka"),
        ({"classes": ["Tomato___Late_blight", "Tomato___Late_blight"]}, "unique"),
        ({"images_per_class": 0}, "images_per_class"),
        ({"image_size": 8}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_raise_config_error(tmp_path: Path, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_the_grouped_split_sees_repeat_photos_as_one_leaf(demo: Path) -> None:
    report = scan_folder(demo)
    keys = group_keys(report)
    expected = [f"{s.class_name}/{NAME.match(s.path.name).group(1)}" for s in report.samples]
    # Same partition of the images as the leaf ids in the names (key spelling is split's).
    by_key: dict[str, set[str]] = defaultdict(set)
    for key, leaf in zip(keys, expected, strict=True):
        by_key[key].add(leaf)
    assert all(len(leaves) == 1 for leaves in by_key.values())
    assert len(set(keys)) == len(set(expected)) < len(report.samples)
