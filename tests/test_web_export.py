"""``cropdoc export --format web``: the offline page, checked in Node and in Chromium.

- The page's preprocessing (``preprocess.js``, run by Node) gives Python's model input bit
  for bit on real leaves, at several sizes and shapes.
- The folder is self-contained (no URL to anywhere in the page's own files, onnxruntime-web
  files matching the pinned hashes, every file listed for the service worker), is
  recorded in ``model.json``, and ships INT8 only when it passed its check.
- onnxruntime-web: an unpacked local copy is accepted; a modified copy or another tarball
  is refused; no npm and no copy fails with one line that says what to do.
- In Chromium: the folder is served by a plain loopback static server and loaded once; the
  server is stopped and the browser goes offline; the page reloads, a real leaf photo gets
  Python's class, treatment and probabilities (within 1e-3) and OOD score; a bundle that
  abstains shows "Not recognised".
- The page's probabilities and OOD scores (``scores.js``, run by Node) are
  ``cropdoc.ood``'s for every kind.

Skips, saying why, without Node, Chromium, Playwright, the real leaves, or onnxruntime-web
(no npm and nothing cached).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.helpers import clear_error, cli_in_process, static_server

from cropdoc.advice import NOT_RECOGNISED
from cropdoc.bundle import read_meta, update_meta
from cropdoc.data.images import load_tensor
from cropdoc.data.transforms import build_eval_transform
from cropdoc.diseases import disease_info
from cropdoc.export import ORT_WEB_VERSION, ExportError, export_web
from cropdoc.export import ort_web as ort_web_module
from cropdoc.inference import collect_images, load_predictor
from cropdoc.ood import ood_scores
from cropdoc.preprocessing import Preprocessing
from cropdoc.probabilities import softmax
from test_predictor import copy_run, shared_tiny_run

ASSETS = Path(__file__).resolve().parents[1] / "src/cropdoc/export/web_assets"
EXPECTED_FILES = {
    "app.js",
    "config.json",
    "icon-192.png",
    "icon-512.png",
    "index.html",
    "manifest.webmanifest",
    "model.onnx",
    "ort/ort-wasm-simd-threaded.mjs",
    "ort/ort-wasm-simd-threaded.wasm",
    "ort/ort.wasm.min.js",
    "ort/package.json",
    "preprocess.js",
    "scores.js",
    "sw.js",
}


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_run(tiny_data, tmp_path_factory)


@pytest.fixture(scope="module")
def ort() -> dict[str, Path]:
    try:
        return ort_web_module.ort_web_files()
    except ExportError as e:
        pytest.skip(f"onnxruntime-web {ORT_WEB_VERSION} unavailable, web export skipped: {e}")


@pytest.fixture(scope="module")
def site(run: Path, ort, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A private copy of the tiny run and its web export: ``(bundle, folder)``."""
    work = tmp_path_factory.mktemp("web")
    copy = copy_run(run, work / "run")
    return copy / "model", export_web(copy / "model", out=work / "site").path


