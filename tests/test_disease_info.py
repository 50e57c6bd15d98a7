"""Disease information: every PlantVillage-mini class has a full entry, found by any spelling."""

from __future__ import annotations

from pathlib import Path

import pytest

from cropdoc.diseases import disease_info, disease_table

CLASSES = [
    "Pepper,_bell___Bacterial_spot",
    "Pepper,_bell___healthy",
    "Potato___Early_blight",
    "Potato___Late_blight",
    "Potato___healthy",
    "Tomato___Bacterial_spot",
    "Tomato___Early_blight",
    "Tomato___Late_blight",
    "Tomato___Leaf_Mold",
    "Tomato___Septoria_leaf_spot",
    "Tomato___Target_Spot",
    "Tomato___healthy",
]


def test_table_covers_the_twelve_classes():
    assert sorted(disease_table()) == sorted(CLASSES)


def test_dataset_folders_match_the_table(plantvillage_mini: Path):
    folders = sorted(p.name for p in plantvillage_mini.iterdir() if p.is_dir())
    assert folders == sorted(CLASSES)


@pytest.mark.parametrize("name", CLASSES)
def test_entries_are_complete(name: str):
    info = disease_info(name)
    assert info.known and info.class_name == name
    assert info.crop and info.disease and info.symptoms and info.management
    if info.healthy:
        assert info.severity == "none" and not info.pathogen
    else:
        assert info.severity in {"moderate", "high"} and info.pathogen


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Tomato_Bacterial_spot", "Tomato___Bacterial_spot"),
        ("Pepper__bell___healthy", "Pepper,_bell___healthy"),
        ("tomato late blight", "Tomato___Late_blight"),
        ("Potato___Late_blight", "Potato___Late_blight"),
    ],
)
def test_other_spellings_find_the_entry(spelling: str, canonical: str):
    assert disease_info(spelling).to_dict() | {"class_name": canonical} == (
        disease_info(canonical).to_dict()
    )


def test_unknown_class_gets_a_neutral_generic_entry():
    info = disease_info("Mango___Anthracnose")
    assert not info.known
    assert (info.crop, info.disease, info.severity) == ("Mango", "Anthracnose", "unknown")
    assert info.pathogen == "" and any("extension" in step for step in info.management)
    healthy = disease_info("Grape___healthy")
    assert healthy.healthy and healthy.severity == "none" and not healthy.known
    assert disease_info("leaves").crop == "leaves"
