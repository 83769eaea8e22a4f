"""Click-prediction metrics: ROC AUC (rank formula), log loss, accuracy.

AUC is the Mann-Whitney statistic: with ``r_i`` the 1-based rank of score ``i`` among all
scores (tied scores share their average rank),
``AUC = (sum of r_i over positives - P (P + 1) / 2) / (P * N)``, which equals the
probability that a random positive scores above a random negative, ties counting half.
It needs one sort, ``O(n log n)``, instead of comparing all ``P * N`` pairs.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels``; NaN when one class is absent or a
    score is not finite (a diverged model: its AUC is undefined, not 0.5)."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0 or not np.isfinite(s).all():
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][y].sum())
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``probs`` (clipped to [eps, 1-eps])."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), _EPS, 1.0 - _EPS)
    if y.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    y = np.asarray(labels).astype(bool).ravel()
    p = np.asarray(probs).ravel()
    if y.size == 0 or not np.isfinite(p).all():  # a diverged model has no accuracy
        return float("nan")
    return float(((p > threshold) == y).mean())


def summarize(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``{auc, logloss, accuracy, samples}`` of one evaluation pass."""
    return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs),
            "accuracy": accuracy(labels, probs), "samples": int(np.asarray(labels).size)}
