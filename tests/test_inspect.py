"""Tests for the dataset summary numbers and plots behind ``cropdoc data inspect``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from cropdoc.classnames import class_label, split_crop_disease
from cropdoc.data.inspect import plot_class_distribution, plot_samples, summarize
from cropdoc.data.scan import BadFile, Sample, ScanReport, scan_folder
from cropdoc.data.synthetic import generate_dataset
from cropdoc.errors import DataError

CLASSES = ["Tomato___healthy", "Tomato___Late_blight", "Potato___Early_blight"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ScanReport:
    root = generate_dataset(
        tmp_path_factory.mktemp("inspect") / "data",
        images_per_class=5,
        image_size=32,
        classes=CLASSES,
        seed=1,
    )
    # Extra files so the numbers are not all equal: one more image, one duplicate, two bad.
    late = root / "Tomato___Late_blight"
    first = sorted(late.glob("*.jpg"))[0]
    (late / "copy.jpg").write_bytes(first.read_bytes())
    Image.new("RGB", (48, 40), "green").save(root / "Potato___Early_blight" / "wide.png")
    (root / "Tomato___healthy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "Tomato___healthy" / "notes.txt").write_text("hello")
    return scan_folder(root)


def test_summarize_on_a_scanned_dataset(report: ScanReport) -> None:
    s = summarize(report)
    assert s["n_classes"] == 3
    assert s["n_images"] == 17  # 5 generated per class, + a copy and a PNG
    assert s["counts"] == {
        "Potato___Early_blight": 6,
        "Tomato___Late_blight": 6,
        "Tomato___healthy": 5,
    }
    assert s["n_bad"] == 2
    assert s["imbalance_ratio"] == pytest.approx(6 / 5)
    assert s["image_sizes"]["most_common"] == [32, 32]
    assert s["image_sizes"]["most_common_count"] == s["n_images"] - 1  # all but the PNG
    assert s["image_sizes"]["width"] == {"min": 32, "median": 32, "max": 48}
    assert s["image_sizes"]["height"] == {"min": 32, "median": 32, "max": 40}
    assert s["bad_by_reason"]["unsupported extension '.txt'"] == 1
    assert sum(s["bad_by_reason"].values()) == 2
    assert s["duplicate_groups"] == 1 and s["duplicate_images"] == 2


def _report(tmp_path: Path, sizes: dict[str, list[tuple[int, int]]], bad: list[str]) -> ScanReport:
    classes = list(sizes)
    samples = [
        Sample(tmp_path / c / f"{i}.jpg", label, c, f"{c}{i}", w, h)
        for label, c in enumerate(classes)
        for i, (w, h) in enumerate(sizes[c])
    ]
    bad_files = [BadFile(tmp_path / classes[0] / f"bad{i}", r) for i, r in enumerate(bad)]
    return ScanReport(root=tmp_path, classes=classes, samples=samples, bad_files=bad_files)


def test_summarize_numbers_on_a_constructed_report(tmp_path: Path) -> None:
    report = _report(
        tmp_path,
        {"A___x": [(256, 256)] * 8 + [(100, 300)], "B___y": [(256, 256), (640, 480)]},
        [
            "truncated or corrupt image: broken data stream",
            "truncated or corrupt image: image file is truncated (3 bytes not processed)",
            "empty file",
        ],
    )
    s = summarize(report)
    assert s["n_classes"] == 2 and s["n_images"] == 11 and s["n_bad"] == 3
    assert s["counts"] == {"A___x": 9, "B___y": 2}
    assert s["imbalance_ratio"] == pytest.approx(4.5)
    assert s["image_sizes"] == {
        "width": {"min": 100, "median": 256, "max": 640},
        "height": {"min": 256, "median": 256, "max": 480},
        "most_common": [256, 256],
        "most_common_count": 9,
    }
    assert s["bad_by_reason"] == {"truncated or corrupt image": 2, "empty file": 1}
    assert list(s["bad_by_reason"]) == ["truncated or corrupt image", "empty file"]
    assert s["duplicate_groups"] == 0


def test_summarize_empty_class_and_no_images(tmp_path: Path) -> None:
    s = summarize(_report(tmp_path, {"A___x": [], "B___y": []}, []))
    assert s["imbalance_ratio"] is None and s["image_sizes"] is None and s["n_images"] == 0


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Tomato___Late_blight", ("Tomato", "Late blight")),
        ("Pepper,_bell___Bacterial_spot", ("Pepper, bell", "Bacterial spot")),
        ("Potato___healthy", ("Potato", "healthy")),
        ("Pepper,_bell___healthy", ("Pepper, bell", "healthy")),
        ("Pepper__bell___healthy", ("Pepper, bell", "healthy")),
        ("Pepper__bell___Bacterial_spot", ("Pepper, bell", "Bacterial spot")),
        ("Tomato_Bacterial_spot", ("Tomato", "Bacterial spot")),
        ("Tomato__Target_Spot", ("Tomato", "Target Spot")),
        ("Tomato_healthy", ("Tomato", "healthy")),
        ("Corn_(maize)___Common_rust_", ("Corn (maize)", "Common rust")),
        (
            "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot",
            ("Corn (maize)", "Cercospora leaf spot Gray leaf spot"),
        ),
        ("Tomato__Tomato_YellowLeaf__Curl_Virus", ("Tomato", "Tomato YellowLeaf Curl Virus")),
        ("healthy", ("healthy", "")),
        ("leaf_spots", ("leaf_spots", "")),
        ("my leaves", ("my leaves", "")),
        ("Tomato___", ("Tomato___", "")),
        ("", ("", "")),
    ],
)
def test_split_crop_disease(name: str, expected: tuple[str, str]) -> None:
    assert split_crop_disease(name) == expected


def test_class_label() -> None:
    assert class_label("Tomato___Late_blight") == "Tomato · Late blight"
    assert class_label("weeds") == "weeds"


def _assert_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plots_are_valid_pngs_written_atomically(report: ScanReport, tmp_path: Path) -> None:
    dist = plot_class_distribution(report, tmp_path / "out" / "classes.png")
    grid = plot_samples(report, tmp_path / "out" / "samples.png", per_class=3, seed=2)
    assert dist == tmp_path / "out" / "classes.png" and grid == tmp_path / "out" / "samples.png"
    w, h = _assert_png(dist)
    assert 400 < w < 2000 and 150 < h < 2000
    w, h = _assert_png(grid)
    assert 300 < w < 2000 and 300 < h < 2000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["classes.png", "samples.png"]


def test_sample_grid_is_reproducible_for_a_seed(report: ScanReport, tmp_path: Path) -> None:
    a = plot_samples(report, tmp_path / "a.png", per_class=2, seed=5)
    b = plot_samples(report, tmp_path / "b.png", per_class=2, seed=5)
    assert a.read_bytes() == b.read_bytes()


def test_many_classes_keep_sane_figure_sizes(tmp_path: Path) -> None:
    image = tmp_path / "leaf.jpg"
    Image.new("RGB", (64, 64), (40, 140, 40)).save(image)
    classes = [f"Crop{i % 7}___Disease_{i}" for i in range(40)]
    samples = [
        Sample(image, label, name, f"{label}-{k}", 64, 64)
        for label, name in enumerate(classes)
        for k in range(label % 5 + 1)
    ]
    big = ScanReport(root=tmp_path, classes=classes, samples=samples, bad_files=[])
    w, h = _assert_png(plot_samples(big, tmp_path / "samples.png", per_class=4))
    assert h < 3500 and w < 1200
    w, h = _assert_png(plot_class_distribution(big, tmp_path / "classes.png"))
    assert h < 2000 and w < 1600


def test_unreadable_thumbnail_leaves_a_blank_cell(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = _report(tmp_path, {"A___x": [(32, 32)]}, [])  # its file does not exist
    with caplog.at_level(logging.WARNING, logger="cropdoc.data.inspect"):
        _assert_png(plot_samples(report, tmp_path / "s.png", per_class=2))
    assert "cannot open" in caplog.text


def test_plots_refuse_an_empty_report(tmp_path: Path) -> None:
    empty = ScanReport(root=tmp_path, classes=[], samples=[], bad_files=[])
    with pytest.raises(DataError, match="nothing to plot"):
        plot_class_distribution(empty, tmp_path / "x.png")
    with pytest.raises(DataError):
        plot_samples(empty, tmp_path / "y.png")
    assert not list(tmp_path.iterdir())
