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

from collections.abc import Sequence

# The pieces live in plan_budget (sizes), plan_types (inputs and output), plan_greedy (the
# rule below, for one budget) and plan_sweep (many budgets); callers import from here.
from fae_data.plan_budget import bytes_per_row, parse_budget
from fae_data.plan_greedy import _plan, _Prepared
from fae_data.plan_sweep import (
    SweepPoint,
    default_sweep_budgets,
    knee_index,
    predicted_hot_fraction,
    sweep_budgets,
)
from fae_data.plan_types import ALL_HOT_NOTE, Plan, PlanParams, TableSpec

__all__ = [
    "ALL_HOT_NOTE",
    "Plan",
    "PlanParams",
    "SweepPoint",
    "TableSpec",
    "bytes_per_row",
    "default_sweep_budgets",
    "knee_index",
    "no_hot_rows_reason",
    "parse_budget",
    "plan_hot_rows",
    "predicted_hot_fraction",
    "sweep_budgets",
]


def plan_hot_rows(tables: Sequence[TableSpec], params: PlanParams) -> Plan:
    """The hot rows ``k_t`` per table that cover the most accesses within the budget.

    See the module docstring for the exact rule (priorities, order, ties, zero rows).

    Raises:
        BudgetError: the budget is below the cheapest single row.
        InputError: no tables, or repeated table names.
    """
    prep = _Prepared(tables, params.dtype_bytes, params.optimizer_slots)
    return _plan(prep, params.budget_bytes)


def no_hot_rows_reason(tables: Sequence[TableSpec], params: PlanParams) -> str | None:
    """Why the plan for ``params.budget_bytes`` serves no access at all, or None.

    Not an error, but a caller should say so. The usual case is a table whose id 0 is never
    accessed (no nulls, ``min_count`` 1, e.g. Taobao): id 1 can only be hot after id 0, so
    the first useful hot prefix costs two rows and a budget below two rows buys nothing;
    that empty plan is optimal. (When id 0 is accessed but rarer than id 1, the rule above
    pairs them too, and a budget between one and two rows could have bought id 0 alone.)
    The message names the table, the bytes of its cheapest hot prefix and how a row's bytes
    arise. None also when the tables have no accesses at all.

    Raises:
        InputError: as :func:`plan_hot_rows`.
    """
    prep = _Prepared(tables, params.dtype_bytes, params.optimizer_slots)
    return prep.nothing_useful(params.budget_bytes)
