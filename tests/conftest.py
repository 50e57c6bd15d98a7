"""Shared pytest fixtures."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import TINY_CONFIG

_PLANTVILLAGE_ENV = "CROPDOC_PLANTVILLAGE_MINI"


@pytest.fixture(scope="session")
def plantvillage_mini() -> Path:
    """The real 12-class, 1,420-image PlantVillage sample; skips when it is absent.

    Looked up in ``$CROPDOC_PLANTVILLAGE_MINI``, else ``../shared/data/plantvillage-mini``
    next to the repository root (where CI puts it).
    """
    override = os.environ.get(_PLANTVILLAGE_ENV)
    path = (
        Path(override)
        if override
        else Path(__file__).resolve().parents[2] / "shared/data/plantvillage-mini"
    )
    if not path.is_dir():
        pytest.skip(
            f"real PlantVillage sample not found at {path}; set {_PLANTVILLAGE_ENV} to the "
            "plantvillage-mini folder to run this test"
        )
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset (4 classes × 12 images, 48 px) for end-to-end runs."""
    from cropdoc.data.synthetic import DEMO_CLASSES, generate_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    return generate_dataset(
        root, images_per_class=12, image_size=48, classes=DEMO_CLASSES[:4], seed=3
    )


def tiny_config(**overrides):
    """A fast config: MobileNetV3-Small from scratch, 32 px, one epoch per stage, fp32.

    The same recipe the fault scripts run (``tests.helpers.TINY_CONFIG``).
    """
    from cropdoc.config import load_config

    base = copy.deepcopy(TINY_CONFIG)
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return load_config(overrides=base)


#: Debian's Chromium, headless, with nothing that phones home (the browser tests run
#: offline pages and must not wait on Google's services).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium (Playwright on Debian's browser, never a downloaded one) for
    every browser test; skips, saying why, without Chromium or Playwright."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Chromium not installed (apt-get install -y chromium) - browser test skipped")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
