"""Grad-CAM explanations: the layer is found from the model for every kind of backbone, the
map lands on the lesion of a leaf whose class a lesion decides, and ``predict --explain``,
``evaluate`` (confident-error gallery) and ``serve ?explain=true`` deliver overlays."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tests.helpers import cli_in_process

from cropdoc.bundle import BundleMeta, save_bundle
from cropdoc.inference import Explainer, collect_images, load_explainer, load_predictor
from cropdoc.models import build, cam_target, get_arch
from cropdoc.preprocessing import Preprocessing

pytest.importorskip("torchcam", reason="torchcam not installed (pip install torchcam)")

LITE0 = Path(__file__).resolve().parents[2] / "shared/data/weights"
LITE0 = LITE0 / "tf_efficientnet_lite0.imagenet.safetensors"


@pytest.mark.parametrize(
    ("arch", "layer", "tokens"),
    [
        ("mobilenet_v3_small", "features", None),
        ("efficientnet_b0", "features", None),
        ("resnet50", "layer4", None),
        ("timm/tf_efficientnet_lite0", "backbone.bn2", None),
        ("timm/convnext_atto", "backbone.norm_pre", None),
        ("timm/vit_tiny_patch16_224", "backbone.blocks.11.norm1", 1),
    ],
)
def test_cam_layer_is_the_last_spatial_map_of_the_backbone(arch, layer, tokens):
    if arch.startswith("timm/"):
        pytest.importorskip("timm")
    model = build(arch, classes=3, weights="none").eval()
    target = cam_target(model, get_arch(arch))
    assert (target.name, target.tokens) == (layer, tokens)
    meta = BundleMeta(arch=arch, classes=["a", "b", "c"], preprocessing=Preprocessing.for_size(224))
    seen: list[tuple[int, ...]] = []
    hook = target.module.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        e = Explainer(model, meta).explain(Image.new("RGB", (240, 240), (90, 140, 60)))
    finally:
        hook.remove()
    assert seen, "the explained forward pass never reached the CAM layer"
    assert e.layer == layer and e.heatmap.shape == (224, 224)
    assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0


# --------------------------------------------------------------------------- the lesion


def _leaf(rng: np.random.Generator, size: int, lesions: int) -> tuple[Image.Image, np.ndarray]:
    """A green leaf on a beige table with ``lesions`` dark spots; and the spots' mask."""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 235, 3)))
    draw = ImageDraw.Draw(img)
    c = size / 2 + rng.uniform(-6, 6, 2)
    draw.ellipse(
        (c[0] - size * 0.42, c[1] - size * 0.3, c[0] + size * 0.42, c[1] + size * 0.3),
        fill=(int(rng.integers(50, 80)), int(rng.integers(120, 160)), 50),
    )
    mask = Image.new("L", (size, size), 0)
    spots = ImageDraw.Draw(mask)
    for _ in range(lesions):
        x = c[0] + rng.uniform(-0.28, 0.28) * size
        y = c[1] + rng.uniform(-0.17, 0.17) * size
        r = size * rng.uniform(0.08, 0.11)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(90, 50, 25), outline=(200, 190, 60))
        spots.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return img, np.asarray(mask) > 0


@pytest.fixture(scope="module")
def spot_model() -> tuple[torch.nn.Module, BundleMeta]:
    """The pretrained Lite0 backbone with a head fitted (backbone frozen) to tell leaves
    with a lesion from clean ones: the lesion is the only thing that decides the class."""
    if not LITE0.is_file():
        pytest.skip(f"shared Lite0 ImageNet weights not found at {LITE0}")
    pytest.importorskip("timm")
    arch, size = "timm/tf_efficientnet_lite0", 160
    spec = get_arch(arch)
    meta = BundleMeta(
        arch=arch,
        classes=["Leaf___clean", "Leaf___spot"],
        preprocessing=Preprocessing(
            image_size=size, resize_size=size, mean=spec.mean, std=spec.std
        ),
    )
    torch.manual_seed(0)
    model = build(arch, classes=2, weights=LITE0).eval()
    rng = np.random.default_rng(1)
    images = [_leaf(rng, size, k % 2 * int(rng.integers(1, 3)))[0] for k in range(48)]
    labels = torch.tensor([k % 2 for k in range(48)])
    from cropdoc.data.transforms import build_eval_transform

    transform = build_eval_transform(meta.preprocessing)
    with torch.no_grad():
        feats = model.backbone(torch.stack([transform(i) for i in images]))
    opt = torch.optim.Adam(model.head.parameters(), lr=3e-3)
    model.head.train()
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.head(feats), labels).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model.head(feats).argmax(1) == labels).float().mean() > 0.95
    return model, meta


