"""Tests of the hot-row planner against a deliberately naive row-by-row greedy."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest

from fae_data.errors import BudgetError, InputError
from fae_data.plan import (
    ALL_HOT_NOTE,
    Plan,
    PlanParams,
    SweepPoint,
    TableSpec,
    bytes_per_row,
    default_sweep_budgets,
    knee_index,
    no_hot_rows_reason,
    parse_budget,
    plan_hot_rows,
    predicted_hot_fraction,
    sweep_budgets,
)

# --- naive references -------------------------------------------------------------------


def naive_hot_rows(tables: list[TableSpec], budget: int, dtype_bytes: int, slots: int) -> list[int]:
    """Every item of every table as (ratio, table, id, rows), sorted, taken while it fits.

    An item is one row, except that rows 0 and 1 are one item when counts[0] < counts[1],
    ranked at max(mean of the two, counts[2]). A table whose item does not fit is closed.
    Zero-priority rows are left out unless everything fits.
    """
    row_bytes = [t.dim * dtype_bytes * (1 + slots) for t in tables]
    counts = [[int(x) for x in t.counts] for t in tables]
    if budget >= sum(b * len(c) for b, c in zip(row_bytes, counts)):
        return [len(c) for c in counts]
    items = []
    for ti, c in enumerate(counts):
        first = 0
        if len(c) > 1 and c[0] < c[1]:
            priority = max([Fraction(c[0] + c[1], 2)] + [Fraction(x) for x in c[2:3]])
            items.append((priority / row_bytes[ti], ti, 0, 2))
            first = 2
        for i in range(first, len(c)):
            if c[i] > 0:
                items.append((Fraction(c[i], row_bytes[ti]), ti, i, 1))
    items.sort(key=lambda r: (-r[0], r[1], r[2]))
    k = [0] * len(tables)
    closed = [False] * len(tables)
    left = budget
    for _, ti, i, rows in items:
        if not closed[ti] and rows * row_bytes[ti] <= left:
            assert i == k[ti], "naive greedy broke a prefix"
            k[ti] += rows
            left -= rows * row_bytes[ti]
        else:
            closed[ti] = True
    return k


def random_counts(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zipf-like counts with ties and zeros, row 0 anything."""
    kind = rng.integers(4)
    if kind == 0:  # all zero
        tail = np.zeros(size - 1, dtype=np.int64)
    elif kind == 1:  # few distinct values: many ties
        tail = rng.integers(0, 4, size - 1)
    else:
        a = rng.uniform(0.5, 2.0)
        tail = np.floor(rng.integers(1, 1000) / np.arange(1, size) ** a).astype(np.int64)
    tail = np.sort(tail)[::-1]
    head = rng.choice([0, int(tail[0]) if size > 1 else 3, int(rng.integers(0, 2000))])
    return np.concatenate([[head], tail]).astype(np.int64)


def random_case(seed: int) -> tuple[list[TableSpec], int, int]:
    rng = np.random.default_rng(seed)
    tables = [
        TableSpec(f"T{j}", random_counts(rng, int(rng.integers(1, 25))),
                  int(rng.choice([1, 2, 3, 4, 6, 8])))
        for j in range(int(rng.integers(1, 5)))
    ]
    return tables, int(rng.choice([1, 2, 4])), int(rng.integers(0, 3))


# --- plan_hot_rows ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(300))
def test_plan_matches_naive_greedy(seed: int) -> None:
    tables, dtype_bytes, slots = random_case(seed)
    row_bytes = [bytes_per_row(t.dim, dtype_bytes, slots) for t in tables]
    total = sum(b * t.counts.size for b, t in zip(row_bytes, tables))
    rng = np.random.default_rng(10_000 + seed)
    some = rng.integers(min(row_bytes), total + 2, 6).tolist()
    budgets = {min(row_bytes), total, total - 1, *some}
    for budget in sorted(b for b in budgets if b >= min(row_bytes)):
        plan = plan_hot_rows(tables, PlanParams(budget, dtype_bytes, slots))
        expected = naive_hot_rows(tables, budget, dtype_bytes, slots)
        assert list(plan.hot_rows.values()) == expected, (seed, budget)
        assert list(plan.hot_rows) == [t.name for t in tables]
        used = sum(k * b for k, b in zip(expected, row_bytes))
        assert plan.budget_used_bytes == used <= budget
        covered = sum(int(t.counts[:k].sum()) for t, k in zip(tables, expected))
        assert plan.accesses_covered == covered
        assert plan.accesses_total == sum(int(t.counts.sum()) for t in tables)
        assert plan.all_hot == (budget >= total)


