"""The JSON API against a real ``cropdoc serve`` (uvicorn) process on 127.0.0.1.

Every bad-upload kind must get its 4xx JSON answer, never a 500, and the server must keep
serving good requests afterwards. The server log is checked for tracebacks at the end.
Process sizing and the command's options are checked without a server.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from tests import helpers as common
from typer.testing import CliRunner

from cropdoc.bundle import read_meta
from cropdoc.cli import app
from cropdoc.errors import ConfigError
from cropdoc.inference import BACKENDS, DEFAULT_BATCH_SIZE, Predictor, collect_images
from cropdoc.serve import ServeSettings, plan_processes
from test_predictor import shared_tiny_run

MAX_UPLOAD_MB = 1


@contextlib.contextmanager
def running_server(bundle: Path, log: Path, *extra: str) -> Iterator[str]:
    """``cropdoc serve`` on a free loopback port, stopped afterwards; yields its URL."""
    with common.running_server(bundle, log, *extra, start_s=120) as server:
        yield server.url


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_run(tiny_data, tmp_path_factory)


@pytest.fixture(scope="module")
def server(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    # Two processes on one socket (the default on a 2-core machine, explicit here).
    args = ("--backend", "onnx", "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-files", "4")
    args += ("--processes", "2")
    with running_server(run / "model", log, *args) as url:
        yield url, log


@pytest.fixture(scope="module")
def leaves(plantvillage_mini: Path) -> list[Path]:
    """Three real leaf photos from different classes."""
    folders = sorted(p for p in plantvillage_mini.iterdir() if p.is_dir())
    return [collect_images([f])[0] for f in folders[:: max(1, len(folders) // 3)][:3]]


def _post(url: str, files: list, **kw) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=files, timeout=60, **kw)


def _jpeg(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/jpeg")


def test_health_and_model(server, run: Path):
    url, _ = server
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["backend"] == "onnx"
    model = httpx.get(f"{url}/model").json()
    assert model["arch"] == "mobilenet_v3_small"
    assert model["num_classes"] == len(model["classes"]) == 4
    # The bundle's preprocessing as stored, not sizes re-derived from a ratio.
    assert model["preprocessing"] == read_meta(run).preprocessing.model_dump(mode="json")
    assert model["preprocessing"]["image_size"] == 32
    assert model["classes"][0] == "Tomato___Early_blight"
    assert "test" in model["metrics"] and model["versions"]["torch"]
    assert model["exports"]["onnx"]["passed"] is True
    log = " ".join(server[1].read_text().split())
    assert "with 2 process(es)" in log and "Started parent process" in log


def test_docs_and_page_are_served_without_external_assets(server):
    url, _ = server
    assert "/predict" in httpx.get(f"{url}/openapi.json").json()["paths"]
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and not [a for a in assets if a.startswith("http")], assets  # no CDN
    for asset in assets:
        assert httpx.get(f"{url}{asset}").status_code == 200, asset
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    assert 'id="file-input"' in html and 'capture="environment"' in html
    for external in ('src="http', "src='http", 'href="http', "@import", "cdn"):
        assert external not in html


def test_predict_real_leaf_photos(server, leaves: list[Path]):
    url, _ = server
    res = _post(url, [("files", _jpeg(p)) for p in leaves])
    assert res.status_code == 200, res.text
    body = res.json()
    assert [r["filename"] for r in body["results"]] == [p.name for p in leaves]
    for r in body["results"]:
        assert r["ok"] and r["error"] is None
        probs = [t["probability"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert r["prediction"] == r["top_k"][0]
        assert r["crop"] == "Tomato" and r["disease"] and r["treatment"]
        assert r["severity"] in {"none", "moderate", "high"}
        assert r["low_confidence"] == (probs[0] < 0.7)
        if r["low_confidence"]:
            assert "Retake" in r["advice"]


def test_one_bad_file_among_good_ones_is_reported_per_image(server, leaves: list[Path]):
    url, _ = server
    files = [("files", _jpeg(leaves[0])), ("files", ("notes.txt", b"hello", "text/plain"))]
    res = _post(url, files)
    assert res.status_code == 200
    good, bad = res.json()["results"]
    assert good["ok"] and not bad["ok"]
    assert bad["error"] == "not an image" and bad["status"] == 415


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A small PNG whose header declares 10000 x 10000 pixels (over the 40 MP limit)."""
    return _png(Image.new("1", (10000, 10000)))


