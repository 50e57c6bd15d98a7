"""cropdoc.data.scan: folder-per-class scan, bad-file reporting, duplicates, errors."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropdoc.data.scan import BadFile, ScanReport, scan_folder
from cropdoc.errors import DataError


def jpeg(seed: int, size: tuple[int, int] = (24, 16), **kwargs) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def png(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    data = bytearray(png(Image.new("L", (1, 1))))
    start = data.index(b"IHDR")
    ihdr = bytearray(data[start : start + 17])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[start : start + 17] = ihdr
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


BAD_REASONS = {
    "alpha/zero.jpg": "empty file",
    "alpha/cut.jpg": "truncated or corrupt image: ",
    "alpha/crc.png": "truncated or corrupt image: ",
    "alpha/text.jpg": "not an image",
    "alpha/page.png": "not an image",
    "alpha/notes.txt": "unsupported extension '.txt'",
    "alpha/anim.gif": "unsupported extension '.gif'",
    "alpha/bomb.png": "too many pixels: ",
}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three classes: good files of every odd mode, one of every bad kind, duplicates."""
    root = tmp_path / "data"
    # alpha: 4 good JPEGs (one nested, one upper-case extension, one a label conflict)
    # + every bad kind.
    put(root, "alpha/a1.jpg", jpeg(1))
    put(root, "alpha/A2.JPG", jpeg(2))
    put(root, "alpha/deeper/still/a3.jpeg", jpeg(3))
    put(root, "alpha/a4.jpg", jpeg(10))
    put(root, "alpha/zero.jpg", b"")
    full = jpeg(4, (128, 128))
    put(root, "alpha/cut.jpg", full[: len(full) // 2])
    crc = bytearray(png(Image.fromarray(np.full((32, 32, 3), 90, np.uint8))))
    crc[crc.index(b"IDAT") + 20] ^= 0xFF
    put(root, "alpha/crc.png", bytes(crc))
    put(root, "alpha/text.jpg", b"hello, I am text\n")
    put(root, "alpha/page.png", b"<html><body>Not Found</body></html>")
    put(root, "alpha/notes.txt", b"notes")
    put(root, "alpha/anim.gif", b"GIF89a")
    put(root, "alpha/bomb.png", bomb_png(20000, 20000))
    put(root, "alpha/.hidden.jpg", b"ignored")
    put(root, "alpha/.cache/x.jpg", b"ignored")
    put(root, "alpha/Thumbs.db", b"ignored")
    put(root, "alpha/__MACOSX/._a1.jpg", b"ignored")
    # beta: the odd-but-good modes.
    put(root, "beta/gray.png", png(Image.new("L", (5, 7), 40)))
    put(root, "beta/rgba.png", png(Image.new("RGBA", (5, 7), (255, 0, 0, 0))))
    pal = Image.new("P", (5, 7), 0)
    pal.putpalette([255, 0, 0] + [0] * 765)
    put(root, "beta/pal.png", png(pal, transparency=0))
    buf = io.BytesIO()
    Image.new("RGB", (5, 7), (10, 200, 30)).convert("CMYK").save(buf, "JPEG")
    put(root, "beta/cmyk.jpg", buf.getvalue())
    put(root, "beta/g16.png", png(Image.fromarray(np.full((7, 5), 40000, np.uint16))))
    exif = Image.Exif()
    exif[0x0112] = 6
    put(root, "beta/rotated.jpg", jpeg(5, (30, 10), exif=exif.tobytes()))
    # gamma: a within-class duplicate and a copy of an alpha image (label conflict).
    put(root, "gamma/g1.jpg", jpeg(6))
    put(root, "gamma/g1 copy.jpg", jpeg(6))
    put(root, "gamma/g2.jpg", jpeg(7))
    put(root, "gamma/from_alpha.jpg", jpeg(1))
    # Ignored: hidden and system folders, loose files in the root.
    put(root, ".trash/t1.jpg", jpeg(8))
    put(root, "__MACOSX/alpha/._a1.jpg", b"ignored")
    put(root, ".DS_Store", b"ignored")
    put(root, "README.txt", b"about this data")
    put(root, "stray.jpg", jpeg(9))
    return root


def test_scan_reports_everything(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="cropdoc.data"):
        report = scan_folder(dataset, progress=lambda done, total: calls.append((done, total)))

    assert report.root == dataset.resolve()
    assert report.classes == ["alpha", "beta", "gamma"]  # no __MACOSX, no .trash
    # The label conflict (alpha/a1.jpg = gamma/from_alpha.jpg) is left out of both classes.
    assert report.counts() == {"alpha": 3, "beta": 6, "gamma": 3}
    assert report.label_conflicts == [["alpha/a1.jpg", "gamma/from_alpha.jpg"]]

    reasons = {report.relative(b.path): b.reason for b in report.bad_files}
    assert set(reasons) == set(BAD_REASONS)  # Thumbs.db and __MACOSX/ are no bad files
    for rel, expected in BAD_REASONS.items():
        assert reasons[rel].startswith(expected), (rel, reasons[rel])
    assert [report.relative(b.path) for b in report.bad_files] == sorted(BAD_REASONS)

    rels = [report.relative(s.path) for s in report.samples]
    assert rels[:3] == ["alpha/A2.JPG", "alpha/a4.jpg", "alpha/deeper/still/a3.jpeg"]
    assert [s.label for s in report.samples] == sorted(s.label for s in report.samples)
    for s in report.samples:
        assert s.path.is_absolute()
        assert s.class_name == report.classes[s.label]
        assert s.sha256 == hashlib.sha256(s.path.read_bytes()).hexdigest()
        assert s.split is None
    sizes = {report.relative(s.path): (s.width, s.height) for s in report.samples}
    assert sizes["beta/rotated.jpg"] == (10, 30)  # EXIF orientation applied
    assert sizes["beta/g16.png"] == (5, 7)

    assert [[report.relative(p) for p in g] for g in report.duplicate_groups()] == [
        ["gamma/g1 copy.jpg", "gamma/g1.jpg"],
    ]
    messages = [p.message for p in report.problems()]
    assert any(
        "label conflicts" in m and "alpha/a1.jpg = gamma/from_alpha.jpg" in m for m in messages
    )
    assert any("stray.jpg" in m and "not inside a class folder" in m for m in messages)
    assert not any("README.txt" in m or "DS_Store" in m or "Thumbs" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # callers report

    n_decoded = 14 + len(BAD_REASONS) - 2  # the two unsupported files are not decoded
    assert len(calls) == n_decoded
    assert sorted(d for d, _ in calls) == list(range(1, n_decoded + 1))
    assert {t for _, t in calls} == {n_decoded}


def test_label_conflicts_can_be_kept(dataset: Path) -> None:
    report = scan_folder(dataset, label_conflicts="keep")
    assert report.counts() == {"alpha": 4, "beta": 6, "gamma": 4}
    assert report.label_conflicts == [["alpha/a1.jpg", "gamma/from_alpha.jpg"]]
    assert "kept" in next(p.message for p in report.problems() if p.kind == "label_conflicts")


def test_scan_is_deterministic(dataset: Path) -> None:
    assert scan_folder(dataset).to_dict() == scan_folder(dataset).to_dict()


def test_save_load_round_trip(dataset: Path, tmp_path: Path) -> None:
    report = scan_folder(dataset)
    out = tmp_path / "run" / "scan_report.json"
    report.save(out)
    data = json.loads(out.read_text())
    assert data["samples"][0]["path"] == "alpha/A2.JPG"
    assert data["counts"] == report.counts()
    assert len(data["duplicate_groups"]) == 1
    assert data["label_conflicts"] == [["alpha/a1.jpg", "gamma/from_alpha.jpg"]]
    assert {p["kind"] for p in data["problems"]} >= {"bad_files", "label_conflicts"}
    loaded = ScanReport.load(out)
    assert loaded == report
    moved = ScanReport.load(out, root=tmp_path / "elsewhere")
    assert moved.samples[0].path == tmp_path / "elsewhere/alpha/A2.JPG"
    assert moved.bad_files[0] == BadFile(
        tmp_path / "elsewhere/alpha/anim.gif", "unsupported extension '.gif'"
    )


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        ScanReport.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read"):
        ScanReport.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"root": "/x", "classes": ["a"]}')
    with pytest.raises(DataError, match="malformed"):
        ScanReport.load(tmp_path / "partial.json")


def test_class_filter_keeps_given_order(dataset: Path) -> None:
    report = scan_folder(dataset, classes=["gamma", "beta"])
    assert report.classes == ["gamma", "beta"]
    assert report.counts() == {"gamma": 4, "beta": 6}  # no alpha: no label conflict
    assert {s.label for s in report.samples if s.class_name == "gamma"} == {0}
    assert report.bad_files == []


def test_unknown_class_filter_lists_available(dataset: Path) -> None:
    with pytest.raises(DataError, match=r"unknown class.*'delta'.*\['alpha', 'beta', 'gamma'\]"):
        scan_folder(dataset, classes=["beta", "delta"])
    with pytest.raises(DataError, match="more than once"):
        scan_folder(dataset, classes=["beta", "beta"])


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nowhere")


def test_file_path(tmp_path: Path) -> None:
    path = put(tmp_path, "one.jpg", jpeg(0))
    with pytest.raises(DataError, match="is a file, not a folder"):
        scan_folder(path)


def test_no_class_folders(tmp_path: Path) -> None:
    put(tmp_path, "loose.jpg", jpeg(0))
    put(tmp_path, ".hidden/x.jpg", jpeg(1))
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(tmp_path)


def test_class_without_good_images(tmp_path: Path) -> None:
    for i in range(3):
        put(tmp_path, f"good/{i}.jpg", jpeg(i))
    put(tmp_path, "broken/a.jpg", b"")
    put(tmp_path, "broken/b.txt", b"x")
    with pytest.raises(DataError, match=r"'broken' has no usable images \(2 bad files\)"):
        scan_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"'empty' has no usable images \(0 bad files\)"):
        scan_folder(tmp_path, classes=["good", "empty"])


def test_class_with_too_few_images(tmp_path: Path) -> None:
    for i in range(3):
        put(tmp_path, f"good/{i}.jpg", jpeg(i))
    put(tmp_path, "small/0.jpg", jpeg(10))
    put(tmp_path, "small/1.jpg", jpeg(11))
    with pytest.raises(DataError, match=r"'small' has 2 good image\(s\), fewer than the minimum"):
        scan_folder(tmp_path)
    assert scan_folder(tmp_path, min_images_per_class=2).counts() == {"good": 3, "small": 2}
