"""Field-ready inputs: HEIC/HEIF phone photos are read wherever images are, and
``max_pixels`` is an option of ``predict`` and ``serve``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers import cli_in_process

from cropdoc.bundle import BundleMeta, save_bundle
from cropdoc.data.images import BadImageError, is_supported, load_tensor, open_rgb
from cropdoc.inference import collect_images, load_predictor
from cropdoc.models import build
from cropdoc.preprocessing import Preprocessing

pytest.importorskip("pillow_heif", reason="pillow-heif not installed")


def _heic(path: Path, size=(80, 60), colour=(200, 40, 30)) -> Path:
    """A HEIC file written by pillow-heif's own API: PIL is not taught to open HEIF here,
    so reading it proves cropdoc registers the opener itself."""
    import pillow_heif

    pillow_heif.from_pillow(Image.new("RGB", size, colour)).save(path, quality=95)
    return path


def test_heic_is_read_like_any_photo(tmp_path: Path):
    path = _heic(tmp_path / "IMG_0001.HEIC")
    assert is_supported(path)
    img = open_rgb(path)
    assert img.size == (80, 60) and img.mode == "RGB"
    assert np.abs(np.asarray(img, float).mean((0, 1)) - (200, 40, 30)).max() < 12
    t = load_tensor(path)
    assert t.shape == (3, 60, 80) and t.dtype == torch.uint8
    assert open_rgb(path.read_bytes()).size == (80, 60)  # an upload
    assert collect_images([tmp_path]) == [path]


def test_heic_pixel_limit_is_checked_before_decoding(tmp_path: Path):
    path = _heic(tmp_path / "big.heif", size=(400, 300))
    with pytest.raises(BadImageError, match="too many pixels"):
        open_rgb(path, max_pixels=1000)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build("mobilenet_v3_small", classes=2, weights="none")
    meta = BundleMeta(
        arch="mobilenet_v3_small",
        classes=["Tomato___healthy", "Tomato___Late_blight"],
        preprocessing=Preprocessing.for_size(32),
    )
    return save_bundle(tmp_path_factory.mktemp("field") / "model", model, meta)


def test_heic_is_predicted_and_served(bundle: Path, tmp_path: Path):
    path = _heic(tmp_path / "leaf.heic", colour=(60, 140, 50))
    [p] = load_predictor(bundle, backend="torch").predict([path])
    assert p.ok and p.best is not None
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cropdoc.serve import ServeSettings, create_app

    client = TestClient(create_app(load_predictor(bundle, backend="torch"), ServeSettings()))
    r = client.post("/predict", files=[("files", ("leaf.heic", path.read_bytes(), "image/heic"))])
    assert r.status_code == 200 and r.json()["results"][0]["ok"]


def test_predict_max_pixels_option(bundle: Path, tmp_path: Path, capsys):
    photo = tmp_path / "leaf.png"
    Image.new("RGB", (100, 100), (60, 140, 50)).save(photo)
    argv = ["predict", str(bundle), str(photo), "--backend", "torch", "--max-pixels"]
    code, err = cli_in_process([*argv, "5000"])
    assert code == 1 and "too many pixels" in capsys.readouterr().out + err
    code, err = cli_in_process([*argv, "20000"])
    assert code == 0, err


def test_serve_max_pixels_option_reaches_the_settings(monkeypatch, bundle: Path):
    seen = {}

    def fake_run_server(predictor, settings, **kw):
        seen["settings"] = settings

    import cropdoc.serve as serve_mod

    monkeypatch.setattr(serve_mod, "run_server", fake_run_server)
    code, out = cli_in_process(["serve", str(bundle), "--backend", "torch", "--max-pixels", "123"])
    assert code == 0, out
    assert seen["settings"].max_pixels == 123
