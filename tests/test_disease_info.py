"""Disease information: all 38 PlantVillage classes have a full entry, found by any
spelling; an extension service's own table is validated with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropdoc import resources
from cropdoc.diseases import disease_info, disease_table, load_disease_table
from cropdoc.errors import ConfigError

#: PlantVillage's 38 class folders, spelled exactly as the dataset names them
#: (spMohanty/PlantVillage-Dataset raw/color; spaces, commas and the trailing "_" included).
PLANTVILLAGE_38 = [
    "Apple___Apple_scab",
    "Apple___Black_rot",
    "Apple___Cedar_apple_rust",
    "Apple___healthy",
    "Blueberry___healthy",
    "Cherry_(including_sour)___Powdery_mildew",
    "Cherry_(including_sour)___healthy",
    "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot",
    "Corn_(maize)___Common_rust_",
    "Corn_(maize)___Northern_Leaf_Blight",
    "Corn_(maize)___healthy",
    "Grape___Black_rot",
    "Grape___Esca_(Black_Measles)",
    "Grape___Leaf_blight_(Isariopsis_Leaf_Spot)",
    "Grape___healthy",
    "Orange___Haunglongbing_(Citrus_greening)",
    "Peach___Bacterial_spot",
    "Peach___healthy",
    "Pepper,_bell___Bacterial_spot",
    "Pepper,_bell___healthy",
    "Potato___Early_blight",
    "Potato___Late_blight",
    "Potato___healthy",
    "Raspberry___healthy",
    "Soybean___healthy",
    "Squash___Powdery_mildew",
    "Strawberry___Leaf_scorch",
    "Strawberry___healthy",
    "Tomato___Bacterial_spot",
    "Tomato___Early_blight",
    "Tomato___Late_blight",
    "Tomato___Leaf_Mold",
    "Tomato___Septoria_leaf_spot",
    "Tomato___Spider_mites Two-spotted_spider_mite",
    "Tomato___Target_Spot",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus",
    "Tomato___Tomato_mosaic_virus",
    "Tomato___healthy",
]

MINI = [
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


def test_table_holds_exactly_the_38_plantvillage_classes():
    assert len(PLANTVILLAGE_38) == 38
    assert sorted(disease_table()) == sorted(PLANTVILLAGE_38)


def test_dataset_folders_match_the_table(plantvillage_mini: Path):
    folders = sorted(p.name for p in plantvillage_mini.iterdir() if p.is_dir())
    assert folders == sorted(MINI)
    assert set(folders) <= set(disease_table())


@pytest.mark.parametrize("name", PLANTVILLAGE_38)
def test_entries_are_complete_and_cite_sources(name: str):
    info = disease_info(name)
    assert info.known and info.class_name == name
    assert info.crop and info.disease and info.symptoms and info.management
    if info.healthy:
        assert info.severity == "none" and not info.pathogen
    else:
        assert info.severity in {"moderate", "high"} and info.pathogen
    cited = json.loads(resources.read_text("diseases.json"))["_sources"]
    sources = disease_table()[name].sources
    assert sources and set(sources) <= set(cited)


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
    healthy = disease_info("Mango___healthy")
    assert healthy.healthy and healthy.severity == "none" and not healthy.known
    assert disease_info("leaves").crop == "leaves"


def _entry(**changes) -> dict:
    entry = {
        "crop": "Maize",
        "disease": "Maize lethal necrosis",
        "healthy": False,
        "pathogen": "MCMV with a potyvirus",
        "severity": "high",
        "symptoms": "Yellow streaks, then dead leaves from the edges.",
        "management": ["Report it to the county agricultural office."],
    }
    return {**entry, **changes}


def test_an_extension_services_table_replaces_the_packaged_one(tmp_path: Path):
    path = tmp_path / "kenya.json"
    path.write_text(json.dumps({"_about": "ours", "Corn_(maize)___Common_rust_": _entry()}))
    table = load_disease_table(path)
    assert table.source == str(path) and len(table) == 1
    info = disease_info("Corn_maize_Common_rust", table)  # any spelling finds it
    assert info.known and info.management == ["Report it to the county agricultural office."]
    assert not disease_info("Tomato___Late_blight", table).known  # not in their table
    assert table.missing(["Corn_(maize)___Common_rust_", "Tomato___Late_blight"]) == [
        "Tomato___Late_blight"
    ]
    yaml_path = tmp_path / "table.yaml"
    yaml_path.write_text(
        "Tomato___healthy:\n"
        + "".join(
            f"  {k}: {json.dumps(v)}\n"
            for k, v in _entry(disease="Healthy", healthy=True, severity="none").items()
        )
    )
    assert disease_table(yaml_path)["Tomato___healthy"].healthy


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", r"not valid JSON \(.* at line 1, column 2\)"),
        ("[1, 2]", "the top level is a list, not a mapping"),
        ('{"_about": "only notes"}', "it has no entries"),
        (json.dumps({"A___x": _entry(severity="extreme")}), r"entry 'A___x': severity: Input"),
        (json.dumps({"A___x": _entry(management=[])}), r"entry 'A___x': management"),
        (json.dumps({"A___x": _entry(managment=["x"])}), r"managment: unknown key"),
        (json.dumps({"A___x": _entry(healthy=True)}), "severity is 'none' exactly when healthy"),
        (json.dumps({"A___x": {"crop": "A"}}), r"disease: Field required"),
        (json.dumps({"A___x": _entry(), "a_x": _entry()}), "name the same class"),
    ],
)
def test_a_bad_table_is_one_clear_line(tmp_path: Path, content: str, expected: str):
    path = tmp_path / "diseases.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as err:
        load_disease_table(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    with pytest.raises(ConfigError, match="not found"):
        load_disease_table(tmp_path / "missing.json")
