"""Access skew of a layout's tables, as the report (:mod:`fae_data.report`) shows it.

Definitions used on the page (``tests/test_report.py`` recomputes them naively):

* A table's rows are its ids ``0 .. vocab_size - 1``; ``counts[i]`` is the accesses of id
  ``i`` in the counted (sampled) training partitions, from the table's vocabulary file
  (the manifest's ``vocab_path``). The vocabulary file does not store id 0 (null,
  unseen, rare values); its accesses are derived as ``table total - sum(counts[1:])``
  when every table is looked up by exactly one scalar
  column (Criteo: every table then sees the same ``stats.accesses_total / tables``
  accesses). Otherwise id 0 is counted as 0 and the page says so.
* Top p% of rows: the ``ceil(p * vocab_size)`` rows (at least 1) with the most accesses;
  their share is their accesses over the table's accesses.
* Hot prefix coverage: accesses of ids ``< k_t`` over the table's accesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fae_data.manifest import Manifest, TableRef
from fae_data.storage import Storage

#: Points per access curve: geometrically spaced ranks keep a 40M-row table cheap to draw.
_CURVE_POINTS = 400


@dataclass(frozen=True)
class TableSkew:
    """Skew figures of one table (see the module docstring for the definitions)."""

    name: str
    vocab_size: int
    hot_rows: int
    accesses: int
    top_0_1: float  # share of accesses taken by the top 0.1% of rows
    top_1: float  # ... by the top 1% of rows
    hottest: int  # accesses of the most accessed row
    hot_coverage: float  # share of accesses of ids < k_t
    ranks: np.ndarray  # prefix lengths 1..vocab_size (downsampled)
    cum_share: np.ndarray  # share of accesses of ids < rank


def _table_totals(manifest: Manifest) -> dict[str, int] | None:
    """Accesses per table, id 0 included: recorded per table since manifests carry
    ``tables[].accesses``; for older ones derived from ``stats.accesses_total``."""
    if manifest.tables and all(t.accesses > 0 for t in manifest.tables):
        return {t.name: t.accesses for t in manifest.tables}
    total = manifest.stats.get("accesses_total")
    n = len(manifest.tables)
    lookups: dict[str, list[str]] = {t.name: [] for t in manifest.tables}
    for c in manifest.columns:
        if c.role == "sparse" and c.table in lookups:
            lookups[c.table].append(c.type)
    one_scalar = all(len(v) == 1 and not v[0].startswith(("list", "large_list"))
                     for v in lookups.values())
    if not isinstance(total, int) or n == 0 or total % n or not one_scalar:
        return None
    return {t.name: total // n for t in manifest.tables}


def _read_counts(store: Storage, t: TableRef) -> np.ndarray:
    """Accesses per id (index = id) with id 0 left at 0."""
    table = store.read_table(t.vocab_path, columns=["id", "count"])
    ids = table.column("id").to_numpy().astype(np.int64)
    cnt = table.column("count").to_numpy().astype(np.int64)
    counts = np.zeros(t.vocab_size, dtype=np.int64)
    if ids.size and (ids.min() < 1 or ids.max() >= t.vocab_size):
        raise ValueError(f"ids {ids.min()}..{ids.max()} outside 1..{t.vocab_size - 1}")
    counts[ids] = cnt
    return counts


def _skew(t: TableRef, counts: np.ndarray) -> TableSkew:
    total = int(counts.sum())
    v = t.vocab_size

    def share(accesses: Any) -> Any:
        return accesses / total if total else 0.0 * accesses

    cum = np.cumsum(counts)
    ranks = np.unique(np.geomspace(1, v, min(v, _CURVE_POINTS)).astype(np.int64))
    ranks[-1] = v
    return TableSkew(
        name=t.name, vocab_size=v, hot_rows=t.hot_rows, accesses=total,
        top_0_1=float(share(_top_sum(counts, max(1, -(-v // 1000))))),
        top_1=float(share(_top_sum(counts, max(1, -(-v // 100))))),
        hottest=int(counts.max()),
        hot_coverage=float(share(cum[t.hot_rows - 1])) if t.hot_rows else 0.0,
        ranks=ranks, cum_share=np.asarray(share(cum[ranks - 1]), dtype=np.float64),
    )


def _top_sum(counts: np.ndarray, n: int) -> int:
    """Accesses of the ``n`` most accessed rows, without sorting a frequency-ranked table."""
    rest = counts[1:]
    if rest.size > 1 and np.any(np.diff(rest) > 0):  # not ranked after all: sort it
        return int(np.sort(counts)[::-1][:n].sum())
    if np.count_nonzero(rest > counts[0]) >= n:  # id 0 is not among the top n
        return int(rest[:n].sum())
    return int(counts[0] + rest[: n - 1].sum())
