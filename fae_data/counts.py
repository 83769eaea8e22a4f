"""Access counting: per partition and sparse column, how often each value is looked up.

A partial count is a small table ``(table, value, count)`` for one input partition.
Partials merge associatively (concatenate, then sum by ``(table, value)``), so Airflow can
map counting over partitions and many machines can share the work. ``value`` null counts
the nulls of the column (they map to id 0). List columns (Taobao histories) count every
element. Several columns may feed one table (a Taobao target item and its history items
share the item table).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import polars as pl

from fae_data.errors import InputError

COUNT_SCHEMA = {"table": pl.String, "value": pl.UInt32, "count": pl.UInt64}
_U64 = 2**64


def sample_mask(n: int, offset: int, rate: float, seed: int) -> pl.Series | None:
    """A seeded Bernoulli sample of ``n`` rows starting at row ``offset`` of a partition.

    Each row is kept with probability ``rate``; the decision hashes the row's position in
    its partition with the seed, so it is the same on every run, machine and chunking.
    Returns None for ``rate`` 1.0 (keep everything).
    """
    if not 0.0 < rate <= 1.0:
        raise InputError(f"sampling rate ({rate}) must be in (0, 1]")
    if rate == 1.0:
        return None
    threshold = int(rate * (_U64 - 1))
    positions = pl.int_range(offset, offset + n, dtype=pl.UInt64, eager=True)
    return positions.hash(seed) <= threshold


def sample_rows(frame: pl.LazyFrame, rate: float, seed: int) -> pl.LazyFrame:
    """:func:`sample_mask` applied to a whole lazy frame (rows numbered from 0)."""
    if not 0.0 < rate <= 1.0:
        raise InputError(f"sampling rate ({rate}) must be in (0, 1]")
    if rate == 1.0:
        return frame
    threshold = int(rate * (_U64 - 1))
    keep = pl.int_range(pl.len(), dtype=pl.UInt64).hash(seed) <= threshold
    return frame.filter(keep)


def count_values(
    frame: pl.DataFrame, columns: Mapping[str, str], keep: pl.Series | None = None
) -> pl.DataFrame:
    """Count accesses per ``(table, value)`` over ``columns`` (column name -> table name)
    of an in-memory chunk. List columns count every element.

    With a sampling mask ``keep``, only kept rows are counted, but every value of the
    chunk is still listed (with count 0 if it was not sampled): the vocabulary must give
    every value an id, sampling only decides how values are ranked.

    Returns a frame with :data:`COUNT_SCHEMA`, sorted by table then value (nulls first),
    so equal inputs give byte-identical partial files.
    """
    return to_frame(count_tables(frame, columns, keep))


TableCounts = dict[str, pl.DataFrame]  # table -> (value, count), one row per value


def count_tables(
    frame: pl.DataFrame, columns: Mapping[str, str], keep: pl.Series | None = None
) -> TableCounts:
    """Like :func:`count_values`, kept per table (cheaper to merge: the key is one uint32)."""
    if keep is not None:
        present = {t: c.with_columns(pl.lit(0, pl.UInt64).alias("count"))
                   for t, c in _count(frame, columns).items()}
        return merge_tables([present, _count(frame.filter(keep), columns)])
    return _count(frame, columns)


def _count(frame: pl.DataFrame, columns: Mapping[str, str]) -> TableCounts:
    per_table: dict[str, list[pl.DataFrame]] = {}
    for column, table in columns.items():
        if column not in frame.columns:
            raise InputError(
                f"column {column!r} not found; available: {', '.join(frame.columns)}"
            )
        values = frame.get_column(column)
        if isinstance(values.dtype, pl.List):
            # explode() turns an empty list into one null: drop those, they are no lookup
            values = values.filter(values.list.len() > 0).explode()
        counted = values.cast(pl.UInt32).rename("value").value_counts(name="count")
        per_table.setdefault(table, []).append(counted.cast({"count": pl.UInt64}))
    return {t: parts[0] if len(parts) == 1 else _sum(parts) for t, parts in per_table.items()}


def _sum(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(parts).group_by("value").agg(pl.col("count").sum())


def merge_tables(partials: Iterable[TableCounts]) -> TableCounts:
    """Merge per-table partial counts: the sum per value; order-independent."""
    collected: dict[str, list[pl.DataFrame]] = {}
    for partial in partials:
        for table, counts in partial.items():
            collected.setdefault(table, []).append(counts)
    return {t: parts[0] if len(parts) == 1 else _sum(parts) for t, parts in collected.items()}


def to_frame(counts: TableCounts) -> pl.DataFrame:
    """Per-table counts as one :data:`COUNT_SCHEMA` frame sorted by (table, value)."""
    frames = [
        c.sort("value", nulls_last=False).select(
            pl.lit(t, pl.String).alias("table"), pl.col("value"), pl.col("count")
        )
        for t, c in sorted(counts.items())
    ]
    if not frames:
        return pl.DataFrame(schema=COUNT_SCHEMA)
    return pl.concat(frames).cast(COUNT_SCHEMA)  # type: ignore[arg-type]


def from_frame(frame: pl.DataFrame) -> TableCounts:
    """The inverse of :func:`to_frame`."""
    return {
        str(key[0]): part.drop("table")
        for key, part in frame.partition_by("table", as_dict=True, maintain_order=True).items()
    }


def merge_counts(partials: Iterable[pl.LazyFrame]) -> pl.DataFrame:
    """Merge partial count frames: the sum per ``(table, value)``; order-independent."""
    tables = merge_tables(
        from_frame(p.select(list(COUNT_SCHEMA)).cast(COUNT_SCHEMA).collect())  # type: ignore[arg-type]
        for p in partials
    )
    return to_frame(tables)
