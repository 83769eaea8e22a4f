"""Budget sweeps: plans over a range of budgets, the knee of the curve, hot-input share.

``fae plan --sweep`` and the layout report chart access coverage (and the fraction of
inputs that are all-hot) against the budget, to show where more GPU memory stops paying.
These functions build that chart's points on top of the greedy
(:mod:`fae_data.plan_greedy`); :mod:`fae_data.plan` re-exports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fae_data.errors import InputError
from fae_data.plan_budget import _check_int
from fae_data.plan_greedy import _plan, _Prepared
from fae_data.plan_types import PlanParams, TableSpec


@dataclass(frozen=True)
class SweepPoint:
    """One budget of a sweep. ``hot_input_fraction`` is None without a callback."""

    budget_bytes: int
    hot_rows: dict[str, int]
    hot_access_coverage: float
    hot_input_fraction: float | None


def sweep_budgets(
    tables: Sequence[TableSpec],
    params_without_budget: PlanParams,
    budgets: Sequence[int],
    hot_fraction: Callable[[dict[str, int]], float] | None = None,
) -> list[SweepPoint]:
    """Plans for several budgets (bytes, in the given order) over the same tables.

    ``params_without_budget.budget_bytes`` is ignored. ``hot_fraction(hot_rows)``, when
    given, returns the fraction of inputs that are hot under ``hot_rows`` (for example
    :func:`predicted_hot_fraction` over a sample of encoded rows).

    Raises:
        BudgetError: a budget is negative or below the cheapest single row.
        InputError: as :func:`fae_data.plan.plan_hot_rows`.
    """
    p = params_without_budget
    prep = _Prepared(tables, p.dtype_bytes, p.optimizer_slots)
    points = []
    for budget in budgets:
        checked = dataclasses.replace(p, budget_bytes=budget)  # validates the budget
        plan = _plan(prep, checked.budget_bytes)
        frac = None if hot_fraction is None else float(hot_fraction(dict(plan.hot_rows)))
        points.append(SweepPoint(budget, plan.hot_rows, plan.hot_access_coverage, frac))
    return points


def default_sweep_budgets(
    tables: Sequence[TableSpec], dtype_bytes: int, optimizer_slots: int, points: int = 24
) -> list[int]:
    """About ``points`` budgets (bytes, ascending, distinct), log-spaced from the cheapest
    single row to all rows of all tables. Fewer when rounding makes neighbours equal.

    Raises:
        InputError: ``points`` below 2, or as :func:`fae_data.plan.plan_hot_rows`.
    """
    _check_int("points", points, 2)
    prep = _Prepared(tables, dtype_bytes, optimizer_slots)
    lo, hi = min(prep.row_bytes), prep.total_bytes
    if hi == lo:
        return [lo]
    raw = np.round(np.geomspace(lo, hi, points)).astype(np.int64)
    raw[0], raw[-1] = lo, hi
    return [int(x) for x in np.unique(raw)]


def knee_index(xs: Sequence[float], ys: Sequence[float], log_x: bool = True) -> int | None:
    """Index of the knee of an increasing, concave-ish curve (Kneedle style), or None when
    the curve has no knee.

    ``x`` (its log when ``log_x``, the default, for budgets in bytes) and ``y`` are each
    scaled to [0, 1] by their min and max; the knee is the point furthest above the chord
    from the first to the last point, i.e. the largest ``y_norm - x_norm``. Ties go to the
    smallest index; a flat ``y`` gives index 0 (more budget buys nothing).

    A knee is where more budget starts to buy less per byte, which only a concave stretch
    has: a point above the chord. When no point lies above it (a straight or convex curve,
    e.g. a hot-input fraction that stays near zero until most rows fit, as on Taobao) every
    further byte buys at least as much as the last and there is no point of diminishing
    returns in the range: None. (The plain maximum would be 0 there, at the chord's ends,
    and name the smallest budget, the worst choice on such a curve.)

    Raises:
        InputError: empty or unequal lengths, non-finite values, or ``x <= 0`` with ``log_x``.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise InputError(
            f"knee_index needs two equal-length 1-D sequences, found {x.shape} and {y.shape}"
        )
    if log_x:
        if np.any(x <= 0):
            raise InputError("knee_index with log_x needs every x > 0 (budgets in bytes)")
        x = np.log(x)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("knee_index needs finite x and y values")

    def unit(v: np.ndarray) -> np.ndarray:
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    above = unit(y) - unit(x)
    if y.max() > y.min() and above.max() <= _ABOVE_CHORD:
        return None
    return int(np.argmax(above))


#: How far above the chord (in the unit square) a point must lie to be a knee: float
#: rounding of points on a straight line must not make one.
_ABOVE_CHORD = 1e-9


def predicted_hot_fraction(ids: Mapping[str, np.ndarray], hot_rows: Mapping[str, int]) -> float:
    """Fraction of sample rows that are hot: every id of every column ``< k_t``.

    ``ids[name]`` holds the encoded ids of one table column for the same ``n`` sample rows,
    a 1-D non-negative integer array. For a list column (e.g. a Taobao history) pass the
    row-wise max id: the row is hot exactly when its largest id is. Tables in ``hot_rows``
    without a column in ``ids`` are ignored. Returns 0.0 for an empty sample.

    Raises:
        InputError: no columns, a column not in ``hot_rows``, a column that is not a 1-D
            integer array, negative ids, or columns of different lengths.
    """
    if not ids:
        raise InputError("predicted_hot_fraction needs at least one id column")
    hot: np.ndarray | None = None
    for name, column in ids.items():
        if name not in hot_rows:
            known = ", ".join(hot_rows)
            raise InputError(f"column {name!r} has no hot_rows entry; known: {known}")
        arr = np.asarray(column)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise InputError(f"column {name!r}: expected a 1-D integer id array, found shape "
                             f"{arr.shape} dtype {arr.dtype}")
        if hot is not None and arr.size != hot.size:
            raise InputError(f"column {name!r} has {arr.size} rows, the others {hot.size}")
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise InputError(f"column {name!r}: ids must be >= 0, found {arr.min()}")
        k = _check_int(f"hot_rows[{name!r}]", hot_rows[name], 0)
        # Compare in the array's own dtype; a k beyond its range means every id is hot.
        col_hot = (np.ones(arr.size, dtype=bool) if k > np.iinfo(arr.dtype).max
                   else arr < np.asarray(k, dtype=arr.dtype))
        hot = col_hot if hot is None else hot & col_hot
    assert hot is not None
    return float(hot.mean()) if hot.size else 0.0
