"""The layouts people download, built in temp dirs from real PlantVillage leaves: each one
detected, reported in one line per kind of problem, and handled by train and evaluate."""

from __future__ import annotations

import json
import logging
import shutil
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from cropdoc.cli import app
from cropdoc.data.layout import dataset_root, detect_layout
from cropdoc.data.scan import scan_folder
from cropdoc.data.split import make_split
from cropdoc.errors import DataError

A, B = "Tomato___healthy", "Potato___healthy"


def leaves(src: Path, name: str, start: int, n: int) -> list[Path]:
    return sorted((src / name).iterdir())[start : start + n]


def put(folder: Path, files: list[Path], *, link: bool = False) -> None:
    """Copy (or symlink) real leaves into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if link:
            (folder / f.name).symlink_to(f)
        else:
            shutil.copy(f, folder / f.name)


def presplit(src: Path, root: Path, names=("Train", "VALID", "test")) -> Path:
    """Two classes in train/val/test folders (any case), 12/4/4 leaves each, no overlap."""
    for name, (start, n) in zip(names, [(0, 12), (12, 4), (16, 4)], strict=False):
        for cls in (A, B):
            put(root / name / cls, leaves(src, cls, start, n), link=True)
    return root


def test_presplit_copy_uses_its_own_split(plantvillage_mini: Path, tmp_path: Path):
    root = presplit(plantvillage_mini, tmp_path / "data")
    (root / "extras").mkdir()  # beside the split folders: reported, not a class
    put(root / "VALID" / "Corn___Common_rust", leaves(plantvillage_mini, A, 30, 1))
    layout = detect_layout(root)
    assert layout.kind == "pre-split"
    assert layout.split_folders == {"train": "Train", "val": "VALID", "test": "test"}
    report = scan_folder(root)
    assert report.classes == [B, A] and report.counts() == {B: 20, A: 20}
    manifest = make_split(report, seed=1)
    for split, folder in layout.split_folders.items():
        assert {rel.split("/")[0] for rel, _ in manifest.splits[split]} == {folder}
    assert [len(manifest.splits[s]) for s in ("train", "val", "test")] == [24, 8, 8]
    assert manifest.stats["source"] == "shipped" and manifest.stats["carved"] == {}
    kinds = {p.kind: p.message for p in report.problems()}
    assert "VALID/Corn___Common_rust" in kinds["unknown_split_classes"]
    assert "extras" in kinds["ignored_folders"]
    # --resplit: the folders pooled, then split grouped by leaf.
    pooled = make_split(report, seed=1, shipped=False)
    assert pooled.stats["source"] == "grouped"
    assert {rel.split("/")[0] for rel, _ in pooled.splits["test"]} != {"test"}


def test_a_missing_test_folder_is_carved_from_train(plantvillage_mini: Path, tmp_path, caplog):
    root = presplit(plantvillage_mini, tmp_path / "data", names=("train", "validation"))
    with caplog.at_level(logging.INFO, logger="cropdoc.data.split"):
        manifest = make_split(scan_folder(root), ratios=(0.7, 0.15, 0.15))
    assert {rel.split("/")[0] for rel, _ in manifest.splits["test"]} == {"train"}
    assert manifest.stats["carved"] == {"test": "18% of the train folder, grouped by leaf"}
    assert any(
        "ships with" in r.getMessage() and "test 4" in r.getMessage() for r in caplog.records
    )


def test_leaves_in_two_shipped_splits_are_a_leakage_warning(plantvillage_mini, tmp_path, caplog):
    root = presplit(plantvillage_mini, tmp_path / "data")
    shutil.copy(leaves(plantvillage_mini, A, 0, 1)[0], root / "test" / A / "again.jpg")
    with caplog.at_level(logging.WARNING, logger="cropdoc.data.split"):
        manifest = make_split(scan_folder(root))
    assert manifest.stats["groups_across_splits"] == 1
    assert any("--resplit" in r.getMessage() for r in caplog.records)


def test_variant_folders_are_one_error_naming_them(plantvillage_mini: Path, tmp_path: Path):
    root = tmp_path / "raw"
    for variant in ("color", "grayscale", "segmented"):
        for cls in (A, B):
            put(root / variant / cls, leaves(plantvillage_mini, cls, 0, 3), link=True)
    message = r"color/, grayscale/, segmented/.*not classes; choose one with --variant color"
    with pytest.raises(DataError, match=message):
        scan_folder(root)
    report = scan_folder(root, variant="COLOR")
    assert report.root == (root / "color").resolve() and report.classes == [B, A]
    assert dataset_root(root, variant="color") == (root / "color").resolve()
    assert dataset_root(root / "color", variant="color") == (root / "color").resolve()
    with pytest.raises(DataError, match="--variant infrared: .* no folder of that name"):
        scan_folder(root, variant="infrared")
    result = CliRunner().invoke(app, ["data", "inspect", str(root)])
    assert result.exit_code != 0 and "--variant color" in str(result.exception)


def test_nested_copies_are_named_and_left_out(plantvillage_mini: Path, tmp_path: Path):
    root = tmp_path / "data"
    for cls in (A, B):
        put(root / cls, leaves(plantvillage_mini, cls, 0, 5))
        put(root / "PlantVillage" / cls, leaves(plantvillage_mini, cls, 0, 5))  # a full copy
    put(root / A / B, leaves(plantvillage_mini, B, 5, 2))  # a class inside another class
    put(root / A / "2021-06", leaves(plantvillage_mini, A, 5, 2))  # a plain sub-folder: read
    report = scan_folder(root)
    assert report.classes == [B, A] and report.counts() == {B: 5, A: 7}
    assert report.notes["copy_folders"] == ["PlantVillage"]
    assert sorted(report.notes["nested_copies"]) == sorted(
        [f"{A}/{B}", f"PlantVillage/{A}", f"PlantVillage/{B}"]
    )
    messages = [p.message for p in report.problems()]
    assert any(
        m.startswith("1 folder(s) holding only copies") and "PlantVillage" in m for m in messages
    )
    assert any(m.startswith("3 folder(s) named like another class") for m in messages)


def test_a_class_folder_holding_a_presplit_dataset_says_what_to_pass(plantvillage_mini, tmp_path):
    root = tmp_path / "download"
    presplit(plantvillage_mini, root / "New Plant Diseases Dataset")
    put(root / "test" / "test", leaves(plantvillage_mini, A, 40, 2))
    with pytest.raises(DataError, match="holds a pre-split dataset .* pass .*New Plant Diseases"):
        scan_folder(root)
    # A lone folder around the dataset (as zips unpack) is stepped into.
    shutil.rmtree(root / "test")
    assert detect_layout(root).wrapper == "New Plant Diseases Dataset"
    assert scan_folder(root).layout.kind == "pre-split"


def test_twenty_thousand_conflicts_would_still_be_one_line(plantvillage_mini, tmp_path, caplog):
    """Byte-identical files under two classes: left out, one line, full list in the JSON."""
    root = tmp_path / "data"
    for cls in (A, B):
        put(root / cls, leaves(plantvillage_mini, cls, 0, 4))
    copies = leaves(plantvillage_mini, A, 4, 60)
    put(root / A, copies, link=True)
    for f in copies:  # the same bytes filed under the other class too
        (root / B / f"copy-{f.name}").symlink_to(f)
    with caplog.at_level(logging.INFO):
        report = scan_folder(root)
        make_split(report)
    assert report.counts() == {B: 4, A: 4}
    assert len(report.label_conflicts) == 60
    conflicts = [p for p in report.problems() if p.kind == "label_conflicts"]
    assert len(conflicts) == 1 and conflicts[0].count == 120
    assert conflicts[0].message.count(" = ") == 3 and conflicts[0].message.endswith(", ...")
    assert len(caplog.records) < 10  # never a line per file
    report.save(tmp_path / "scan_report.json")
    saved = json.loads((tmp_path / "scan_report.json").read_text())
    assert len(saved["label_conflicts"]) == 60 and saved["problems"][0]["count"] == 120


def test_odd_names_links_and_system_files(plantvillage_mini: Path, tmp_path: Path):
    root = tmp_path / "data"
    nfc = unicodedata.normalize("NFC", "Maïs___Rouille commune")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    src = leaves(plantvillage_mini, A, 0, 12)
    put(root / "Pepper, bell ___ Bacterial spot", src[:3])
    put(root / nfc, src[3:5])
    put(root / nfd, src[5:6])  # the same name written by macOS: one class
    mixed = root / "Pepper, bell ___ Bacterial spot" / "UPPER.JpEg"
    shutil.copy(src[6], mixed)
    (root / "linked").symlink_to(plantvillage_mini / B)  # a linked class folder
    (root / nfc / "loop").symlink_to(root / nfc)  # a link back up: cut, not followed forever
    (root / nfc / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    for junk in (".DS_Store", "Thumbs.db", "desktop.ini", "._leaf.jpg"):
        (root / nfc / junk).write_bytes(b"system file")
    put(root / "__MACOSX" / nfc, src[7:8])
    put(root / nfc / "__MACOSX", src[8:9])
    report = scan_folder(root, min_images_per_class=1)
    assert report.classes == sorted(["Pepper, bell ___ Bacterial spot", nfc, "linked"])
    assert report.counts()[nfc] == 3 and report.counts()["Pepper, bell ___ Bacterial spot"] == 4
    assert report.counts()["linked"] == len(list((plantvillage_mini / B).iterdir()))
    assert [(report.relative(b.path), b.reason) for b in report.bad_files] == [
        (f"{nfc}/gone.jpg", "broken symbolic link")
    ]
    kinds = {p.kind for p in report.problems()}
    assert kinds == {"bad_files", "merged_folders"}  # nothing about the system files
    manifest = make_split(report)
    assert manifest.classes == report.classes


def test_train_and_evaluate_use_a_presplit_copys_split(plantvillage_mini, tmp_path, caplog):
    from cropdoc.evaluation import evaluate_bundle
    from cropdoc.training import train

    root = presplit(plantvillage_mini, tmp_path / "download" / "dataset")
    config = tiny_config(stage_epochs=[1, 0, 0])
    with caplog.at_level(logging.INFO):
        result = train(tmp_path / "download", tmp_path / "run", config, show_progress=False)
    assert result.data == root.resolve()  # the lone wrapper folder stepped into
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["stats"]["source"] == "shipped"
    assert {rel.split("/")[0] for rel, _ in split["splits"]["test"]} == {"test"}
    assert any("ships with" in r.getMessage() for r in caplog.records)
    scan = json.loads((tmp_path / "run" / "scan_report.json").read_text())
    assert scan["layout"]["kind"] == "pre-split" and scan["layout"]["wrapper"] is None
    # Evaluating on the training folder scores exactly the shipped test folder.
    ev = evaluate_bundle(result.bundle_dir, root, out_dir=tmp_path / "ev", workers=0)
    assert ev.metrics["n_images"] == 8 and ev.metrics["split"] == "test"
    # On another pre-split copy (no file the run knows): its own test folder.
    other = presplit(plantvillage_mini, tmp_path / "other", names=("train", "val", "Test"))
    ev = evaluate_bundle(result.bundle_dir, other, out_dir=tmp_path / "ev2", workers=0)
    assert ev.metrics["split"] == "test" and "Test/ folder" in ev.source
    assert ev.metrics["n_images"] == 8


def test_data_inspect_reports_the_layout_and_one_line_per_problem(plantvillage_mini, tmp_path):
    root = presplit(plantvillage_mini, tmp_path / "data")
    twin = leaves(plantvillage_mini, A, 30, 1)[0]
    shutil.copy(twin, root / "Train" / A / "twin.jpg")
    shutil.copy(twin, root / "Train" / B / "twin.jpg")  # the same bytes under two classes
    put(root / "Train" / A / B, leaves(plantvillage_mini, B, 30, 2))  # a nested copy
    (root / "Train" / A / ".DS_Store").write_bytes(b"system file")
    result = CliRunner().invoke(app, ["data", "inspect", str(root), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "layout: pre-split" in text
    assert "split: the one DATA ships with (train 24, val 8, test 8" in text
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2, problems  # label conflicts, nested copy; nothing on .DS_Store
    assert any("2 file(s) in 1 group(s)" in p and "label conflicts" in p for p in problems)
    assert any(f"Train/{A}/{B}" in p for p in problems)
    saved = json.loads((tmp_path / "o" / "scan_report.json").read_text())
    assert saved["label_conflicts"] == [sorted([f"Train/{A}/twin.jpg", f"Train/{B}/twin.jpg"])]
