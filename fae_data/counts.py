"""Access counting: per partition and sparse column, how often each value is looked up.

A partial count is a small table ``(table, value, count)`` for one input partition.
Partials merge associatively (concatenate, then sum by ``(table, value)``), so Airflow can
map counting over partitions and many machines can share the work. ``value`` null counts
the nulls of the column (they map to id 0). List columns (Taobao histories) count every
element. Several columns may feed one table (a Taobao target item and its history items
share the item table).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow as pa

from fae_data.errors import InputError

COUNT_SCHEMA = {"table": pl.String, "value": pl.UInt32, "count": pl.UInt64}
_U64 = 2**64


def sample_seed(seed: int, *salt: str) -> int:
    """The hash seed of one sample: the user's ``seed`` mixed with what is sampled (a
    partition's checksum, the sample's purpose). Rows are drawn by hashing their position
    in the partition, so without the salt every partition would keep the same positions
    and two samples of one partition would be nested: the salt makes them independent."""
    if not salt:
        return seed
    payload = "\0".join([str(seed), *salt]).encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def sample_mask(n: int, offset: int, rate: float, seed: int) -> pl.Series | None:
    """A seeded Bernoulli sample of ``n`` rows starting at row ``offset`` of a partition.

    Each row is kept with probability ``rate``; the decision hashes the row's position in
    its partition with the seed (from :func:`sample_seed`), so it is the same on every run,
    machine and chunking. Returns None for ``rate`` 1.0 (keep everything).
    """
    if not 0.0 < rate <= 1.0:
        raise InputError(f"sampling rate ({rate}) must be in (0, 1]")
    if rate == 1.0:
        return None
    threshold = int(rate * (_U64 - 1))
    positions = pl.int_range(offset, offset + n, dtype=pl.UInt64, eager=True)
    return positions.hash(seed) <= threshold


def count_values(
    frame: pl.DataFrame | pa.Table, columns: Mapping[str, str], keep: pl.Series | None = None
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
Chunk = pl.DataFrame | pa.Table | pa.RecordBatch

#: Columns are counted two at a time: numpy's sort releases the GIL (the machines this
#: targets have 2 cores).
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fae-count")
_VALUE_COUNT_SCHEMA = {"value": pl.UInt32, "count": pl.UInt64}


def count_tables(frame: Chunk, columns: Mapping[str, str], keep: pl.Series | None = None) -> TableCounts:
    """Like :func:`count_values`, kept per table (cheaper to merge: the key is one uint32)."""
    if keep is not None:
        present = {t: c.with_columns(pl.lit(0, pl.UInt64).alias("count"))
                   for t, c in _count(frame, columns).items()}
        return merge_tables([present, _count(frame.filter(_mask_for(frame, keep)), columns)])
    return _count(frame, columns)


def _mask_for(frame: Chunk, keep: pl.Series) -> pl.Series | pa.Array:
    return keep if isinstance(frame, pl.DataFrame) else keep.to_arrow()


def _count(frame: Chunk, columns: Mapping[str, str]) -> TableCounts:
    names = frame.columns if isinstance(frame, pl.DataFrame) else frame.schema.names
    for column in columns:
        if column not in names:
            raise InputError(f"column {column!r} not found; available: {', '.join(names)}")
    get = frame.get_column if isinstance(frame, pl.DataFrame) else frame.column
    counted = _POOL.map(lambda c: column_counts(get(c)), list(columns))
    per_table: dict[str, list[pl.DataFrame]] = {}
    for table_name, counts in zip(columns.values(), counted, strict=True):
        per_table.setdefault(table_name, []).append(counts)
    return {t: parts[0] if len(parts) == 1 else _sum(parts) for t, parts in per_table.items()}


def column_counts(column: pa.Array | pa.ChunkedArray | pl.Series) -> pl.DataFrame:
    """Accesses per value of one column: ``(value, count)`` sorted by value, the nulls
    (if any) first as value null. A list column counts its elements (an empty or null
    list is no lookup).

    The kernel sorts instead of hashing: numpy's vectorised sort of uint32 is about 3x
    faster than a hash group-by on these skewed, high-cardinality columns, and partial
    count files are stored sorted by value anyway. A Polars column is counted without a
    round trip through Arrow (Polars drops nulls ~6x faster than Arrow's filter kernel).
    """
    series = _id_series(column)
    nulls = series.null_count()
    values = (series.drop_nulls() if nulls else series).to_numpy()
    if values.flags.writeable:  # a copy of its own (Polars hands out views read-only)
        values.sort()
    else:
        values = np.sort(values)
    distinct, starts = _runs(values)
    counts = np.empty(starts.size, dtype=np.uint64)
    if starts.size:
        np.subtract(starts[1:], starts[:-1], out=counts[:-1], casting="unsafe")
        counts[-1] = values.size - starts[-1]
    return _frame(distinct, counts, nulls if nulls else None)


def _id_series(column: pa.Array | pa.ChunkedArray | pl.Series) -> pl.Series:
    """``column`` as a Polars UInt32 series, a list column flattened to its elements."""
    if isinstance(column, pl.Series):
        if column.dtype.is_nested():
            return _id_series(column.to_arrow())
        return column if column.dtype == pl.UInt32 else column.cast(pl.UInt32)
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    if arr.type != pa.uint32():
        arr = arr.cast(pa.uint32())
    return pl.Series(values=arr, dtype=pl.UInt32)


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a sorted array and where each one's run starts."""
    if not sorted_values.size:
        return sorted_values.astype(np.uint32), np.zeros(0, dtype=np.int64)
    first = np.empty(sorted_values.size, dtype=bool)
    first[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return sorted_values[starts], starts


def _frame(values: np.ndarray, counts: np.ndarray, nulls: int | None) -> pl.DataFrame:
    """A ``(value, count)`` frame in partial-file order: the null row (if any) first."""
    # From a dict, not a list of Series: polars registers a list's element type with a
    # functools.singledispatch on first use, which is not thread-safe, and this runs in
    # _POOL's threads ("dictionary changed size during iteration", seen once in CI).
    if nulls is None:
        return pl.DataFrame({"value": pl.Series("value", values, pl.UInt32),
                             "count": pl.Series("count", counts, pl.UInt64)})
    # One allocation each, the null slot set in place: cheaper than concatenating frames.
    with_null = np.empty(values.size + 1, dtype=np.uint32)
    with_null[1:] = values
    with_null[0] = 0
    all_counts = np.empty(counts.size + 1, dtype=np.uint64)
    all_counts[1:] = counts
    all_counts[0] = nulls
    return pl.DataFrame({"value": pl.Series("value", with_null, pl.UInt32).scatter(0, None),
                         "count": pl.Series("count", all_counts, pl.UInt64)})


def _sum(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The sum per value of several ``(value, count)`` frames, in partial-file order.

    A stable sort of the concatenated values and a sum per run: the output is sorted
    (no later sort needed) and, unlike a hash group-by, costs no hash table of the
    vocabulary's size. A null row, even of count 0, survives (it lists the nulls).
    """
    both = pl.concat(parts)
    values = both.get_column("value")
    null_rows = values.is_null()
    nulls = int(both.filter(null_rows).get_column("count").sum()) if null_rows.any() else None
    present = both.filter(~null_rows) if nulls is not None else both
    vals = present.get_column("value").to_numpy()
    order = np.argsort(vals, kind="stable")
    distinct, starts = _runs(vals[order])
    counts = present.get_column("count").to_numpy()[order]
    sums = np.add.reduceat(counts, starts) if starts.size else counts[:0]
    return _frame(distinct, sums.astype(np.uint64), nulls)


def merge_tables(partials: Iterable[TableCounts]) -> TableCounts:
    """Merge per-table partial counts: the sum per value; order-independent."""
    collected: dict[str, list[pl.DataFrame]] = {}
    for partial in partials:
        for table, counts in partial.items():
            collected.setdefault(table, []).append(counts)
    return {t: parts[0] if len(parts) == 1 else _sum(parts) for t, parts in collected.items()}


def to_frame(counts: TableCounts, enum_tables: bool = False) -> pl.DataFrame:
    """Per-table counts as one :data:`COUNT_SCHEMA` frame sorted by (table, value).

    With ``enum_tables`` the ``table`` column is a Polars Enum of the sorted table names
    instead of a string (how partial count files store it: about 25% cheaper to build and
    write, the same bytes on disk; :func:`from_frame` takes both).
    """
    if not counts:
        return pl.DataFrame(schema=COUNT_SCHEMA)
    table_type = pl.Enum(sorted(counts)) if enum_tables else pl.String
    frames = [
        (c if _sorted_by_value(c) else c.sort("value", nulls_last=False))
        .lazy()
        .select(pl.lit(t, table_type).alias("table"), pl.col("value"), pl.col("count"))
        for t, c in sorted(counts.items())
    ]
    return pl.concat(frames).cast({**COUNT_SCHEMA, "table": table_type}).collect()  # type: ignore[arg-type]


def _sorted_by_value(counts: pl.DataFrame) -> bool:
    """True when ``counts`` is already in partial-file order (nulls first, then ascending),
    as :func:`column_counts` leaves it: a linear check instead of a sort."""
    values = counts.get_column("value")
    nulls = values.null_count()
    if nulls > 1 or (nulls == 1 and values[0] is not None):
        return False
    return bool(values.slice(nulls).is_sorted())


def is_count_frame(frame: pl.DataFrame) -> bool:
    """True when ``frame`` has :data:`COUNT_SCHEMA`, its ``table`` a string or an Enum."""
    schema = frame.schema
    table = schema.get("table")
    return (list(schema) == list(COUNT_SCHEMA)
            and (table == pl.String or isinstance(table, pl.Enum))
            and schema["value"] == pl.UInt32 and schema["count"] == pl.UInt64)


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
