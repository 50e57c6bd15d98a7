"""Phone-photo corruptions and the robustness report of ``cropdoc evaluate --robustness``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tests.helpers import cli_in_process

from cropdoc.bundle import BundleMeta, load_bundle, save_bundle
from cropdoc.evaluation.robustness import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    evaluate_robustness,
    leaf_mask,
)
from cropdoc.inference import collect_images
from cropdoc.models import build
from cropdoc.preprocessing import Preprocessing


def _photo(size: int = 96) -> tuple[torch.Tensor, np.ndarray]:
    """A green leaf with brown spots on a grey lab background, and the leaf's mask."""
    img = Image.new("RGB", (size, size), (150, 150, 155))
    mask = Image.new("L", (size, size), 0)
    box = (size * 0.2, size * 0.15, size * 0.8, size * 0.85)
    ImageDraw.Draw(img).ellipse(box, fill=(60, 140, 50))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    for cx, cy in ((0.4, 0.4), (0.6, 0.6)):
        r = size * 0.06
        ImageDraw.Draw(img).ellipse(
            (cx * size - r, cy * size - r, cx * size + r, cy * size + r), fill=(100, 60, 30)
        )
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    return x, np.asarray(mask) > 0


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_keeps_shape_and_type_and_repeats(name: str):
    x, _ = _photo()
    for s in SEVERITIES:
        y = corrupt(x, name, s, seed=3)
        assert y.dtype == torch.uint8 and y.shape == x.shape
        assert not torch.equal(y, x), f"{name} severity {s} changed nothing"
        assert torch.equal(y, corrupt(x, name, s, seed=3))


@pytest.mark.parametrize(
    "name", ["defocus_blur", "motion_blur", "noise", "jpeg", "dark", "contrast", "scale"]
)
def test_severity_increases_the_damage(name: str):
    x, _ = _photo()
    damage = [(corrupt(x, name, s).float() - x.float()).abs().mean().item() for s in SEVERITIES]
    assert damage[0] < damage[1] < damage[2], damage


def test_leaf_mask_finds_the_leaf_on_a_plain_background():
    x, truth = _photo()
    found = leaf_mask(x).numpy()
    iou = (found & truth).sum() / (found | truth).sum()
    assert iou > 0.85
    cluttered = corrupt(x, "clutter_background", 2).numpy()
    leaf = truth & ~(np.abs(cluttered - x.numpy()).sum(0) > 0)
    assert leaf.sum() / truth.sum() > 0.9  # the leaf itself is kept
    assert (np.abs(cluttered - x.numpy()).sum(0) > 0)[~truth].mean() > 0.8  # background not


def test_unknown_names_and_severities_are_refused():
    x, _ = _photo()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "noise", 4)


@pytest.fixture(scope="module")
def bundle(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    classes = sorted(p.name for p in tiny_data.iterdir() if p.is_dir())
    torch.manual_seed(0)
    model = build("mobilenet_v3_small", classes=len(classes), weights="none")
    meta = BundleMeta(
        arch="mobilenet_v3_small", classes=classes, preprocessing=Preprocessing.for_size(32)
    )
    return save_bundle(tmp_path_factory.mktemp("robust") / "model", model, meta)


def test_evaluate_robustness_writes_json_and_plot(bundle: Path, tiny_data: Path, tmp_path):
    classes = load_bundle(bundle).meta.classes
    samples = [(p, classes.index(p.parent.name)) for p in collect_images([tiny_data])]
    result = evaluate_robustness(
        load_bundle(bundle), samples, tmp_path, max_images=8, corruptions=("noise", "rotation")
    )
    assert result["n_images"] == 8
    assert set(result["corruptions"]) == {"noise", "rotation"}
    cell = result["corruptions"]["noise"]["3"]
    assert set(cell) == {"macro_f1", "accuracy", "abstain_rate", "n"} and cell["n"] == 8
    assert json.loads((tmp_path / "robustness.json").read_text()) == result
    with Image.open(tmp_path / "robustness.png") as im:
        assert im.size[0] > 500


def test_cli_evaluate_robustness_adds_the_report_section(bundle: Path, tiny_data: Path, tmp_path):
    out = tmp_path / "ev"
    code, text = cli_in_process(
        ["evaluate", str(bundle), str(tiny_data), "--out", str(out), "--robustness"]
    )
    assert code == 0, text
    result = json.loads((out / "robustness.json").read_text())
    assert set(result["corruptions"]) == set(CORRUPTIONS)
    assert all(set(v) == {"1", "2", "3"} for v in result["corruptions"].values())
    report = (out / "report.md").read_text()
    assert "## Robustness: phone-photo corruptions" in report and "`clutter_background`" in report
    assert json.loads((out / "metrics.json").read_text())["robustness"]["n_images"] == 48
