"""Hot-row planning: which embedding rows go on the GPU under a memory budget.

Ids are frequency ranked (id 0 = null/unseen/rare, ids 1..V by count descending), so the
hot rows of table ``t`` are exactly the prefix ``[0, k_t)`` and a plan is one integer per
table. The planner maximises the embedding accesses served by hot rows, globally across
tables, by accesses per byte: a row of table ``t`` costs ``bytes_per_row_t = dim_t x
dtype_bytes x (1 + optimizer_slots)`` bytes, whatever its id.

The rule, exactly (``tests/test_plan.py`` checks it against a naive item-by-item version):

* Items. Every row is an item worth ``counts[i]`` accesses, except the head of a table
  whose null row is rarer than id 1 (``counts[0] < counts[1]``): row 0 must be hot before
  row 1 can be (prefix), so rows 0 and 1 form one two-row item (hot together or not at
  all) worth ``counts[0] + counts[1]``, so budget is never spent on a lone row 0 that is
  worth less than the row it unlocks. The pair is ranked at its mean accesses per row,
  raised to ``counts[2]`` when that is higher so that it still comes before row 2 (a
  "raised pair", over-ranked by ``counts[2] - mean`` per row). When ``counts[0] >=
  counts[1]`` (the usual case: the null row collects every rare value) the head is
  plain row 0.
* Order. Items of all tables sorted by ``priority / bytes_per_row`` descending (compared
  exactly, as rationals), ties by table order, then by id.
* Greedy. Walk that order and take each item that still fits in the remaining budget. A
  table whose item does not fit is closed (its later rows are skipped, keeping the prefix);
  leftover bytes still go to cheaper rows of other tables.
* Zero-priority rows (never accessed) are never hot, so a table with no accesses gets
  ``k_t = 0``, unless every row of every table fits, in which case all rows are hot
  (``Plan.all_hot``) and the cold split will be empty.

Greedy by ratio is optimal for the fractional problem; the integer plan loses at most
about one item per table at the budget boundary. Coverage is non-decreasing in the budget
whenever every item is ranked at its true accesses per byte (at the first item a larger
budget takes and a smaller one skipped, that item is worth more than everything the
smaller budget took after it); only a raised pair can make it dip, at the boundary. The
implementation never loops over rows: it binary-searches the ratio threshold with
``np.searchsorted`` per table, then fills the boundary ratio in table order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from fae_data.errors import BudgetError, FaeError, InputError

logger = logging.getLogger(__name__)

#: What a caller prints when ``Plan.all_hot`` is set.
ALL_HOT_NOTE = (
    "every row of every table fits in the budget: all inputs are hot and the cold split "
    "will be empty"
)

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_BUDGET_HELP = (
    "expected a non-negative number and an optional unit, e.g. '256MiB', '8GB', "
    "'1.5 GiB', '512kB' or '4096' (bytes); units (case-insensitive): B, kB, MB, GB, TB "
    "(powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024)"
)


def parse_budget(text: str | int) -> int:
    """A memory budget in bytes, from ``"256MiB"``, ``"8GB"``, ``"1.5 GiB"``, ``"4096"`` or 4096.

    IEC units (KiB..TiB) are powers of 1024, SI units (kB..TB) powers of 1000, ``B`` or no
    unit means bytes; units are case-insensitive and may follow a space. A fractional
    result is rounded down to whole bytes, so the budget is never exceeded.

    Raises:
        BudgetError: ``text`` is negative, empty or not a number with a known unit.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, np.integer)):
        raise BudgetError(f"memory budget {text!r}: not a string or integer; {_BUDGET_HELP}")
    if not isinstance(text, str):
        if text < 0:
            raise BudgetError(f"memory budget {text} is negative; {_BUDGET_HELP}")
        return int(text)
    match = _BUDGET_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BudgetError(f"cannot read memory budget {text!r}: {_BUDGET_HELP}")
    return math.floor(Fraction(match.group(1)) * _UNITS[unit])