@pytest.fixture(scope="module")
def leaves(plantvillage_mini: Path) -> list[Path]:
    """Three real leaf photos of different classes."""
    folders = sorted(p for p in plantvillage_mini.iterdir() if p.is_dir())
    return [collect_images([f])[0] for f in folders[:: max(1, len(folders) // 3)][:3]]


# --------------------------------------------------------------------------- Node

_NODE_RUNNER = """
const P = require(process.argv[1]); const fs = require('fs');
const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
for (const t of job) {
  const rgb = new Uint8Array(fs.readFileSync(t.pixels));
  const out = P.preprocess(rgb, t.width, t.height, 3, t.preprocessing);
  fs.writeFileSync(t.pixels + '.out', Buffer.from(out.buffer));
}
"""


def test_js_preprocessing_is_python_s_bit_for_bit(plantvillage_mini: Path, tmp_path: Path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js not installed: the JS preprocessing check needs `node`")
    photos = collect_images([plantvillage_mini])[::200][:5]
    preps = [
        Preprocessing.for_size(32),
        Preprocessing.for_size(224),
        Preprocessing(image_size=50, resize_size=61, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)),
    ]
    jobs, expected = [], []
    for i, photo in enumerate(photos):
        image = load_tensor(photo)
        if i == 1:
            image = image[:, :180, :].contiguous()  # landscape: the crop is off-centre
        if i == 2:
            image = image[:, :20, :31].contiguous()  # smaller than the resize: upsampling
        pixels = tmp_path / f"{i}.rgb"
        pixels.write_bytes(image.permute(1, 2, 0).contiguous().numpy().tobytes())
        for j, prep in enumerate(preps):
            target = tmp_path / f"{i}-{j}.rgb"
            shutil.copyfile(pixels, target)
            jobs.append(
                {
                    "pixels": str(target),
                    "width": image.shape[2],
                    "height": image.shape[1],
                    "preprocessing": prep.model_dump(mode="json"),
                }
            )
            expected.append(build_eval_transform(prep)(image).numpy())
    (tmp_path / "job.json").write_text(json.dumps(jobs))
    subprocess.run(
        [node, "-e", _NODE_RUNNER, str(ASSETS / "preprocess.js"), str(tmp_path / "job.json")],
        check=True,
        timeout=120,
    )
    for job, want in zip(jobs, expected, strict=True):
        got = np.fromfile(job["pixels"] + ".out", dtype=np.float32).reshape(want.shape)
        assert np.array_equal(got, want), (job, float(np.abs(got - want).max()))


_NODE_SCORES = """
const S = require(process.argv[1]); const fs = require('fs');
const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = job.rows.map((r) => {
  const probs = S.softmax(r.logits, job.temperature);
  return { probs, scores: job.oods.map((ood) => S.oodScore(ood, r.logits, probs, r.features)) };
});
fs.writeFileSync(process.argv[2] + '.out', JSON.stringify(out));
"""


def test_js_scores_are_python_s(tmp_path: Path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js not installed: the JS score check needs `node`")
    rng = np.random.default_rng(0)
    n, c, d, k = 20, 4, 16, 6
    logits, features = 3 * rng.standard_normal((n, c)), rng.standard_normal((n, d))
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:k]  # orthonormal rows
    params = {
        "means": rng.standard_normal((c, d)).tolist(),
        "basis": basis.tolist(),
        "inv_eigenvalues": rng.uniform(0.5, 20, k).tolist(),
        "inv_residual_variance": 2.5,
    }
    temperature = 1.7
    oods = [{"kind": "msp"}, {"kind": "energy"}, {"kind": "mahalanobis", "params": params}]
    rows = [
        {"logits": z.tolist(), "features": f.tolist()}
        for z, f in zip(logits, features, strict=True)
    ]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"rows": rows, "oods": oods, "temperature": temperature}))
    subprocess.run([node, "-e", _NODE_SCORES, str(ASSETS / "scores.js"), str(job)], check=True)
    got = json.loads((tmp_path / "job.json.out").read_text())
    np.testing.assert_allclose([g["probs"] for g in got], softmax(logits, temperature), rtol=1e-12)
    for i, ood in enumerate(oods):
        want = ood_scores(
            ood["kind"], logits, temperature=temperature, features=features, params=params
        )
        np.testing.assert_allclose([g["scores"][i] for g in got], want, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- the folder


def test_folder_is_self_contained_verified_and_recorded(site, ort):
    bundle, folder = site
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert files == EXPECTED_FILES
    for name, expected in ort_web_module.ORT_WEB_FILES.items():
        got = hashlib.sha256((folder / "ort" / Path(name).name).read_bytes()).hexdigest()
        assert got == expected, name
    for name in (
        "index.html",
        "app.js",
        "preprocess.js",
        "scores.js",
        "sw.js",
        "manifest.webmanifest",
    ):
        text = (folder / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    meta = read_meta(bundle)
    config = json.loads((folder / "config.json").read_text())
    assert config["classes"] == meta.classes and config["temperature"] == meta.temperature
    assert config["preprocessing"] == meta.preprocessing.model_dump(mode="json")
    assert config["model"]["file"] == "model.onnx" and config["model"]["kind"] == "fp32"
    assert set(config["diseases"]) == set(meta.classes)
    for name in meta.classes:
        assert config["diseases"][name] == disease_info(name).to_dict()
    assert (config["ood"] is None) == (meta.ood is None)
    worker = (folder / "sw.js").read_text()
    listed = json.loads(
        worker[worker.index("const FILES = ") + 14 : worker.index(";\nconst PREFIX")]
    )
    assert set(listed) == {"./", *(files - {"sw.js"})}
    manifest = json.loads((folder / "manifest.webmanifest").read_text())
    for icon in manifest["icons"]:
        with Image.open(folder / icon["src"]) as img:
            assert f"{img.width}x{img.height}" == icon["sizes"]
    record = meta.exports["web"]
    assert record["model"] == "onnx" and record["onnxruntime_web"] == ORT_WEB_VERSION


def test_int8_is_shipped_only_when_it_passed(run: Path, ort, tmp_path: Path):
    copy = copy_run(run, tmp_path / "run")
    bundle = copy / "model"
    fp32 = read_meta(bundle).exports["onnx"]
    shutil.copyfile(bundle / fp32["path"], bundle / "model.int8.onnx")
    for passed, kind in ((False, "fp32"), (True, "INT8")):
        meta = read_meta(bundle)
        verification = {**fp32["verification"], "metric": "top1_agreement", "passed": passed}
        record = {**fp32, "path": "model.int8.onnx", "verification": verification}
        update_meta(bundle, exports={**meta.exports, "onnx_int8": record})
        result = export_web(bundle, out=tmp_path / "site")
        config = json.loads((result.path / "config.json").read_text())
        assert config["model"]["kind"] == kind
        assert (result.path / config["model"]["file"]).is_file()


def test_ort_web_copies_are_checked_and_no_source_is_one_clear_line(
    run: Path, ort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ort_web_module.shutil, "which", lambda name: None)  # no npm
    with pytest.raises(ExportError, match="install npm.*--ort-web"):
        ort_web_module.ort_web_files()
    code, err = cli_in_process(
        ["export", str(run / "model"), "--format", "web", "--out", str(tmp_path / "site")]
    )
    assert clear_error(code, err, "npm", "--ort-web"), err
    assert not (tmp_path / "site").exists()

    package = tmp_path / "copy" / "package"
    for name, path in ort.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, package / name)
    files = ort_web_module.ort_web_files(tmp_path / "copy")  # an unpacked folder
    assert set(files) == set(ort_web_module.ORT_WEB_FILES)
    assert ort_web_module.ort_web_files() == files  # now cached, no npm needed

    tarball = tmp_path / "other.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(package, arcname="package")
    with pytest.raises(ExportError, match="not the published"):
        ort_web_module.ort_web_files(tarball)
    wasm = package / "dist/ort-wasm-simd-threaded.wasm"
    data = bytearray(wasm.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed
    wasm.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match the sha256"):
        ort_web_module.ort_web_files(tmp_path / "copy")


# --------------------------------------------------------------------------- Chromium


def _diagnose(page, photo: Path) -> dict:
    """Upload ``photo`` and return the page's result (``window.cropdoc.last``)."""
    page.evaluate("window.cropdoc.last = null")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_function("window.cropdoc.last !== null", timeout=60_000)
    result = page.evaluate("window.cropdoc.last")
    assert result["ok"], result
    return result


def _open_offline(browser, folder: Path):
    """Load the page once from a static server, stop it, go offline, reload: the page."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    with static_server(folder) as url:
        page.goto(url)
        page.wait_for_function("window.cropdoc.offlineReady === true", timeout=60_000)
    context.set_offline(True)
    page.reload()
    page.wait_for_function(
        "document.getElementById('model-info').textContent.startsWith('Model:')"
        " || window.cropdoc.error !== null",
        timeout=60_000,
    )
    assert page.evaluate("window.cropdoc.error") is None
    assert page.evaluate("navigator.serviceWorker.controller !== null")
    return context, page


def test_offline_page_diagnoses_like_python(browser, site, leaves: list[Path]):
    bundle, folder = site
    predictor = load_predictor(bundle, backend="onnx")
    context, page = _open_offline(browser, folder)
    try:
        for photo in leaves:
            got = _diagnose(page, photo)
            want = predictor.predict([photo])[0]
            logits = predictor.logits(predictor.preprocess(photo)[None])[0]
            probs = predictor.probabilities(logits)
            assert got["prediction"]["class"] == want.best.name
            assert np.abs(np.array(got["probabilities"]) - probs).max() <= 1e-3
            assert np.abs(np.array(got["logits"]) - logits).max() <= 1e-4
            if got["ood_score"] is not None:
                # scores.js is Python's formula (test_js_scores_are_python_s); here the
                # inputs differ: onnxruntime-web's features vs onnxruntime's, ~1e-9 apart,
                # which the tiny random model's near-singular covariance (variances at the
                # 1e-12 floor) magnifies to ~1e-3 relative in a Mahalanobis score.
                assert got["ood_score"] == pytest.approx(want.ood_score, rel=1e-2)
                margin = abs(want.ood_score - read_meta(bundle).ood.threshold)
                if margin > 1e-2 * abs(want.ood_score):
                    assert got["abstain"] == want.abstain
            else:
                assert not got["abstain"] and not want.abstain
            info = disease_info(want.best.name)
            assert page.is_visible("#not-recognised") == want.abstain
            if not want.abstain:  # serve's card (card.js), with serve's advice
                label = "Healthy leaf" if info.healthy else info.disease
                assert page.inner_text("#pred-label") == label
                assert page.locator("#treatment li").all_inner_texts() == info.management
                assert len(page.locator("#bars .bar").all()) == min(3, len(predictor.classes))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(folder.parent / "web-offline-phone.png"), full_page=True)
    finally:
        context.close()


def test_abstaining_bundle_shows_not_recognised(browser, run: Path, ort, leaves, tmp_path: Path):
    copy = copy_run(run, tmp_path / "run")
    update_meta(copy / "model", ood={"kind": "msp", "threshold": 0.0})  # abstains on all
    folder = export_web(copy / "model", out=tmp_path / "site").path
    want = load_predictor(copy / "model", backend="onnx").predict([leaves[0]])[0]
    assert want.abstain
    context, page = _open_offline(browser, folder)
    try:
        got = _diagnose(page, leaves[0])
        assert got["abstain"] and got["ood_score"] == pytest.approx(want.ood_score, rel=1e-6)
        assert page.is_visible("#not-recognised") and not page.is_visible("#diagnosis")
        assert page.inner_text("#not-recognised").startswith("Not recognised")
        assert got["advice"] == NOT_RECOGNISED and "treatment" not in got
        assert page.locator("#treatment li").count() == 0
    finally:
        context.close()


def test_the_page_ships_a_given_disease_table(run: Path, ort, tmp_path: Path):
    """``export --format web --diseases FILE``: an extension service's advice is what the
    offline page shows; a bad file stops the export in one line, writing nothing."""
    copy = copy_run(run, tmp_path / "run")
    advice = "Call the county plant clinic before you spray anything."
    classes = read_meta(copy / "model").classes
    entries = {
        name: {
            "crop": "Tomato",
            "disease": name.split("___")[-1].replace("_", " "),
            "healthy": name.endswith("healthy"),
            "severity": "none" if name.endswith("healthy") else "high",
            "symptoms": "As in our field guide.",
            "management": [advice],
        }
        for name in classes
    }
    table = tmp_path / "county.json"
    table.write_text(json.dumps(entries))
    site = tmp_path / "site"
    argv = ["export", str(copy / "model"), "--format", "web", "--out", str(site)]
    code, err = cli_in_process([*argv, "--diseases", str(table)])
    assert code == 0, err
    config = json.loads((site / "config.json").read_text())
    assert all(config["diseases"][c]["management"] == [advice] for c in classes)

    table.write_text(json.dumps({classes[0]: {"crop": "Tomato"}}))  # no disease, no steps
    code, err = cli_in_process([*argv, "--out", str(tmp_path / "bad"), "--diseases", str(table)])
    assert clear_error(code, err, str(table)), err
    assert not (tmp_path / "bad").exists()
