"""``--diseases FILE`` for ``predict`` and ``serve``: an extension service's own table is
what users see, and a bad file is one clear line before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers import clear_error, cli_in_process
from typer.testing import CliRunner

from cropdoc.bundle import read_meta
from cropdoc.cli import app
from test_evaluation import trained_tiny_run

ADVICE = "Call the county plant clinic on 0800 000 000 before you spray anything."


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    return trained_tiny_run(tmp_path_factory, tiny_data)


@pytest.fixture
def table(run: Path, tmp_path: Path) -> Path:
    """A table with one entry per class of the tiny model, all with the same advice."""
    entries = {
        name: {
            "crop": "Tomato",
            "disease": name.split("___")[1].replace("_", " "),
            "healthy": name.endswith("healthy"),
            "pathogen": "" if name.endswith("healthy") else "see the clinic",
            "severity": "none" if name.endswith("healthy") else "high",
            "symptoms": "As in our field guide.",
            "management": [ADVICE],
        }
        for name in read_meta(run / "model").classes
    }
    path = tmp_path / "county.json"
    path.write_text(json.dumps({"_about": "County extension service", **entries}))
    return path


def test_predict_shows_the_given_tables_advice(run: Path, tiny_data: Path, table: Path):
    image = next(tiny_data.rglob("*.jpg"))
    argv = ["predict", str(run / "model"), str(image), "--backend", "torch", "--json"]
    res = CliRunner().invoke(app, [*argv, "--diseases", str(table)])
    assert res.exit_code == 0, res.output
    row = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("{")))
    assert row["disease"]["management"] == [ADVICE] and row["disease"]["known"]
    res = CliRunner().invoke(app, argv)  # the packaged table by default
    row = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("{")))
    assert row["disease"]["known"] and row["disease"]["management"] != [ADVICE]


def test_serve_answers_with_the_given_tables_advice(run: Path, tiny_data: Path, table: Path):
    from fastapi.testclient import TestClient

    from cropdoc.inference import load_predictor
    from cropdoc.serve import ServeSettings
    from cropdoc.serve.app import create_app

    predictor = load_predictor(run / "model", backend="torch")
    client = TestClient(create_app(predictor, ServeSettings(diseases=str(table))))
    image = next(tiny_data.rglob("*.jpg"))
    files = [("files", (image.name, image.read_bytes(), "image/jpeg"))]
    result = client.post("/predict", files=files).json()["results"][0]
    assert result["ok"] and result["treatment"] == [ADVICE]


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_a_bad_table_stops_the_command_in_one_line(command: str, tmp_path: Path):
    bad = tmp_path / "diseases.json"
    bad.write_text(json.dumps({"Tomato___healthy": {"crop": "Tomato", "severity": "none"}}))
    image = tmp_path / "leaf.jpg"
    image.write_bytes(b"never read")
    argv = [command, str(tmp_path / "no-bundle"), *([str(image)] if command == "predict" else [])]
    code, err = cli_in_process([*argv, "--diseases", str(bad)])
    assert clear_error(code, err, str(bad), "entry 'Tomato___healthy'", "Field required"), err
