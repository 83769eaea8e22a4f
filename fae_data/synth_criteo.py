"""The synthetic Criteo world and its chunk generator, behind :func:`fae_data.synth.write_criteo`.

The per-column parameters (dense marginals, missing rates, which columns move the click
logit and how strongly) are fixed here and do not depend on the seed; one call of
:func:`_criteo_chunk` draws a chunk of rows from them with the RNG it is given.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from fae_data.schema import CRITEO_DENSE, CRITEO_SPARSE
from fae_data.synth_numerics import (
    _gaussianish,
    _hex_strings,
    _mix32,
    _power_law_ranks,
    _salt,
    _validity,
)

# --- Criteo generator parameters --------------------------------------------------------

#: Dense columns: (median, lognormal sigma, missing rate), roughly Criteo Kaggle's marginals.
#: Values are floor(lognormal), so small medians give many zeros and a heavy tail.
_CRITEO_DENSE_PARAMS: dict[str, tuple[float, float, float]] = {
    "I1": (1.0, 1.4, 0.45),
    "I2": (3.0, 2.0, 0.0),
    "I3": (6.0, 1.5, 0.21),
    "I4": (4.0, 1.0, 0.22),
    "I5": (2800.0, 1.8, 0.03),
    "I6": (30.0, 1.7, 0.22),
    "I7": (3.0, 1.6, 0.04),
    "I8": (8.0, 1.0, 0.001),
    "I9": (40.0, 1.3, 0.04),
    "I10": (0.6, 0.8, 0.45),
    "I11": (1.0, 1.2, 0.04),
    "I12": (0.3, 1.5, 0.77),
    "I13": (5.0, 1.1, 0.22),
}
#: Column whose non-missing values are -1 at this rate, as in the real I2.
_CRITEO_NEGATIVE_COLUMN = "I2"
_CRITEO_NEGATIVE_RATE = 0.05
#: Sparse missing rates (Kaggle-like); columns not listed are never empty.
_CRITEO_SPARSE_MISSING: dict[str, float] = {
    "C3": 0.034,
    "C4": 0.034,
    "C6": 0.12,
    "C10": 0.034,
    "C12": 0.034,
    "C16": 0.034,
    "C19": 0.44,
    "C20": 0.44,
    "C21": 0.034,
    "C22": 0.76,
    "C24": 0.034,
    "C25": 0.44,
    "C26": 0.44,
}
#: Sparse columns that move the click logit, with the standard deviation of their
#: per-value effect (logit units). Mid-cardinality columns, so values repeat enough to learn.
_CRITEO_LABEL_EFFECTS: dict[str, float] = {
    "C1": 0.6,
    "C2": 0.6,
    "C5": 0.5,
    "C6": 0.5,
    "C8": 0.5,
    "C17": 0.4,
}
#: Dense columns that move the click logit: logit += weight * log1p(max(x, 0)), null -> 0.
_CRITEO_DENSE_EFFECTS: dict[str, float] = {"I1": 0.35, "I3": -0.2, "I7": 0.15}
CRITEO_POSITIVE_RATE = 0.25


def _criteo_chunk(
    rng: np.random.Generator,
    n: int,
    cards: tuple[int, ...],
    zipf: float,
    empty_fraction: float | None,
    schema: pa.Schema,
) -> pa.Table:
    logit = np.zeros(n)
    dense = []
    for name in CRITEO_DENSE:
        median, sigma, missing = _CRITEO_DENSE_PARAMS[name]
        rate = missing if empty_fraction is None else empty_fraction
        x = np.floor(rng.lognormal(math.log(median + 0.5), sigma, n))
        np.minimum(x, np.iinfo(np.int32).max, out=x)
        values = x.astype(np.int32)
        if name == _CRITEO_NEGATIVE_COLUMN:
            values[rng.random(n) < _CRITEO_NEGATIVE_RATE] = -1
        valid = rng.random(n) >= rate
        if name in _CRITEO_DENSE_EFFECTS:
            logit += _CRITEO_DENSE_EFFECTS[name] * np.where(
                valid, np.log1p(np.maximum(values, 0)), 0.0
            )
        bitmap, nulls = _validity(valid)
        dense.append(pa.Array.from_buffers(pa.int32(), n, [bitmap, pa.py_buffer(values)], nulls))

    sparse = []
    for name, card in zip(CRITEO_SPARSE, cards, strict=True):
        rate = _CRITEO_SPARSE_MISSING.get(name, 0.0) if empty_fraction is None else empty_fraction
        ranks = _power_law_ranks(rng.random(n), card, zipf)
        valid = rng.random(n) >= rate
        if name in _CRITEO_LABEL_EFFECTS:
            effect = _gaussianish(_mix32(ranks, _salt("criteo-effect", name)))
            logit += np.where(valid, _CRITEO_LABEL_EFFECTS[name] * effect, 0.0)
        sparse.append(_hex_strings(_mix32(ranks, _salt("criteo-value", name)), valid))

    p = _sigmoid(logit + _intercept(logit, CRITEO_POSITIVE_RATE))
    labels = (rng.random(n) < p).astype(np.int8)
    arrays = [pa.array(labels, pa.int8()), *dense, *sparse]
    return pa.Table.from_arrays(arrays, schema=schema)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    p: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return p


def _intercept(logit: np.ndarray, target: float) -> float:
    """The b with mean(sigmoid(logit + b)) == target, by bisection (monotone in b)."""
    lo, hi = -40.0, 40.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if float(np.mean(_sigmoid(logit + mid))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