def bytes_per_row(dim: int, dtype_bytes: int, optimizer_slots: int) -> int:
    """GPU bytes of one embedding row: the weights plus one copy per optimizer slot.

    Raises:
        InputError: ``dim`` or ``dtype_bytes`` below 1, or ``optimizer_slots`` below 0.
    """
    dim = _check_int("dim", dim, 1)
    dtype_bytes = _check_int("dtype_bytes", dtype_bytes, 1)
    return dim * dtype_bytes * (1 + _check_int("optimizer_slots", optimizer_slots, 0))


def _check_int(name: str, value: object, minimum: int, error: type[FaeError] = InputError) -> int:
    """``value`` as a Python int (numpy integers accepted), or ``error`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise error(f"{name} ({value!r}) must be an integer >= {minimum}")
    return int(value)


@dataclass(frozen=True, eq=False)
class TableSpec:
    """One embedding table as the planner sees it.

    ``counts[i]`` is the number of accesses of id ``i`` (index = id, ``V + 1`` entries);
    ``counts[1:]`` must be non-increasing (frequency-ranked ids). ``counts`` is stored as
    int64 (no copy when it already is) and must not be modified afterwards. Compared by
    identity (``eq=False``): numpy arrays have no single truth value.

    Raises:
        InputError: empty name, ``dim`` below 1, counts not a non-empty 1-D array of
            non-negative integers, or ``counts[1:]`` increasing somewhere.
    """

    name: str
    counts: np.ndarray
    dim: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"table name must be a non-empty string, found {self.name!r}")
        object.__setattr__(self, "dim", _check_int(f"table {self.name}: dim", self.dim, 1))
        counts = np.asarray(self.counts)
        if counts.ndim != 1 or counts.size == 0 or counts.dtype.kind not in "iu":
            raise InputError(
                f"table {self.name}: counts must be a non-empty 1-D integer array (index = id), "
                f"found shape {counts.shape} dtype {counts.dtype}"
            )
        if counts.dtype.kind == "u" and counts.max() > np.iinfo(np.int64).max:
            raise InputError(f"table {self.name}: counts exceed the int64 range")
        counts = counts.astype(np.int64, copy=False)
        if counts.min() < 0:
            raise InputError(f"table {self.name}: counts must be >= 0, found {counts.min()}")
        rises = np.flatnonzero(np.diff(counts[1:]) > 0)
        if rises.size:
            i = int(rises[0]) + 1
            raise InputError(
                f"table {self.name}: counts[1:] must be non-increasing (frequency-ranked ids), "
                f"but counts[{i + 1}] = {counts[i + 1]} > counts[{i}] = {counts[i]}; "
                "rebuild the vocabulary so ids are ranked by count"
            )
        object.__setattr__(self, "counts", counts)


@dataclass(frozen=True)
class PlanParams:
    """What a plan depends on besides the counts: budget and per-row memory cost.

    Raises:
        BudgetError: ``budget_bytes`` negative or not an integer.
        InputError: ``dtype_bytes`` below 1 or ``optimizer_slots`` below 0.
    """

    budget_bytes: int
    dtype_bytes: int = 4  # float32
    optimizer_slots: int = 0  # 1 for Adagrad, 2 for Adam

    def __post_init__(self) -> None:
        for name, minimum, error in (("budget_bytes", 0, BudgetError),
                                     ("dtype_bytes", 1, InputError),
                                     ("optimizer_slots", 0, InputError)):
            value = _check_int(name, getattr(self, name), minimum, error)
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Plan:
    """The hot rows per table and what they buy. Bytes are GPU bytes incl. optimizer slots."""

    hot_rows: dict[str, int]  # k_t per table, in the tables' order
    budget_bytes: int
    budget_used_bytes: int
    accesses_total: int
    accesses_covered: int  # sum over t of counts_t[:k_t].sum()
    hot_access_coverage: float  # covered / total, 0.0 when there are no accesses
    all_hot: bool  # every row of every table fits: the cold split will be empty

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (plain ints, floats, bools and a fresh ``hot_rows`` dict)."""
        d = dataclasses.asdict(self)
        d["hot_rows"] = dict(self.hot_rows)
        return d

    def summary(self) -> str:
        """One line for logs and the CLI; ends with :data:`ALL_HOT_NOTE` when ``all_hot``."""
        line = (
            f"{sum(self.hot_rows.values())} hot rows in {len(self.hot_rows)} tables, "
            f"{self.budget_used_bytes} of {self.budget_bytes} B used, "
            f"{self.hot_access_coverage:.2%} of accesses covered"
        )
        return f"{line}; {ALL_HOT_NOTE}" if self.all_hot else line


