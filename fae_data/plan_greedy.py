"""The greedy across tables: hot rows per table for one budget, without looping over rows.

The rule it implements is in the :mod:`fae_data.plan` docstring. Here are the per-table
arrays it searches (:class:`_Prepared`, built once per table list and shared by every
budget of a sweep), the greedy itself and the :class:`~fae_data.plan_types.Plan` it
yields; both :func:`fae_data.plan.plan_hot_rows` and :mod:`fae_data.plan_sweep` call it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from fae_data.errors import BudgetError, InputError
from fae_data.plan_budget import bytes_per_row
from fae_data.plan_types import Plan, TableSpec

logger = logging.getLogger(__name__)


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

    def useful_bytes(self, t: int) -> int | None:
        """GPU bytes of the first item the greedy can take from table ``t``, its head: row
        0, or rows 0 and 1 together when row 0 is rarer than row 1 (None when the table has
        no accesses: it gets no hot row)."""
        if int(self.tables[t].counts[: self.head_rows[t]].sum()) == 0:
            return None
        return self.head_rows[t] * self.row_bytes[t]

    def nothing_useful(self, budget: int) -> str | None:
        """Why the plan for ``budget`` covers no access although the tables have some, or
        None when it covers some (or there are none).

        The greedy takes a table's head item whenever it fits the whole budget, so a plan
        covers nothing exactly when the budget is below every table's head
        (:meth:`useful_bytes`) and below all rows.
        """
        if budget >= self.total_bytes:
            return None
        costs = [(c, t) for t in range(len(self.tables))
                 if (c := self.useful_bytes(t)) is not None]
        if not costs:
            return None
        cost, t = min(costs)
        if budget >= cost:
            return None
        table, b = self.tables[t], self.row_bytes[t]
        c0 = int(table.counts[0])
        if self.head_rows[t] == 1:
            head = f"id 0, 1 row of {b} B"
        elif c0 == 0:
            head = (f"ids 0 and 1, 2 rows x {b} B: id 1 ({int(table.counts[1])} accesses) "
                    "can only be hot after id 0 (null/unseen/rare), which is never accessed")
        else:
            head = (f"ids 0 and 1, 2 rows x {b} B: id 0 (null/unseen/rare, {c0} accesses) "
                    f"is rarer than id 1 ({int(table.counts[1])}), so the two are hot "
                    "together or not at all")
        return (
            f"no hot rows: budget {budget} B is below the cheapest hot prefix of any table, "
            f"{cost} B for table {table.name} ({head}; one row = dim {table.dim} x "
            f"{self.dtype_bytes} B x (1+{self.optimizer_slots} slots)); give at least "
            f"{cost} B for any hot row"
        )


def _greedy(prep: _Prepared, budget: int) -> list[int]:
    """k_t per table by the rule in the :mod:`fae_data.plan` docstring; at most T+1
    threshold searches."""
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
