"""Out-of-distribution scores and abstention: the formulas, the threshold rule, the fit at
the end of training, and the ``ood_score``/``abstain`` fields of every face (API, CLI,
server), with ONNX agreeing with PyTorch.

No training: a random-weight 32 px MobileNetV3-Small bundle on the generated leaves is
enough to check plumbing; how well the scores separate real unseen diseases and non-leaf
photos is measured by ``benchmarks/ood.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf
from tests.helpers import cli_in_process

from cropdoc.bundle import BundleMeta, read_meta, save_bundle, update_meta
from cropdoc.data.nonleaf import NONLEAF_KINDS, generate_nonleaf, nonleaf_image
from cropdoc.data.split import SplitManifest
from cropdoc.evaluation import auroc, fit_ood, fit_run_ood, fpr_at_tpr, ood_report
from cropdoc.evaluation.logits import collect_logits
from cropdoc.evaluation.ood import OodFit, fit_mahalanobis
from cropdoc.inference import collect_images, load_predictor, recorded_export
from cropdoc.models import LogitsAndFeatures, build, get_arch
from cropdoc.ood import (
    FALLBACK_KIND,
    bundle_scores,
    mahalanobis_distance,
    ood_scores,
    threshold_for,
)
from cropdoc.preprocessing import Preprocessing

ARCH = "mobilenet_v3_small"
RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- the scores


def test_msp_is_one_minus_the_calibrated_top_probability():
    logits = RNG.normal(size=(20, 5)) * 3
    for t in (1.0, 2.5):
        z = logits / t
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(ood_scores("msp", logits, temperature=t), 1 - p.max(1))
    hotter = ood_scores("msp", logits, temperature=3.0)
    assert (hotter >= ood_scores("msp", logits)).all()  # softer -> less sure


def test_energy_is_minus_logsumexp_and_survives_large_logits():
    logits = RNG.normal(size=(10, 4)) * 5
    expected = -np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(ood_scores("energy", logits), expected)
    assert np.isfinite(ood_scores("energy", np.full((1, 3), 1e4))).all()


def test_logit_scores_match_pytorch_ood():
    detectors = pytest.importorskip("pytorch_ood.detector", reason="pytorch-ood not installed")
    logits = torch.from_numpy(RNG.normal(size=(32, 6)).astype(np.float32) * 4)
    msp = detectors.MaxSoftmax(None, t=2.0).predict_logits(logits).numpy()  # -p_max
    energy = detectors.EnergyBased(None).predict_logits(logits).numpy()  # -logsumexp
    np.testing.assert_allclose(
        ood_scores("msp", logits.numpy(), temperature=2.0), 1 + msp, atol=1e-6
    )
    np.testing.assert_allclose(ood_scores("energy", logits.numpy()), energy, rtol=1e-5)


def _gaussian_classes(n: int = 400, d: int = 24, c: int = 3):
    means = RNG.normal(size=(c, d)) * 4
    labels = np.arange(n) % c
    a = np.eye(d) + 0.5 * RNG.normal(size=(d, d)) / np.sqrt(d)  # well conditioned
    feats = means[labels] + RNG.normal(size=(n, d)) @ a.T
    return feats, labels, means


def test_full_rank_mahalanobis_is_the_exact_distance_to_the_nearest_mean():
    feats, labels, _ = _gaussian_classes()
    params = fit_mahalanobis(feats, labels, 3, rank=feats.shape[1])
    assert params["inv_residual_variance"] == 0.0
    means = np.stack([feats[labels == k].mean(0) for k in range(3)])
    cov, _ = ledoit_wolf(feats - means[labels], assume_centered=True)
    precision = np.linalg.inv(cov)
    x = RNG.normal(size=(7, feats.shape[1])) * 3
    exact = np.min([np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in means], axis=0)
    np.testing.assert_allclose(mahalanobis_distance(x, params), exact, rtol=1e-4)
    np.testing.assert_allclose(
        ood_scores("mahalanobis", np.zeros((7, 3)), features=x, params=params), exact, rtol=1e-4
    )


def test_mahalanobis_ranks_as_pytorch_ood_and_low_rank_still_separates():
    detectors = pytest.importorskip("pytorch_ood.detector", reason="pytorch-ood not installed")
    feats, labels, _ = _gaussian_classes(n=900, d=24)
    ref = detectors.Mahalanobis(None).fit_features(
        torch.from_numpy(feats).float(), torch.from_numpy(labels)
    )
    near = feats[:50] + RNG.normal(size=(50, 24)) * 0.3
    far = RNG.normal(size=(50, 24)) * 8
    x = np.r_[near, far]
    theirs = ref.predict_features(torch.from_numpy(x).float()).numpy()
    full = mahalanobis_distance(x, fit_mahalanobis(feats, labels, 3, rank=24))
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(rank(full), rank(theirs))[0, 1] > 0.99
    low = mahalanobis_distance(x, fit_mahalanobis(feats, labels, 3, rank=8))
    assert auroc(low[:50], low[50:]) > 0.99  # far points are stranger at low rank too


def test_feature_scores_need_features_and_params():
    with pytest.raises(ValueError, match="features"):
        ood_scores("mahalanobis", np.zeros((1, 3)))
    with pytest.raises(ValueError, match="unknown OOD score kind"):
        ood_scores("cosine", np.zeros((1, 3)))


# --------------------------------------------------------------------------- threshold


def test_threshold_turns_away_at_most_the_target_share():
    scores = RNG.permutation(np.arange(100.0))
    t = threshold_for(scores, 0.05)
    assert (scores > t).sum() == 5 and t == 94.5
    assert (scores > threshold_for(scores, 0.0)).sum() == 0
    ties = np.r_[np.zeros(90), np.ones(10)]  # ties: fewer abstain, never more
    assert (ties > threshold_for(ties, 0.05)).sum() == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            threshold_for(scores, bad)
    with pytest.raises(ValueError):
        threshold_for([], 0.05)


def test_auroc_and_fpr95():
    known, unknown = np.arange(100.0), np.arange(100.0) + 1000
    assert auroc(known, unknown) == 1.0 and fpr_at_tpr(known, unknown) == 0.0
    assert auroc(known, known) == 0.5
    assert fpr_at_tpr(known, known) == pytest.approx(0.95, abs=0.01)
    report = ood_report(known, np.r_[unknown[:50], known[:50]], threshold=94.0)
    assert report["abstain_rate_id"] == 0.05 and report["abstain_rate_ood"] == 0.5


def test_a_bundle_without_a_fitted_score_never_abstains():
    logits = RNG.normal(size=(6, 3)) * 4
    scores, abstain = bundle_scores(None, logits, temperature=1.3)
    assert FALLBACK_KIND == "msp" and not abstain.any()
    np.testing.assert_allclose(scores, ood_scores("msp", logits, temperature=1.3))


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet50", "timm/resnet10t"])
def test_logits_and_features_share_the_model_and_leave_it_alone(arch: str):
    pytest.importorskip("timm")
    model = build(arch, classes=3, weights="none").eval()
    both = LogitsAndFeatures(model, get_arch(arch)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = both(x)
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-5)
    assert feats.shape == (2, 512)
    assert type(getattr(model, get_arch(arch).head_attr)).__name__ == "Sequential"
    shared = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in both.parameters()} <= shared


def test_nonleaf_images_are_deterministic_and_cover_every_kind(tmp_path: Path):
    a = np.asarray(nonleaf_image("sky", 3, size=64, seed=1))
    assert a.shape == (64, 64, 3)
    assert (a == np.asarray(nonleaf_image("sky", 3, size=64, seed=1))).all()
    assert (a != np.asarray(nonleaf_image("sky", 4, size=64, seed=1))).any()
    root = generate_nonleaf(tmp_path / "nl", per_kind=1, size=48)
    assert sorted(p.name for p in root.iterdir()) == sorted(NONLEAF_KINDS)
    with pytest.raises(ValueError, match="unknown non-leaf kind"):
        nonleaf_image("cat", 0)


# --------------------------------------------------------------------------- a bundle


def _warm_batchnorm(model: torch.nn.Module, meta: BundleMeta, images: list[Path]) -> None:
    """BatchNorm statistics of the data (no weight changes): a random network whose
    features spread like a trained one's, instead of collapsing to near-constants."""
    from cropdoc.data.images import load_tensor
    from cropdoc.data.transforms import build_eval_transform

    transform = build_eval_transform(meta.preprocessing)
    batch = torch.stack([transform(load_tensor(p)) for p in images])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    model.eval()