class _Prepared:
    """Per-table arrays the greedy searches, built once per table list (sweeps reuse it).

    Table ``t`` is a head item of ``head_rows[t]`` rows (1, or 2 for a rarer null row) with
    per-row priority ``head_num / head_den``, then single rows ``counts[head_rows:]``.
    Ratios are compared exactly by scaling them to integers: with ``scale`` a multiple of
    every ``head_den x row_bytes``, each ``priority * scale / row_bytes`` is a whole number.
    """

    def __init__(self, tables: Sequence[TableSpec], dtype_bytes: int, optimizer_slots: int):
        if len(tables) == 0:
            raise InputError("no tables to plan: give at least one embedding table")
        names = [t.name for t in tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"table names must be unique, repeated: {', '.join(dupes)}")
        self.tables = list(tables)
        self.row_bytes = [bytes_per_row(t.dim, dtype_bytes, optimizer_slots) for t in tables]
        self.sizes = [int(t.counts.size) for t in tables]
        self.head_rows: list[int] = []
        self.head_num: list[int] = []
        self.head_den: list[int] = []
        for t in tables:
            c = [int(x) for x in t.counts[:3]]
            if len(c) == 1 or c[0] >= c[1]:
                h, num, den = 1, c[0], 1
            elif len(c) == 3 and 2 * c[2] > c[0] + c[1]:
                h, num, den = 2, c[2], 1  # raised so the pair still precedes row 2
            else:
                h, num, den = 2, c[0] + c[1], 2
            self.head_rows.append(h)
            self.head_num.append(num)
            self.head_den.append(den)
        # Ascending contiguous copies: np.searchsorted needs ascending input and copies a
        # reversed view on every call otherwise.
        self.tail_asc = [
            np.ascontiguousarray(t.counts[h:][::-1])
            for t, h in zip(tables, self.head_rows, strict=True)
        ]
        self.scale = math.lcm(*(d * b for d, b in zip(self.head_den, self.row_bytes, strict=True)))
        self.total_bytes = sum(b * n for b, n in zip(self.row_bytes, self.sizes, strict=True))
        self.dtype_bytes = dtype_bytes
        self.optimizer_slots = optimizer_slots

    def head_level(self, t: int) -> int:
        """The head item's scaled ratio (an integer, see the class docstring)."""
        return self.head_num[t] * self.scale // (self.head_den[t] * self.row_bytes[t])

    def count_at_least(self, t: int, level: int) -> int:
        """Rows of table ``t`` in items whose scaled ratio is ``>= level`` (a prefix)."""
        if level <= 0:
            return self.sizes[t]
        if self.head_level(t) < level:
            return 0
        tail = self.tail_asc[t]
        threshold = -((-level * self.row_bytes[t]) // self.scale)  # ceil, exact ints
        if tail.size == 0 or threshold > int(tail[-1]):
            return self.head_rows[t]
        return self.head_rows[t] + tail.size - int(np.searchsorted(tail, threshold, "left"))

    def too_small(self, budget: int) -> BudgetError:
        t = min(range(len(self.tables)), key=lambda i: self.row_bytes[i])
        b = self.row_bytes[t]
        return BudgetError(
            f"budget {budget} B is below one embedding row ({b} B for table "
            f"{self.tables[t].name} = dim {self.tables[t].dim} x {self.dtype_bytes} B x "
            f"(1+{self.optimizer_slots} slots)); give at least {b} B"
        )


def _greedy(prep: _Prepared, budget: int) -> list[int]:
    """k_t per table by the rule in the module docstring; at most T+1 threshold searches."""
    n_tables = len(prep.tables)
    k = [0] * n_tables
    is_open = [True] * n_tables
    remaining = budget
    b = prep.row_bytes
    # Every remaining row of an open table has a scaled ratio below `top`.
    top = max(prep.head_level(t) for t in range(n_tables)) + 1

    def cost(level: int, tables: list[int]) -> int:
        return sum(b[t] * (prep.count_at_least(t, level) - k[t]) for t in tables)

    while True:
        # A table whose row no longer fits would skip every later row of its own anyway.
        for t in range(n_tables):
            is_open[t] = is_open[t] and b[t] <= remaining
        live = [t for t in range(n_tables) if is_open[t]]
        if not live:
            break
        if cost(1, live) <= remaining:  # every remaining accessed row fits
            for t in live:
                k[t] = prep.count_at_least(t, 1)
            break
        # Smallest level `hi` whose rows (ratio >= hi) all fit; level hi-1 does not fit.
        lo, hi = 1, top
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost(mid, live) <= remaining:
                hi = mid
            else:
                lo = mid
        for t in live:
            n = prep.count_at_least(t, hi)
            remaining -= b[t] * (n - k[t])
            k[t] = n
        # Items at exactly ratio `lo`: table order, then id; a table that cannot take all
        # of its rows at this ratio is closed (at least one is, so this loop ends).
        for t in live:
            wanted = prep.count_at_least(t, lo) - k[t]
            if wanted <= 0:
                continue
            took = 0
            if k[t] == 0:  # the head item is at this ratio: all of it or nothing
                if prep.head_rows[t] * b[t] > remaining:
                    is_open[t] = False
                    continue
                took = prep.head_rows[t]
                remaining -= took * b[t]
            more = min(wanted - took, remaining // b[t])
            k[t] += took + more
            remaining -= more * b[t]
            if took + more < wanted:
                is_open[t] = False
        top = lo
    return k


def _plan(prep: _Prepared, budget: int) -> Plan:
    if budget < min(prep.row_bytes):
        raise prep.too_small(budget)
    all_hot = budget >= prep.total_bytes
    k = list(prep.sizes) if all_hot else _greedy(prep, budget)
    total = sum(int(t.counts.sum()) for t in prep.tables)
    covered = sum(int(t.counts[:n].sum()) for t, n in zip(prep.tables, k, strict=True))
    plan = Plan(
        hot_rows={t.name: n for t, n in zip(prep.tables, k, strict=True)},
        budget_bytes=budget,
        budget_used_bytes=sum(n * bt for n, bt in zip(k, prep.row_bytes, strict=True)),
        accesses_total=total,
        accesses_covered=covered,
        hot_access_coverage=covered / total if total else 0.0,
        all_hot=all_hot,
    )
    logger.debug("plan for %d B: %s", budget, plan.summary())
    return plan


def plan_hot_rows(tables: Sequence[TableSpec], params: PlanParams) -> Plan:
    """The hot rows ``k_t`` per table that cover the most accesses within the budget.

    See the module docstring for the exact rule (priorities, order, ties, zero rows).

    Raises:
        BudgetError: the budget is below the cheapest single row.
        InputError: no tables, or repeated table names.
    """
    prep = _Prepared(tables, params.dtype_bytes, params.optimizer_slots)
    return _plan(prep, params.budget_bytes)


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
        InputError: as :func:`plan_hot_rows`.
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
        InputError: ``points`` below 2, or as :func:`plan_hot_rows`.
    """
    _check_int("points", points, 2)
    prep = _Prepared(tables, dtype_bytes, optimizer_slots)
    lo, hi = min(prep.row_bytes), prep.total_bytes
    if hi == lo:
        return [lo]
    raw = np.round(np.geomspace(lo, hi, points)).astype(np.int64)
    raw[0], raw[-1] = lo, hi
    return [int(x) for x in np.unique(raw)]


def knee_index(xs: Sequence[float], ys: Sequence[float], log_x: bool = True) -> int:
    """Index of the knee of an increasing, concave-ish curve (Kneedle style).

    ``x`` (its log when ``log_x``, the default, for budgets in bytes) and ``y`` are each
    scaled to [0, 1] by their min and max; the knee is the point furthest above the chord
    from the first to the last point, i.e. the largest ``y_norm - x_norm``. Ties go to the
    smallest index; a flat ``y`` gives index 0 (more budget buys nothing).

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

    return int(np.argmax(unit(y) - unit(x)))


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
