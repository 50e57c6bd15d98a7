"""Out-of-distribution scores: how strange an input is to a model, one way everywhere.

A classifier always answers with one of its classes, even for a cat or a disease it never
saw; a score that is higher for stranger inputs, with a threshold, lets it abstain instead.
Evaluation fits and measures the score, prediction and serving compute it on every image,
and the ONNX backends must agree with PyTorch, so the formulas live here, on numpy alone
(no torch), where every layer can import them cheaply.

Kinds (higher = stranger):

* ``msp``: ``1 - max softmax(logits / T)`` at the bundle's calibration temperature T
  (Hendrycks & Gimpel, 2017);
* ``energy``: ``-logsumexp(logits)`` (Liu et al., 2020), at T = 1 as in the paper;
* ``mahalanobis``: the squared Mahalanobis distance of the penultimate head features
  (the 512-d input of the last linear layer) to the nearest class mean, under one shared
  covariance (Lee et al., 2018). The covariance is stored as its leading eigenvectors and
  eigenvalues plus one variance for the remaining directions (a probabilistic-PCA form),
  which keeps ``model.json`` small (a full 512x512 precision matrix is ~3 MB of JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_TARGET_FALSE_ABSTAIN",
    "FALLBACK_KIND",
    "FEATURE_KINDS",
    "OOD_KINDS",
    "bundle_scores",
    "mahalanobis_distance",
    "needs_features",
    "ood_scores",
    "threshold_for",
]

#: Every score cropdoc can fit, store and compute.
OOD_KINDS = ("msp", "energy", "mahalanobis")
#: Kinds that read the penultimate features besides the logits.
FEATURE_KINDS = frozenset({"mahalanobis"})
#: What a bundle without a fitted score reports (from the logits alone, never abstaining).
FALLBACK_KIND = "msp"
#: The share of in-distribution validation images a fitted threshold may turn away.
DEFAULT_TARGET_FALSE_ABSTAIN = 0.05


def needs_features(kind: str) -> bool:
    """Whether ``kind`` reads the penultimate features (so runners must return them)."""
    _check_kind(kind)
    return kind in FEATURE_KINDS


def _check_kind(kind: str) -> None:
    if kind not in OOD_KINDS:
        raise ValueError(f"unknown OOD score kind {kind!r}; known: {', '.join(OOD_KINDS)}")


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def ood_scores(
    kind: str,
    logits: Any,
    *,
    temperature: float = 1.0,
    features: Any = None,
    params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The ``kind`` score of each row, higher for stranger inputs, as float64 ``(N,)``.

    Args:
        kind: one of :data:`OOD_KINDS`.
        logits: ``(N, C)`` raw model outputs.
        temperature: the calibration temperature (``msp`` only).
        features: ``(N, D)`` penultimate features (feature kinds only).
        params: what the kind was fitted to (``mahalanobis``: see
            :func:`mahalanobis_distance`).

    Raises:
        ValueError: an unknown kind, or features/params missing for a feature kind.

    >>> ood_scores("msp", [[0.0, 0.0]]).tolist()
    [0.5]
    """
    _check_kind(kind)
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    if kind == "msp":
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        zt = z / float(temperature)
        return 1.0 - np.exp(zt.max(axis=-1) - _logsumexp(zt))
    if kind == "energy":
        return -_logsumexp(z)
    if features is None or not params:
        raise ValueError(f"the {kind} score needs the penultimate features and fitted params")
    return mahalanobis_distance(features, params)


def bundle_scores(
    ood: Any, logits: Any, *, temperature: float, features: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and abstain flags as a bundle's ``ood`` field defines them.

    Args:
        ood: the bundle's :class:`~cropdoc.bundle.OodInfo` (``kind``, ``threshold``,
            ``params``), or None: then the :data:`FALLBACK_KIND` score, never abstaining.
        logits: ``(N, C)``.
        temperature: the bundle's calibration temperature.
        features: ``(N, D)`` penultimate features (feature kinds only).
    """
    kind = ood.kind if ood is not None else FALLBACK_KIND
    params = ood.params if ood is not None else None
    scores = ood_scores(kind, logits, temperature=temperature, features=features, params=params)
    if ood is None:
        return scores, np.zeros(len(scores), dtype=bool)
    return scores, scores > float(ood.threshold)


def mahalanobis_distance(features: Any, params: Mapping[str, Any]) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``features`` to the nearest class mean.

    ``params`` (what :func:`cropdoc.evaluation.fit_ood` stores):

    * ``means``: ``(C, D)`` class means;
    * ``basis``: ``(K, D)`` orthonormal leading eigenvectors of the shared covariance;
    * ``inv_eigenvalues``: ``(K,)`` their inverse variances;
    * ``inv_residual_variance``: one inverse variance for every direction orthogonal to
      ``basis`` (0 when ``K = D``).

    ``d^2 = sum_k p_k^2 / lambda_k + (|delta|^2 - sum_k p_k^2) / sigma^2`` with
    ``delta = f - mu_c`` and ``p = basis @ delta``.
    """
    f = np.atleast_2d(np.asarray(features, dtype=np.float64))
    means = np.asarray(params["means"], dtype=np.float64)
    basis = np.asarray(params["basis"], dtype=np.float64).reshape(-1, means.shape[1])
    inv_eig = np.asarray(params["inv_eigenvalues"], dtype=np.float64)
    inv_res = float(params.get("inv_residual_variance", 0.0))
    if f.shape[1] != means.shape[1]:
        raise ValueError(f"features have width {f.shape[1]} but the fitted means {means.shape[1]}")
    proj = (f @ basis.T)[:, None, :] - (means @ basis.T)[None, :, :]  # (N, C, K)
    sq = (f * f).sum(1)[:, None] - 2.0 * f @ means.T + (means * means).sum(1)[None, :]
    inside = (proj * proj).sum(-1)
    dist = (proj * proj * inv_eig).sum(-1) + inv_res * np.maximum(sq - inside, 0.0)
    return dist.min(axis=1)


def threshold_for(scores: Any, target: float = DEFAULT_TARGET_FALSE_ABSTAIN) -> float:
    """The threshold at which at most ``floor(target * N)`` of ``scores`` abstain.

    A score *above* the threshold abstains, so in-distribution images scored like these
    are turned away at most at the ``target`` rate (fewer when scores tie). The threshold
    sits halfway between the highest accepted score and the next one up (just above the
    highest when none may abstain), never on a fitted image's own score: a backend whose
    float rounding differs slightly (ONNX, INT8) then decides those images the same way.

    Raises:
        ValueError: no scores, or a target outside ``[0, 1)``.

    >>> threshold_for([0.1, 0.2, 0.3, 0.4], target=0.25)
    0.35
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("no scores to set a threshold on")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target false-abstain rate must be in [0, 1), got {target}")
    allowed = int(np.floor(target * s.size + 1e-9))
    accepted = s[s.size - 1 - allowed]
    if allowed == 0:
        return float(accepted + max(abs(accepted), 1.0) * 1e-6)
    above = s[s.size - allowed]
    return float(accepted + (above - accepted) / 2.0)