def test_plan_matches_naive_on_larger_tables() -> None:
    rng = np.random.default_rng(7)
    tables = []
    for j, dim in enumerate([16, 8, 24, 16, 5]):
        n = int(rng.integers(2_000, 6_000))
        tail = np.sort(rng.zipf(1.3, n).clip(max=10**6))[::-1]
        tables.append(TableSpec(f"C{j + 1}", np.concatenate([[rng.integers(0, 5000)], tail]), dim))
    for budget in (1_000, 40_000, 123_457, 400_001):
        plan = plan_hot_rows(tables, PlanParams(budget, 4, 1))
        assert list(plan.hot_rows.values()) == naive_hot_rows(tables, budget, 4, 1)


def test_ties_across_tables_go_in_table_order() -> None:
    # Same ratio everywhere (4/1 == 8/2); one row of budget left for the tie goes to T0.
    a = TableSpec("T0", np.array([4, 4, 4]), dim=1)
    b = TableSpec("T1", np.array([8, 8, 8]), dim=2)
    plan = plan_hot_rows([a, b], PlanParams(budget_bytes=3 * 4, dtype_bytes=4))
    assert plan.hot_rows == {"T0": 3, "T1": 0}
    swapped = plan_hot_rows([b, a], PlanParams(budget_bytes=3 * 4, dtype_bytes=4))
    assert swapped.hot_rows == {"T1": 1, "T0": 1}


def test_rarer_null_row_is_hot_only_with_row_one() -> None:
    t = TableSpec("C1", np.array([10, 50, 20, 3]), dim=1)  # pair: 60 over 2 rows = 30/row
    u = TableSpec("C2", np.array([28, 28, 28]), dim=1)
    assert plan_hot_rows([t, u], PlanParams(4)).hot_rows == {"C1": 0, "C2": 1}  # no room
    assert plan_hot_rows([t, u], PlanParams(8)).hot_rows == {"C1": 2, "C2": 0}
    assert plan_hot_rows([t, u], PlanParams(12)).hot_rows == {"C1": 2, "C2": 1}
    # The pair is ranked at counts[2] when that beats its mean (it must precede row 2);
    # here 40 ties with C4's rows and table order decides.
    v = TableSpec("C3", np.array([0, 50, 40, 3]), dim=1)
    w = TableSpec("C4", np.array([40, 40]), dim=1)
    assert plan_hot_rows([v, w], PlanParams(8)).hot_rows == {"C3": 2, "C4": 0}
    assert plan_hot_rows([w, v], PlanParams(8)).hot_rows == {"C4": 2, "C3": 0}
    assert plan_hot_rows([v, w], PlanParams(12)).hot_rows == {"C3": 3, "C4": 0}


def test_zero_access_table_is_cold_unless_everything_fits() -> None:
    busy = TableSpec("busy", np.array([5, 9, 3, 0, 0]), dim=2)
    idle = TableSpec("idle", np.zeros(3, dtype=np.int64), dim=1)
    total = (5 * 2 + 3 * 1) * 4
    plan = plan_hot_rows([busy, idle], PlanParams(total - 1))
    assert plan.hot_rows == {"busy": 3, "idle": 0}  # zero rows are never worth bytes
    assert plan.hot_access_coverage == 1.0 and not plan.all_hot
    full = plan_hot_rows([busy, idle], PlanParams(total))
    assert full.hot_rows == {"busy": 5, "idle": 3} and full.all_hot


def test_all_rows_fit() -> None:
    tables = [TableSpec("C1", np.array([3, 2, 1]), dim=4), TableSpec("C2", np.array([0]), dim=2)]
    plan = plan_hot_rows(tables, PlanParams(budget_bytes=10**9, optimizer_slots=2))
    assert plan.all_hot and plan.hot_rows == {"C1": 3, "C2": 1}
    assert plan.budget_used_bytes == (3 * 4 + 1 * 2) * 4 * 3
    assert plan.hot_access_coverage == 1.0
    assert ALL_HOT_NOTE in plan.summary() and "cold split will be empty" in ALL_HOT_NOTE
    d = plan.to_dict()
    assert d["all_hot"] is True and d["hot_rows"] == {"C1": 3, "C2": 1}
    d["hot_rows"]["C1"] = 0
    assert plan.hot_rows["C1"] == 3


