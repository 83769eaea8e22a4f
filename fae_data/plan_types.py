"""What the hot-row planner takes and returns: tables, parameters and the plan.

A leaf below the greedy (:mod:`fae_data.plan_greedy`) and the sweep
(:mod:`fae_data.plan_sweep`), so that both, and :mod:`fae_data.plan` which re-exports
them, import these without an import cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from fae_data.errors import BudgetError, InputError
from fae_data.plan_budget import _check_int

#: What a caller prints when ``Plan.all_hot`` is set.
ALL_HOT_NOTE = (
    "every row of every table fits in the budget: all inputs are hot and the cold split "
    "will be empty"
)


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
