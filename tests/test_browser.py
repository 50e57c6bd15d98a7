"""The web page in a real browser: Debian's Chromium driven by Playwright (Python).

Playwright never downloads a browser here: Chromium is launched by its installed path.
Skips, saying why, when Chromium or Playwright is missing. Screenshots of the prediction
card (desktop and a 390 px phone) are saved under the tiny run directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cropdoc.inference import collect_images
from test_predictor import shared_tiny_run
from test_serve import running_server


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_run(tiny_data, tmp_path_factory)


@pytest.fixture(scope="module")
def url(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("browser") / "server.log"
    with running_server(run / "model", log, "--backend", "onnx") as u:
        yield u


@pytest.fixture(scope="module")
def leaf(plantvillage_mini: Path) -> Path:
    return collect_images([plantvillage_mini / "Tomato___Late_blight"])[0]


@pytest.mark.parametrize(("viewport", "name"), [((1280, 860), "desktop"), ((390, 844), "phone")])
def test_upload_shows_prediction_card(browser, url: str, run: Path, leaf: Path, viewport, name):
    import httpx

    expected = httpx.post(
        f"{url}/predict", files=[("files", (leaf.name, leaf.read_bytes(), "image/jpeg"))]
    ).json()["results"][0]
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('4')")
        page.set_input_files("#file-input", str(leaf))
        page.wait_for_selector("#result", state="visible", timeout=30_000)
        label = page.inner_text("#pred-label")
        assert label == ("Healthy leaf" if expected["healthy"] else expected["disease"])
        steps = page.locator("#treatment li").all_inner_texts()
        assert steps == expected["treatment"]
        assert len(page.locator("#bars .bar").all()) == 3
        assert page.is_visible("#low-confidence") == expected["low_confidence"]
        assert not page.is_visible("#error")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]
        shot = run / f"serve-screenshot-{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        page.close()


def test_bad_file_shows_a_clear_error(browser, url: str, tmp_path: Path):
    bad = tmp_path / "leaf.jpg"
    bad.write_text("this is not a photo")
    page = browser.new_page()
    try:
        page.goto(url + "/")
        page.set_input_files("#file-input", str(bad))
        page.wait_for_selector("#error", state="visible", timeout=30_000)
        assert "not an image" in page.inner_text("#error")
        assert not page.is_visible("#result")
    finally:
        page.close()