def test_no_accesses_at_all_gives_zero_coverage() -> None:
    plan = plan_hot_rows([TableSpec("C1", np.zeros(4, np.int64), 1)], PlanParams(8))
    assert plan.hot_rows == {"C1": 0} and plan.hot_access_coverage == 0.0


def naive_best_coverage(tables: list[TableSpec], budget: int, dtype_bytes: int, slots: int) -> int:
    """The most accesses any prefix plan within ``budget`` covers: every k vector tried."""
    import itertools

    row_bytes = [t.dim * dtype_bytes * (1 + slots) for t in tables]
    best = 0
    for ks in itertools.product(*(range(t.counts.size + 1) for t in tables)):
        if sum(k * b for k, b in zip(ks, row_bytes)) <= budget:
            best = max(best, sum(int(sum(t.counts.tolist()[:k])) for t, k in zip(tables, ks)))
    return best


def test_a_budget_below_the_first_useful_prefix_plans_nothing_and_says_why() -> None:
    """Taobao-like tables (no nulls, min_count 1: id 0 is never accessed): a budget of one
    row (64 B) up to 127 B cannot make id 1 hot without id 0, so zero hot rows is right,
    not a rounding bug; the planner says which table and bytes the first useful row needs."""
    tables = [TableSpec("user_id", np.array([0, 38, 32, 32, 32]), 16),
              TableSpec("item_id", np.array([0, 101, 87, 86]), 16),
              TableSpec("category_id", np.array([0, 15686, 10783]), 16)]
    for budget in range(64, 400):
        params = PlanParams(budget)
        plan = plan_hot_rows(tables, params)
        best = naive_best_coverage(tables, budget, 4, 0)
        reason = no_hot_rows_reason(tables, params)
        if budget < 128:
            assert best == 0 and plan.accesses_covered == 0, budget
            assert sum(plan.hot_rows.values()) == 0
            assert reason == (
                f"no hot rows: budget {budget} B is below the cheapest hot prefix of any "
                "table, 128 B for table user_id (ids 0 and 1, 2 rows x 64 B: id 1 (38 "
                "accesses) can only be hot after id 0 (null/unseen/rare), which is never "
                "accessed; one row = dim 16 x 4 B x (1+0 slots)); give at least 128 B for "
                "any hot row")
        else:
            assert best > 0 and plan.accesses_covered > 0 and reason is None, budget
    # Row 0 accessed (nulls, the Criteo case): one row always serves accesses.
    criteo_like = [TableSpec("C1", np.array([7, 5, 1]), 16)]
    assert no_hot_rows_reason(criteo_like, PlanParams(64)) is None
    # A rarer null row pairs by the documented rule (with Adam slots one row is 192 B, the
    # pair 384 B), so below the pair nothing is hot, and the reason says so.
    paired = [TableSpec("C1", np.array([2, 9, 1]), 16)]
    assert plan_hot_rows(paired, PlanParams(383, 4, 2)).hot_rows == {"C1": 0}
    assert "384 B for table C1 (ids 0 and 1, 2 rows x 192 B: id 0 (null/unseen/rare, 2 " \
        "accesses) is rarer than id 1 (9), so the two are hot together or not at all" in str(
            no_hot_rows_reason(paired, PlanParams(383, 4, 2)))
    assert no_hot_rows_reason(paired, PlanParams(384, 4, 2)) is None
    assert no_hot_rows_reason([TableSpec("idle", np.zeros(3, np.int64), 1)], PlanParams(4)) is None