@pytest.fixture(scope="module")
def bundle(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight bundle with a Mahalanobis score fitted by ``fit_run_ood`` on a
    hand-made split of the generated leaves (what finalize does after training)."""
    run = tmp_path_factory.mktemp("ood") / "run"
    classes = sorted(p.name for p in tiny_data.iterdir() if p.is_dir())
    torch.manual_seed(0)
    model = build(ARCH, classes=len(classes), weights="none")
    meta = BundleMeta(
        arch=ARCH, classes=classes, preprocessing=Preprocessing(image_size=32, resize_size=36)
    )
    _warm_batchnorm(model, meta, collect_images([tiny_data]))
    save_bundle(run / "model", model, meta)
    files = [
        (str(p.relative_to(tiny_data)), classes.index(p.parent.name))
        for p in collect_images([tiny_data])
    ]
    SplitManifest(
        root=tiny_data,
        classes=classes,
        seed=0,
        ratios=(0.5, 0.25, 0.25),
        group_pattern="",
        splits={"train": files[::2], "val": files[1::4], "test": files[3::4]},
    ).save(run / "split.json")
    info = fit_run_ood(run, kind="mahalanobis")  # the kind that needs the features
    assert info.kind == "mahalanobis" and info.metrics["val_abstain_rate"] <= 0.05
    return run / "model"


def test_fit_is_stored_in_model_json(bundle: Path):
    ood = read_meta(bundle).ood
    assert ood is not None and ood.kind == "mahalanobis" and ood.target_false_abstain == 0.05
    assert len(ood.params["means"]) == 4 and len(ood.params["means"][0]) == 512
    assert (bundle / "model.json").stat().st_size < 1_000_000  # low rank keeps it small


def test_fit_ood_every_kind_and_target(bundle: Path, tiny_data: Path):
    from cropdoc.bundle import load_bundle

    loaded = load_bundle(bundle)
    samples = [(p, 0) for p in collect_images([tiny_data])]
    labels = [(p, i % 4) for i, (p, _) in enumerate(samples)]
    out = collect_logits(loaded.model, labels, loaded.meta, features=True)
    for kind in ("msp", "energy", "mahalanobis"):
        info = fit_ood(kind, OodFit(out, out, 1.0), n_classes=4, target=0.25)
        assert info.kind == kind
        assert info.metrics["val_abstain_rate"] <= 0.25
        assert bool(info.params) == (kind == "mahalanobis")


def _abstaining(bundle: Path, dest: Path, below: Path) -> Path:
    """A copy of ``bundle`` whose threshold sits just below the score of image ``below``."""
    import shutil

    shutil.copytree(bundle, dest)
    score = load_predictor(dest, backend="torch").predict([below])[0].ood_score
    ood = read_meta(dest).ood.model_dump()
    update_meta(dest, ood={**ood, "threshold": score * 0.999})
    return dest


def test_api_predictions_carry_ood_score_and_abstain(bundle: Path, tiny_data: Path, tmp_path):
    import cropdoc

    leaf = collect_images([tiny_data])[0]
    p = cropdoc.load(bundle, backend="torch").predict([leaf])[0]
    assert isinstance(p.ood_score, float) and p.abstain in (True, False)
    d = p.to_dict()
    assert set(d) >= {"ood_score", "abstain"} and d["ood_score"] == p.ood_score
    strict = _abstaining(bundle, tmp_path / "strict", leaf)
    assert cropdoc.load(strict, backend="torch").predict([leaf])[0].abstain is True


def test_onnx_gives_the_torch_ood_score(bundle: Path, tiny_data: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    import shutil

    from cropdoc.export import export_onnx

    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    images = collect_images([tiny_data])[::3]
    report = export_onnx(copy, data=[tiny_data])
    assert report.record["outputs"] == ["logits", "features"]
    torch_p = load_predictor(copy, backend="torch").predict(images)
    onnx_p = load_predictor(copy, backend="onnx").predict(images)
    a = np.array([p.ood_score for p in torch_p])
    b = np.array([p.ood_score for p in onnx_p])
    np.testing.assert_allclose(b, a, rtol=1e-3)
    assert [p.abstain for p in torch_p] == [p.abstain for p in onnx_p]
    # An export made before features were an output is not used for a feature score.
    meta = read_meta(copy)
    record = {**meta.exports["onnx"], "outputs": ["logits"]}
    update_meta(copy, exports={**meta.exports, "onnx": record})
    assert recorded_export(copy, "onnx") is None


def test_int8_onnx_records_the_features_output_for_a_feature_score(
    bundle: Path, tiny_data: Path, tmp_path: Path
):
    """A Mahalanobis bundle uses its INT8 file: the record lists the features output."""
    pytest.importorskip("onnxruntime")
    import shutil

    from cropdoc.export import export_int8

    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    report = export_int8(copy, calibration=[tiny_data], force=True)
    assert report.record["outputs"] == ["logits", "features"]
    assert recorded_export(copy, "onnx_int8") == copy / "model.int8.onnx"
    images = collect_images([tiny_data])[:4]
    preds = load_predictor(copy, backend="onnx-int8").predict(images)
    assert all(p.ok and np.isfinite(p.ood_score) for p in preds)


def test_cli_predict_json_and_csv_fields(bundle: Path, tiny_data: Path, capsys):
    leaf = str(collect_images([tiny_data])[0])
    code, err = cli_in_process(["predict", str(bundle), leaf, "--json", "--backend", "torch"])
    out = capsys.readouterr().out
    assert code == 0, err
    row = json.loads([line for line in out.splitlines() if line.startswith("{")][0])
    assert isinstance(row["ood_score"], float) and isinstance(row["abstain"], bool)
    code, err = cli_in_process(["predict", str(bundle), leaf, "--csv", "--backend", "torch"])
    out = capsys.readouterr().out
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out[out.index("path,") :])))
    assert float(rows[0]["ood_score"]) == pytest.approx(row["ood_score"], rel=1e-5)
    assert rows[0]["abstain"] in ("true", "false")


def test_server_abstains_without_treatment(bundle: Path, tiny_data: Path, tmp_path: Path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cropdoc.serve import ServeSettings, create_app
    from cropdoc.serve.app import NOT_RECOGNISED

    leaf = collect_images([tiny_data])[0]
    files = [("files", (leaf.name, leaf.read_bytes(), "image/jpeg"))]
    normal = TestClient(create_app(load_predictor(bundle, backend="torch"), ServeSettings()))
    r = normal.post("/predict", files=files).json()["results"][0]
    assert isinstance(r["ood_score"], float) and r["abstain"] is False and r["treatment"]
    strict = _abstaining(bundle, tmp_path / "strict", leaf)
    client = TestClient(create_app(load_predictor(strict, backend="torch"), ServeSettings()))
    r = client.post("/predict", files=files).json()["results"][0]
    assert r["abstain"] is True and r["treatment"] == [] and r["advice"] == NOT_RECOGNISED
    assert r["disease"] is None and r["symptoms"] is None
    assert "not recognised" in r["advice"].lower()
    assert client.get("/model").json()["ood"]["kind"] == "mahalanobis"


def test_cli_evaluate_ood_reports_auroc_fpr95_and_abstain_rates(
    bundle: Path, tiny_data: Path, tmp_path: Path
):
    nonleaf = generate_nonleaf(tmp_path / "nonleaf", per_kind=1, size=64)
    out = tmp_path / "ev"
    argv = ["evaluate", str(bundle), str(tiny_data), "--out", str(out), "--ood", str(nonleaf)]
    code, err = cli_in_process(argv)
    assert code == 0, err
    ood = json.loads((out / "metrics.json").read_text())["ood"]
    assert ood["kind"] == "mahalanobis" and ood["fitted"] and 0 <= ood["abstain_rate"] <= 1
    vs = ood["ood_set"]
    assert vs["n_ood"] == len(NONLEAF_KINDS) and 0 <= vs["auroc"] <= 1
    assert {"fpr95", "abstain_rate_id", "abstain_rate_ood"} <= set(vs)
    assert vs["abstain_rate_id"] == ood["abstain_rate"]
    assert (out / "ood_histogram.png").is_file() and (out / "ood_predictions.csv").is_file()
    with open(out / "predictions.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["ood_score"]) >= 0 and row["abstain"] in ("0", "1")
    assert "## Out-of-distribution" in (out / "report.md").read_text()


def test_fit_ood_refits_an_existing_bundle_from_cli_and_api(bundle: Path, tmp_path: Path):
    import shutil

    import cropdoc

    run = tmp_path / "run"
    shutil.copytree(bundle.parent, run)
    code, err = cli_in_process(["fit-ood", str(run), "--score", "msp", "--target", "0.2"])
    assert code == 0, err
    ood = read_meta(run / "model").ood
    assert ood.kind == "msp" and ood.target_false_abstain == 0.2 and not ood.params
    assert ood.metrics["val_abstain_rate"] <= 0.2
    info = cropdoc.load(run / "model", backend="torch").fit_ood()  # the default score
    assert info.kind == "energy" and read_meta(run).ood.kind == "energy"
    code, err = cli_in_process(["fit-ood", str(run), "--target", "1.5"])
    assert code == 2 and "target false-abstain rate" in err


def test_training_fits_the_default_score_after_the_temperature(
    tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
):
    from test_predictor import shared_tiny_run

    run = shared_tiny_run(tiny_data, tmp_path_factory)
    meta = read_meta(run / "model")
    assert meta.ood is not None and meta.ood.kind == "energy" and not meta.ood.params
    assert meta.ood.target_false_abstain == 0.05
    assert meta.ood.metrics["val_abstain_rate"] <= 0.05
    # The threshold is the energy of the val split (what finalize fitted it on).
    from cropdoc.bundle import load_bundle

    loaded = load_bundle(run / "model")
    val = SplitManifest.load(run / "split.json").samples("val")
    out = collect_logits(loaded.model, val, meta)
    scores = ood_scores("energy", out.logits)
    assert (scores > meta.ood.threshold).mean() == meta.ood.metrics["val_abstain_rate"]
    # Predictions of the trained model carry the fitted score (ONNX, the default export).
    p = load_predictor(run / "model", backend="onnx").predict([val[0][0]])[0]
    assert p.ood_score == pytest.approx(float(scores[0]), abs=1e-3)