def _truncated(leaves: list[Path]) -> bytes:
    data = leaves[0].read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "not an image": (lambda lv: [("files", ("a.jpg", b"just some text", "image/jpeg"))], 415),
    "corrupt": (lambda lv: [("files", ("cut.jpg", _truncated(lv), "image/jpeg"))], 422),
    "zero bytes": (lambda lv: [("files", ("empty.jpg", b"", "image/jpeg"))], 400),
    "over max-upload-mb": (
        lambda lv: [("files", ("big.jpg", os.urandom(MAX_UPLOAD_MB * 2**20 + 10), "image/jpeg"))],
        413,
    ),
    "too many pixels": (lambda lv: [("files", ("bomb.png", _bomb_png(), "image/png"))], 413),
    "wrong field": (lambda lv: [("image", _jpeg(lv[0]))], 422),
    "too many files": (lambda lv: [("files", _jpeg(lv[0]))] * 5, 413),
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_bad_upload_gets_its_4xx(server, leaves: list[Path], kind: str):
    url, _ = server
    make, status = BAD_UPLOADS[kind]
    res = _post(url, make(leaves))
    assert res.status_code == status, res.text
    body = res.json()
    assert body["detail"] and body["code"]


def test_bodies_that_are_not_multipart_or_too_large(server):
    url, _ = server
    assert httpx.post(f"{url}/predict", json={"files": []}).status_code == 422
    assert httpx.post(f"{url}/predict").status_code == 422
    broken = httpx.post(
        f"{url}/predict",
        content=b"--x\r\nnot really multipart",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= broken.status_code < 500
    # Over the whole-request limit (4 files x 1 MiB + 1 MiB): refused before parsing.
    huge = _post(url, [("files", ("huge.jpg", b"\0" * (6 * 2**20), "image/jpeg"))])
    assert huge.status_code == 413 and huge.json()["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b"--b\r\nContent-Disposition: form-data; name=files; filename=x.jpg\r\n\r\n"
        for _ in range(6):
            yield b"\0" * 2**20
        yield b"\r\n--b--\r\n"

    streamed = httpx.post(
        f"{url}/predict",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert streamed.status_code == 413


def test_server_keeps_serving_after_bad_uploads(server, leaves: list[Path]):
    url, log = server
    res = _post(url, [("files", _jpeg(leaves[1]))])
    assert res.status_code == 200 and res.json()["results"][0]["ok"]
    assert httpx.get(f"{url}/health").status_code == 200
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and " 500 " not in text


@pytest.mark.parametrize(
    ("requested", "cpus", "processes", "threads"),
    [
        (0, 2, 2, 1),  # one per core ...
        (None, 16, 4, 4),  # ... at most four, sharing the cores
        (0, 1, 1, None),  # a lone process keeps the libraries' own thread choice
        (3, 2, 3, 1),  # asked for: never fewer than one thread each
    ],
)
def test_process_plan(requested, cpus: int, processes: int, threads):
    plan = plan_processes(requested, cpus=cpus)
    assert (plan.processes, plan.threads) == (processes, threads)


def test_negative_processes_are_refused():
    with pytest.raises(ConfigError, match="--processes"):
        plan_processes(-1, cpus=2)


def test_serve_options_workers_mean_loader_workers_only():
    runner = CliRunner()
    res = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "--processes" in res.stdout and "--workers" not in res.stdout
    assert "auto|torch|onnx|onnx-int8" in res.stdout and "auto|cpu|cuda|mps" in res.stdout
    assert "<str>" not in res.stdout and "<float>" not in res.stdout
    res = runner.invoke(app, ["serve", "model", "--workers", "2"])
    assert res.exit_code == 2 and "No such option" in res.output


def test_predict_and_serve_share_their_defaults():
    from cropdoc.cli import deploy, options

    def defaults(fn) -> dict[str, object]:
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    predict, serve = defaults(deploy.predict), defaults(deploy.serve)
    assert [b.value for b in deploy.Backend] == list(BACKENDS)
    assert predict["backend"] == serve["backend"] == deploy.Backend.auto
    assert predict["device"] == serve["device"] == options.Device.auto
    assert predict["top_k"] == serve["top_k"]
    batch = defaults(Predictor.predict)["batch_size"]
    assert batch == ServeSettings().batch_max == DEFAULT_BATCH_SIZE