def test_budget_below_one_row() -> None:
    tables = [TableSpec("C2", np.array([1, 1]), 32), TableSpec("C1", np.array([1, 1]), 16)]
    msg = ("budget 10 B is below one embedding row (64 B for table C1 = dim 16 x 4 B x "
           "(1+0 slots)); give at least 64 B")
    with pytest.raises(BudgetError, match=re.escape(msg)):
        plan_hot_rows(tables, PlanParams(budget_bytes=10))
    plan = plan_hot_rows(tables, PlanParams(budget_bytes=64))
    assert plan.hot_rows == {"C2": 0, "C1": 1}


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: TableSpec("C1", np.array([5, 1, 2]), 4), InputError,
         r"C1.*counts\[2\] = 2 > counts\[1\] = 1"),
        (lambda: TableSpec("C1", np.array([], np.int64), 4), InputError, "non-empty 1-D"),
        (lambda: TableSpec("C1", np.array([1.0, 0.5]), 4), InputError, "integer"),
        (lambda: TableSpec("C1", np.array([3, -1]), 4), InputError, ">= 0"),
        (lambda: TableSpec("C1", np.array([3, 1]), 0), InputError, r"C1: dim \(0\)"),
        (lambda: TableSpec("", np.array([3, 1]), 4), InputError, "name"),
        (lambda: PlanParams(-1), BudgetError, r"budget_bytes \(-1\)"),
        (lambda: PlanParams(10, dtype_bytes=0), InputError, "dtype_bytes"),
        (lambda: PlanParams(10, optimizer_slots=-1), InputError, "optimizer_slots"),
        (lambda: plan_hot_rows([], PlanParams(10)), InputError, "no tables"),
        (lambda: plan_hot_rows([TableSpec("A", np.array([1]), 1)] * 2, PlanParams(10)),
         InputError, "repeated: A"),
    ],
)
def test_invalid_inputs(make: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_bytes_per_row() -> None:
    assert bytes_per_row(16, 4, 0) == 64
    assert bytes_per_row(np.int64(16), 4, 0) == 64  # type: ignore[arg-type]
    assert bytes_per_row(16, 4, 2) == 192
    assert bytes_per_row(3, 2, 1) == 12


# --- parse_budget -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256MiB", 256 * 2**20), ("8GB", 8 * 10**9), ("1.5 GiB", 1610612736),
        ("4096", 4096), (4096, 4096), ("512kb", 512_000), ("512KB", 512_000),
        ("512kB", 512_000), ("1 KiB", 1024), ("1kib", 1024), ("2tib", 2 * 2**40),
        ("3TB", 3 * 10**12), ("10 B", 10), ("10b", 10), (" 7 mb ", 7_000_000),
        ("0", 0), (0, 0), ("0.5kB", 500), ("1.1KiB", 1126), (".5MiB", 2**19),
        ("2GIB", 2 * 2**30),
    ],
)
def test_parse_budget(text: str | int, expected: int) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize(
    ("text", "shown"),
    [(t, repr(t)) for t in ["abc", "-1GB", "", "1.2.3MB", "5 parsecs", "   ", "GB", "1e9",
                            "1 K", "1,000", "+5MB", "1 G B", True, 1.5, None]]
    + [(-5, "-5")],
)
def test_parse_budget_rejects(text: object, shown: str) -> None:
    with pytest.raises(BudgetError, match=re.escape(shown)) as info:
        parse_budget(text)  # type: ignore[arg-type]
    assert "256MiB" in str(info.value) and "GiB" in str(info.value)


# --- sweeps and the knee ----------------------------------------------------------------


def zipf_tables(seed: int) -> list[TableSpec]:
    rng = np.random.default_rng(seed)
    out = []
    for j, (n, dim) in enumerate([(3000, 16), (500, 8), (20_000, 16), (40, 4)]):
        tail = np.sort(rng.zipf(1.2, n).clip(max=10**7))[::-1]
        out.append(TableSpec(f"C{j + 1}", np.concatenate([[int(tail[0]) * 2], tail]), dim))
    return out


def test_default_sweep_budgets_span_one_row_to_all_rows() -> None:
    tables = zipf_tables(1)
    budgets = default_sweep_budgets(tables, 4, 1)
    assert budgets[0] == 4 * 4 * 2
    assert budgets[-1] == sum(t.counts.size * t.dim for t in tables) * 4 * 2
    assert budgets == sorted(set(budgets)) and 20 <= len(budgets) <= 24
    single = [TableSpec("C1", np.array([3]), 2)]
    assert default_sweep_budgets(single, 4, 0) == [8]
    with pytest.raises(InputError, match="points"):
        default_sweep_budgets(tables, 4, 0, points=1)


def test_sweep_is_monotone_and_ends_all_hot() -> None:
    tables = zipf_tables(2)
    params = PlanParams(budget_bytes=0, dtype_bytes=4, optimizer_slots=1)
    budgets = default_sweep_budgets(tables, 4, 1, points=40)
    seen: list[dict[str, int]] = []

    def fraction(hot_rows: dict[str, int]) -> float:
        seen.append(hot_rows)
        return 0.5

    points = sweep_budgets(tables, params, budgets, hot_fraction=fraction)
    assert [p.budget_bytes for p in points] == budgets
    coverage = [p.hot_access_coverage for p in points]
    assert coverage == sorted(coverage) and coverage[-1] == 1.0
    assert [p.hot_rows for p in points] == seen and all(p.hot_input_fraction == 0.5 for p in points)
    for p in points[::7]:
        alone = plan_hot_rows(tables, PlanParams(p.budget_bytes, 4, 1))
        assert p == SweepPoint(p.budget_bytes, alone.hot_rows, alone.hot_access_coverage, 0.5)
    plain = sweep_budgets(tables, params, budgets[:3])
    assert all(p.hot_input_fraction is None for p in plain)
    with pytest.raises(BudgetError, match="below one embedding row"):
        sweep_budgets(tables, params, [1])


