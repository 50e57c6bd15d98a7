"""Evaluation metrics against scikit-learn, and class-name matching."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from cropdoc.classnames import class_key, find_class, match_classes
from cropdoc.errors import DataError
from cropdoc.evaluation.metrics import (
    bootstrap_intervals,
    classification_report_text,
    compute_metrics,
    expected_calibration_error,
    top_k_accuracy,
)
from cropdoc.probabilities import softmax

CLASSES = ["A___x", "A___y", "B___x", "B___y", "C___z"]


@pytest.fixture()
def fixed() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=200)
    logits = rng.normal(size=(200, 5))
    logits[np.arange(200), labels] += 1.5  # better than chance, far from perfect
    return softmax(logits), labels


def test_metrics_agree_with_scikit_learn(fixed):
    probs, labels = fixed
    pred = probs.argmax(1)
    m = compute_metrics(probs, labels, CLASSES)
    assert m["n"] == 200
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(labels, pred, average="weighted"))
    assert m["top3_accuracy"] == pytest.approx(top_k_accuracy_score(labels, probs, k=3))
    assert m["nll"] == pytest.approx(log_loss(labels, probs, labels=range(5)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=range(5))
    for i, name in enumerate(CLASSES):
        assert m["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
        )
    report = classification_report_text(probs, labels, CLASSES)
    assert "C___z" in report and f"{m['macro_f1']:.4f}" in report


def test_absent_class_is_not_averaged_but_listed(fixed):
    probs, labels = fixed
    keep = labels != 4
    probs = probs[keep].copy()
    probs[:, 4] = 0.0  # never predicted, never true
    m = compute_metrics(probs, labels[keep], CLASSES)
    assert m["per_class"]["C___z"]["support"] == 0
    assert m["macro_f1"] == pytest.approx(f1_score(labels[keep], probs.argmax(1), average="macro"))
    assert "C___z" not in classification_report_text(probs, labels[keep], CLASSES)


def test_bootstrap_intervals_are_the_percentiles_of_scikit_learn_on_the_resamples(fixed):
    """The documented resampling, redone image by image with scikit-learn's scores."""
    probs, labels = fixed
    pred = probs.argmax(1)
    got = bootstrap_intervals(labels, pred, len(CLASSES), n_resamples=200, seed=3)
    rng = np.random.default_rng(3)
    acc, f1 = [], []
    for _ in range(200):
        idx = rng.integers(0, len(labels), len(labels))
        acc.append(accuracy_score(labels[idx], pred[idx]))
        f1.append(f1_score(labels[idx], pred[idx], average="macro", zero_division=0))
    assert got["accuracy"] == pytest.approx(np.quantile(acc, [0.025, 0.975]).tolist(), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(np.quantile(f1, [0.025, 0.975]).tolist(), abs=1e-12)
    assert got["n_groups"] == len(labels) and got["n_resamples"] == 200
    point = f1_score(labels, pred, average="macro")
    assert got["macro_f1"][0] < point < got["macro_f1"][1]
    assert 0.05 < got["macro_f1"][1] - got["macro_f1"][0] < 0.3  # 200 images: several points


def test_bootstrap_resamples_groups_whole():
    """Ten photos per leaf: resampling leaves gives the interval of 20 leaves, wider than
    the 200 photos would give as independent images."""
    rng = np.random.default_rng(0)
    leaf_label = rng.integers(0, 2, size=20)
    leaf_right = rng.random(20) < 0.8  # a leaf is recognised in every photo or none
    labels = np.repeat(leaf_label, 10)
    pred = np.where(np.repeat(leaf_right, 10), labels, 1 - labels)
    leaves = np.repeat([f"leaf{i:02d}" for i in range(20)], 10)  # sorted = leaf order
    grouped = bootstrap_intervals(labels, pred, 2, groups=leaves, seed=1)
    images = bootstrap_intervals(labels, pred, 2, seed=1)
    assert grouped["n_groups"] == 20 and images["n_groups"] == 200
    width = lambda r: r["accuracy"][1] - r["accuracy"][0]  # noqa: E731
    assert width(grouped) > 2 * width(images)
    # The same resampling on one image per leaf: the same accuracies.
    once = bootstrap_intervals(labels[::10], pred[::10], 2, seed=1)
    assert once["accuracy"] == pytest.approx(grouped["accuracy"])


def test_paired_bootstrap_difference(fixed):
    """The difference of two models on the same resamples: redone with scikit-learn, and
    narrower than either model's own interval (they share the hard photos)."""
    probs, labels = fixed
    pred = probs.argmax(1)
    other = pred.copy()
    other[:12] = labels[:12]  # the other model also gets the first 12 photos right
    got = bootstrap_intervals(labels, other, 5, n_resamples=300, seed=5, reference=pred)
    rng = np.random.default_rng(5)
    diffs = []
    for _ in range(300):
        idx = rng.integers(0, len(labels), len(labels))
        f1 = [
            f1_score(labels[idx], q[idx], average="macro", zero_division=0) for q in (other, pred)
        ]
        diffs.append(f1[0] - f1[1])
    assert got["macro_f1_difference"] == pytest.approx(
        np.quantile(diffs, [0.025, 0.975]).tolist(), abs=1e-12
    )
    gained = int((other == labels).sum() - (pred == labels).sum())
    assert gained > 0 and got["accuracy_difference"][0] > 0  # better on every resample here
    width = got["macro_f1_difference"][1] - got["macro_f1_difference"][0]
    assert width < got["macro_f1"][1] - got["macro_f1"][0]
    same = bootstrap_intervals(labels, pred, 5, reference=pred)
    assert same["macro_f1_difference"] == [0.0, 0.0] and same["accuracy_difference"] == [0.0, 0.0]


def test_bootstrap_of_a_perfect_model_and_bad_input():
    y = np.array([0, 1, 2, 2, 1])
    assert bootstrap_intervals(y, y, 3)["macro_f1"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="same length"):
        bootstrap_intervals(y, y[:3], 3)
    with pytest.raises(ValueError, match="group keys"):
        bootstrap_intervals(y, y, 3, groups=["a"])
    with pytest.raises(ValueError, match="reference"):
        bootstrap_intervals(y, y, 3, reference=y[:2])


def test_top_k_with_fewer_classes_than_k():
    probs = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert top_k_accuracy(probs, [1, 1], k=3) == 1.0
    assert top_k_accuracy(probs, [1, 1], k=1) == 0.5


def test_ece_hand_computed():
    # Two bins used: conf 0.9 (2 of 2 right -> gap 0.1) and conf 0.6 (1 of 2 -> gap 0.1).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert expected_calibration_error(probs, [0, 0, 0, 1]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("Tomato___Bacterial_spot", "Tomato___Bacterial_spot"),
        ("Tomato_Bacterial_spot", "Tomato___Bacterial_spot"),
        ("tomato bacterial spot", "Tomato___Bacterial_spot"),
        ("Pepper__bell___healthy", "Pepper,_bell___healthy"),
        ("Pepper_bell_healthy", "Pepper,_bell___healthy"),
        ("Tomato__Target_Spot", "Tomato___Target_Spot"),
    ],
)
def test_class_names_match_ignoring_separators_and_case(folder, expected):
    bundle = ["Pepper,_bell___healthy", "Tomato___Bacterial_spot", "Tomato___Target_Spot"]
    assert match_classes([folder], bundle) == {folder: expected}
    assert find_class(folder, bundle) == expected


def test_unknown_class_raises_unless_ignored():
    bundle = ["Tomato___healthy", "Potato___healthy"]
    with pytest.raises(DataError, match=r"Corn___healthy.*--ignore-unknown"):
        match_classes(["Tomato_healthy", "Corn___healthy"], bundle)
    assert match_classes(["Tomato_healthy", "Corn___healthy"], bundle, ignore_unknown=True) == {
        "Tomato_healthy": "Tomato___healthy"
    }
    assert find_class("Corn___healthy", bundle) is None


def test_ambiguous_bundle_names_are_an_error_but_exact_wins():
    bundle = ["Leaf_spot", "Leaf__spot"]
    assert match_classes(["Leaf__spot"], bundle) == {"Leaf__spot": "Leaf__spot"}
    with pytest.raises(DataError, match="several model classes"):
        match_classes(["leaf spot"], bundle)
    assert class_key("Leaf  Spot!") == "leafspot"
