"""AUC by the rank formula against a deliberately naive pairwise count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.metrics import accuracy, log_loss, roc_auc, summarize


def naive_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    wins = 0.0
    for p in pos:
        for n in neg:
            if p > n:
                wins += 1.0
            elif p == n:
                wins += 0.5
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_pairwise_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1
    # Rounded scores: many ties, which the average-rank formula must count as halves.
    scores = np.round(rng.random(n) + 0.3 * labels, 1)
    assert roc_auc(labels, scores) == pytest.approx(naive_auc(labels.tolist(), scores.tolist()))


def test_auc_edges() -> None:
    assert roc_auc(np.array([0, 1]), np.array([0.1, 0.9])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == 0.5
    assert math.isnan(roc_auc(np.ones(5), np.random.default_rng(0).random(5)))
    with pytest.raises(ValueError, match="differ in shape"):
        roc_auc(np.ones(3), np.ones(4))


def test_logloss_and_accuracy() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.4, 0.6])
    expect = -np.mean(np.log([0.9, 0.8, 0.4, 0.4]))
    assert log_loss(y, p) == pytest.approx(expect)
    assert accuracy(y, p) == 0.5
    assert summarize(y, p)["samples"] == 4
    assert np.isfinite(log_loss(np.array([1.0]), np.array([0.0])))  # clipped
    # A diverged model (nan probabilities) has no accuracy: it was the negatives' share.
    assert np.isnan(accuracy(y, np.array([np.nan, 0.2, 0.4, 0.6])))
