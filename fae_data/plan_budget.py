"""Memory sizes for the hot-row planner: budget strings and the GPU bytes of one row.

Unit parsing and row arithmetic, independent of how rows are chosen: the planner's types
(:mod:`fae_data.plan_types`) and the greedy (:mod:`fae_data.plan_greedy`) build on it, and
it imports nothing of theirs. :mod:`fae_data.plan` re-exports the public names.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np

from fae_data.errors import BudgetError, FaeError, InputError

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_BUDGET_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$", re.ASCII)
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


#: Bytes of one weight per embedding dtype (what ``--dtype`` takes).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def format_bytes(n: float) -> str:
    """A byte count for people, in the units :func:`parse_budget` reads back: ``256 KiB``,
    ``1.5 MiB``, ``3,000 B`` (four significant digits)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:,.4g} {unit}"
    return f"{n:,.0f} B"


def bytes_per_row(dim: int, dtype_bytes: int, optimizer_slots: int) -> int:
    """GPU bytes of one embedding row: the weights plus one copy per optimizer slot.

    Raises:
        InputError: ``dim`` or ``dtype_bytes`` below 1, or ``optimizer_slots`` below 0,
            or any of them above :data:`MAX_ROW_FACTOR` (the planner multiplies row bytes
            by up to 2^32 rows in int64: a dim of 2^61 overflowed into a wrong plan).
    """
    dim = _check_int("dim", dim, 1, maximum=MAX_ROW_FACTOR)
    dtype_bytes = _check_int("dtype_bytes", dtype_bytes, 1, maximum=MAX_ROW_FACTOR)
    slots = _check_int("optimizer_slots", optimizer_slots, 0, maximum=MAX_ROW_FACTOR)
    return dim * dtype_bytes * (1 + slots)


#: Largest embedding dimension, dtype width or optimizer slot count the planner takes:
#: far beyond any real table, and row bytes x 2^32 rows stay within int64.
MAX_ROW_FACTOR = 1 << 16


def _check_int(name: str, value: object, minimum: int, error: type[FaeError] = InputError,
               maximum: int | None = None) -> int:
    """``value`` as a Python int (numpy integers accepted), or ``error`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise error(f"{name} ({value!r}) must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise error(f"{name} ({value!r}) must be at most {maximum}")
    return int(value)
