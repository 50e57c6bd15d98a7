"""cropdoc.resources: packaged data files, read through importlib.resources."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from cropdoc import resources

ROOT = Path(__file__).resolve().parents[1]


def test_read_text_and_path_give_the_same_file() -> None:
    text = resources.read_text("diseases.json")
    assert "Tomato___healthy" in json.loads(text)
    with resources.path("diseases.json") as path:
        assert path.read_text(encoding="utf-8") == text
    assert resources.read_bytes("diseases.json").decode("utf-8") == text


def test_missing_resource_names_what_is_shipped() -> None:
    with pytest.raises(FileNotFoundError, match=r"diseases\.json"):
        resources.read_text("no-such-file.json")


@pytest.mark.parametrize("name", ["../serve/index.html", "/etc/passwd", ""])
def test_names_outside_the_package_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        resources.read_text(name)


def test_every_resource_file_is_declared_as_package_data() -> None:
    # A file in resources/ that no package-data pattern covers is missing from the wheel.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cropdoc"]
    package = ROOT / "src" / "cropdoc"
    shipped = [p for p in (package / "resources").iterdir() if p.suffix != ".py" and p.is_file()]
    assert shipped
    for file in shipped:
        rel = file.relative_to(package)
        assert any(rel.match(pattern) for pattern in patterns), rel