def test_coverage_non_decreasing_at_every_budget() -> None:
    # Guaranteed when every item is ranked at its true value per byte, i.e. no pair is
    # raised to counts[2] (see the module docstring): make row 0 honest, then try every budget.
    for seed in range(30):
        tables, dtype_bytes, slots = random_case(seed)
        honest = []
        for t in tables:
            c = t.counts.copy()
            if c.size > 2 and c[0] < c[1] and 2 * c[2] > c[0] + c[1]:
                c[0] = 2 * c[2] - c[1] if seed % 2 else c[1]
            honest.append(TableSpec(t.name, c, t.dim))
        budgets = range(default_sweep_budgets(honest, dtype_bytes, slots)[0],
                        default_sweep_budgets(honest, dtype_bytes, slots)[-1] + 1)
        points = sweep_budgets(honest, PlanParams(0, dtype_bytes, slots), budgets)
        covered = [p.hot_access_coverage for p in points]
        assert covered == sorted(covered), seed


def test_knee_of_synthetic_curve() -> None:
    xs = [2.0**i for i in range(21)]
    ys = [min(1.0, i / 10) for i in range(21)]  # rises until 2**10, then flat
    assert knee_index(xs, ys) == 10
    # S-shaped over log x; 98% saturated at 4 x 2**12 = 2**14, after which y gains < x.
    saturating = [1 - np.exp(-x / 2**12) for x in xs]
    assert knee_index(xs, saturating) == 14
    assert knee_index([1, 2, 3], [5, 5, 5]) == 0  # flat: more budget buys nothing
    assert knee_index([0, 1, 2, 3], [0, 3, 3, 3], log_x=False) == 1
    assert knee_index([4], [0.3]) == 0


def naive_above_chord(xs: list[float], ys: list[float]) -> list[float]:
    """How far each point lies above the chord from the first to the last, in the unit
    square (x linear), computed point by point."""
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [(y - y0) / (y1 - y0) - (x - x0) / (x1 - x0) for x, y in zip(xs, ys)]


def test_a_convex_or_straight_curve_has_no_knee() -> None:
    """A hot-input fraction that stays near zero until most rows fit (the Taobao sweep) is
    convex: no point lies above the chord, and the knee was the smallest budget swept,
    the worst choice. Such a curve has no knee."""
    budgets = [64, 106, 174, 288, 475, 783, 1300, 2100, 3400, 5700, 9400, 15_400, 25_500,
               42_100, 69_400, 114_500, 189_000, 311_800, 514_600, 849_200, 1_400_000,
               2_300_000, 3_700_000, 6_100_000]
    taobao = [0.0] * 15 + [0.002, 0.006, 0.016, 0.037, 0.081, 0.165, 0.307, 0.518, 1.0]
    assert max(naive_above_chord(budgets, taobao)) <= 0
    assert knee_index(budgets, taobao, log_x=False) is None
    xs = [float(i) for i in range(20)]
    assert knee_index(xs, [x * x for x in xs], log_x=False) is None  # convex
    assert knee_index(xs, [3 * x + 1 for x in xs], log_x=False) is None  # straight
    concave = [np.sqrt(x) for x in xs]
    above = naive_above_chord(xs, concave)
    assert knee_index(xs, concave, log_x=False) == above.index(max(above)) > 0
    assert knee_index(xs, [2.0] * 20, log_x=False) == 0  # flat: more budget buys nothing


@pytest.mark.parametrize(
    ("xs", "ys", "match"),
    [([], [], "equal-length"), ([1, 2], [1], "equal-length"), ([0, 1], [0, 1], "x > 0"),
     ([1, 2], [0, float("nan")], "finite")],
)
def test_knee_rejects(xs: list[float], ys: list[float], match: str) -> None:
    with pytest.raises(InputError, match=match):
        knee_index(xs, ys)


