"""Frequency-ranked vocabularies: raw value -> id, most frequent value first.

Id 1 is the most accessed value of a table, id 2 the next, ties broken by raw value
ascending; id 0 stands for null, for values never seen in the training partitions, and
for values below ``min_count`` or beyond ``max_rows``. Because ids follow frequency, the
hot rows of a table are the prefix ``[0, k_t)``: the GPU table is a slice, and a new
budget changes only ``k_t``, never the encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from fae_data.errors import InputError

VOCAB_SCHEMA = {"value": pl.UInt32, "count": pl.UInt64, "id": pl.UInt32}


#: Ids are uint32 (id 0 included): the most rows a table can have.
MAX_ROWS = 2**32


@dataclass(frozen=True)
class VocabParams:
    min_count: int = 1
    max_rows: int | None = None  # rows per table, id 0 included
    #: Share of rows the counts were taken on. Values seen in the data but not in the
    #: sample carry count 0: they rank after every sampled value (by raw value) and are
    #: kept when ``min_count`` is 1; ``min_count`` applies to counts scaled by 1/rate.
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise InputError(f"min_count ({self.min_count}) must be at least 1")
        if self.max_rows is not None and self.max_rows < 1:
            raise InputError(f"max_rows ({self.max_rows}) must be at least 1 (row 0)")
        if self.max_rows is not None and self.max_rows > MAX_ROWS:
            raise InputError(f"max_rows ({self.max_rows}) is more rows than uint32 ids can "
                             f"number: give at most {MAX_ROWS:,} (or none, for every value)")


def _kept(params: VocabParams) -> pl.Expr:
    if params.sampling_rate >= 1.0:
        return pl.col("count") >= params.min_count
    if params.min_count <= 1:
        return pl.lit(True)
    return pl.col("count") >= params.min_count * params.sampling_rate


def rank_values(counts: pl.DataFrame, params: VocabParams) -> pl.DataFrame:
    """The vocabulary of one table from its merged ``(value, count)`` counts:
    ``(value, count, id)`` ordered by id (count descending, then value ascending)."""
    ranked = (
        counts.lazy()
        .filter(pl.col("value").is_not_null() & _kept(params))
        .sort(["count", "value"], descending=[True, False])
    )
    if params.max_rows is not None:
        ranked = ranked.head(params.max_rows - 1)
    return (
        ranked.with_row_index("id", offset=1)
        .select(
            pl.col("value").cast(pl.UInt32),
            pl.col("count").cast(pl.UInt64),
            pl.col("id").cast(pl.UInt32),
        )
        .collect()
    )


def build_vocabs(
    counts: pl.DataFrame, tables: list[str], params: VocabParams
) -> dict[str, pl.DataFrame]:
    """The vocabulary of every table from a merged ``(table, value, count)`` frame."""
    empty = pl.DataFrame(schema={"value": pl.UInt32, "count": pl.UInt64})
    by_table = {
        str(key[0]): part.drop("table")
        for key, part in counts.partition_by("table", as_dict=True, maintain_order=True).items()
    }
    return {t: rank_values(by_table.get(t, empty), params) for t in tables}


def build_vocab(counts: pl.DataFrame, table: str, params: VocabParams) -> pl.DataFrame:
    """The vocabulary of one table (see :func:`build_vocabs`)."""
    return build_vocabs(counts, [table], params)[table]


def table_totals(counts: pl.DataFrame) -> dict[str, int]:
    """All accesses per table (nulls and dropped values included)."""
    sums = counts.group_by("table").agg(pl.col("count").sum())
    return {str(t): int(c) for t, c in sums.iter_rows()}


def id_counts(total: int, vocab: pl.DataFrame) -> np.ndarray:
    """Accesses per id (index = id) as int64 for a table with ``total`` accesses:
    id 0 gets nulls plus every dropped value."""
    ranked = vocab.get_column("count").to_numpy().astype(np.int64)
    zero = total - int(ranked.sum())
    return np.concatenate(([zero], ranked)).astype(np.int64)


class Encoder:
    """Maps raw values of one table to ids (vectorised; the same input always gives the
    same output)."""

    def __init__(self, vocab: pl.DataFrame) -> None:
        by_value = vocab.sort("value")
        self._values = by_value.get_column("value").to_numpy().astype(np.uint32)
        self._ids = by_value.get_column("id").to_numpy().astype(np.uint32)
        self._value_series = pl.Series("value", self._values)
        self._id_series = pl.Series("id", self._ids)

    @property
    def size(self) -> int:
        """Rows of the embedding table, id 0 included."""
        return int(self._values.shape[0]) + 1

    def encode(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Ids of ``values`` (uint32); entries where ``valid`` is False map to 0."""
        if self._values.size == 0:
            return np.zeros(values.shape, dtype=np.uint32)
        if self._values.size <= values.size:
            ids = self._hash_lookup(values)
        else:
            ids = self._sorted_lookup(values)
        if valid is not None:
            ids[~valid] = 0
        return ids

    def _hash_lookup(self, values: np.ndarray) -> np.ndarray:
        # A hash map of the vocabulary, built per call: 2-4x faster than binary search
        # while the vocabulary is no larger than the chunk (so building it never costs
        # more than the lookups it serves).
        mapped = pl.Series("v", values, dtype=pl.UInt32).replace_strict(
            self._value_series, self._id_series, default=0, return_dtype=pl.UInt32
        )
        return mapped.to_numpy().copy()

    def _sorted_lookup(self, values: np.ndarray) -> np.ndarray:
        # Large vocabularies (millions of rows for Criteo's big tables): binary searches
        # in sorted query order walk the vocabulary front to back and stay in cache,
        # several times faster than searching in arrival order, with nothing to build.
        order = np.argsort(values)
        queries = values[order]
        pos = np.minimum(np.searchsorted(self._values, queries), self._values.size - 1)
        ids_sorted = np.where(self._values[pos] == queries, self._ids[pos], np.uint32(0))
        ids = np.empty(values.shape, dtype=np.uint32)
        ids[order] = ids_sorted
        return ids
