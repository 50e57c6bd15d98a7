"""The page in Chromium when the model should not be trusted blindly: a non-leaf photo gets
"not recognised" and no treatment, the Grad-CAM overlay appears beside the photo, and a
48 MP phone photo is shrunk in the browser before upload (the server would refuse it).

The bundle is a random-weight 64 px MobileNetV3-Small with a Mahalanobis score fitted on
the generated leaves; its threshold is then placed between the leaf's and the non-leaf
image's scores, so what is tested is the page's handling of ``abstain``, not the score's
quality (``benchmarks/ood.py`` measures that).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cropdoc.bundle import BundleMeta, read_meta, save_bundle, update_meta
from cropdoc.data.nonleaf import nonleaf_image
from cropdoc.evaluation.logits import collect_logits
from cropdoc.evaluation.ood import OodFit, fit_ood
from cropdoc.inference import collect_images, load_predictor
from cropdoc.models import build
from cropdoc.preprocessing import Preprocessing
from test_serve import running_server

pytest.importorskip("torchcam", reason="torchcam not installed")


@pytest.fixture(scope="module")
def photos(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("trust-photos")
    photos = {"leaf": collect_images([tiny_data / "Tomato___Late_blight"])[0]}
    photos["sky"] = work / "sky.jpg"
    nonleaf_image("sky", 0, size=256).save(photos["sky"], quality=90)
    # 8000 x 6000 = 48 MP, over the server's 40 MP limit: it only passes shrunk.
    big = nonleaf_image("objects", 1, size=600).resize((8000, 6000), Image.BILINEAR)
    photos["48mp"] = work / "phone-48mp.jpg"
    big.save(photos["48mp"], quality=85)
    return photos


@pytest.fixture(scope="module")
def bundle(tiny_data: Path, photos, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trust") / "model"
    classes = sorted(p.name for p in tiny_data.iterdir() if p.is_dir())
    torch.manual_seed(0)
    meta = BundleMeta(
        arch="mobilenet_v3_small", classes=classes, preprocessing=Preprocessing.for_size(64)
    )
    model = build(meta.arch, classes=len(classes), weights="none")
    save_bundle(folder, model, meta)
    samples = [(p, classes.index(p.parent.name)) for p in collect_images([tiny_data])]
    out = collect_logits(model, samples, meta, features=True)
    info = fit_ood("mahalanobis", OodFit(out, out, 1.0), n_classes=len(classes))
    update_meta(folder, ood=info.model_dump(mode="json"))
    scores = [p.ood_score for p in load_predictor(folder).predict([photos["leaf"], photos["sky"]])]
    leaf, sky = scores
    # Between the two (the sky abstains, the leaf does not); just below the sky's otherwise.
    threshold = (leaf + sky) / 2 if sky > leaf else sky - abs(sky) * 1e-3 - 1e-9
    update_meta(folder, ood={**read_meta(folder).ood.model_dump(), "threshold": threshold})
    return folder


@pytest.fixture(scope="module")
def url(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("trust-server") / "server.log"
    with running_server(bundle, log, "--backend", "torch", "--processes", "1") as u:
        yield u


def _upload(browser, url: str, photo: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#result", state="visible", timeout=60_000)
    return page


def test_non_leaf_photo_is_not_recognised_and_gets_no_treatment(browser, url, photos):
    page = _upload(browser, url, photos["sky"])
    try:
        assert page.is_visible("#not-recognised")
        text = page.inner_text("#not-recognised")
        assert "Not recognised" in text and "not one of the crops/diseases" in text
        assert not page.is_visible("#diagnosis")
        assert not page.is_visible("#treatment")
        assert page.locator("#treatment li").count() == 0
        body = page.inner_text("body")
        assert "What to do" not in body and "fungicide" not in body.lower()
    finally:
        page.close()


def test_heatmap_is_shown_beside_the_photo(browser, url, photos, bundle: Path):
    page = _upload(browser, url, photos["leaf"])
    try:
        page.wait_for_selector("#heatmap", state="visible", timeout=30_000)
        src = page.get_attribute("#heatmap", "src")
        assert src.startswith("data:image/png;base64,")
        assert page.evaluate("document.getElementById('heatmap').naturalWidth") >= 64
        photo = page.locator("#preview").bounding_box()
        heat = page.locator("#heatmap").bounding_box()
        assert abs(photo["y"] - heat["y"]) < 40 and heat["x"] > photo["x"]  # side by side
        page.screenshot(path=str(bundle.parent / "heatmap-screenshot.png"), full_page=True)
    finally:
        page.close()


def test_a_48_megapixel_photo_is_shrunk_before_upload(browser, url, photos):
    with Image.open(photos["48mp"]) as im:
        assert im.size[0] * im.size[1] == 48_000_000
    page = _upload(browser, url, photos["48mp"])
    try:
        assert not page.is_visible("#error")
        assert "sent as 1600×1200" in page.inner_text("#filename")
    finally:
        page.close()
    assert np.prod([8000, 6000]) > 40_000_000  # the server's default max_pixels