def test_plan_is_cheap_on_criteo_sized_tables() -> None:
    # 26 tables, ~2.6M rows: the planner must not walk rows in Python.
    rng = np.random.default_rng(3)
    tables = [TableSpec(f"C{j}", np.sort(rng.zipf(1.1, 100_000).clip(max=10**9))[::-1].copy(),
                        int(rng.choice([16, 32, 64]))) for j in range(26)]
    plan = plan_hot_rows(tables, PlanParams(parse_budget("64MiB"), 4, 2))
    assert 0 < plan.budget_used_bytes <= 64 * 2**20 and 0 < plan.hot_access_coverage < 1


# --- predicted_hot_fraction -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_predicted_hot_fraction_matches_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 200))
    names = [f"C{j}" for j in range(int(rng.integers(1, 5)))]
    ids = {name: rng.integers(0, 50, n).astype(np.uint32) for name in names}
    hot_rows = {name: int(rng.integers(0, 60)) for name in names}
    hot_rows["unused"] = 0
    hot = [all(int(ids[name][r]) < hot_rows[name] for name in names) for r in range(n)]
    expected = sum(hot) / n if n else 0.0
    assert predicted_hot_fraction(ids, hot_rows) == pytest.approx(expected)


def test_predicted_hot_fraction_edges() -> None:
    ids = {"C1": np.array([0, 5, 2**32 - 1], dtype=np.uint32)}
    assert predicted_hot_fraction(ids, {"C1": 2**40}) == 1.0
    assert predicted_hot_fraction(ids, {"C1": 0}) == 0.0
    assert predicted_hot_fraction(ids, {"C1": 6}) == pytest.approx(2 / 3)
    assert predicted_hot_fraction({"C1": np.array([3, 1], np.int64)}, {"C1": 2}) == 0.5


@pytest.mark.parametrize(
    ("ids", "hot_rows", "match"),
    [
        ({}, {"C1": 1}, "at least one"),
        ({"C9": np.zeros(2, np.uint32)}, {"C1": 1}, "C9.*no hot_rows"),
        ({"C1": np.zeros((2, 2), np.uint32)}, {"C1": 1}, "1-D integer"),
        ({"C1": np.zeros(2)}, {"C1": 1}, "1-D integer"),
        ({"C1": np.zeros(2, np.uint32), "C2": np.zeros(3, np.uint32)}, {"C1": 1, "C2": 1},
         "3 rows"),
        ({"C1": np.array([-1, 2])}, {"C1": 1}, ">= 0"),
        ({"C1": np.zeros(2, np.uint32)}, {"C1": -1}, r"hot_rows\['C1'\]"),
    ],
)
def test_predicted_hot_fraction_rejects(
    ids: dict[str, np.ndarray], hot_rows: dict[str, int], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        predicted_hot_fraction(ids, hot_rows)


def test_plan_dataclass_shape() -> None:
    plan = plan_hot_rows([TableSpec("C1", np.array([2, 1]), 1)], PlanParams(4))
    assert isinstance(plan, Plan)
    assert plan.to_dict() == {
        "hot_rows": {"C1": 1}, "budget_bytes": 4, "budget_used_bytes": 4, "accesses_total": 3,
        "accesses_covered": 2, "hot_access_coverage": 2 / 3, "all_hot": False,
    }


def test_budgets_are_ascii_and_max_rows_fits_uint32_ids() -> None:
    """Full-width digits were read as a budget (１２３ -> 123 B); --max-rows above 2^32
    crashed in Polars with an OverflowError."""
    from fae_data.plan import parse_budget
    from fae_data.vocab import VocabParams

    assert parse_budget("123") == 123
    with pytest.raises(BudgetError):
        parse_budget("１２３")
    VocabParams(max_rows=2**32)
    with pytest.raises(InputError, match=r"max_rows \(4294967297\) is more rows than uint32"):
        VocabParams(max_rows=2**32 + 1)


def test_row_bytes_cannot_overflow_the_plan() -> None:
    """--dim 2^61 with a huge budget planned 11,920 of 22,304 rows (int64 overflow)."""
    from fae_data.plan import bytes_per_row

    assert bytes_per_row(65536, 8, 65536) == 65536 * 8 * 65537
    for dim, slots in ((2**61, 0), (16, 2**63 - 1)):
        with pytest.raises(InputError, match=r"must be at most 65536"):
            bytes_per_row(dim, 4, slots)