def test_gradcam_highlights_the_lesion_more_than_the_rest(spot_model):
    model, meta = spot_model
    explainer = Explainer(model, meta)
    rng = np.random.default_rng(7)
    ratios = []
    for _ in range(6):
        image, mask = _leaf(rng, 160, 1)
        heat = explainer.explain(image, class_index=1).heatmap
        ratios.append(heat[mask].mean() / heat[~mask].mean())
    assert np.median(ratios) > 1.5, ratios
    assert min(ratios) > 1.0, ratios


# --------------------------------------------------------------------------- the faces


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 64 px MobileNetV3-Small bundle (a 2x2 CAM map: plumbing only)."""
    folder = tmp_path_factory.mktemp("explain") / "model"
    torch.manual_seed(0)
    model = build("mobilenet_v3_small", classes=4, weights="none")
    classes = [
        "Tomato___healthy",
        "Tomato___Early_blight",
        "Tomato___Late_blight",
        "Tomato___Septoria_leaf_spot",
    ]
    meta = BundleMeta(
        arch="mobilenet_v3_small", classes=classes, preprocessing=Preprocessing.for_size(64)
    )
    return save_bundle(folder, model, meta)


def test_predict_explain_writes_one_overlay_per_image(small_bundle, tiny_data, tmp_path, capsys):
    images = collect_images([tiny_data])[:3]
    out = tmp_path / "cams"
    argv = ["predict", str(small_bundle), *map(str, images), "--json", "--backend", "torch"]
    code, err = cli_in_process([*argv, "--explain", str(out)])
    assert code == 0, err
    written = sorted(out.glob("*.gradcam.png"))
    assert [p.name for p in written] == sorted(f"{p.stem}.gradcam.png" for p in images)
    with Image.open(written[0]) as im:
        assert im.size == (320, 320)
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("{") for line in lines) == 3
    assert "wrote 3 heatmap(s)" in err


def test_explanation_is_for_the_predicted_class(small_bundle, tiny_data):
    leaf = collect_images([tiny_data])[0]
    p = load_predictor(small_bundle, backend="torch").predict([leaf])[0]
    e = load_explainer(small_bundle).explain(leaf)
    assert e.class_index == p.best.index and e.label == p.best.label
    assert Image.open(io.BytesIO(e.png())).format == "PNG"


def test_serve_returns_an_overlay_on_request(small_bundle, tiny_data):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cropdoc.serve import ServeSettings, create_app

    leaf = collect_images([tiny_data])[0]
    client = TestClient(create_app(load_predictor(small_bundle, backend="torch"), ServeSettings()))
    files = [("files", (leaf.name, leaf.read_bytes(), "image/jpeg"))]
    plain = client.post("/predict", files=files).json()["results"][0]
    assert plain["explanation"] is None
    r = client.post("/predict?explain=true", files=files).json()["results"][0]
    e = r["explanation"]
    assert e["class"] == r["prediction"]["class"] and e["layer"] == "features"
    with Image.open(io.BytesIO(base64.b64decode(e["png_base64"]))) as im:
        assert im.format == "PNG" and im.size[0] >= 64


def test_evaluate_writes_a_gallery_of_confident_errors(small_bundle, tiny_data, tmp_path):
    code, text = cli_in_process(
        ["evaluate", str(small_bundle), str(tiny_data), "--out", str(tmp_path / "ev")]
    )
    assert code == 0, text
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["accuracy"] < 1.0  # a random model makes errors, so there is a gallery
    assert (tmp_path / "ev" / "errors_gradcam.png").is_file()
    assert "Most confident errors" in (tmp_path / "ev" / "report.md").read_text()


@pytest.mark.parametrize(
    ("arch", "size"), [("timm/resnet10t", 64), ("timm/vit_tiny_patch16_224", 224)]
)
def test_error_gallery_works_for_timm_models(arch: str, size: int, tmp_path: Path):
    """timm backbones (maps and token grids) go through the gallery as torchvision ones do."""
    pytest.importorskip("timm")
    from cropdoc.evaluation.gallery import plot_error_gallery

    model = build(arch, classes=3, weights="none").eval()
    prep = Preprocessing.for_size(size)
    meta = BundleMeta(arch=arch, classes=["a", "b", "c"], preprocessing=prep)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (size + 16, size + 16), (40 * i, 120, 60)).save(paths[-1])
    probs = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])
    out = plot_error_gallery(model, meta, paths, np.array([0, 1, 2]), probs, tmp_path / "g.png")
    assert out == tmp_path / "g.png" and out.stat().st_size > 0  # two errors drawn
